"""What an ingest worker holds between flushes: one buffer per owned partition, and the shared state
its parts work on (the buffers, the stored byte ranges, the counters)."""

from __future__ import annotations

import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ingest.batch import RecordRun
from ingest.deadletters import DeadLetter
from ingest.marks import Ranges
from loglake.core.frame import PUSHED_SOURCE_PREFIX
from storage.catalog import Catalog, PartitionState

Key = tuple[str, int]          # (topic, partition)
SourceKey = tuple[str, str]    # (tenant, source id)


@dataclass
class Pending:
    """Third-party messages of one tenant, gathered into one run at flush."""

    values: list[bytes] = field(default_factory=list)
    observed_ms: list[int] = field(default_factory=list)


@dataclass
class PartitionBuffer:
    state: PartitionState                  # the catalog's position when the buffer began
    last_offset: int | None = None         # last Kafka offset taken into the buffer
    runs: list[tuple[str, RecordRun]] = field(default_factory=list)   # (tenant, run)
    pending: dict[str, Pending] = field(default_factory=lambda: defaultdict(Pending))
    dead: list[DeadLetter] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    ranges: dict[SourceKey, Ranges] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    #: The worker's ``IngestState.log_end_at`` when the first record was taken (see ``Buffered``).
    arrived_after: float | None = None
    last_record: str | None = None         # fingerprint of the record at last_offset


@dataclass
class Buffered:
    """The buffers as a whole, as the flush policy sees them."""

    rows: int
    bytes: int
    #: When the oldest buffer holding a record began (monotonic seconds); None when all are empty.
    oldest: float | None
    #: Its records came to the log after this: the last time before its first record was taken
    #: that the log was read to its end (what a worker busy flushing fetched is older than
    #: ``oldest`` says). None when unknown, or all are empty.
    arrived_after: float | None = None


@dataclass
class IngestState:
    """The state the worker's parts share. Each collection is one object for the worker's whole life
    (changed in place, never replaced), so every part that holds it sees the same."""

    buffers: dict[Key, PartitionBuffer] = field(default_factory=dict)
    #: Stored byte ranges per source: what makes a re-sent record a duplicate.
    ranges: dict[SourceKey, Ranges] = field(default_factory=dict)
    #: Counters reported on /metrics (``ingest.metrics``).
    stats: Counter[str] = field(default_factory=Counter)
    #: Pushed requests (sources of their own) and when this worker first saw each (monotonic s).
    pushed: dict[SourceKey, float] = field(default_factory=dict)
    #: When a read last reached the log's end (monotonic s); None before the first did.
    log_end_at: float | None = None

    def reload_ranges(self, catalog: Catalog) -> None:
        """Take the stored ranges from the catalog again (what was buffered since is not stored)."""
        fresh = catalog.source_ranges()
        self.ranges.clear()
        self.ranges.update(fresh)
        now = time.monotonic()
        for key in fresh:
            if key[1].startswith(PUSHED_SOURCE_PREFIX):
                self.pushed.setdefault(key, now)

    def forget_pushed(self, window_s: float, now: float) -> int:
        """Drop the ranges of pushed requests first seen over ``window_s`` ago; how many."""
        old = [k for k, seen in self.pushed.items() if now - seen > window_s]
        for k in old:
            del self.pushed[k]
            self.ranges.pop(k, None)
        return len(old)

    def buffered(self) -> Buffered:
        bufs = [b for b in self.buffers.values() if b.last_offset is not None]
        after = [b.arrived_after if b.arrived_after is not None else b.started for b in bufs]
        return Buffered(rows=sum(b.rows for b in bufs), bytes=sum(b.bytes for b in bufs),
                        oldest=min((b.started for b in bufs), default=None), arrived_after=min(after, default=None))


def fingerprint(timestamp_ms: int, value: bytes | None) -> str:
    """What identifies one Kafka record well enough to tell a recreated topic from the stored one."""
    return f"{timestamp_ms}:{zlib.crc32(value or b''):08x}"
