"""When an ingest worker flushes: a pure decision over the buffered totals and the clock.

No Kafka, no I/O: the worker tells it what is buffered, what time it is (monotonic seconds)
and whether the last read reached the log's end; the flusher tells it when a flush failed
or succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.buffers import Buffered

#: The longest wait before a failed flush is tried again, in seconds.
MAX_RETRY_S = 30.0


@dataclass
class FlushPolicy:
    """Flush by rows, bytes or age; at once at the end of a backlog; early once the log is read to
    its end and a batch is a tenth full; not while a failed flush waits out its back-off."""

    flush_rows: int
    flush_bytes: int
    interval_s: float
    #: Flushing by size since the log was last read to its end: working through a backlog.
    behind: bool = False
    #: When a failed flush may be tried again (monotonic seconds); 0 while flushes succeed.
    retry_at: float = 0.0
    #: Flushes that failed over the worker's life: the back-off grows with them, and a
    #: success does not reset it.
    failures: int = 0

    def due(self, buffered: Buffered, now: float, caught_up: bool = False) -> bool:
        """Whether to flush now; ``caught_up`` when the last read found nothing new."""
        if self.retrying(now):
            return False
        rows, size = buffered.rows, buffered.bytes
        full = rows >= self.flush_rows or size >= self.flush_bytes
        if full:
            self.behind = True
        elif caught_up and self.behind:
            # The end of a backlog: its last rows are not held for the interval. A steady
            # trickle never flushes by size, so its segments still grow for the interval.
            self.behind = False
            if rows:
                return True
        # Once the log is read to its end, a batch already a tenth of full is not held for
        # the interval: waiting would add latency without making segments much bigger.
        big = rows >= self.flush_rows // 10 or size >= self.flush_bytes // 10
        return (full or (caught_up and big)
                or (buffered.oldest is not None and now - buffered.oldest >= self.interval_s))

    def retrying(self, now: float) -> bool:
        """A failed flush is waiting out its back-off."""
        return now < self.retry_at

    @property
    def failing(self) -> bool:
        """The last flush failed (no flush has succeeded since)."""
        return self.retry_at > 0

    def backlogged(self, buffered_bytes: int) -> bool:
        """Flushes are failing and the buffers are full: stop reading until one succeeds."""
        return self.failing and buffered_bytes >= 2 * self.flush_bytes

    def failed(self, now: float) -> None:
        """A flush failed: back off, longer the more flushes have failed (0.5 s doubling, up to 30 s)."""
        self.failures += 1
        self.retry_at = now + min(MAX_RETRY_S, 0.5 * 2 ** min(self.failures, 6))

    def succeeded(self) -> None:
        self.retry_at = 0.0
