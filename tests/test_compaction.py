"""storage/compaction.py (plan, compact, collect_garbage) and storage/fsck.py, on a local data root.

The catalog runs on SQLite and on PostgreSQL (the ``catalog_url`` fixture) wherever
it takes part. Rows are compared as multisets of whole records (every column,
attrs included), read back from the live segments' files, never from the
catalog's counts alone.

The crash tests SIGKILL a real compactor process (tests/helpers/compaction_worker.py) at
varied points, mid-write of an output file included; the race tests run two
compactors, or a compactor and an ingest-like committer, at once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loglake.core.config import CompactionConfig, Config, QueryConfig, StorageConfig
from query.service import SearchService
from storage.catalog import Catalog, SegmentRow
from storage.compaction import collect_garbage, compact, hour_of, is_segment_file, plan
from storage.fsck import fsck
from storage.rewrite import rewrite_segment
from storage.root import DataRoot
from storage.schema import RECORD_SCHEMA
from storage.segments import HOUR_US, SegmentInfo, hour_dir, segment_name, write_segments
from tests.helpers.flushed_lake import DAY_US, TOPIC, Lake, RowKey, keys_of
from tests.helpers.processes import wait_until

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "helpers" / "compaction_worker.py"
#: Every query covers the whole day.
DAY = {"start": "2024-03-01T00:00:00Z", "end": "2024-03-02T00:00:00Z"}
GRACE_S = 600.0


def now_us() -> int:
    return time.time_ns() // 1000


def after_grace_us() -> int:
    """A clock past the grace period of everything retired or written so far."""
    return now_us() + int((GRACE_S + 1) * 1e6)


@pytest.fixture
def lake(tmp_path: Path, catalog_url: str) -> Iterator[Lake]:
    lk = Lake(tmp_path, catalog_url)
    yield lk
    lk.close()


def cfg_of(**kw: Any) -> CompactionConfig:
    # The test data is years old, so every hour has settled; unless a test is about the settled
    # rewrite, its hours are treated as still being written (a settle time no hour reaches).
    return CompactionConfig(**{"min_age_s": 0, "zstd_level": 9, "settle_s": 1e12, **kw})


def file_rows(root: DataRoot, rel: str, cache: dict[Any, Counter[RowKey]] | None = None) -> Counter[RowKey]:
    """The records of one segment file; with ``cache``, read once per (path, size, mtime): files never change."""
    if cache is None:
        return Counter(keys_of(root.read_parquet(rel)))
    st = os.stat(f"{root.base}/{rel}")
    key = (rel, st.st_size, st.st_mtime_ns)
    if key not in cache:
        cache[key] = Counter(keys_of(root.read_parquet(rel)))
    return cache[key]


def live_rows(root: DataRoot, catalog: Catalog, tenant: str | None = None, *,
              cache: dict[Any, Counter[RowKey]] | None = None) -> Counter[RowKey]:
    """The records of every live segment, read from the files."""
    out: Counter[RowKey] = Counter()
    for s in catalog.live_segments(tenant):
        out.update(file_rows(root, s.path, cache))
    return out


def duckdb_count(root: DataRoot, catalog: Catalog) -> int:
    """Rows of every live segment, counted by DuckDB reading the files at once (fails on a missing one)."""
    files = [root.file_url(s.path) for s in catalog.live_segments()]
    if not files:
        return 0
    con = duckdb.connect()
    try:
        return int(con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()[0])
    finally:
        con.close()


def segment_files(root: DataRoot) -> set[str]:
    return {rel for rel in root.files() if is_segment_file(rel)}


def assert_catalog_matches_files(root: DataRoot, catalog: Catalog, checked: set[Any] | None = None) -> None:
    """Each live segment's catalog row describes its file exactly (``checked``: rows already seen to)."""
    for s in catalog.live_segments():
        if checked is not None:
            if (s.id, s.path) in checked:
                continue
            checked.add((s.id, s.path))
        t = root.read_parquet(s.path).cast(RECORD_SCHEMA)
        ts = t["ts"].cast(pa.int64()).to_pylist()
        assert (s.rows, s.min_ts_us, s.max_ts_us) == (t.num_rows, min(ts), max(ts)), s.path
        assert s.services == dict(Counter(t["service"].to_pylist())), s.path
        assert s.levels == dict(Counter(t["level"].to_pylist())), s.path
        assert s.bytes == os.path.getsize(f"{root.base}/{s.path}"), s.path
        assert hour_of(s) == hour_dir(s.tenant, min(ts) // HOUR_US * HOUR_US) == \
            hour_dir(s.tenant, max(ts) // HOUR_US * HOUR_US), s.path


def assert_sorted_by_service_ts(table: pa.Table) -> None:
    keys = list(zip(table["service"].to_pylist(), table["ts"].cast(pa.int64()).to_pylist(), strict=True))
    assert keys == sorted(keys)


def assert_clean_after_gc(lake: Lake) -> None:
    """Past the grace period, GC leaves exactly the live files and fsck finds nothing to say."""
    later = after_grace_us()
    collect_garbage(lake.root, lake.catalog, GRACE_S, now_us=later)
    r = fsck(lake.root, lake.catalog, grace_s=GRACE_S, now_us=later)
    assert r.clean and not r.young_orphans, (r.orphans, r.young_orphans, r.missing, r.retired_gone)
    assert lake.catalog.retired() == []
    live = {s.path for s in lake.catalog.live_segments()}
    assert segment_files(lake.root) == live
    assert set(lake.catalog.known_paths()) == live


# -- plan() ----------------------------------------------------------------------------------------

T0 = DAY_US + 30 * 24 * HOUR_US          # "now" for the plan tests: a month after the data


def srow(sid: int, tenant: str = "a", hour: int = 10, *, rows: int = 100, size: int = 10_000,
         age_s: float = 3600.0, minute: int | None = None) -> SegmentRow:
    lo = DAY_US + hour * HOUR_US + (sid % 60 if minute is None else minute) * 60_000_000
    return SegmentRow(id=sid, tenant=tenant, path=f"{hour_dir(tenant, DAY_US + hour * HOUR_US)}/s{sid}.parquet",
                      min_ts_us=lo, max_ts_us=lo + 1, rows=rows, bytes=size, services={"api": rows},
                      levels={"info": rows}, created_us=T0 - int(age_s * 1e6))


PLAN_CFG = CompactionConfig(target_bytes=1 << 20, target_rows=10_000, min_age_s=300, settle_s=1e12)
#: As PLAN_CFG, but hours settle 15 minutes after they end (the data is a month old: all have).
SETTLED_CFG = PLAN_CFG.model_copy(update={"settle_s": 900.0})


def test_plan_groups_only_segments_of_the_same_tenant_and_hour() -> None:
    segs = [srow(i, tenant, hour) for i, (tenant, hour) in enumerate(
        [("a", 10), ("b", 10), ("a", 11), ("a", 10), ("b", 10), ("a", 11), ("b", 11), ("a", 10)])]
    batches = plan(segs, PLAN_CFG, now_us=T0)
    assert sorted(sorted(s.id for s in b) for b in batches) == [[0, 3, 7], [1, 4], [2, 5]]
    for b in batches:
        assert len({(s.tenant, hour_of(s)) for s in b}) == 1
    # ("b", 11) has one segment only: nothing to merge it with.
    assert 6 not in {s.id for b in batches for s in b}


def test_plan_leaves_young_and_big_segments_alone() -> None:
    half_bytes, half_rows = PLAN_CFG.target_bytes // 2, PLAN_CFG.target_rows // 2
    segs = [srow(1), srow(2), srow(3, age_s=299), srow(4, age_s=300),
            srow(5, size=half_bytes), srow(6, size=half_bytes - 1),
            srow(7, rows=half_rows), srow(8, rows=half_rows - 1, size=100)]
    [batch] = plan(segs, PLAN_CFG, now_us=T0)
    assert sorted(s.id for s in batch) == [1, 2, 4, 6, 8]
    # A young segment joins once it has aged; until then its hour may well have nothing to do.
    assert plan([srow(1, age_s=10), srow(2, age_s=10)], PLAN_CFG, now_us=T0) == []
    assert len(plan([srow(1, age_s=10), srow(2, age_s=10)], PLAN_CFG, now_us=T0 + 290 * 10**6)) == 1
    # The default clock is the real one: data written just now is too young.
    assert plan([replace(srow(1), created_us=now_us()), replace(srow(2), created_us=now_us())], PLAN_CFG) == []


def test_plan_respects_the_targets_and_never_returns_a_single_segment() -> None:
    # 25 segments of 450 KB in one hour: at most 2 fit under 1 MiB, so 12 pairs and one left over.
    by_bytes = plan([srow(i, size=450_000) for i in range(25)], PLAN_CFG, now_us=T0)
    assert [len(b) for b in by_bytes] == [2] * 12
    assert all(sum(s.bytes for s in b) <= PLAN_CFG.target_bytes for b in by_bytes)
    # 10 of 3000 rows: three fit under 10 000 rows, and the last one stays alone.
    by_rows = plan([srow(i, rows=3000) for i in range(10)], PLAN_CFG, now_us=T0)
    assert [len(b) for b in by_rows] == [3, 3, 3]
    assert all(sum(s.rows for s in b) <= PLAN_CFG.target_rows for b in by_rows)
    # Batches follow time order: each one's rows come before the next one's.
    ordered = plan([srow(i, rows=3000, minute=59 - i) for i in range(9)], PLAN_CFG, now_us=T0)
    assert [sorted(s.id for s in b) for b in ordered] == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    assert plan([srow(1)], PLAN_CFG, now_us=T0) == []
    assert plan([], PLAN_CFG, now_us=T0) == []


def test_plan_writes_a_settled_hour_once_more_at_the_settled_level() -> None:
    half_bytes = SETTLED_CFG.target_bytes // 2
    level = SETTLED_CFG.settled_zstd_level
    # Alone in its settled hour, a segment below the settled level (or of an unknown one) is
    # taken, big or not; one already at that level (or above) is not, so it happens once.
    for seg in (srow(1), replace(srow(1), zstd_level=3), replace(srow(1), zstd_level=level - 1),
                replace(srow(1, size=half_bytes * 2), zstd_level=9)):
        assert plan([seg], SETTLED_CFG, now_us=T0) == [[seg]]
    for seg in (replace(srow(1), zstd_level=level), replace(srow(1, size=half_bytes * 2), zstd_level=level + 2)):
        assert plan([seg], SETTLED_CFG, now_us=T0) == []
    # A settled segment that came late still joins the one written at the settled level.
    done, late = replace(srow(1, minute=0), zstd_level=level), replace(srow(2, minute=30), zstd_level=3)
    assert plan([done, late], SETTLED_CFG, now_us=T0) == [[done, late]]
    # Young segments wait for min_age_s as before.
    assert plan([srow(1, age_s=10)], SETTLED_CFG, now_us=T0) == []
    # Late data opens the hour again: until nothing has come for settle_s, stragglers merge among
    # themselves and the segment at the settled level is left alone.
    fresh = [replace(srow(2, minute=30, age_s=600), zstd_level=1), replace(srow(3, minute=40, age_s=600), zstd_level=1)]
    assert plan([done, *fresh], SETTLED_CFG, now_us=T0) == [fresh]
    assert plan([done, fresh[0]], SETTLED_CFG, now_us=T0) == []
    assert plan([done, *fresh], SETTLED_CFG, now_us=T0 + 300 * 10**6) == [[done, *fresh]]
    # The hour settles settle_s after it ends, not before.
    hour_end = DAY_US + 11 * HOUR_US
    seg = replace(srow(1, hour=10, age_s=0), created_us=hour_end - 1)
    assert plan([seg], SETTLED_CFG, now_us=hour_end + 900 * 10**6 - 1) == []
    assert plan([seg], SETTLED_CFG, now_us=hour_end + 900 * 10**6) == [[seg]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2), st.integers(1, 8000),
                          st.integers(1, 700_000), st.sampled_from([0, 100, 299, 301, 10_000])),
                max_size=40))
def test_plan_properties(specs: list[tuple[str, int, int, int, int]]) -> None:
    segs = [srow(i, t, h, rows=r, size=b, age_s=age) for i, (t, h, r, b, age) in enumerate(specs)]
    batches = plan(segs, PLAN_CFG, now_us=T0)
    eligible = {s.id for s in segs if s.bytes < PLAN_CFG.target_bytes / 2 and s.rows < PLAN_CFG.target_rows / 2
                and s.created_us <= T0 - PLAN_CFG.min_age_s * 1e6}
    chosen = [s.id for b in batches for s in b]
    assert len(chosen) == len(set(chosen))                        # no segment in two batches
    assert set(chosen) <= eligible
    for b in batches:
        assert len(b) >= 2
        assert len({(s.tenant, hour_of(s)) for s in b}) == 1
        assert sum(s.bytes for s in b) <= PLAN_CFG.target_bytes
        assert sum(s.rows for s in b) <= PLAN_CFG.target_rows
    # Any two small segments fit together, so at most one per hour is left out.
    left = Counter((s.tenant, hour_of(s)) for s in segs if s.id in eligible and s.id not in chosen)
    assert all(n <= 1 for n in left.values()), left


# -- compact() ---------------------------------------------------------------------------------------


def test_compact_keeps_every_row_sorts_and_swaps_then_gc_removes_the_old_files(lake: Lake) -> None:
    tenants, hours = ("a", "b"), [22, 23]
    lake.fill(tenants, hours, segments=5, rows=300)
    [single] = lake.flush("a", 5, 50)                    # an hour with a single segment: left alone
    before = live_rows(lake.root, lake.catalog)
    assert before == lake.expected
    totals = lake.catalog.totals()
    old = {s.id: s for s in lake.catalog.live_segments()}
    files_before = segment_files(lake.root)
    cfg = cfg_of(zstd_level=12, row_group_rows=1024)

    seen: list[int] = []
    report = compact(lake.root, lake.catalog, cfg, progress=seen.append)

    assert (report.batches, report.inputs, report.outputs, report.conflicts) == (4, 20, 4, 0)
    assert report.rows == totals["rows"] - single.rows
    assert sorted(report.hours) == sorted(hour_dir(t, DAY_US + h * HOUR_US) for t in tenants for h in hours)
    assert sum(seen) == report.bytes_in == sum(s.bytes for s in old.values() if hour_of(s).endswith(("22", "23")))
    # Same records, same totals.
    assert live_rows(lake.root, lake.catalog) == before
    assert duckdb_count(lake.root, lake.catalog) == totals["rows"]
    assert lake.catalog.totals()["rows"] == totals["rows"]
    assert lake.catalog.totals()["segments"] == 5
    assert_catalog_matches_files(lake.root, lake.catalog)
    # The outputs: one per hour, sorted by (service, ts), zstd, row groups as configured.
    outputs = [s for s in lake.catalog.live_segments() if "compacted-" in s.path]
    assert sorted(hour_of(s) for s in outputs) == sorted(report.hours)
    assert report.bytes_out == sum(s.bytes for s in outputs)
    for s in outputs:
        assert s.generation == 1
        path = lake.dir / s.path
        assert s.bytes == path.stat().st_size
        assert_sorted_by_service_ts(pq.read_table(path))
        meta = pq.ParquetFile(path).metadata
        assert meta.num_row_groups >= 2
        for g in range(meta.num_row_groups):
            assert meta.row_group(g).num_rows <= 1024
            for c in range(meta.row_group(g).num_columns):
                assert meta.row_group(g).column(c).compression == "ZSTD"
        assert lake.by_tenant[s.tenant] >= Counter(keys_of(pq.read_table(path)))
    # The inputs: retired, their files kept for queries that planned them.
    retired = {s.id for s in lake.catalog.retired()}
    assert retired == {i for i, s in old.items() if not hour_of(s).endswith("05")}
    assert files_before <= segment_files(lake.root)
    # Within the grace period GC deletes nothing; past it, the retired files and rows go.
    g = collect_garbage(lake.root, lake.catalog, GRACE_S, now_us=now_us())
    assert (g.retired_deleted, g.orphans_deleted) == (0, 0)
    assert files_before <= segment_files(lake.root)
    g = collect_garbage(lake.root, lake.catalog, GRACE_S, now_us=after_grace_us())
    assert (g.retired_deleted, g.orphans_deleted) == (20, 0)
    assert g.bytes_freed == sum(old[i].bytes for i in retired)
    assert lake.catalog.retired() == []
    assert not any(old[i].path in lake.catalog.known_paths() for i in retired)
    assert not any((lake.dir / old[i].path).exists() for i in retired)
    per_hour = Counter(rel.rsplit("/", 1)[0] for rel in segment_files(lake.root))
    assert set(per_hour.values()) == {1}, per_hour
    assert live_rows(lake.root, lake.catalog) == before
    assert_clean_after_gc(lake)
    # Nothing left to do: a second run changes nothing.
    again = compact(lake.root, lake.catalog, cfg)
    assert (again.batches, again.conflicts) == (0, 0)


def test_a_settled_hour_is_written_once_more_at_the_settled_level(lake: Lake) -> None:
    lake.fill(("a",), [3, 4], segments=4, rows=200)
    [single] = lake.flush("a", 5, 80)                     # alone in its hour, as ingest wrote it
    before = live_rows(lake.root, lake.catalog)
    assert single.zstd_level == 3 and {s.zstd_level for s in lake.catalog.live_segments()} == {3}
    # While the hours are being written: merged at the hot level, the lone segment left alone.
    hot = compact(lake.root, lake.catalog, cfg_of(row_group_rows=1024))
    assert (hot.batches, hot.inputs) == (2, 8)
    assert sorted(s.zstd_level for s in lake.catalog.live_segments()) == [3, 9, 9]
    hot_paths = {s.path for s in lake.catalog.live_segments()}
    # Settled (settle_s after their last segment came): every hour's segments written once more,
    # at the settled level; the same records.
    settled_cfg = cfg_of(row_group_rows=1024, settle_s=900, settled_zstd_level=15)
    assert compact(lake.root, lake.catalog, settled_cfg).batches == 0     # just compacted: not settled yet
    later = now_us() + 901 * 10**6
    done = compact(lake.root, lake.catalog, settled_cfg, now_us=later)
    assert (done.batches, done.inputs, done.outputs, done.conflicts) == (3, 3, 3, 0)
    live = lake.catalog.live_segments()
    assert {s.zstd_level for s in live} == {15} and not hot_paths & {s.path for s in live}
    assert all(s.generation >= 1 for s in live)
    assert live_rows(lake.root, lake.catalog) == before == lake.expected
    assert_catalog_matches_files(lake.root, lake.catalog)
    for s in live:
        assert_sorted_by_service_ts(pq.read_table(lake.dir / s.path))
    # Once only: the settled hours have nothing left to do.
    assert compact(lake.root, lake.catalog, settled_cfg, now_us=later).batches == 0
    # Late data opens an hour again: stragglers are merged among themselves at the hot level,
    # the settled segment left as it is; once nothing more comes, all of it is written as one.
    [settled_seg] = [s for s in lake.catalog.live_segments() if hour_of(s).endswith("04")]
    lake.flush("a", 4, 30)
    lake.flush("a", 4, 20)
    busy = compact(lake.root, lake.catalog, settled_cfg)
    assert (busy.batches, busy.inputs) == (1, 2)
    hour4 = [s for s in lake.catalog.live_segments() if hour_of(s).endswith("04")]
    assert settled_seg in hour4 and sorted(s.zstd_level for s in hour4) == [9, 15]
    quiet = now_us() + 901 * 10**6
    late = compact(lake.root, lake.catalog, settled_cfg, now_us=quiet)
    assert (late.batches, late.inputs) == (1, 2)
    assert {s.zstd_level for s in lake.catalog.live_segments()} == {15}
    assert len([s for s in lake.catalog.live_segments() if hour_of(s).endswith("04")]) == 1
    assert live_rows(lake.root, lake.catalog) == lake.expected
    assert compact(lake.root, lake.catalog, settled_cfg, now_us=quiet).batches == 0
    # A deletion that rewrites a settled segment keeps its level: nothing for compaction to redo.
    seg = lake.catalog.live_segments()[0]
    removed = rewrite_segment(lake.root, lake.catalog, seg, lambda t: pc.equal(t["level"].cast(pa.string()), "warn"),
                              audit=lambda r: [], zstd_level=9)
    assert removed is not None and 0 < removed.rows < seg.rows
    [rewritten] = [s for s in lake.catalog.live_segments() if s.path.rsplit("/", 1)[-1].startswith("rewritten-")]
    assert rewritten.zstd_level == 15
    assert compact(lake.root, lake.catalog, settled_cfg, now_us=now_us() + 901 * 10**6).batches == 0


def test_compact_splits_an_hour_by_target_rows_and_one_tenant_at_a_time(lake: Lake) -> None:
    lake.fill(("a",), [3], segments=9, rows=300)       # 2700+ rows in one hour, 300 per segment
    lake.fill(("b",), [3, 4], segments=3, rows=100)
    before_a, before_b = live_rows(lake.root, lake.catalog, "a"), live_rows(lake.root, lake.catalog, "b")
    cfg = cfg_of(target_rows=1000)

    report = compact(lake.root, lake.catalog, cfg, tenant="a")
    assert report.hours and set(report.hours) == {hour_dir("a", DAY_US + 3 * HOUR_US)}
    assert all(not s.path.startswith("tenant=b/") or "compacted-" not in s.path
               for s in lake.catalog.live_segments())
    outputs = [s for s in lake.catalog.live_segments("a") if "compacted-" in s.path]
    assert len(outputs) == report.outputs >= 3
    assert all(s.rows <= 1000 for s in outputs)
    for s in outputs:
        assert_sorted_by_service_ts(lake.root.read_parquet(s.path))
    assert live_rows(lake.root, lake.catalog, "a") == before_a == lake.by_tenant["a"]

    report = compact(lake.root, lake.catalog, cfg)
    assert {h.split("/")[0] for h in report.hours} <= {"tenant=a", "tenant=b"}
    assert hour_dir("b", DAY_US + 3 * HOUR_US) in report.hours and hour_dir("b", DAY_US + 4 * HOUR_US) in report.hours
    assert live_rows(lake.root, lake.catalog, "b") == before_b == lake.by_tenant["b"]
    assert live_rows(lake.root, lake.catalog) == lake.expected
    assert_catalog_matches_files(lake.root, lake.catalog)
    assert_clean_after_gc(lake)


def test_compact_leaves_an_hour_whose_files_disagree_with_the_catalog(lake: Lake) -> None:
    lake.fill(("a",), [1, 2], segments=3, rows=60)
    hour1 = hour_dir("a", DAY_US + HOUR_US)
    victim = next(s for s in lake.catalog.live_segments() if hour_of(s) == hour1)
    # The file lost rows behind the catalog's back (the catalog still counts the old ones).
    table = lake.root.read_parquet(victim.path)
    lake.root.write_parquet(victim.path, table.slice(0, table.num_rows - 5))
    before = live_rows(lake.root, lake.catalog)
    files = segment_files(lake.root)

    report = compact(lake.root, lake.catalog, cfg_of())
    assert report.hours == [hour_dir("a", DAY_US + 2 * HOUR_US)]
    assert {s.path for s in lake.catalog.live_segments() if hour_of(s) == hour1} == \
        {p for p in files if p.startswith(hour1)}
    # Its outputs were removed, not left as orphans.
    assert not [p for p in segment_files(lake.root) - files if p.startswith(hour1)]
    assert live_rows(lake.root, lake.catalog) == before


def test_compact_skips_an_hour_with_a_missing_file_and_compacts_the_others(lake: Lake) -> None:
    lake.fill(("a",), [1, 2, 3], segments=3, rows=40)
    hour1 = hour_dir("a", DAY_US + HOUR_US)
    victim = next(s for s in lake.catalog.live_segments() if hour_of(s) == hour1)
    (lake.dir / victim.path).unlink()
    report = compact(lake.root, lake.catalog, cfg_of())
    assert sorted(report.hours) == [hour_dir("a", DAY_US + h * HOUR_US) for h in (2, 3)]


# -- queries while compaction swaps ----------------------------------------------------------------


def search_keys(service: SearchService, tenant: str) -> Counter[RowKey]:
    res = service.search("", limit=50_000, order="asc", tenant=tenant, **DAY)
    return Counter(tuple((k, tuple(sorted(v.items())) if k == "attrs" else v) for k, v in sorted(r.items()))
                   for r in res.rows)


def test_queries_during_compaction_return_exactly_the_same_rows(lake: Lake) -> None:
    lake.fill(("a",), range(0, 12), segments=5, rows=40)
    lake.fill(("b",), range(0, 2), segments=3, rows=40)
    cfg = Config(storage=StorageConfig(data_root=str(lake.dir), catalog_url=lake.url, grace_s=GRACE_S),
                 query=QueryConfig(max_limit=50_000))
    service = SearchService(cfg, Catalog(lake.url))
    expected = {t: search_keys(service, t) for t in ("a", "b")}
    assert sum(expected["a"].values()) == sum(lake.by_tenant["a"].values())

    searched = threading.Event()
    done = threading.Event()
    errors: list[BaseException] = []
    answers: list[tuple[int, bool]] = []                  # (live segments when planned, equal)

    def after_batch(_: int) -> None:
        # Let at least one search see each intermediate state before the next swap.
        searched.clear()
        searched.wait(10)

    def compactor() -> None:
        cat = Catalog(lake.url)
        try:
            report = compact(lake.root, cat, cfg_of(), progress=after_batch)
            assert report.batches == 14
        except BaseException as e:
            errors.append(e)
        finally:
            cat.close()
            done.set()

    thread = threading.Thread(target=compactor)
    thread.start()
    try:
        while not done.is_set():
            for t in ("a", "b"):
                n = len(service.catalog.live_segments(t))
                answers.append((n, search_keys(service, t) == expected[t]))
            searched.set()
    finally:
        thread.join(60)
    assert not errors, errors
    assert all(ok for _, ok in answers), [a for a in answers if not a[1]][:3]
    assert len({n for n, _ in answers}) >= 10             # the searches saw many states of the swap
    assert {t: search_keys(service, t) for t in ("a", "b")} == expected
    service.catalog.close()


# -- crash safety: a compactor SIGKILLed at varied points -----------------------------------------


def start_worker(lake: Lake, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(WORKER), str(lake.dir), lake.url, *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"worker did not start: {line!r} {proc.communicate()[1]}")
    return proc


def finish_worker(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def temporaries(lake: Lake) -> list[Path]:
    return [p for p in lake.dir.rglob(".compacted-*.tmp")]


def outputs_on_disk(lake: Lake) -> set[str]:
    return {p.name for p in lake.dir.rglob("compacted-*.parquet")}


def crash_rounds(lake: Lake, rounds: int, seed: int) -> Counter[str]:
    """Each round: new small segments (4 batches' worth), a compactor killed at some point, then the checks.

    The kill comes while an output is being written (its temporary is there), just after an
    output was renamed into place (before or just after its swap), just after a swap (the next
    batch under way), or after a random delay.
    """
    rng = random.Random(seed)
    seen: Counter[str] = Counter()
    modes = ["mid-write", "after-output", "after-swap", "delay"]
    cache: dict[Any, Counter[RowKey]] = {}
    checked: set[Any] = set()
    for rnd in range(rounds):
        lake.fill(("a", "b"), [2 * rnd % 24, (2 * rnd + 1) % 24], segments=4, rows=500)
        mode = modes[rnd] if rnd < len(modes) else rng.choice(modes)
        outputs_before = outputs_on_disk(lake)
        # After an output lands, the swap waits a moment: a kill then finds it not committed.
        hold = ("--hold-before-swap", "0.5") if mode == "after-output" else ()
        proc = start_worker(lake, "--zstd", "19", "--row-group-rows", "1024", *hold)
        try:
            # The waits run within this round; the default arguments bind this round's worker all the same.
            if mode == "mid-write":
                wait_until(lambda proc=proc: temporaries(lake) or proc.poll() is not None, 30, 0.001,
                           "an output being written")
            elif mode == "after-output":
                wait_until(lambda proc=proc, before=outputs_before: outputs_on_disk(lake) - before
                           or proc.poll() is not None, 30, 0.001, "an output file")
            elif mode == "after-swap":
                wait_until(lambda proc=proc: lake.catalog.retired() or proc.poll() is not None, 30, 0.001, "a swap")
            else:
                time.sleep(rng.uniform(0, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        seen[mode] += 1
        if proc.returncode != -signal.SIGKILL:
            seen["finished before the kill"] += 1
        if temporaries(lake):
            seen["killed mid-write"] += 1
        if outputs_on_disk(lake) - outputs_before - {Path(s.path).name for s in lake.catalog.live_segments()}:
            seen["killed with an output not committed"] += 1
        if lake.catalog.retired() and plan(lake.catalog.live_segments(), cfg_of()):
            seen["killed between two swaps"] += 1

        # No duplicate, no gap; every live file readable and described by its catalog row.
        assert live_rows(lake.root, lake.catalog, cache=cache) == lake.expected, f"round {rnd} ({mode})"
        assert duckdb_count(lake.root, lake.catalog) == sum(lake.expected.values())
        assert lake.catalog.totals()["rows"] == sum(lake.expected.values())
        assert_catalog_matches_files(lake.root, lake.catalog, checked)
        # What the killed run left is garbage only: fsck calls it young, and past the grace GC removes it.
        r = fsck(lake.root, lake.catalog, grace_s=GRACE_S)
        assert r.clean, (r.missing, r.orphans, r.retired_gone)
        assert_clean_after_gc(lake)
    # Finally an uninterrupted run finishes the job.
    compact(lake.root, lake.catalog, cfg_of())
    assert live_rows(lake.root, lake.catalog, cache=cache) == lake.expected
    assert_clean_after_gc(lake)
    assert plan(lake.catalog.live_segments(), cfg_of()) == []
    return seen


def test_compactor_killed_at_varied_points_loses_and_duplicates_nothing(lake: Lake) -> None:
    seen = crash_rounds(lake, rounds=4, seed=1)
    print(dict(seen))
    assert seen["killed mid-write"] >= 1, seen
    assert seen["killed with an output not committed"] >= 1, seen
    assert seen["killed between two swaps"] >= 1, seen


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_compactor_killed_many_times_loses_and_duplicates_nothing(lake: Lake) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    seen = crash_rounds(lake, rounds=40, seed=seed)
    print(f"seed {seed}: {dict(seen)}")
    assert seen["killed mid-write"] >= 2, seen
    assert seen["killed with an output not committed"] >= 2, seen
    assert seen["killed between two swaps"] >= 2, seen


# -- races: two compactors; a compactor and ingest -------------------------------------------------


def test_two_compactors_at_once_each_batch_won_once(lake: Lake) -> None:
    hours = list(range(6))
    lake.fill(("a", "b"), hours, segments=4, rows=300)
    before = live_rows(lake.root, lake.catalog)
    files_before = segment_files(lake.root)
    procs = [start_worker(lake, "--wait") for _ in range(2)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = [finish_worker(p) for p in procs]

    won = [h for r in reports for h in r["hours"]]
    assert sorted(won) == sorted(hour_dir(t, DAY_US + h * HOUR_US) for t in ("a", "b") for h in hours)
    assert sum(r["inputs"] for r in reports) == 48
    assert sum(r["conflicts"] for r in reports) >= 1, reports      # they did race
    assert live_rows(lake.root, lake.catalog) == before == lake.expected
    assert_catalog_matches_files(lake.root, lake.catalog)
    # The losers deleted their outputs: every file on disk is known to the catalog.
    live = {s.path for s in lake.catalog.live_segments()}
    assert segment_files(lake.root) == files_before | live
    assert len(live) == len(won)
    assert_clean_after_gc(lake)


def test_compactor_racing_ingest_into_the_same_hours(lake: Lake, tmp_path: Path) -> None:
    lake.fill(("a",), [0, 1], segments=3, rows=50)
    stop_file = tmp_path / "stop"
    proc = start_worker(lake, "--until", str(stop_file))
    committer = Catalog(lake.url)
    deadline = time.monotonic() + 30
    try:
        for i in range(60):                              # ingest keeps adding to the hours being compacted
            lake.flush("a", i % 2, 20, partition=1, catalog=committer)
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        stop_file.touch()
        committer.close()
    report = finish_worker(proc)
    assert report["batches"] >= 3, report                   # it compacted while ingest went on
    assert live_rows(lake.root, lake.catalog) == lake.expected
    assert lake.catalog.partition_states(TOPIC)[1].next_offset == lake.offsets[1]
    compact(lake.root, lake.catalog, cfg_of())
    assert live_rows(lake.root, lake.catalog) == lake.expected
    assert len(lake.catalog.live_segments()) == 2            # one per hour in the end
    assert_catalog_matches_files(lake.root, lake.catalog)
    assert_clean_after_gc(lake)


# -- fsck ------------------------------------------------------------------------------------------


def orphan(lake: Lake, hour: int, name: str, age_s: float) -> str:
    rel = f"{hour_dir('a', DAY_US + hour * HOUR_US)}/{name}"
    path = lake.dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1 not really")
    t = time.time() - age_s
    os.utime(path, (t, t))
    return rel


def test_fsck_reports_orphans_and_repair_deletes_only_the_old_ones(lake: Lake) -> None:
    lake.fill(("a",), [1], segments=2, rows=30)
    assert fsck(lake.root, lake.catalog, grace_s=GRACE_S).clean
    old = orphan(lake, 1, "logs.p0.e0.000000000999-000000001999.parquet", age_s=GRACE_S + 60)
    old_tmp = orphan(lake, 1, ".compacted-dead.parquet.4242.tmp", age_s=GRACE_S + 60)
    young = orphan(lake, 1, "compacted-recent.parquet", age_s=5)
    not_ours = orphan(lake, 1, "notes.txt", age_s=GRACE_S + 60)

    r = fsck(lake.root, lake.catalog, grace_s=GRACE_S)
    assert not r.clean
    assert sorted(p for p, _, _ in r.orphans) == sorted([old, old_tmp])
    assert [p for p, _, _ in r.young_orphans] == [young]
    assert all(age is not None and age >= GRACE_S for _, _, age in r.orphans)
    assert (lake.dir / old).exists()                         # no repair: nothing touched

    r = fsck(lake.root, lake.catalog, repair=True, grace_s=GRACE_S)
    assert r.deleted_orphans == 2
    assert not (lake.dir / old).exists() and not (lake.dir / old_tmp).exists()
    assert (lake.dir / young).exists() and (lake.dir / not_ours).exists()
    r = fsck(lake.root, lake.catalog, grace_s=GRACE_S)
    assert r.clean and [p for p, _, _ in r.young_orphans] == [young]
    assert live_rows(lake.root, lake.catalog) == lake.expected


def test_fsck_repair_takes_a_segment_with_a_missing_file_out_of_the_live_set(lake: Lake) -> None:
    lake.fill(("a",), [1, 2], segments=2, rows=30)
    cfg = Config(storage=StorageConfig(data_root=str(lake.dir), catalog_url=lake.url))
    service = SearchService(cfg, lake.catalog)
    gone = lake.catalog.live_segments()[0]
    gone_rows = Counter(keys_of(lake.root.read_parquet(gone.path)))
    (lake.dir / gone.path).unlink()
    with pytest.raises(duckdb.Error):
        service.search("", tenant="a", limit=1000, **DAY)         # the query trips on the missing file

    r = fsck(lake.root, lake.catalog, grace_s=GRACE_S)
    assert [s.id for s in r.missing] == [gone.id] and not r.clean
    assert gone.id in {s.id for s in lake.catalog.live_segments()}

    r = fsck(lake.root, lake.catalog, repair=True, grace_s=GRACE_S)
    assert [s.id for s in r.missing] == [gone.id]
    assert gone.id not in {s.id for s in lake.catalog.live_segments()}
    assert gone.path in lake.catalog.known_paths()           # kept, for the record
    assert len(service.search("", tenant="a", limit=1000, **DAY).rows) == sum(lake.expected.values()) - gone.rows
    assert live_rows(lake.root, lake.catalog) == lake.expected - gone_rows
    assert lake.catalog.totals()["rows"] == sum(lake.expected.values()) - gone.rows
    audit = [e for e in lake.catalog.audit_log() if e.action == "missing"]
    assert {e.service for e in audit} == set(gone.services)
    assert sum(e.rows for e in audit) == gone.rows
    assert all(e.detail["segment"] == gone.path and e.tenant == "a" and e.actor == "fsck --repair" for e in audit)
    assert fsck(lake.root, lake.catalog, grace_s=GRACE_S).clean
    # Compaction carries on without it.
    compact(lake.root, lake.catalog, cfg_of())
    assert live_rows(lake.root, lake.catalog) == lake.expected - gone_rows


def test_fsck_forgets_a_retired_segment_whose_file_is_already_gone(lake: Lake) -> None:
    lake.fill(("a",), [1], segments=3, rows=30)
    compact(lake.root, lake.catalog, cfg_of())
    retired = lake.catalog.retired()
    assert len(retired) == 3
    (lake.dir / retired[0].path).unlink()
    r = fsck(lake.root, lake.catalog, grace_s=GRACE_S)
    assert [s.id for s in r.retired_gone] == [retired[0].id] and not r.clean
    fsck(lake.root, lake.catalog, repair=True, grace_s=GRACE_S)
    assert retired[0].path not in lake.catalog.known_paths()
    assert len(lake.catalog.retired()) == 2
    assert fsck(lake.root, lake.catalog, grace_s=GRACE_S).clean


class ListingHookRoot(DataRoot):
    """A data root that runs ``hook`` once, right after its first listing: another process's step, interleaved."""

    def __init__(self, url: str, hook: Any) -> None:
        super().__init__(url)
        self.hook = hook

    def files(self, under: str = "") -> Any:
        out = super().files(under)
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return out


def test_fsck_repair_racing_ingest_does_not_take_a_new_segment_out(lake: Lake) -> None:
    lake.fill(("a",), [1], segments=2, rows=30)
    committed: list[SegmentInfo] = []
    root = ListingHookRoot(str(lake.dir), lambda: committed.extend(lake.flush("a", 3, 10)))
    r = fsck(root, lake.catalog, repair=True, grace_s=GRACE_S)
    [new] = committed
    assert (lake.dir / new.path).exists()
    assert new.path not in {s.path for s in r.missing}
    assert new.path in {s.path for s in lake.catalog.live_segments()}
    assert live_rows(lake.root, lake.catalog) == lake.expected


def test_gc_racing_an_ingest_replay_keeps_the_replayed_segment(lake: Lake) -> None:
    lake.fill(("a",), [1], segments=2, rows=30)
    # A worker wrote this flush and died before its commit, long ago: an orphan past the grace period.
    table, first, last = lake.batch("a", 1, 30)
    [crashed] = write_segments(lake.root, "a", table, segment_name(TOPIC, 0, 0, first, last))
    old = time.time() - GRACE_S - 60
    os.utime(lake.dir / crashed.path, (old, old))
    # Its partition's new owner replays the same offsets (same name) while GC runs.
    replayed: list[SegmentInfo] = []
    root = ListingHookRoot(str(lake.dir), lambda: replayed.extend(lake.store("a", table, first, last)))
    collect_garbage(root, lake.catalog, GRACE_S)
    assert [s.path for s in replayed] == [crashed.path]
    assert (lake.dir / crashed.path).exists()
    assert fsck(lake.root, lake.catalog, grace_s=GRACE_S).missing == []
    assert live_rows(lake.root, lake.catalog) == lake.expected


# -- the CLI ----------------------------------------------------------------------------------------


def write_config(tmp_path: Path, lake: Lake) -> Path:
    path = tmp_path / "loglake.toml"
    path.write_text(f"""
[storage]
data_root = {json.dumps(str(lake.dir))}
catalog_url = {json.dumps(lake.url)}
grace_s = {GRACE_S}

[compaction]
min_age_s = 0
zstd_level = 9

[log]
dir = {json.dumps(str(tmp_path / "log"))}
""")
    return path


def loglake(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")} | {"COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "loglake", "--config", str(config), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_fsck_cli_exit_codes(lake: Lake, tmp_path: Path) -> None:
    lake.fill(("a",), [1], segments=2, rows=30)
    config = write_config(tmp_path, lake)
    clean = loglake(config, "fsck")
    assert clean.returncode == 0, clean.stderr
    assert "clean" in clean.stdout

    old = orphan(lake, 1, "logs.p0.e0.000000000999-000000001999.parquet", age_s=GRACE_S + 60)
    young = orphan(lake, 1, "compacted-recent.parquet", age_s=5)
    gone = lake.catalog.live_segments()[0]
    (lake.dir / gone.path).unlink()
    found = loglake(config, "fsck")
    assert found.returncode == 1, found.stdout + found.stderr
    assert old in found.stdout and young in found.stdout and gone.path in found.stdout
    assert "--repair" in found.stdout
    assert (lake.dir / old).exists() and gone.id in {s.id for s in lake.catalog.live_segments()}

    repaired = loglake(config, "fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert not (lake.dir / old).exists() and (lake.dir / young).exists()
    assert gone.id not in {s.id for s in lake.catalog.live_segments()}
    after = loglake(config, "fsck")
    assert after.returncode == 0, after.stdout
    assert "clean" in after.stdout and young in after.stdout


def test_compact_cli_dry_run_then_compact(lake: Lake, tmp_path: Path) -> None:
    lake.fill(("a", "b"), [1, 2], segments=3, rows=40)
    config = write_config(tmp_path, lake)
    files = segment_files(lake.root)

    dry = loglake(config, "compact", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "4 batches in 4 hours, 12 segments" in dry.stdout
    assert segment_files(lake.root) == files and not lake.catalog.retired()

    one = loglake(config, "compact", "--tenant", "b")
    assert one.returncode == 0, one.stderr
    assert "compacted 6 segments into 2" in one.stdout and f"{sum(lake.by_tenant['b'].values()):,} rows" in one.stdout
    assert "0 batches lost a race" in one.stdout

    done = loglake(config, "compact")
    assert done.returncode == 0, done.stderr
    assert "compacted 6 segments into 2" in done.stdout
    assert live_rows(lake.root, lake.catalog) == lake.expected
    assert len(lake.catalog.live_segments()) == 4
    nothing = loglake(config, "compact")
    assert nothing.returncode == 0 and "0 batches in 0 hours" in nothing.stdout
    assert_clean_after_gc(lake)
