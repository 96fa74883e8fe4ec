"""Rewriting one segment without some of its rows: how expired and deleted data really goes.

The kept rows go to a new file beside the old one; the catalog swaps the two
in one transaction, with the audit entries, and the old file is deleted after
the grace period like any retired segment.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from storage.catalog import AuditEntry, Catalog, SegmentRow
from storage.root import DataRoot, parquet_size
from storage.schema import conform
from storage.segments import describe

#: Given a segment's rows, which to drop.
DropRows = Callable[[pa.Table], pa.BooleanArray | pa.ChunkedArray]


@dataclass
class Removed:
    """What left one segment (or would, in a dry run)."""

    segment: SegmentRow
    rows: int
    bytes: int                                  # bytes freed: whole segment, or old minus new size
    by_service: dict[str, int] = field(default_factory=dict)
    min_ts_us: int | None = None
    max_ts_us: int | None = None
    #: Per service, the first and last time of its removed rows (when known; else the whole range).
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    def range_of(self, service: str) -> tuple[int | None, int | None]:
        return self.ranges.get(service, (self.min_ts_us, self.max_ts_us))


def rows_to_drop(root: DataRoot, seg: SegmentRow, drop: DropRows) -> tuple[pa.Table, pa.BooleanArray]:
    table = conform(root.read_parquet(seg.path))
    mask = drop(table)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    return table, pc.fill_null(mask, False)


def removed_of(seg: SegmentRow, gone: pa.Table, freed: int) -> Removed:
    if not gone.num_rows:
        return Removed(seg, 0, freed)
    per = pa.table({"service": gone["service"].cast(pa.string()), "ts": pc.cast(gone["ts"], pa.int64())}) \
        .group_by("service").aggregate([("ts", "count"), ("ts", "min"), ("ts", "max")])
    services = per["service"].to_pylist()
    counts, lows, highs = (per[c].to_pylist() for c in ("ts_count", "ts_min", "ts_max"))
    return Removed(seg, gone.num_rows, freed, dict(zip(services, counts, strict=True)), min(lows), max(highs),
                   {s: (lo, hi) for s, lo, hi in zip(services, lows, highs, strict=True)})


def rewrite_segment(root: DataRoot, catalog: Catalog, seg: SegmentRow, drop: DropRows, *,
                    audit: Callable[[Removed], Sequence[AuditEntry]], dry_run: bool = False,
                    zstd_level: int = 9, row_group_rows: int = 16 * 1024) -> Removed | None:
    """Replace ``seg`` by a copy without the rows ``drop`` selects; None when it selects none.

    Raises CatalogConflict (and leaves no new file) if the segment stopped
    being live meanwhile.
    """
    table, mask = rows_to_drop(root, seg, drop)
    n = pc.sum(mask).as_py() or 0
    if n == 0:
        return None
    gone = table.filter(mask)
    if n == table.num_rows:
        removed = removed_of(seg, gone, seg.bytes)
        if not dry_run:
            catalog.swap([seg], [], audit=audit(removed))
        return removed
    kept = table.filter(pc.invert(mask))
    # A segment compaction already wrote at its settled level keeps it: no second rewrite for that.
    zstd_level = max(zstd_level, seg.zstd_level or 0)
    if dry_run:
        # What the real run frees: the kept rows written the same way, in memory.
        size = parquet_size(kept, zstd_level=zstd_level, row_group_rows=row_group_rows)
        return removed_of(seg, gone, max(0, seg.bytes - size))
    rel = f"{seg.path.rsplit('/', 1)[0]}/rewritten-{uuid.uuid4().hex}.parquet"
    size = root.write_parquet(rel, kept, zstd_level=zstd_level, row_group_rows=row_group_rows)
    removed = removed_of(seg, gone, max(0, seg.bytes - size))
    try:
        catalog.swap([seg], [describe(seg.tenant, rel, kept, size, zstd_level)], generation=seg.generation,
                     audit=audit(removed))
    except BaseException:
        root.delete(rel)
        raise
    return removed
