"""Compaction: an hour's many small segments become a few big, sorted ones.

Ingest writes one segment per partition, hour and flush, so a busy hour has
hundreds. Compaction reads the small ones of one tenant and hour, sorts their
rows by (service, ts), writes segments of up to ``target_bytes`` /
``target_rows`` at a stronger zstd level, and swaps them in with one catalog
transaction (:meth:`Catalog.swap`). Until that commit the new files are
invisible, and after it the old ones are: a compactor killed at any point
leaves no duplicate and no gap, only files nobody references, which
:func:`collect_garbage` deletes once they are older than the grace period.

An hour is compacted at ``zstd_level`` while it is still being written (it
may be merged again every few minutes), and once it has settled (ended
``settle_s`` ago, with no new segment for as long) its segments are written
one last time at ``settled_zstd_level``: the expensive level is paid once
per hour. The catalog keeps each segment's level, so that rewrite happens
once; late data reopens the hour, is merged among itself, and is folded in
once the hour settles again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from loglake.core.config import CompactionConfig
from storage.catalog import Catalog, SegmentRow
from storage.errors import CatalogConflict
from storage.root import DataRoot
from storage.schema import conform
from storage.segments import HOUR_US, SegmentInfo, describe, sort_rows

log = logging.getLogger("loglake.storage")

#: A segment at least this share of the target is not worth rewriting.
BIG_ENOUGH = 0.5


@dataclass
class CompactionReport:
    batches: int = 0
    inputs: int = 0
    outputs: int = 0
    rows: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    conflicts: int = 0
    seconds: float = 0.0
    hours: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds else 0.0


def hour_of(seg: SegmentRow) -> str:
    """The segment's ``tenant=/date=/hour=`` directory."""
    return seg.path.rsplit("/", 1)[0]


HourKey = tuple[str, str]


def settled_hours(segments: list[SegmentRow], cfg: CompactionConfig, now_us: int) -> set[HourKey]:
    """The (tenant, hour) pairs that are written for good: the hour ended ``settle_s`` ago, and
    no segment has come into it for as long (late data, as after an outage, keeps it open)."""
    ends: dict[HourKey, int] = {}
    newest: dict[HourKey, int] = {}
    for s in segments:
        key = (s.tenant, hour_of(s))
        ends[key] = (s.min_ts_us // HOUR_US + 1) * HOUR_US
        newest[key] = max(newest.get(key, 0), s.created_us)
    wait = int(cfg.settle_s * 1e6)
    return {key for key, end in ends.items() if end + wait <= now_us and newest[key] + wait <= now_us}


def _at_settled_level(seg: SegmentRow, cfg: CompactionConfig) -> bool:
    return seg.zstd_level is not None and seg.zstd_level >= cfg.settled_zstd_level


def plan(segments: list[SegmentRow], cfg: CompactionConfig, now_us: int | None = None) -> list[list[SegmentRow]]:
    """Batches of segments to merge: same tenant and hour, each batch within the target size.

    In a settled hour (:func:`settled_hours`), a segment not yet at
    ``settled_zstd_level`` is taken even when big, and alone, to be written
    once more at that level. In an open hour, a segment already at that
    level is left alone: late data is merged among itself until the hour
    settles again, not by rewriting the settled segment every run.
    """
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    return _plan(segments, cfg, now_us, settled_hours(segments, cfg, now_us))


def _plan(segments: list[SegmentRow], cfg: CompactionConfig, now_us: int,
          done: set[HourKey]) -> list[list[SegmentRow]]:
    old_enough = now_us - int(cfg.min_age_s * 1e6)
    by_hour: dict[HourKey, list[SegmentRow]] = defaultdict(list)
    for s in segments:
        small = s.bytes < cfg.target_bytes * BIG_ENOUGH and s.rows < cfg.target_rows * BIG_ENOUGH
        if (s.tenant, hour_of(s)) in done:
            wanted = small or not _at_settled_level(s, cfg)
        else:
            wanted = small and not _at_settled_level(s, cfg)
        if s.created_us <= old_enough and wanted:
            by_hour[(s.tenant, hour_of(s))].append(s)
    batches: list[list[SegmentRow]] = []
    for key in sorted(by_hour):
        group = sorted(by_hour[key], key=lambda s: (s.min_ts_us, s.id))
        batch: list[SegmentRow] = []
        size = rows = 0
        for s in group:
            if batch and (size + s.bytes > cfg.target_bytes or rows + s.rows > cfg.target_rows):
                batches.append(batch)
                batch, size, rows = [], 0, 0
            batch.append(s)
            size += s.bytes
            rows += s.rows
        batches.append(batch)
    return [b for b in batches
            if len(b) >= 2 or ((b[0].tenant, hour_of(b[0])) in done and not _at_settled_level(b[0], cfg))]


def merge(root: DataRoot, batch: list[SegmentRow], cfg: CompactionConfig,
          zstd_level: int) -> tuple[list[SegmentInfo], pa.Table]:
    """Write the rows of ``batch`` at ``zstd_level`` as new, sorted segments (not yet in the catalog)."""
    table = pa.concat_tables([conform(root.read_parquet(s.path)) for s in batch]).unify_dictionaries()
    table = sort_rows(table.combine_chunks())
    tenant, directory = batch[0].tenant, hour_of(batch[0])
    infos: list[SegmentInfo] = []
    try:
        for start in range(0, table.num_rows, cfg.target_rows):
            part = table.slice(start, cfg.target_rows)
            rel = f"{directory}/compacted-{uuid.uuid4().hex}.parquet"
            size = root.write_parquet(rel, part, zstd_level=zstd_level, row_group_rows=cfg.row_group_rows)
            infos.append(describe(tenant, rel, part, size, zstd_level))
    except BaseException:
        for info in infos:
            root.delete(info.path)
        raise
    return infos, table



def compact(root: DataRoot, catalog: Catalog, cfg: CompactionConfig, *, tenant: str | None = None,
            now_us: int | None = None, progress: Callable[[int], None] | None = None) -> CompactionReport:
    """Merge every batch :func:`plan` finds; ``progress`` gets the input bytes of each batch done."""
    report = CompactionReport()
    t0 = time.perf_counter()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    live = catalog.live_segments(tenant)
    done = settled_hours(live, cfg, now_us)
    for batch in _plan(live, cfg, now_us, done):
        level = cfg.settled_zstd_level if (batch[0].tenant, hour_of(batch[0])) in done else cfg.zstd_level
        try:
            infos, table = merge(root, batch, cfg, level)
        except (OSError, pa.ArrowException) as e:
            # A file gone or unreadable: the hour is fsck's business; the other hours go on.
            log.error("compaction could not read an hour; skipped (see loglake fsck)",
                      extra={"hour": hour_of(batch[0]), "reason": f"{type(e).__name__}: {e}"[:300]})
            continue
        if table.num_rows != sum(s.rows for s in batch):
            # The catalog and the files disagree: leave the hour to fsck rather than guess.
            log.error("compaction input rows differ from the catalog; hour skipped",
                      extra={"hour": hour_of(batch[0]), "catalog_rows": sum(s.rows for s in batch),
                             "file_rows": table.num_rows})
            for info in infos:
                root.delete(info.path)
            continue
        try:
            catalog.swap(batch, infos, generation=max(s.generation for s in batch) + 1)
        except CatalogConflict as e:
            # Retention, a deletion or another compactor changed the hour meanwhile.
            log.info("compaction lost a race; outputs dropped", extra={"reason": str(e)})
            for info in infos:
                root.delete(info.path)
            report.conflicts += 1
            continue
        report.batches += 1
        report.inputs += len(batch)
        report.outputs += len(infos)
        report.rows += table.num_rows
        report.bytes_in += sum(s.bytes for s in batch)
        report.bytes_out += sum(i.bytes for i in infos)
        report.hours.append(hour_of(batch[0]))
        if progress is not None:
            progress(sum(s.bytes for s in batch))
    report.seconds = time.perf_counter() - t0
    return report


@dataclass
class GarbageReport:
    retired_deleted: int = 0
    orphans_deleted: int = 0
    bytes_freed: int = 0


def collect_garbage(root: DataRoot, catalog: Catalog, grace_s: float, *, now_us: int | None = None,
                    orphans: bool = True) -> GarbageReport:
    """Delete files of segments retired more than ``grace_s`` ago, then files nobody references.

    A file the catalog does not know and that is younger than the grace period
    may be a segment whose commit is under way: it is left alone.
    """
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    cut = now_us - int(grace_s * 1e6)
    report = GarbageReport()
    done = []
    for seg in catalog.retired(before_us=cut):
        if root.delete(seg.path):
            report.retired_deleted += 1
            report.bytes_freed += seg.bytes
        done.append(seg.id)
    catalog.forget(done)
    if orphans:
        # Files first, then the catalog: a segment committed in between is known, not an orphan.
        files = root.files()
        known = catalog.known_paths()
        for rel, stat in files.items():
            if not is_segment_file(rel) or rel in known:
                continue
            if stat.mtime_us is not None and stat.mtime_us < cut and _still_old(root, rel, cut) and root.delete(rel):
                report.orphans_deleted += 1
                report.bytes_freed += stat.size
    return report


def _still_old(root: DataRoot, rel: str, cut_us: int) -> bool:
    """Looked at again just before deleting: a replay may have rewritten the file meanwhile."""
    stat = root.stat(rel)
    return stat is not None and stat.mtime_us is not None and stat.mtime_us < cut_us


def is_segment_file(rel: str) -> bool:
    """Segment files and their temporaries live under ``tenant=``; nothing else there is ours to delete."""
    name = rel.rsplit("/", 1)[-1]
    return rel.startswith("tenant=") and (name.endswith(".parquet") or name.endswith(".tmp"))
