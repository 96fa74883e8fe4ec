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
    its end and a batch is a tenth full or ``caught_up_s`` old; not while a failed flush waits out
    its back-off."""

    flush_rows: int
    flush_bytes: int
    interval_s: float
    #: Once the log is read to its end, a batch this old is flushed whatever its size: the wait
    #: a caught-up worker adds to the write-to-searchable lag (``interval_s`` caps the rest).
    caught_up_s: float = 0.5
    #: Flushing by size since the log was last read to its end: working through a backlog.
    behind: bool = False
    #: When a failed flush may be tried again (monotonic seconds); 0 while flushes succeed.
    retry_at: float = 0.0
    #: Flushes that failed over the worker's life: the back-off grows with them, and a
    #: success does not reset it.
    failures: int = 0

    def due(self, buffered: Buffered, now: float, caught_up: bool = False) -> bool:
        """Whether to flush now; ``caught_up`` when the last read reached the log's end."""
        if self.retrying(now):
            return False
        rows, size = buffered.rows, buffered.bytes
        full = rows >= self.flush_rows or size >= self.flush_bytes
        if full:
            self.behind = True
        elif caught_up and self.behind:
            # The end of a backlog: its last rows are not held at all.
            self.behind = False
            if rows:
                return True
        if buffered.oldest is None:
            return full
        age = now - buffered.oldest
        # Once the log is read to its end, holding a batch only adds lag: a tenth-full batch is
        # flushed at once (waiting would not make segments much bigger), a smaller one once its
        # records may have waited caught_up_s, counted from when they could have come (what was
        # fetched during a long flush waited that flush too), which bounds how many segments a
        # trickle makes (compaction merges them).
        waited = now - (buffered.arrived_after if buffered.arrived_after is not None else buffered.oldest)
        big = rows >= self.flush_rows // 10 or size >= self.flush_bytes // 10
        return full or (caught_up and (big or waited >= self.caught_up_s)) or age >= self.interval_s

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
