"""Per-source stored byte ranges: what makes a re-sent record a duplicate.

Usually a source's stored bytes are one range [start, end) growing at its end.
When a delivery fails but later frames of the same file get through (a
producer without idempotence can do that in a broker outage), the shipper
re-sends the failed range after the later ones: the ranges keep that hole
open, so the re-sent records fill it instead of being taken for duplicates.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

Ranges = list[tuple[int, int]]


def record_starts(records: pa.BinaryArray, first_offset: int) -> np.ndarray:
    """File offset where each record of a verbatim frame starts."""
    offsets = np.frombuffer(records.buffers()[1], dtype=np.int32, count=len(records) + 1,
                            offset=4 * records.offset).astype(np.int64)
    return first_offset + (offsets[:-1] - offsets[0])


def drop_stored(records: pa.BinaryArray, first_offset: int, ranges: Ranges) -> pa.Array:
    """The records that start outside every stored range."""
    if not ranges or not len(records):
        return records
    starts = record_starts(records, first_offset)
    stored = np.zeros(len(starts), dtype=bool)
    for lo, hi in ranges:
        stored |= (starts >= lo) & (starts < hi)
    if not stored.any():
        return records
    if stored.all():
        return records.slice(0, 0)
    return records.filter(pa.array(~stored))


def add_range(ranges: Ranges, lo: int, hi: int) -> Ranges:
    """``ranges`` with [lo, hi) added, merged with what it touches, sorted."""
    out: Ranges = []
    for a, b in sorted([*ranges, (lo, hi)]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
