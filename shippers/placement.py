"""Which partition a new file's frames go to: the one carrying the fewest bytes.

Kafka's default partitioner hashes a message's key, the file's source id,
which includes when the shipper first saw the file: where a file lands is a
draw each run. Files differ in size by orders of magnitude, so one partition
(and the ingest worker reading it) could get most of the bytes while the
other workers sat idle. A shipper knows what it carries, so it places each new
file itself. The largest unsent files go first, each to the partition with the
least load (the greedy longest-first rule). A file stays on its partition for
life: its checkpoint keeps the partition, so its frames stay in order.

A partition's load is the unsent bytes of the files on it, plus the bytes
recently acknowledged on it, decaying with a half-life. A file that appears
while others are tailed (a rotation) then goes where the traffic is least.
Ties are broken by the source id's hash, so the shippers of other hosts do not
all pick the first partition.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence

#: How fast the acknowledged bytes of a partition stop counting towards its load.
HALF_LIFE_S = 60.0


class PartitionLoad:
    """Bytes acknowledged per partition, decaying with ``half_life_s``."""

    def __init__(self, half_life_s: float = HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s
        self._bytes: dict[int, float] = {}
        self._at: float | None = None

    def _decay(self, now: float) -> None:
        if self._at is None:
            self._at = now
        elif now > self._at:
            factor = math.exp2(-(now - self._at) / self.half_life_s)
            for p in self._bytes:
                self._bytes[p] *= factor
            self._at = now

    def sent(self, partition: int, nbytes: int, now: float | None = None) -> None:
        """``nbytes`` were acknowledged on ``partition``."""
        self._decay(time.monotonic() if now is None else now)
        self._bytes[partition] = self._bytes.get(partition, 0.0) + nbytes

    def recent(self, partitions: int, now: float | None = None) -> list[float]:
        """The decayed bytes of partitions ``0 .. partitions - 1``."""
        self._decay(time.monotonic() if now is None else now)
        return [self._bytes.get(p, 0.0) for p in range(partitions)]


def place(new: Sequence[tuple[str, int]], load: Sequence[float]) -> list[int]:
    """The partition of each new source ((source id, unsent bytes)), in the order given, over
    partitions already carrying ``load``: largest first, each to the least loaded partition."""
    if not load:
        raise ValueError("no partitions to place on")
    carried = list(load)
    out = [0] * len(new)
    for i in sorted(range(len(new)), key=lambda i: -new[i][1]):
        source_id, nbytes = new[i]
        least = min(carried)
        tied = [p for p, c in enumerate(carried) if c == least]
        p = tied[zlib.crc32(source_id.encode()) % len(tied)]
        out[i] = p
        carried[p] += max(0, nbytes)
    return out
