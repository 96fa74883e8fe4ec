"""storage/segments.py (Parquet segments) and storage/catalog.py (the catalog).

Every catalog test runs on both backends (the ``catalog_url`` fixture: SQLite and
PostgreSQL); the few about one database's own machinery say which.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import queue
import random
import sqlite3
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.catalog import MIGRATIONS, Catalog, PartitionCommit, PartitionState
from storage.database import POSTGRES
from storage.errors import CatalogConflict, CatalogUnavailable, StorageError
from storage.schema import RECORD_SCHEMA, SEVERITY
from storage.segments import MIN_RUN_ROWS, SegmentInfo, check_tenant, gather, hours_of, write_segments
from tests.helpers.catalogs import integrity, is_postgres, run_sql
from tests.helpers.fuzzing import examples

HOUR = timedelta(hours=1)
BASE = datetime(2024, 3, 4, 22, 0, tzinfo=UTC)          # two hours before midnight


# -- helpers ---------------------------------------------------------------------


def record(ts: datetime, service: str = "api", level: str = "info", message: str = "m") -> dict[str, Any]:
    return {"ts": ts, "observed_ts": ts, "service": service, "host": "h1", "source": "/a.log",
            "level": level, "severity": SEVERITY[level], "message": message,
            "attrs": [("k", "v")], "trace_id": None, "span_id": None}


def table_of(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def to_us(ts: datetime) -> int:
    return int(ts.timestamp()) * 1_000_000 + ts.microsecond


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def mixed_rows(seed: int = 1) -> list[dict[str, Any]]:
    """Rows over three hours (crossing midnight), three services, shuffled."""
    rng = random.Random(seed)
    rows = [record(BASE + timedelta(minutes=m, microseconds=rng.randrange(10**6)),
                   service=rng.choice(["web", "api", "db"]), level=rng.choice(["info", "warn", "error"]),
                   message=f"row {m}")
            for m in range(0, 180, 2)]
    rng.shuffle(rows)
    return rows


def seg(path: str, lo: int = 0, hi: int = 10, *, tenant: str = "t", rows: int = 1) -> SegmentInfo:
    return SegmentInfo(tenant=tenant, path=path, min_ts_us=lo, max_ts_us=hi, rows=rows, bytes=100,
                       services={"api": rows}, levels={"info": rows})


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog(catalog_url)
    yield cat
    cat.close()


def segment_count(cat: Catalog) -> int:
    return cat.totals()["segments"]


# -- segments --------------------------------------------------------------------


def test_segments_are_split_one_file_per_hour_into_tenant_date_hour_dirs(tmp_path: Path) -> None:
    infos = write_segments(tmp_path, "acme", table_of(mixed_rows()), "logs.p0.e0.000000000000-000000000009.parquet")
    name = "logs.p0.e0.000000000000-000000000009.parquet"
    assert [i.path for i in infos] == [
        f"tenant=acme/date=2024-03-04/hour=22/{name}",
        f"tenant=acme/date=2024-03-04/hour=23/{name}",
        f"tenant=acme/date=2024-03-05/hour=00/{name}",
    ]
    assert files_under(tmp_path) == sorted(i.path for i in infos)
    for info in infos:
        hour_start = datetime.strptime(info.path.split("/")[1][5:] + info.path.split("/")[2][5:],
                                       "%Y-%m-%d%H").replace(tzinfo=UTC)
        ts = pq.read_table(tmp_path / info.path)["ts"].to_pylist()
        assert all(hour_start <= t < hour_start + HOUR for t in ts)


def test_segment_rows_are_sorted_by_service_then_ts(tmp_path: Path) -> None:
    infos = write_segments(tmp_path, "acme", table_of(mixed_rows()), "s.parquet")
    for info in infos:
        t = pq.read_table(tmp_path / info.path)
        keys = list(zip(t["service"].cast(pa.string()).to_pylist(), t["ts"].to_pylist(), strict=True))
        assert keys == sorted(keys)
        assert len(set(t["service"].cast(pa.string()).to_pylist())) > 1, "test data should mix services"


def test_segments_hold_every_row_once(tmp_path: Path) -> None:
    rows = mixed_rows()
    infos = write_segments(tmp_path, "acme", table_of(rows), "s.parquet")
    back = [r for i in infos for r in pq.read_table(tmp_path / i.path).cast(RECORD_SCHEMA).to_pylist()]
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["message"], r["ts"])

    assert sorted(back, key=key) == sorted(table_of(rows).to_pylist(), key=key)


def framed_rows(frames: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """Rows as a flush gets them: frames of one service's lines in time order, the frames of
    different services interleaved, the times crossing hours."""
    clock = {"web": BASE, "api": BASE + timedelta(minutes=20), "db": BASE + timedelta(minutes=50)}
    rows = []
    for f, (service, n) in enumerate(frames):
        for i in range(n):
            clock[service] += timedelta(seconds=7)
            rows.append(record(clock[service], service=service, message=f"{service} {f} {i}"))
    return rows


def segment_order(table: pa.Table) -> pa.Array:
    """Row indices by (hour, service, ts): the order segments keep, computed here independently."""
    keys = pa.table({"hour": hours_of(table), "service": table["service"].cast(pa.string()), "ts": table["ts"]})
    return pc.sort_indices(keys, sort_keys=[(k, "ascending") for k in keys.column_names])


@settings(max_examples=examples(40), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["web", "api", "db"]), st.integers(1, 3 * MIN_RUN_ROWS)),
                min_size=1, max_size=8))
def test_gather_puts_rows_in_segment_order_as_a_take_does(frames: list[tuple[str, int]]) -> None:
    table = table_of(framed_rows(frames))
    order = segment_order(table)
    assert gather(table, order).equals(table.take(order))


def test_segments_of_frames_in_order_are_slices_of_the_batch_and_hold_every_row(tmp_path: Path) -> None:
    frames = [("web", 900), ("api", 700), ("web", 600), ("db", 1200), ("api", 800), ("web", 500)]
    rows = framed_rows(frames)
    table = table_of(rows)
    order = segment_order(table)
    gathered = gather(table, order)
    # (slices, not a copy: a chunk per run of the batch)
    assert gathered["attrs"].num_chunks > 1
    assert gathered.equals(table.take(order))
    infos = write_segments(tmp_path, "acme", table, "s.parquet")
    assert len(infos) > 1
    back = [r for i in infos for r in pq.read_table(tmp_path / i.path).cast(RECORD_SCHEMA).to_pylist()]
    assert [(r["service"], r["ts"], r["message"]) for r in back] == \
        sorted([(r["service"], r["ts"], r["message"]) for r in rows],
               key=lambda k: (int(k[1].timestamp()) // 3600, k[0], k[1]))
    assert sum(i.rows for i in infos) == len(rows)


def test_segment_files_are_zstd_compressed(tmp_path: Path) -> None:
    infos = write_segments(tmp_path, "acme", table_of(mixed_rows()), "s.parquet")
    for info in infos:
        meta = pq.ParquetFile(tmp_path / info.path).metadata
        codecs = {meta.row_group(g).column(c).compression
                  for g in range(meta.num_row_groups) for c in range(meta.num_columns)}
        assert codecs == {"ZSTD"}


def test_segment_write_leaves_no_temp_file(tmp_path: Path) -> None:
    infos = write_segments(tmp_path, "acme", table_of(mixed_rows()), "s.parquet")
    everything = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert not [p for p in everything if p.endswith(".tmp") or p.split("/")[-1].startswith(".")]
    assert files_under(tmp_path) == sorted(i.path for i in infos)


def test_segment_stats_are_right(tmp_path: Path) -> None:
    rows = mixed_rows()
    infos = write_segments(tmp_path, "acme", table_of(rows), "s.parquet")
    assert sum(i.rows for i in infos) == len(rows)
    for info in infos:
        hour = [r for r in rows if r["ts"].strftime("date=%Y-%m-%d/hour=%H") in info.path]
        assert info.tenant == "acme"
        assert info.rows == len(hour)
        assert info.min_ts_us == min(to_us(r["ts"]) for r in hour)
        assert info.max_ts_us == max(to_us(r["ts"]) for r in hour)
        assert info.services == dict(Counter(r["service"] for r in hour))
        assert info.levels == dict(Counter(r["level"] for r in hour))
        assert info.bytes == (tmp_path / info.path).stat().st_size


def test_single_hour_table_writes_one_segment(tmp_path: Path) -> None:
    rows = [record(BASE + timedelta(minutes=59 - i), service=s) for i, s in enumerate("zyxzyx")]
    [info] = write_segments(tmp_path, "t", table_of(rows), "one.parquet")
    t = pq.read_table(tmp_path / info.path)
    assert t["service"].cast(pa.string()).to_pylist() == ["x", "x", "y", "y", "z", "z"]
    assert info.min_ts_us == to_us(BASE + timedelta(minutes=54))
    assert info.max_ts_us == to_us(BASE + timedelta(minutes=59))


def test_rewriting_the_same_name_overwrites_instead_of_duplicating(tmp_path: Path) -> None:
    first = write_segments(tmp_path, "t", table_of(mixed_rows()), "same.parquet")
    again = write_segments(tmp_path, "t", table_of(mixed_rows()), "same.parquet")
    assert [i.path for i in first] == [i.path for i in again]
    assert files_under(tmp_path) == sorted(i.path for i in first)


@settings(max_examples=25, deadline=None)
@given(offsets_s=st.lists(st.integers(0, 4 * 3600 - 1), min_size=1, max_size=40))
def test_any_rows_land_in_their_hour_with_exact_stats(offsets_s: list[int]) -> None:
    rows = [record(BASE + timedelta(seconds=s), service=f"s{s % 3}") for s in offsets_s]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        infos = write_segments(root, "t", table_of(rows), "h.parquet")
        assert len(infos) == len({s // 3600 for s in offsets_s})
        assert sum(i.rows for i in infos) == len(rows)
        for info in infos:
            got = pq.read_table(root / info.path)["ts"].to_pylist()
            assert len(got) == info.rows
            assert {(to_us(t) // 3_600_000_000) for t in got} == {info.min_ts_us // 3_600_000_000}
            assert info.max_ts_us // 3_600_000_000 == info.min_ts_us // 3_600_000_000


@pytest.mark.parametrize("tenant", ["../x", "a/b", "", "..", ".hidden", "-dash", "a b", "x" * 64, "t\n", "é"])
def test_invalid_tenant_raises_and_writes_nothing(tmp_path: Path, tenant: str) -> None:
    with pytest.raises(StorageError, match="invalid tenant"):
        write_segments(tmp_path / "root", tenant, table_of(mixed_rows()), "s.parquet")
    assert not (tmp_path / "root").exists() or files_under(tmp_path / "root") == []
    with pytest.raises(StorageError):
        check_tenant(tenant)


@pytest.mark.parametrize("tenant", ["a", "default", "Acme-1", "a.b_c", "0" * 63])
def test_valid_tenant_names_are_accepted(tenant: str) -> None:
    assert check_tenant(tenant) == tenant


# -- catalog: schema and mode ----------------------------------------------------------


def test_sqlite_catalog_applies_migrations_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    Catalog(url_of(path)).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"segments", "partition_offsets", "source_marks"} <= tables
    finally:
        db.close()


def test_postgres_catalog_keeps_its_schema_version_in_a_table(pg_url: str) -> None:
    Catalog(pg_url).close()
    assert run_sql(pg_url, "SELECT version FROM loglake_schema") == [(len(MIGRATIONS),)]
    tables = {r[0] for r in run_sql(pg_url, "SELECT table_name FROM information_schema.tables"
                                            " WHERE table_schema = current_schema()")}
    assert {"segments", "partition_offsets", "source_marks", "audit", "loglake_schema"} <= tables
    # Reopening migrates nothing and keeps the one version row.
    cat = Catalog(pg_url)
    try:
        assert cat.schema_version() == len(MIGRATIONS)
    finally:
        cat.close()
    assert run_sql(pg_url, "SELECT version FROM loglake_schema") == [(len(MIGRATIONS),)]


def test_schema_version_is_the_latest_after_open(catalog: Catalog) -> None:
    assert catalog.schema_version() == len(MIGRATIONS)


def test_postgres_catalogs_in_two_schemas_are_separate(pg_url: str, pg_schemas: Any) -> None:
    with pg_schemas() as other_url:
        a, b = Catalog(pg_url), Catalog(other_url)
        try:
            a.commit([PartitionCommit("logs", 0, 0, 0, 5, [seg("a.parquet")])])
            assert b.partition_states("logs") == {}
            assert b.totals()["segments"] == 0
            b.commit([PartitionCommit("logs", 0, 0, 0, 9, [seg("a.parquet")])])      # same path: no clash
            assert a.partition_states("logs") == {0: PartitionState(0, 5)}
        finally:
            a.close()
            b.close()


def test_postgres_url_scheme_alias_is_accepted(pg_url: str) -> None:
    cat = Catalog(pg_url.replace("postgresql://", "postgres://", 1))
    try:
        assert cat.postgres and cat.schema_version() == len(MIGRATIONS)
    finally:
        cat.close()


def test_unreachable_postgres_is_unavailable_without_leaking_the_password() -> None:
    with pytest.raises(CatalogUnavailable) as e:
        Catalog("postgresql://loglake:s3cret-pw@127.0.0.1:1/catalog?connect_timeout=2")
    assert "s3cret-pw" not in str(e.value)
    assert "loglake:***@127.0.0.1:1" in str(e.value)


def test_postgres_catalog_recovers_when_the_server_drops_its_connection(pg_url: str) -> None:
    app = f"loglake-test-{uuid.uuid4().hex[:12]}"
    cat = Catalog(f"{pg_url}&application_name={app}")

    def drop_connection() -> None:
        """What a server restart, failover or idle timeout does to the catalog's session."""
        assert run_sql(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
                       (app,)) == [(True,)]

    try:
        cat.commit([PartitionCommit("logs", 0, 0, 0, 5, [seg("a.parquet")])])
        drop_connection()
        try:
            cat.partition_states("logs")       # the call that finds the connection gone may fail, as unavailable ...
        except CatalogUnavailable:
            pass
        # ... but the catalog must not stay dead: ingest retries its flush with this same object.
        assert cat.partition_states("logs") == {0: PartitionState(0, 5)}

        drop_connection()
        again = PartitionCommit("logs", 0, 0, 5, 6, [seg("b.parquet")], {("t", "s"): 7})
        try:
            cat.commit([again])
        except CatalogUnavailable:
            assert segment_count(cat) == 1             # a failed commit recorded nothing ...
            cat.commit([again])                        # ... and the retry goes through
        assert cat.partition_states("logs") == {0: PartitionState(0, 6)}
        assert segment_count(cat) == 2
        assert cat.source_marks() == {("t", "s"): 7}
    finally:
        cat.close()


def _make_version_1_catalog(url: str) -> None:
    """A catalog as the first loglake release left it: MIGRATIONS[0] only, with data."""
    for stmt in MIGRATIONS[0].split(";"):
        if stmt.strip():
            run_sql(url, POSTGRES.ddl(stmt) if is_postgres(url) else stmt)
    if is_postgres(url):
        run_sql(url, "CREATE TABLE loglake_schema (version INTEGER NOT NULL)")
        run_sql(url, "INSERT INTO loglake_schema (version) VALUES (1)")
    else:
        run_sql(url, "PRAGMA user_version = 1")
    run_sql(url, "INSERT INTO segments (tenant, path, min_ts_us, max_ts_us, rows, bytes, services, levels,"
                 " topic, partition, epoch, first_offset, last_offset, created_us)"
                 " VALUES ('t', 'old.parquet', 10, 20, 7, 100, '{\"api\":7}', '{\"info\":7}', 'logs', 0, 0, 0, 4, 1)")
    run_sql(url, "INSERT INTO partition_offsets VALUES ('logs', 0, 0, 5, 1)")
    run_sql(url, "INSERT INTO source_marks VALUES ('t', 's', 123, 1)")


def test_an_old_catalog_is_migrated_in_place_keeping_its_data(catalog_url: str) -> None:
    if not is_postgres(catalog_url):
        Path(catalog_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    _make_version_1_catalog(catalog_url)
    cat = Catalog(catalog_url)
    try:
        assert cat.schema_version() == len(MIGRATIONS)
        assert cat.partition_states("logs") == {0: PartitionState(0, 5)}
        assert cat.source_ranges() == {("t", "s"): [(0, 123)]}
        [old] = cat.live_segments()
        assert (old.path, old.rows, old.generation, old.state, old.retired_us) == ("old.parquet", 7, 0, "live", None)
        # The migrated catalog does what the new code asks of it.
        [new] = cat.swap([old.id], [seg("new.parquet", 10, 20, rows=7)], generation=1)
        assert [(r.id, r.path, r.generation) for r in cat.live_segments()] == [(new, "new.parquet", 1)]
        cat.commit([PartitionCommit("logs", 0, 0, 5, 6, [seg("next.parquet")])])
    finally:
        cat.close()


def test_reopening_a_catalog_keeps_its_data(catalog_url: str) -> None:
    url = catalog_url
    cat = Catalog(url)
    cat.commit([PartitionCommit("logs", 0, 0, 0, 5, [seg("a.parquet")], {("t", "s"): 9})])
    cat.close()
    cat = Catalog(url)
    try:
        assert cat.partition_states("logs") == {0: PartitionState(0, 5)}
        assert segment_count(cat) == 1
        assert cat.source_marks() == {("t", "s"): 9}
    finally:
        cat.close()


def test_sqlite_catalog_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    Catalog(url_of(path)).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(CatalogUnavailable, match="newer"):
        Catalog(url_of(path))
    assert run_sql(url_of(path), "PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]


def test_postgres_catalog_newer_than_the_code_is_refused(pg_url: str) -> None:
    Catalog(pg_url).close()
    run_sql(pg_url, "UPDATE loglake_schema SET version = ?", (len(MIGRATIONS) + 1,))
    with pytest.raises(CatalogUnavailable, match="newer"):
        Catalog(pg_url)
    # Refused without touching it: the version stays, nothing was added.
    assert run_sql(pg_url, "SELECT version FROM loglake_schema") == [(len(MIGRATIONS) + 1,)]


@pytest.mark.parametrize("url", ["mysql://x/y", "/just/a/path", "sqlite://relative"])
def test_catalog_rejects_unsupported_urls(url: str) -> None:
    with pytest.raises(CatalogUnavailable, match="unsupported catalog url"):
        Catalog(url)


# -- catalog: commits ---------------------------------------------------------------------


def test_commit_records_segments_offsets_and_marks(catalog: Catalog) -> None:
    s1, s2 = seg("a.parquet", 100, 200, rows=3), seg("b.parquet", 150, 400, rows=4)
    catalog.commit([PartitionCommit("logs", 2, 0, 0, 17, [s1, s2], {("t", "src-1"): 4096})])
    assert catalog.partition_states("logs") == {2: PartitionState(0, 17)}
    assert catalog.partition_states("other") == {}
    assert catalog.source_marks() == {("t", "src-1"): 4096}
    rows = catalog.segments("t", 0, 10**9)
    assert {(r.path, r.min_ts_us, r.max_ts_us, r.rows, r.bytes) for r in rows} == {
        ("a.parquet", 100, 200, 3, 100), ("b.parquet", 150, 400, 4, 100)}
    assert all(r.services == {"api": r.rows} and r.levels == {"info": r.rows} for r in rows)
    assert catalog.totals() == {"segments": 2, "rows": 7, "bytes": 200}


def test_successive_commits_advance_the_offset(catalog: Catalog) -> None:
    for i in range(5):
        catalog.commit([PartitionCommit("logs", 0, 0, i * 10, (i + 1) * 10, [seg(f"{i}.parquet")])])
    assert catalog.partition_states("logs") == {0: PartitionState(0, 50)}
    assert segment_count(catalog) == 5


def test_commit_with_a_stale_offset_conflicts_and_records_nothing(catalog: Catalog) -> None:
    catalog.commit([PartitionCommit("logs", 0, 0, 0, 10, [seg("first.parquet")], {("t", "s"): 100})])
    with pytest.raises(CatalogConflict, match=r"logs\[0\]"):
        catalog.commit([PartitionCommit("logs", 0, 0, 0, 20, [seg("dup.parquet")], {("t", "s"): 999})])
    assert catalog.partition_states("logs") == {0: PartitionState(0, 10)}
    assert [r.path for r in catalog.segments("t", 0, 10**9)] == ["first.parquet"]
    assert catalog.source_marks() == {("t", "s"): 100}


def test_commit_from_an_offset_ahead_of_the_catalog_conflicts(catalog: Catalog) -> None:
    with pytest.raises(CatalogConflict):
        catalog.commit([PartitionCommit("logs", 0, 0, 5, 10, [seg("x.parquet")])])
    assert catalog.partition_states("logs") == {}
    assert segment_count(catalog) == 0


def test_multi_partition_commit_is_all_or_nothing(catalog: Catalog) -> None:
    catalog.commit([PartitionCommit("logs", 1, 0, 0, 3, [seg("p1.parquet")])])
    good = PartitionCommit("logs", 0, 0, 0, 10, [seg("p0.parquet")], {("t", "a"): 10})
    stale = PartitionCommit("logs", 1, 0, 0, 8, [seg("p1-again.parquet")], {("t", "b"): 10})
    with pytest.raises(CatalogConflict):
        catalog.commit([good, stale])
    assert catalog.partition_states("logs") == {1: PartitionState(0, 3)}
    assert [r.path for r in catalog.segments("t", 0, 10**9)] == ["p1.parquet"]
    assert catalog.source_marks() == {}


def test_commit_failing_on_a_segment_row_leaves_offsets_unchanged(catalog: Catalog) -> None:
    catalog.commit([PartitionCommit("logs", 0, 0, 0, 10, [seg("taken.parquet")])])
    with pytest.raises(CatalogConflict, match="duplicate"):
        catalog.commit([PartitionCommit("logs", 0, 0, 10, 20, [seg("new.parquet"), seg("taken.parquet")],
                                        {("t", "s"): 5})])
    assert catalog.partition_states("logs") == {0: PartitionState(0, 10)}
    assert sorted(r.path for r in catalog.segments("t", 0, 10**9)) == ["taken.parquet"]
    assert catalog.source_marks() == {}
    # ... and the catalog is still usable afterwards.
    catalog.commit([PartitionCommit("logs", 0, 0, 10, 20, [seg("new.parquet")])])
    assert catalog.partition_states("logs") == {0: PartitionState(0, 20)}


def test_reset_partition_bumps_the_epoch(catalog: Catalog) -> None:
    catalog.commit([PartitionCommit("logs", 0, 0, 0, 50, [seg("a.parquet")])])
    assert catalog.reset_partition("logs", 0, 0) == PartitionState(1, 0)
    assert catalog.partition_states("logs") == {0: PartitionState(1, 0)}
    assert catalog.reset_partition("logs", 0, 7) == PartitionState(2, 7)
    assert catalog.partition_states("logs") == {0: PartitionState(2, 7)}


def test_reset_partition_makes_old_epoch_commits_conflict(catalog: Catalog) -> None:
    catalog.commit([PartitionCommit("logs", 0, 0, 0, 50, [seg("a.parquet")])])
    new = catalog.reset_partition("logs", 0, 0)
    with pytest.raises(CatalogConflict):
        catalog.commit([PartitionCommit("logs", 0, 0, 50, 60, [seg("old-epoch.parquet")])])
    catalog.commit([PartitionCommit("logs", 0, new.epoch, 0, 5, [seg("new-epoch.parquet")])])
    assert catalog.partition_states("logs") == {0: PartitionState(new.epoch, 5)}
    assert sorted(r.path for r in catalog.segments("t", 0, 10**9)) == ["a.parquet", "new-epoch.parquet"]


def test_reset_of_one_partition_leaves_the_others(catalog: Catalog) -> None:
    catalog.commit([PartitionCommit("logs", 0, 0, 0, 5), PartitionCommit("logs", 1, 0, 0, 6)])
    catalog.reset_partition("logs", 1, 0)
    assert catalog.partition_states("logs") == {0: PartitionState(0, 5), 1: PartitionState(1, 0)}


_partitions = itertools.count()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(marks=st.lists(st.integers(0, 10**12), min_size=1, max_size=8))
def test_source_marks_only_ever_increase(catalog: Catalog, marks: list[int]) -> None:
    source = f"src-{next(_partitions)}"
    high = -1
    for mark in marks:
        p = next(_partitions)
        catalog.commit([PartitionCommit("marks", p, 0, 0, 1, (), {("t", source): mark})])
        high = max(high, mark)
        assert catalog.source_marks()[("t", source)] == high


def test_source_marks_filter_by_tenant(catalog: Catalog) -> None:
    catalog.commit([PartitionCommit("logs", 0, 0, 0, 1, (), {("a", "s1"): 1, ("b", "s1"): 2, ("c", "s2"): 3})])
    assert catalog.source_marks(["a", "c"]) == {("a", "s1"): 1, ("c", "s2"): 3}
    assert catalog.source_marks([]) == {}
    assert catalog.source_marks() == {("a", "s1"): 1, ("b", "s1"): 2, ("c", "s2"): 3}


# -- catalog: which segments a query reads -------------------------------------------------

#: (tenant, path, min_ts_us, max_ts_us): overlapping, touching, nested, single-instant.
LAYOUT: list[tuple[str, str, int, int]] = [
    ("a", "a1", 0, 99), ("a", "a2", 100, 199), ("a", "a3", 150, 450), ("a", "a4", 300, 300),
    ("a", "a5", 500, 999), ("a", "a6", 1000, 1000),
    ("b", "b1", 0, 1000), ("b", "b2", 200, 300),
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def layout_catalog(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = url_of(tmp_path_factory.mktemp("layout") / "c.sqlite")
        else:
            url = stack.enter_context(request.getfixturevalue("pg_schemas")())
        cat = Catalog(url)
        stack.callback(cat.close)
        cat.commit([PartitionCommit("logs", 0, 0, 0, 1,
                                    [seg(p, lo, hi, tenant=t) for t, p, lo, hi in LAYOUT]
                                    + [seg(f"a-{state}", 0, 1000, tenant="a")
                                       for state in ("deleted", "retired", "missing")])])
        run_sql(url, "UPDATE segments SET state='deleted' WHERE path='a-deleted'")
        cat.swap([i for p, (i, _) in cat.known_paths().items() if p == "a-retired"])
        cat.mark_missing([i for p, (i, _) in cat.known_paths().items() if p == "a-missing"])
        yield cat


@settings(max_examples=300, deadline=None)
@given(tenant=st.sampled_from(["a", "b", "c"]), start=st.integers(-10, 1100), length=st.integers(0, 600))
def test_segments_returns_exactly_the_overlapping_live_segments(
        layout_catalog: Catalog, tenant: str, start: int, length: int) -> None:
    end = start + length
    got = [r.path for r in layout_catalog.segments(tenant, start, end)]
    expected = {p for t, p, lo, hi in LAYOUT if t == tenant and hi >= start and lo < end}
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert all(r.tenant == tenant for r in layout_catalog.segments(tenant, start, end))


def test_segments_window_edges_are_half_open(layout_catalog: Catalog) -> None:
    # [100, 150): a2 starts at 100 (in), a3 starts at 150 (out), a1 ends at 99 (out).
    assert {r.path for r in layout_catalog.segments("a", 100, 150)} == {"a2"}
    # A segment whose last row is exactly at start is read; one whose first row is at end is not.
    assert {r.path for r in layout_catalog.segments("a", 999, 1000)} == {"a5"}
    assert {r.path for r in layout_catalog.segments("a", 1000, 1001)} == {"a6"}
    assert layout_catalog.segments("a", 1001, 5000) == []
    assert layout_catalog.segments("c", 0, 5000) == []


# -- catalog: real concurrent processes -------------------------------------------------------

TOPIC = "logs"
COMMITS_PER_WRITER = 50
WRITERS = 4
RACE_ROUNDS = 25


def _writer(url: str, partition: int, start: Any) -> None:
    start.wait(timeout=60)
    cat = Catalog(url)                       # every writer opens (and migrates) at once
    try:
        for i in range(COMMITS_PER_WRITER):
            cat.commit([PartitionCommit(
                TOPIC, partition, 0, i, i + 1,
                [seg(f"p{partition}/{i}.parquet", i, i + 1, rows=partition + 1)],
                {("t", f"src-{partition}"): (i + 1) * 100})])
    finally:
        cat.close()


def _racer(url: str, name: str, barrier: Any, results: Any) -> None:
    cat = Catalog(url)
    try:
        for r in range(RACE_ROUNDS):
            barrier.wait(timeout=60)
            try:
                cat.commit([PartitionCommit(TOPIC, 0, 0, r, r + 1, [seg(f"{name}/{r}.parquet")])])
                results.put((r, name, "won"))
            except CatalogConflict:
                results.put((r, name, "conflict"))
            barrier.wait(timeout=60)
    finally:
        cat.close()


def _join(procs: list[Any]) -> None:
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_concurrent_writer_processes_lose_nothing(catalog_url: str) -> None:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(catalog_url, p, start)) for p in range(WRITERS)]
    for p in procs:
        p.start()
    _join(procs)

    cat = Catalog(catalog_url)
    try:
        assert cat.partition_states(TOPIC) == {p: PartitionState(0, COMMITS_PER_WRITER) for p in range(WRITERS)}
        assert cat.totals()["segments"] == WRITERS * COMMITS_PER_WRITER
        assert cat.totals()["rows"] == COMMITS_PER_WRITER * sum(p + 1 for p in range(WRITERS))
        assert cat.source_marks() == {("t", f"src-{p}"): COMMITS_PER_WRITER * 100 for p in range(WRITERS)}
        paths = {r.path for r in cat.segments("t", -1, 10**9)}
        assert paths == {f"p{p}/{i}.parquet" for p in range(WRITERS) for i in range(COMMITS_PER_WRITER)}
    finally:
        cat.close()
    assert integrity(catalog_url) == "ok"


def test_processes_racing_for_one_partition_exactly_one_wins_each_round(catalog_url: str) -> None:
    ctx = mp.get_context("spawn")
    Catalog(catalog_url).close()
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(catalog_url, name, barrier, results)) for name in ("x", "y")]
    for p in procs:
        p.start()
    outcomes: list[tuple[int, str, str]] = []
    try:
        while len(outcomes) < 2 * RACE_ROUNDS:
            outcomes.append(results.get(timeout=60))
    except queue.Empty:
        pass
    _join(procs)

    assert len(outcomes) == 2 * RACE_ROUNDS
    by_round: dict[int, list[str]] = {}
    for r, _, outcome in outcomes:
        by_round.setdefault(r, []).append(outcome)
    assert {r: sorted(v) for r, v in by_round.items()} == {r: ["conflict", "won"] for r in range(RACE_ROUNDS)}
    cat = Catalog(catalog_url)
    try:
        assert cat.partition_states(TOPIC) == {0: PartitionState(0, RACE_ROUNDS)}
        winners = {f"{name}/{r}.parquet" for r, name, outcome in outcomes if outcome == "won"}
        assert {r.path for r in cat.segments("t", -1, 10**9)} == winners
    finally:
        cat.close()
    assert integrity(catalog_url) == "ok"



# -- how raw is encoded -------------------------------------------------------------------------------


@pytest.mark.parametrize("repeating", [True, False])
def test_raw_is_dictionary_encoded_only_where_skeletons_repeat_and_reads_back_alike(repeating: bool) -> None:
    import duckdb

    from storage.lines import SLOT, original_line
    from storage.root import write_segment
    from tests.helpers.lake import arrow_table, record

    n = 20_000
    rows = []
    for i in range(n):
        skeleton = '{"msg":"' + SLOT + "\x02" + SLOT + '","n":' + (str(i) if not repeating else str(i % 7)) + "}"
        rows.append(record(1_700_000_000_000_000 + i, "api" if i < n // 2 else "db", "info", f"m{i}",
                           raw=skeleton if i % 10 else None, head=None if i % 10 else "H "))
    table = arrow_table(rows)
    sink = pa.BufferOutputStream()
    write_segment(table, sink, zstd_level=3, row_group_rows=4096)
    data = sink.getvalue()
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    raw = [c for g in range(meta.num_row_groups) for c in map(meta.row_group(g).column, range(meta.num_columns))
           if c.path_in_schema == "raw"]
    assert len(raw) == meta.num_row_groups == 5
    assert all(("RLE_DICTIONARY" in c.encodings) == repeating for c in raw)
    back = pq.read_table(pa.BufferReader(data))
    assert back.equals(table)
    with tempfile.NamedTemporaryFile(suffix=".parquet") as f:
        f.write(data.to_pybytes())
        f.flush()
        con = duckdb.connect()
        got = [r[0] for r in con.execute(f"SELECT raw FROM read_parquet('{f.name}')").fetchall()]
    assert got == table["raw"].to_pylist()
    assert [original_line(r) for r in back.to_pylist()] == [original_line(r) for r in rows]
