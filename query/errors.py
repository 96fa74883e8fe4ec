"""The query package's exceptions; the HTTP edge maps each to a status code."""

from __future__ import annotations


class QueryError(Exception):
    """Base of everything a query can be rejected for (HTTP 400)."""

    status_code = 400


class QuerySyntaxError(QueryError):
    """The query string does not parse; says where and what was expected."""

    def __init__(self, message: str, position: int, query: str) -> None:
        self.position = position
        self.query = query
        self.reason = message
        super().__init__(f"{message} at position {position}")

    def caret(self) -> str:
        return f"{self.query}\n{' ' * self.position}^"


class UnknownField(QueryError):
    """A field name that is not a column and cannot be an attribute key."""


class BadTimeRange(QueryError):
    """``start``/``end`` could not be read, or end is before start."""


class ScanTooLarge(QueryError):
    """The query would read more than the configured maximum (HTTP 422, before running)."""

    status_code = 422

    def __init__(self, estimate: int, limit: int) -> None:
        self.estimate, self.limit = estimate, limit
        super().__init__(f"this query would scan about {estimate:,} bytes, more than the limit of {limit:,}; "
                         "narrow the time range or pin a service or level")


class QueryTimeout(QueryError):
    """The query ran past its time limit and was interrupted (HTTP 504)."""

    status_code = 504


class QueryOutOfMemory(QueryError):
    """The query needed more than ``query.memory_limit`` (HTTP 503: the server is fine, the query too big)."""

    status_code = 503


class TooManyQueries(QueryError):
    """Every query slot is busy (HTTP 429 with Retry-After)."""

    status_code = 429
    retry_after_s = 1


class SavedQueryNotFound(QueryError):
    """No saved query by that name (HTTP 404)."""

    status_code = 404


class SavedQueryExists(QueryError):
    """A saved query by that name exists already (HTTP 409)."""

    status_code = 409
