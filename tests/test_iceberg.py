"""The Iceberg mirror (storage/iceberg.py): two independent readers agree with loglake's search.

DuckDB's iceberg extension (``iceberg_scan`` on the table's current metadata file, loaded from
the PyPI wheels) and a PyIceberg scan must return exactly the rows loglake's search returns for
the same tenant and range, after ingest, compaction, a retention rewrite and a delete-by-query;
snapshots expire at garbage collection; a crash between loglake's commit and the Iceberg one,
and an Iceberg commit lost to another writer, are repaired by the next sync. On SQLite and
PostgreSQL catalogs (the Iceberg SQL catalog lives in the same database), and once on S3.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from loglake.core.config import CompactionConfig, Config, IcebergConfig, RetentionConfig, RetentionPolicy
from query.deletion import delete_matching
from query.service import SearchService
from storage import retention
from storage.catalog import Catalog, PartitionCommit, PartitionState
from storage.compaction import compact
from storage.iceberg import IcebergMirror, load_duckdb_iceberg, record_schema, sql_catalog_uri
from storage.maintenance import Maintenance
from storage.root import DataRoot
from storage.schema import RECORD_SCHEMA
from storage.segments import HOUR_US, write_segments
from tests.helpers.catalogs import run_sql
from tests.helpers.lake import arrow_table, record
from tests.helpers.s3 import S3

pytestmark = pytest.mark.timeout(90)

T0 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp()) * 1_000_000
START, END = "2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z"
DUCKDB_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- the lake ---------------------------------------------------------------------------------


def flush(root: DataRoot, catalog: Catalog, tenant: str, n: int, rows: list[dict[str, Any]]) -> None:
    """One flush: ``rows`` as one segment per hour, committed as the next offsets of partition 0."""
    infos = write_segments(root, tenant, arrow_table(rows), f"logs.p0.e0.{n:012d}-{n:012d}.parquet")
    state = catalog.partition_states("logs").get(0, PartitionState(0, 0))
    catalog.commit([PartitionCommit("logs", 0, state.epoch, state.next_offset, state.next_offset + 1, infos)])


def fill(root: DataRoot, catalog: Catalog, tenant: str = "acme", flushes: int = 3) -> None:
    """``flushes`` flushes of 8 records each over hours 0-1, every column used (an exact duplicate too)."""
    for f in range(flushes):
        rows = []
        for i in range(8):
            ts = T0 + (i % 2) * HOUR_US + f * 60_000_000 + i * 1_000_000
            svc = ("api", "db")[i % 2]
            rows.append(record(ts, svc, ("info", "error", "warn")[i % 3], f"{tenant} flush {f} line {i} secret-{i % 3}",
                               attrs=[("id", f"{f}-{i}"), ("http.status", str(200 + i))] if i % 4 else [],
                               trace_id=f"{f:04x}{i:028x}" if i % 3 == 0 else None))
        rows.append(dict(rows[-1]))              # an exact duplicate: readers must keep both
        flush(root, catalog, tenant, len(catalog.live_segments()) + 100 * f, rows)


# -- the three readers ------------------------------------------------------------------------


def _ts(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canon_search(rows: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    return Counter((r["ts"], r["observed_ts"], r["service"], r["host"], r["source"], r["level"], r["severity"],
                    r["message"], tuple(sorted((r["attrs"] or {}).items())), r["trace_id"], r["span_id"])
                   for r in rows)


def canon_arrow(table: pa.Table) -> Counter[tuple[Any, ...]]:
    ts = pc.cast(table["ts"], pa.int64()).to_pylist()
    obs = pc.cast(table["observed_ts"], pa.int64()).to_pylist()
    out: Counter[tuple[Any, ...]] = Counter()
    for r, t, o in zip(table.drop_columns(["ts", "observed_ts"]).to_pylist(), ts, obs, strict=True):
        out[(_ts(t), _ts(o), r["service"], r["host"], r["source"], r["level"], r["severity"], r["message"],
             tuple(sorted(r["attrs"] or [])), r["trace_id"], r["span_id"])] += 1
    return out


def by_search(cfg: Config, catalog: Catalog, tenant: str) -> Counter[tuple[Any, ...]]:
    return canon_search(SearchService(cfg, catalog).search("", START, END, limit=10_000, tenant=tenant).rows)


_duck: dict[str, duckdb.DuckDBPyConnection] = {}


def duck(root: DataRoot | None) -> duckdb.DuckDBPyConnection:
    """A DuckDB with the iceberg extension loaded (a second or so each): one per data root URL
    (an S3 root's secret, scoped to it, set with httpfs), kept for the module."""
    key = root.url if root is not None and not root.local else ""
    if key not in _duck:
        con = duckdb.connect(config=DUCKDB_CONFIG)
        load_duckdb_iceberg(con)
        if root is not None and not root.local:
            root.configure_duckdb(con)
        _duck[key] = con
    return _duck[key]


@pytest.fixture(scope="module", autouse=True)
def _close_duckdb() -> Iterator[None]:
    yield
    for con in _duck.values():
        con.close()
    _duck.clear()


def by_duckdb(metadata: str, root: DataRoot | None = None) -> Counter[tuple[Any, ...]]:
    return canon_arrow(duck(root).execute(
        "SELECT * FROM iceberg_scan(?) WHERE ts >= ?::TIMESTAMPTZ AND ts < ?::TIMESTAMPTZ",
        [metadata, START, END]).to_arrow_table())


def by_pyiceberg(mirror: IcebergMirror, tenant: str) -> Counter[tuple[Any, ...]]:
    table = mirror.table(tenant, create=False)
    assert table is not None
    lo, hi = (t.replace("Z", "+00:00") for t in (START, END))
    return canon_arrow(table.scan(row_filter=f"ts >= '{lo}' and ts < '{hi}'").to_arrow())


def assert_readers_agree(cfg: Config, catalog: Catalog, mirror: IcebergMirror, tenant: str = "acme",
                         root: DataRoot | None = None) -> Counter[tuple[Any, ...]]:
    want = by_search(cfg, catalog, tenant)
    assert want, "the search finds rows"
    table = mirror.table(tenant, create=False)
    assert table is not None
    assert by_duckdb(table.metadata_location, root) == want, "DuckDB's iceberg_scan reads what loglake searches"
    assert by_pyiceberg(mirror, tenant) == want, "PyIceberg's scan reads what loglake searches"
    return want


def last_change(mirror: IcebergMirror, tenant: str = "acme") -> str:
    table = mirror.table(tenant, create=False)
    assert table is not None and table.current_snapshot() is not None
    snap = table.current_snapshot()
    assert snap is not None and snap.summary is not None
    return str(snap.summary["loglake.change"])


# -- fixtures ---------------------------------------------------------------------------------


def lake_config(root: str, catalog_url: str, **sections: Any) -> Config:
    return Config.model_validate({"storage": {"data_root": root, "catalog_url": catalog_url, "grace_s": 0},
                                  "iceberg": {"enabled": True}, **sections})


# -- 1. the lifecycle, on both catalogs ----------------------------------------------------------


def test_both_readers_agree_with_search_through_ingest_compaction_retention_deletion_and_gc(
        tmp_path: Path, catalog_url: str) -> None:
    cfg = lake_config(str(tmp_path / "data"), catalog_url)
    root, catalog = DataRoot.from_config(cfg.storage), Catalog(catalog_url)
    mirror = IcebergMirror(cfg.iceberg, root, catalog)
    try:
        fill(root, catalog)
        fill(root, catalog, tenant="other", flushes=1)
        r = mirror.sync()
        assert (r.created, r.commits, r.removed) == (2, 2, 0) and r.added == len(catalog.live_segments())
        assert last_change(mirror) == "append"
        rows = assert_readers_agree(cfg, catalog, mirror)
        assert sum(rows.values()) == 27
        assert assert_readers_agree(cfg, catalog, mirror, "other") != rows, "a table per tenant"
        assert mirror.sync().commits == 0, "nothing changed, nothing committed"

        compacted = compact(root, catalog, CompactionConfig(min_age_s=0), tenant="acme")
        assert compacted.batches == 2 and compacted.inputs == 6
        assert mirror.sync().changes == {"acme": "replace"}
        assert assert_readers_agree(cfg, catalog, mirror) == rows, "compaction changes files, not rows"
        table = mirror.table("acme")
        assert table is not None
        assert {f.file.file_path for f in table.scan().plan_files()} == \
            {mirror.file_url(s.path) for s in catalog.live_segments("acme")}

        # Retention at 01:30 + 1 h: hour 0 goes whole, the db service's rows of hour 1 before the cut go too.
        rules = retention.Rules.of(RetentionConfig(policies=[RetentionPolicy(tenant="acme", max_age="1h")]))
        ret = retention.run(root, catalog, rules, now_us=T0 + HOUR_US + 90_000_000 + HOUR_US, tenant="acme")
        assert ret.removed
        assert mirror.sync().changes["acme"] in ("overwrite", "delete")
        after_retention = assert_readers_agree(cfg, catalog, mirror)
        assert 0 < sum(after_retention.values()) < sum(rows.values())

        deleted = delete_matching(root, catalog, tenant="acme", query="secret-1", start_us=T0, end_us=T0 + 2 * HOUR_US,
                                  actor="test")
        assert deleted.rows > 0
        assert mirror.sync().changes == {"acme": "overwrite"}
        after_delete = assert_readers_agree(cfg, catalog, mirror)
        assert sum(after_delete.values()) == sum(after_retention.values()) - deleted.rows
        assert not any("secret-1" in k[7] for k in after_delete)

        # Garbage collection (grace 0): every snapshot but the current one expires, then the files go.
        table = mirror.table("acme")
        assert table is not None and len(table.snapshots()) == 4
        gc = Maintenance(cfg, catalog=catalog, root=root)
        gc.mirror = mirror
        gc.run_job("gc")
        assert gc.jobs["gc"][1].fault is None and gc.jobs["gc"][1].totals["snapshots_expired"] == 3
        assert gc.jobs["gc"][1].totals["retired_deleted"] > 0
        table = mirror.table("acme")
        assert table is not None and len(table.snapshots()) == 1
        assert assert_readers_agree(cfg, catalog, mirror) == after_delete, "the current snapshot names live files"
    finally:
        mirror.close()
        catalog.close()


# -- 2. drift repaired ----------------------------------------------------------------------


class Crash(Exception):
    pass


def test_a_crash_between_loglakes_commit_and_the_iceberg_commit_is_repaired_by_the_next_sync(
        tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = lake_config(str(tmp_path / "data"), catalog_url, compaction={"min_age_s": 0})
    root, catalog = DataRoot.from_config(cfg.storage), Catalog(catalog_url)
    m = Maintenance(cfg, catalog=catalog, root=root)
    assert m.mirror is not None
    try:
        fill(root, catalog)
        m.run_job("iceberg")
        rows = assert_readers_agree(cfg, catalog, m.mirror)
        # The maintenance loop dies after compaction's catalog swap, before its Iceberg commit.
        from pyiceberg.catalog.sql import SqlCatalog

        real_commit = SqlCatalog.commit_table

        def crash(*args: Any, **kwargs: Any) -> Any:
            raise Crash("killed between the two commits")

        monkeypatch.setattr(SqlCatalog, "commit_table", crash)
        m.run_job("compaction")
        assert m.jobs["compaction"][1].fault is None, "loglake's commit happened"
        assert m.jobs["iceberg"][1].fault is not None and "Crash" in m.jobs["iceberg"][1].fault
        table = m.mirror.table("acme")
        assert table is not None
        stale = {f.file.file_path for f in table.scan().plan_files()}
        live = {m.mirror.file_url(s.path) for s in catalog.live_segments()}
        assert stale and live and not stale & live, "the table still names the compacted-away segments"
        assert by_pyiceberg(m.mirror, "acme") == rows, "(whose files are still there for the grace period)"

        monkeypatch.setattr(SqlCatalog, "commit_table", real_commit)
        m.run_job("iceberg")                       # the next sync, in the restarted loop
        assert m.jobs["iceberg"][1].fault is None
        assert assert_readers_agree(cfg, catalog, m.mirror) == rows
        table = m.mirror.table("acme")
        assert table is not None
        assert {f.file.file_path for f in table.scan().plan_files()} == live
    finally:
        assert m.mirror is not None
        m.mirror.close()
        catalog.close()


def test_an_iceberg_commit_lost_to_another_writer_is_counted_and_retried(tmp_path: Path, catalog_url: str) -> None:
    cfg = lake_config(str(tmp_path / "data"), catalog_url)
    root, catalog = DataRoot.from_config(cfg.storage), Catalog(catalog_url)
    ours, theirs = IcebergMirror(cfg.iceberg, root, catalog), IcebergMirror(cfg.iceberg, root, catalog)
    try:
        fill(root, catalog, flushes=1)
        ours.sync()
        fill(root, catalog, flushes=1)
        stale = ours.table("acme")
        assert stale is not None
        theirs.sync()                              # another maintenance process commits first
        fill(root, catalog, flushes=1)
        # Our commit is based on the metadata we loaded before theirs: the catalog refuses it.
        ours.table = lambda tenant, create=True: stale       # type: ignore[method-assign]
        r = ours.sync()
        assert r.conflicts == 1 and r.commits == 0
        del ours.table
        assert ours.sync().commits == 1
        assert_readers_agree(cfg, catalog, ours)
    finally:
        ours.close()
        theirs.close()
        catalog.close()


# -- 3. configuration, types, cost when off ----------------------------------------------------


def test_the_iceberg_schema_is_the_record_model() -> None:
    from pyiceberg.types import IntegerType, MapType, StringType, TimestamptzType

    schema = record_schema()
    assert [f.name for f in schema.fields] == RECORD_SCHEMA.names
    types = {f.name: f.field_type for f in schema.fields}
    assert types["ts"] == types["observed_ts"] == TimestamptzType()
    assert all(types[c] == StringType() for c in ("service", "host", "source", "level", "message"))
    assert types["severity"] == IntegerType()
    assert types["attrs"] == MapType(14, StringType(), 15, StringType(), value_required=False)
    assert sql_catalog_uri("postgresql://u@h:5432/db?x=1") == "postgresql+psycopg://u@h:5432/db?x=1"
    assert sql_catalog_uri("sqlite:////tmp/c.sqlite") == "sqlite:////tmp/c.sqlite"


def test_off_the_mirror_is_not_built_and_writes_nothing(tmp_path: Path) -> None:
    cfg = Config.model_validate({"storage": {"data_root": str(tmp_path / "data")}})
    assert not cfg.iceberg.enabled
    m = Maintenance(cfg)
    try:
        fill(m.root, m.catalog, flushes=1)
        for name in list(m.jobs):
            m.run_job(name)
        assert m.mirror is None and "iceberg" not in m.jobs
        tables = run_sql(cfg.storage.resolved_catalog_url(), "SELECT name FROM sqlite_master WHERE type='table'")
        assert not [t for (t,) in tables if t.startswith("iceberg")]
        assert not (tmp_path / "data" / "_iceberg").exists()
    finally:
        m.catalog.close()


def test_a_rest_catalog_uri_must_be_http() -> None:
    with pytest.raises(ValueError, match="catalog_uri"):
        IcebergConfig(catalog_uri="thrift://metastore:9083")


# -- 4. S3, and real ingest ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_mirror_of_an_s3_data_root_is_read_by_both_readers(s3: S3, tmp_path: Path) -> None:
    cfg = Config.model_validate({"storage": {"data_root": s3.url(), "catalog_url": f"sqlite:///{tmp_path}/c.sqlite",
                                             "s3": s3.config.model_dump()}, "iceberg": {"enabled": True}})
    root, catalog = DataRoot.from_config(cfg.storage), Catalog(cfg.storage.resolved_catalog_url())
    mirror = IcebergMirror(cfg.iceberg, root, catalog)
    try:
        fill(root, catalog, flushes=2)
        mirror.sync()
        rows = assert_readers_agree(cfg, catalog, mirror, root=root)
        compact(root, catalog, CompactionConfig(min_age_s=0))
        mirror.sync()
        assert assert_readers_agree(cfg, catalog, mirror, root=root) == rows
        assert any(k.startswith("lake/_iceberg/loglake/acme/metadata/") for k in s3.keys()), \
            "table metadata lives beside the segments, in the bucket"
        files = {f.file.file_path for t in [mirror.table("acme")] if t is not None for f in t.scan().plan_files()}
        assert files == {f"{s3.url()}/{s.path}" for s in catalog.live_segments()}, "data files stay where they are"
    finally:
        mirror.close()
        catalog.close()


def test_segments_from_a_real_ingest_worker_reach_the_table(broker: str, tmp_path: Path) -> None:
    from aiokafka import AIOKafkaProducer

    from ingest.worker import IngestWorker
    from loglake.core.topics import ensure_topic

    topic = f"icebergtest.{uuid.uuid4().hex[:12]}"
    cfg = lake_config(str(tmp_path / "data"), f"sqlite:///{tmp_path}/catalog.sqlite",
                      kafka={"bootstrap_servers": broker, "topic": topic, "partitions": 1},
                      ingest={"group_id": f"{topic}-g", "flush_interval_s": 0.3, "dead_letter_topic": f"{topic}.dead",
                              "default_tenant": "acme"})
    lines = [f'{{"ts": "2024-03-01T0{i % 2}:{i:02d}:00Z", "level": "warn", "msg": "ingested {i}", "user": "u{i}"}}'
             for i in range(40)]

    async def ingest(catalog: Catalog) -> None:
        await ensure_topic(cfg.kafka)
        worker = IngestWorker(cfg, catalog)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await producer.start()
        try:
            for line in lines:
                await producer.send(topic, line.encode())
            await producer.flush()
            deadline = time.monotonic() + 30
            while catalog.totals()["rows"] < len(lines):
                assert not task.done() and time.monotonic() < deadline, catalog.totals()
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()
            stop.set()
            await task

    catalog = Catalog(cfg.storage.resolved_catalog_url())
    m = Maintenance(cfg, catalog=catalog)
    assert m.mirror is not None
    try:
        asyncio.run(ingest(catalog))
        m.run_job("iceberg")
        assert m.jobs["iceberg"][1].fault is None
        rows = assert_readers_agree(cfg, catalog, m.mirror)
        assert sorted(k[7] for k in rows) == sorted(f"ingested {i}" for i in range(40))
        assert {k[8] for k in rows} >= {(("user", "u7"),)}, "attributes arrive as the map"
    finally:
        m.mirror.close()
        catalog.close()
