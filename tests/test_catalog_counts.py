"""The catalog's rows per service and level (``segments.service_levels``) and the counts answered from them.

Segments are written the way ingest writes them (tests/helpers/flushed_lake.py), on SQLite and on
PostgreSQL (the ``catalog_url`` fixture). After each change to the live set (ingest, compaction and
the settled rewrite, a retention rewrite, a retention drop, a deletion), every live segment's counts
must equal what DuckDB counts in its file, and an aggregation answered from them must equal the same
aggregation scanned and the counts of the records the lake holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from loglake.core.config import CompactionConfig, Config, RetentionConfig, RetentionPolicy
from query.aggregate import cell_test
from query.deletion import delete_matching
from query.language import parse
from query.service import SearchService
from query.timerange import format_us
from storage import retention
from storage.catalog import MIGRATIONS, Catalog
from storage.compaction import collect_garbage, compact
from storage.maintenance import fill_counts, run_gc
from storage.retention import Rules
from storage.schema import COLUMNS, RECORD_SCHEMA
from storage.segments import HOUR_US, service_level_counts
from tests.helpers.catalogs import run_sql
from tests.helpers.flushed_lake import DAY_US, Lake, RowKey

TENANT = "t"
_SERVICE, _LEVEL = COLUMNS.index("service"), COLUMNS.index("level")
#: (query, by, which records it counts): queries about the service and the level only.
CASES: list[tuple[str, list[str], Any]] = [
    ("", [], lambda s, lv: True),
    ("level:error", ["service"], lambda s, lv: lv == "error"),
    ("service:api level:error", [], lambda s, lv: s == "api" and lv == "error"),
    ("service:api OR level:warning", ["service", "level"], lambda s, lv: s == "api" or lv == "warn"),
    ("-service:web", ["level"], lambda s, lv: s != "web"),
    ("(service:db OR service:billing) -level:debug", ["level", "service"],
     lambda s, lv: s in ("db", "billing") and lv != "debug"),
]


@pytest.fixture
def lake(tmp_path: Path, catalog_url: str) -> Iterator[Lake]:
    lk = Lake(tmp_path, catalog_url)
    lk.fill((TENANT,), range(4), segments=3, rows=60)
    yield lk
    lk.close()


def _service(lake: Lake) -> SearchService:
    cfg = Config.model_validate({"storage": {"data_root": str(lake.dir), "catalog_url": lake.url}})
    return SearchService(cfg, lake.catalog)


def file_counts(lake: Lake, rel: str) -> dict[str, dict[str, int]]:
    """Rows per service and level in one segment file, as DuckDB counts them."""
    out: dict[str, dict[str, int]] = {}
    for svc, level, n in duckdb.sql(f"SELECT service, level, count(*) FROM read_parquet('{lake.dir}/{rel}') "
                                    "GROUP BY ALL").fetchall():
        out.setdefault(svc, {})[level] = n
    return out


def file_minutes(lake: Lake, rel: str) -> Counter[tuple[int, str]]:
    """Rows per (epoch minute, level) in one segment file, as DuckDB counts them."""
    return Counter({(m, lv): n for m, lv, n in duckdb.sql(
        f"SELECT epoch_us(ts) // 60000000, level, count(*) FROM read_parquet('{lake.dir}/{rel}') "
        "GROUP BY ALL").fetchall()})


def check_segments(lake: Lake) -> None:
    """Every live segment's counts are its file's, and add up to its rows and per-column counts."""
    live = lake.catalog.live_segments(TENANT)
    assert live
    for seg in live:
        assert seg.service_levels == file_counts(lake, seg.path), seg.path
        assert sum(n for row in seg.service_levels.values() for n in row.values()) == seg.rows
        assert {s: sum(row.values()) for s, row in seg.service_levels.items()} == seg.services
        minutes = seg.minutes()
        assert minutes is not None
        per_minute: Counter[tuple[int, str]] = Counter()
        for level, counts in minutes.levels.items():
            for i, n in enumerate(counts):
                if n:
                    per_minute[(minutes.first + i, level)] += n
        assert per_minute == file_minutes(lake, seg.path), seg.path


def _us(ts: Any) -> int:
    return int(ts.timestamp() * 1_000_000)


def expected(held: Counter[RowKey], pred: Any, by: list[str], start: int = DAY_US, end: int = DAY_US + 24 * HOUR_US,
             width: int = HOUR_US) -> dict[tuple[Any, ...], int]:
    """Counts per (bucket of ``width`` after the day's start, group) of the records the lake holds in
    [start, end) that ``pred`` takes."""
    out: Counter[tuple[Any, ...]] = Counter()
    for key, n in held.items():
        svc, level, ts = key[_SERVICE], key[_LEVEL], _us(key[COLUMNS.index("ts")])
        if pred(svc, level) and start <= ts < end:
            group = tuple(svc if b == "service" else level for b in by)
            out[((ts - DAY_US) // width, group)] += n
    return dict(out)


def answered(svc: SearchService, q: str, by: list[str], interval: str, start: int = DAY_US,
             end: int = DAY_US + 24 * HOUR_US, width: int = HOUR_US) -> tuple[dict[tuple[Any, ...], int], int]:
    """An aggregation's counts per (bucket of ``width``, group), and how many segments the catalog answered."""
    a = svc.aggregate(q, format_us(start), format_us(end), interval=interval, by=by, top=1000, tenant=TENANT)
    out: Counter[tuple[Any, ...]] = Counter()
    for s in a.series:
        assert not s.other
        for b, n in zip(a.buckets, s.points, strict=True):
            if n:
                out[((b - DAY_US) // width, tuple(s.group[k] for k in by))] += int(n)
    return dict(out), int(a.stats["segments_answered_by_catalog"])


def about_levels_only(q: str, by: list[str]) -> bool:
    """Whether a case's query and groups name only the level (its counts per minute answer it)."""
    return "service" not in q and "service" not in by


def check_counts(tmp_path: Path, lake: Lake) -> None:
    """Each case counted from the catalog (1h buckets: per service and level; 5m: per minute and level,
    when it names the level only) equals the scan (90 s buckets, not whole minutes) and the records."""
    check_segments(lake)
    svc = _service(lake)
    live = len(lake.catalog.live_segments(TENANT))
    for q, by, pred in CASES:
        fast, from_catalog = answered(svc, q, by, "1h")
        slow, none = answered(svc, q, by, "90s")
        assert from_catalog == live, q
        assert none == 0, q
        assert fast == slow == expected(lake.by_tenant[TENANT], pred, by), q
        five, by_minute = answered(svc, q, by, "5m", width=5 * 60_000_000)
        assert by_minute == (live if about_levels_only(q, by) else 0), q
        assert five == expected(lake.by_tenant[TENANT], pred, by, width=5 * 60_000_000), q


def test_counts_after_ingest_compaction_retention_and_deletion(tmp_path: Path, lake: Lake) -> None:
    check_counts(tmp_path, lake)

    # Compaction merges each hour, then rewrites the settled hours once more.
    settings = CompactionConfig(min_age_s=0, zstd_level=4, settled_zstd_level=5, settle_s=1e12)
    assert compact(lake.root, lake.catalog, settings).inputs > 0
    compact(lake.root, lake.catalog, CompactionConfig(min_age_s=0, zstd_level=4, settled_zstd_level=5, settle_s=0))
    collect_garbage(lake.root, lake.catalog, grace_s=0)
    check_counts(tmp_path, lake)

    # Retention: the api service's rows before 01:30 go, so hours 0 and 1 are rewritten without them.
    cut = DAY_US + 90 * 60_000_000
    rules = Rules.of(RetentionConfig(policies=[RetentionPolicy(tenant=TENANT, service="api", max_age="1d")]))
    report = retention.run(lake.root, lake.catalog, rules, now_us=cut + 86_400_000_000)
    assert report.removed
    gone = [k for k in lake.by_tenant[TENANT] if k[_SERVICE] == "api"
            and int(k[COLUMNS.index("ts")].timestamp() * 1_000_000) < cut]
    for k in gone:
        del lake.by_tenant[TENANT][k]
    check_counts(tmp_path, lake)

    # A deletion on demand rewrites the segments holding the matching rows.
    delete_matching(lake.root, lake.catalog, tenant=TENANT, query="service:web level:error", start_us=DAY_US,
                    end_us=DAY_US + 24 * HOUR_US, actor="test")
    for k in [k for k in lake.by_tenant[TENANT] if k[_SERVICE] == "web" and k[_LEVEL] == "error"]:
        del lake.by_tenant[TENANT][k]
    check_counts(tmp_path, lake)

    # Retention dropping whole hours leaves the others' counts as they were.
    rules = Rules.of(RetentionConfig(policies=[RetentionPolicy(tenant=TENANT, max_age="1d")]))
    retention.run(lake.root, lake.catalog, rules, now_us=DAY_US + 2 * HOUR_US + 86_400_000_000)
    for k in [k for k in lake.by_tenant[TENANT] if int(k[COLUMNS.index("ts")].timestamp() * 1_000_000)
              < DAY_US + 2 * HOUR_US]:
        del lake.by_tenant[TENANT][k]
    check_counts(tmp_path, lake)


@pytest.mark.parametrize(("start_s", "end_s", "cut"), [
    (30 * 60, 165 * 60, False),              # whole minutes: every segment answered
    (30 * 60 + 30, 165 * 60, True),          # a minute cut at the start: its hour is scanned
    (0, 3 * 3600 + 59, True),                # and at the end
])
def test_counts_per_minute_answer_ranges_of_whole_minutes(tmp_path: Path, lake: Lake, start_s: int, end_s: int,
                                                          cut: bool) -> None:
    svc = _service(lake)
    start, end = DAY_US + start_s * 1_000_000, DAY_US + end_s * 1_000_000
    overlapping = len(lake.catalog.segments(TENANT, start, end))
    for q, by, pred in CASES:
        if not about_levels_only(q, by):
            continue
        got, from_catalog = answered(svc, q, by, "1m", start, end, width=60_000_000)
        assert got == expected(lake.by_tenant[TENANT], pred, by, start, end, width=60_000_000), q
        if cut:
            assert 0 < from_catalog < overlapping, q
        else:
            assert from_catalog == overlapping, q


def test_segments_recorded_before_the_counts_are_scanned(tmp_path: Path, lake: Lake) -> None:
    """A segment whose counts the catalog lacks (recorded at schema version 9) is scanned, not guessed."""
    old = lake.catalog.live_segments(TENANT)[0]
    run_sql(lake.url, "UPDATE segments SET service_levels = NULL, minute_levels = NULL WHERE id = ?", (old.id,))
    svc = _service(lake)
    live = len(lake.catalog.live_segments(TENANT))
    for q, by, pred in CASES:
        fast, from_catalog = answered(svc, q, by, "1h")
        # Counting every row with no group, the segment's row counts per level still answer.
        assert from_catalog == live - (0 if q == "" else 1), q
        assert fast == expected(lake.by_tenant[TENANT], pred, by), q


def test_maintenance_fills_the_counts_of_segments_recorded_before_them(tmp_path: Path, lake: Lake) -> None:
    """After an upgrade, the GC run counts what older segments hold, so the catalog answers for them too."""
    for seg in lake.catalog.live_segments(TENANT):
        run_sql(lake.url, "UPDATE segments SET service_levels = NULL, minute_levels = NULL WHERE id = ?",
                (seg.id,))
    assert len(lake.catalog.lacking_counts(100)) == 12
    assert fill_counts(lake.root, lake.catalog, limit=5) == 5
    cfg = Config.model_validate({"storage": {"data_root": str(lake.dir), "catalog_url": lake.url}})
    result = run_gc(cfg, lake.root, lake.catalog)
    assert result["counts_filled"] == 7
    assert lake.catalog.lacking_counts(100) == []
    check_counts(tmp_path, lake)
    # A segment that already has its counts is not written again.
    seg = lake.catalog.live_segments(TENANT)[0]
    assert not lake.catalog.set_counts(seg.id, {"x": {"info": 1}}, None)
    assert lake.catalog.live_segments(TENANT)[0].service_levels == seg.service_levels


def test_migration_adds_the_column_as_null(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    cat = Catalog(url)
    try:
        assert cat.schema_version() == len(MIGRATIONS)
        assert "service_levels" in cat.db.tables()["segments"]
    finally:
        cat.close()


def test_service_level_counts_of_a_table_with_repeated_dictionary_values() -> None:
    dict_type = pa.dictionary(pa.int32(), pa.string())
    service = pa.chunked_array([
        pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), pa.array(["api", "api"])),
        pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int32()), pa.array(["web"])),
    ], type=dict_type)
    level = pa.chunked_array([pa.array(["info", "error", "info", "info", "error"]).dictionary_encode()])
    table = pa.table({"service": service, "level": level})
    assert service_level_counts(table) == {"api": {"info": 2, "error": 1}, "web": {"info": 1, "error": 1}}
    assert service_level_counts(table.slice(0, 0)) == {}
    assert RECORD_SCHEMA.field("service").type == dict_type


@pytest.mark.parametrize(("q", "cells"), [
    ("level:ERR", {("a", "error"), ("b", "error")}),
    ("svc:a OR level:warning", {("a", "info"), ("a", "error"), ("a", "warn"), ("b", "warn")}),
    ("NOT (service:a AND level:info)", {("a", "error"), ("a", "warn"), ("b", "info"), ("b", "error"),
                                        ("b", "warn")}),
    ('service:"a"', {("a", "info"), ("a", "error"), ("a", "warn")}),
])
def test_cell_test_follows_the_languages_rules(q: str, cells: set[tuple[str, str]]) -> None:
    test = cell_test(parse(q))
    assert test is not None
    every = {(s, lv) for s in ("a", "b") for lv in ("info", "error", "warn")}
    assert {c for c in every if test(*c)} == cells


@pytest.mark.parametrize("q", ["timeout", "service:a*", "level>=warn", "status:500", "service:a timeout",
                               "_exists_:service", "host:a", "level:/err/"])
def test_cell_test_declines_what_the_counts_cannot_answer(q: str) -> None:
    assert cell_test(parse(q)) is None
