"""Per-tenant limits on pushed requests: their size (413) and their rate in bytes (429, Retry-After)."""

from __future__ import annotations

import math
import time

from loglake.core.config import ReceiveConfig
from receive.errors import RateLimited, TooLarge


class TenantLimits:
    """A token bucket of request bytes per tenant, filled at its ``bytes_per_s`` up to its burst.

    A bucket never holds less than one largest request, so any request the size limit lets through
    can pass once the bucket has refilled. Touched only on the event loop."""

    def __init__(self, cfg: ReceiveConfig) -> None:
        self.cfg = cfg
        self._buckets: dict[str, tuple[float, float]] = {}      # tenant -> (tokens, at)

    def max_request_bytes(self, tenant: str) -> int:
        return self.cfg.limits_for(tenant)[0]

    def check_size(self, tenant: str, nbytes: int) -> None:
        limit = self.max_request_bytes(tenant)
        if nbytes > limit:
            raise TooLarge(f"request of {nbytes} bytes is over receive.max_request_bytes={limit} "
                           f"for tenant {tenant!r}; send smaller batches")

    def take(self, tenant: str, nbytes: int, now: float | None = None) -> None:
        """Charge ``nbytes`` to the tenant's bucket, or raise :class:`RateLimited` (nothing charged)."""
        max_request, rate, burst = self.cfg.limits_for(tenant)
        if rate <= 0:
            return
        now = time.monotonic() if now is None else now
        capacity = float(max(burst, max_request))
        tokens, at = self._buckets.get(tenant, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        if tokens < nbytes:
            self._buckets[tenant] = (tokens, now)
            wait = math.ceil((nbytes - tokens) / rate)
            raise RateLimited(f"tenant {tenant!r} is over its rate of {rate:g} bytes/s "
                              f"(receive.bytes_per_s); retry in {wait} s", retry_after_s=max(1, wait))
        self._buckets[tenant] = (tokens - nbytes, now)
        if len(self._buckets) > 10_000:
            # Full buckets are as good as none: forget them.
            self._buckets = {t: b for t, b in self._buckets.items() if b[0] + (now - b[1]) * rate < capacity}
