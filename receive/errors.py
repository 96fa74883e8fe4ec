"""The receiver's one exception hierarchy: each says its HTTP status and why, in words a client can act on."""

from __future__ import annotations


class PushRejected(Exception):
    """A request the receiver does not take; nothing of it was produced."""

    status = 400
    reason = "bad_request"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BadRequest(PushRejected):
    status, reason = 400, "bad_request"


class UnsupportedMediaType(PushRejected):
    status, reason = 415, "unsupported_media_type"


class TooLarge(PushRejected):
    status, reason = 413, "too_large"


class RateLimited(PushRejected):
    status, reason = 429, "rate_limited"


class BrokerUnavailable(PushRejected):
    """The broker did not acknowledge in time: the client should send the same request again."""

    status, reason = 503, "broker_unavailable"
