"""S3 data roots, end to end, on a real S3-compatible server (moto) on loopback.

Nothing is mocked: ``moto.server.ThreadedMotoServer`` speaks the S3 protocol
over HTTP, pyarrow's S3FileSystem writes and lists through it, and DuckDB
reads through the httpfs extension from the ``duckdb-extension-httpfs`` wheel.
One server per session; every test gets a bucket of its own (and the catalog
is SQLite under ``tmp_path``), so tests share nothing.

Credentials come from environment variables with test-only names
(``LL_TEST_S3_KEY``/``LL_TEST_S3_SECRET``), set per test with monkeypatch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loglake.core.config import CompactionConfig, Config, RetentionConfig, RetentionPolicy, StorageConfig
from query.deletion import delete_matching
from query.service import SearchService
from query.timerange import parse_time_us
from storage import retention
from storage.catalog import Catalog, PartitionCommit, PartitionState
from storage.compaction import collect_garbage, compact
from storage.errors import StorageError
from storage.fsck import fsck
from storage.root import DataRoot
from storage.schema import RECORD_SCHEMA, SEVERITY
from storage.segments import SegmentInfo, write_segments
from tests.helpers.s3 import KEY_ENV, PREFIX, S3, SECRET_ENV

pytestmark = pytest.mark.timeout(60)

DAY = "2024-03-01"
#: Covers every record the tests write.
ALL = (f"{DAY}T00:00:00Z", f"{DAY}T23:59:59Z")
DUCKDB_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def lake_config(s3: S3, tmp_path: Path, **sections: Any) -> Config:
    """A configuration with the bucket's ``lake`` prefix as data root and a SQLite catalog under tmp_path."""
    storage = {"data_root": s3.url(), "catalog_url": f"sqlite:///{tmp_path / 'catalog' / 'catalog.sqlite'}",
               "s3": s3.config.model_dump()}
    return Config.model_validate({"storage": storage, **sections})


@pytest.fixture
def lake(s3: S3, tmp_path: Path) -> Iterator[tuple[Config, DataRoot, Catalog]]:
    cfg = lake_config(s3, tmp_path)
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    yield cfg, DataRoot.from_config(cfg.storage), catalog
    catalog.close()


# -- rows, segments, reading back ------------------------------------------------------


def at(clock: str) -> int:
    """Epoch microseconds of ``clock`` (HH:MM[:SS]) on DAY, UTC."""
    return parse_time_us(f"{DAY}T{clock}Z")


def record(rid: str, clock: str, service: str = "api", level: str = "info", message: str = "") -> dict[str, Any]:
    ts = at(clock)
    return {"ts": ts, "observed_ts": ts + 1_000, "service": service, "host": "web-1",
            "source": f"/var/log/{service}.log", "level": level, "severity": SEVERITY[level],
            "message": message or f"{service} did {rid}", "attrs": [("id", rid)], "trace_id": None, "span_id": None}


def table_of(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pydict({name: [r.get(name) for r in rows] for name in RECORD_SCHEMA.names},
                                schema=RECORD_SCHEMA)


def commit(catalog: Catalog, infos: list[SegmentInfo]) -> None:
    """Make ``infos`` live, as one flush of partition 0 of topic ``test``."""
    state = catalog.partition_states("test").get(0, PartitionState(0, 0))
    catalog.commit([PartitionCommit("test", 0, state.epoch, state.next_offset, state.next_offset + 1, infos)])


def store(root: DataRoot, catalog: Catalog, rows: list[dict[str, Any]], name: str,
          tenant: str = "default") -> list[SegmentInfo]:
    infos = write_segments(root, tenant, table_of(rows), name)
    commit(catalog, infos)
    return infos


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """A row as a comparable tuple (attrs as sorted pairs)."""
    return tuple((k, tuple(sorted(v)) if k == "attrs" and v is not None else v) for k, v in sorted(r.items()))


def rows_at(root: DataRoot, paths: list[str]) -> list[tuple[Any, ...]]:
    """Every row of the files at ``paths``, read straight from S3, as a sorted list."""
    out = []
    for p in paths:
        out += [row_key(r) for r in root.read_parquet(p).cast(RECORD_SCHEMA).to_pylist()]
    return sorted(out)


def pq_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def live_rows(root: DataRoot, catalog: Catalog) -> list[tuple[Any, ...]]:
    return rows_at(root, [s.path for s in catalog.live_segments()])


def ids(result: Any) -> list[str]:
    return [r["attrs"]["id"] for r in result.rows]


def duck(root: DataRoot) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config=DUCKDB_CONFIG)
    root.configure_duckdb(con)
    return con


# -- 1. the data root on S3 -------------------------------------------------------------


def test_write_read_round_trip_and_files_lists_exactly_the_written_objects(s3: S3) -> None:
    root = s3.root()
    assert root.files() == {}, "an empty prefix lists nothing"
    rows = [record("a1", "10:00", "api"), record("a2", "10:05", "db", "error"), record("a3", "10:10", "web")]
    paths = ["tenant=a/date=2024-03-01/hour=10/one.parquet", "tenant=a/date=2024-03-01/hour=11/two.parquet",
             "tenant=b/date=2024-03-02/hour=00/three.parquet"]
    before = time.time()
    sizes = {p: root.write_parquet(p, table_of(rows[:i + 1])) for i, p in enumerate(paths)}
    after = time.time()
    # Things that are not files of this root: a directory marker inside it, and objects
    # beside it (another prefix, and one that merely starts with the same letters).
    s3.put(f"{PREFIX}/tenant=a/empty/", b"")
    s3.put("other/tenant=a/x.parquet", b"not ours")
    s3.put(f"{PREFIX}-archive/tenant=a/y.parquet", b"not ours either")

    for i, p in enumerate(paths):
        back = root.read_parquet(p)
        assert back.cast(RECORD_SCHEMA).to_pylist() == table_of(rows[:i + 1]).to_pylist()
        assert root.exists(p)
    assert not root.exists("tenant=a/date=2024-03-01/hour=10"), "a directory is not a file"
    assert not root.exists("tenant=a/nothing.parquet")

    listing = root.files()
    assert sorted(listing) == sorted(paths), "exactly the written files: no directories, nothing beside the root"
    for p, stat in listing.items():
        assert stat.size == sizes[p] == s3.size(f"{PREFIX}/{p}") > 0
        assert stat.mtime_us is not None
        assert int(before - 1) * 1_000_000 <= stat.mtime_us <= int(after + 1) * 1_000_000
    assert sorted(root.files("tenant=a")) == paths[:2], "under= lists a subtree, paths still relative to the root"
    assert root.files("tenant=zzz") == {}
    assert s3.object_keys() == set(paths), "every write is one object at <prefix>/<path>"


def test_delete_returns_true_once_then_false(s3: S3) -> None:
    root = s3.root()
    keep, gone = "tenant=a/date=2024-03-01/hour=10/keep.parquet", "tenant=a/date=2024-03-01/hour=10/gone.parquet"
    root.write_parquet(keep, table_of([record("k", "10:00")]))
    root.write_parquet(gone, table_of([record("g", "10:01")]))

    assert root.delete(gone) is True
    assert not root.exists(gone)
    assert root.delete(gone) is False
    assert root.delete("tenant=a/never-written.parquet") is False
    assert sorted(root.files()) == [keep]
    assert s3.object_keys() == {keep}


@pytest.mark.parametrize("url", ["s3://{bucket}", "s3://{bucket}/"])
def test_a_data_root_at_the_top_of_a_bucket(s3: S3, tmp_path: Path, url: str) -> None:
    root = DataRoot(url.format(bucket=s3.bucket), s3.config)
    assert root.url == f"s3://{s3.bucket}"
    [info] = write_segments(root, "default", table_of([record("t1", "10:00"), record("t2", "10:01")]), "top.parquet")
    assert s3.keys() == [info.path]
    assert list(root.files()) == [info.path] and root.files()[info.path].size == info.bytes
    con = duck(root)
    try:
        assert con.execute("SELECT count(*) FROM read_parquet(?)", [root.file_url(info.path)]).fetchone() == (2,)
        bucket2 = f"{s3.bucket}-2"           # a bucket whose name starts with this one's
        s3.client.create_bucket(Bucket=bucket2)
        DataRoot(f"s3://{bucket2}", s3.config).write_parquet("x.parquet", table_of([record("x", "10:00")]))
        with pytest.raises(duckdb.PermissionException):
            con.execute("SELECT count(*) FROM read_parquet(?)", [f"s3://{bucket2}/x.parquet"]).fetchall()
    finally:
        con.close()
    assert root.delete(info.path) and root.files() == {}


@pytest.mark.xfail(strict=True, reason=(
    "DataRoot.delete on S3 (pyarrow's S3FileSystem.delete_file) PUTs a zero-byte directory marker "
    "'<prefix>/<dir>/' for the deleted file's parent, and nothing ever deletes it: every hour directory "
    "that compaction, retention, deletion or GC has touched keeps an object forever"))
def test_deleting_files_leaves_no_objects_behind(s3: S3) -> None:
    root = s3.root()
    hour = "tenant=a/date=2024-03-01/hour=09"
    for name in ("one.parquet", "two.parquet"):
        root.write_parquet(f"{hour}/{name}", table_of([record(name, "09:00")]))
    assert root.delete(f"{hour}/one.parquet") and root.delete(f"{hour}/two.parquet")
    assert root.files() == {}
    assert s3.keys() == [], "the bucket should be as empty as the root's listing"


@pytest.mark.parametrize("rel", ["../other/x.parquet", "tenant=a/../../other/x.parquet", "tenant=a/..",
                                 "/lake/tenant=a/x.parquet"])
def test_paths_escaping_the_root_are_refused(s3: S3, rel: str) -> None:
    root = s3.root()
    s3.put("other/x.parquet", pq_bytes(table_of([record("secret", "10:00")])))
    before = s3.keys()
    table = table_of([record("x", "10:00")])
    for op in (lambda: root.write_parquet(rel, table), lambda: root.read_parquet(rel), lambda: root.delete(rel),
               lambda: root.exists(rel), lambda: root.files(rel)):
        with pytest.raises(StorageError, match="escapes the data root"):
            op()
    assert s3.keys() == before, "nothing written or deleted"


@pytest.mark.parametrize("unset", [(KEY_ENV, SECRET_ENV), (KEY_ENV,), (SECRET_ENV,)])
def test_missing_credentials_are_a_storage_error_naming_the_variables(
        s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unset: tuple[str, ...]) -> None:
    for name in unset:
        monkeypatch.delenv(name)
    with pytest.raises(StorageError) as e:
        s3.root()
    assert KEY_ENV in str(e.value) and SECRET_ENV in str(e.value)
    assert "test-key" not in str(e.value) and "test-secret" not in str(e.value), "no secret in the message"
    # Every user of the root fails the same way (before touching DuckDB or the bucket).
    from ingest.worker import IngestWorker

    cfg = lake_config(s3, tmp_path)
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    try:
        with pytest.raises(StorageError, match=KEY_ENV):
            SearchService(cfg, catalog)
        with pytest.raises(StorageError, match=KEY_ENV):
            IngestWorker(cfg, catalog)
    finally:
        catalog.close()


def test_an_empty_credential_counts_as_missing(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "")
    with pytest.raises(StorageError, match=SECRET_ENV):
        s3.root()


def test_an_s3_data_root_needs_a_catalog_url(s3: S3) -> None:
    with pytest.raises(ValueError, match="catalog_url"):
        StorageConfig(data_root=s3.url(), s3=s3.config)


# -- 2. DuckDB through configure_duckdb ------------------------------------------------------


def test_duckdb_reads_segments_at_their_file_url(s3: S3) -> None:
    root = s3.root()
    rows = [record(f"r{i}", f"{10 + i // 6}:{(i * 7) % 60:02d}", ["api", "db"][i % 2]) for i in range(12)]
    infos = write_segments(root, "default", table_of(rows), "batch.parquet")
    assert len(infos) == 2
    con = duck(root)
    try:
        for info in infos:
            url = root.file_url(info.path)
            assert url == f"s3://{s3.bucket}/{PREFIX}/{info.path}"
            n, lo, hi = con.execute("SELECT count(*), min(epoch_us(ts)), max(epoch_us(ts)) FROM read_parquet(?)",
                                    [url]).fetchone()
            assert (n, lo, hi) == (info.rows, info.min_ts_us, info.max_ts_us)
        got = con.execute("SELECT attrs['id'] FROM read_parquet(?) ORDER BY ts",
                          [[root.file_url(i.path) for i in infos]]).fetchall()
        assert [g[0] for g in got] == [r["attrs"][0][1] for r in sorted(rows, key=lambda r: r["ts"])]
    finally:
        con.close()


def _outside(s3: S3, tmp_path: Path) -> dict[str, str]:
    """Parquet files outside the root, each readable by the test itself; name -> URL."""
    secret = table_of([record("secret", "10:00", message="not yours")])
    s3.root("other").write_parquet("tenant=default/x.parquet", secret)                # same bucket, other prefix
    s3.root(f"{PREFIX}-archive").write_parquet("tenant=default/x.parquet", secret)    # same leading letters
    s3.root(PREFIX).write_parquet("tenant=default/inside.parquet", secret)
    bucket2 = f"{s3.bucket}-2"
    s3.client.create_bucket(Bucket=bucket2)
    DataRoot(f"s3://{bucket2}/{PREFIX}", s3.config).write_parquet("tenant=default/x.parquet", secret)
    local = tmp_path / "local.parquet"
    pq.write_table(secret, local)
    return {
        "other prefix": f"s3://{s3.bucket}/other/tenant=default/x.parquet",
        "sibling prefix": f"s3://{s3.bucket}/{PREFIX}-archive/tenant=default/x.parquet",
        "bucket root glob": f"s3://{s3.bucket}/*/tenant=default/x.parquet",
        "other bucket": f"s3://{bucket2}/{PREFIX}/tenant=default/x.parquet",
        "local file": str(local),
    }


def test_duckdb_cannot_read_outside_the_root(s3: S3, tmp_path: Path) -> None:
    outside = _outside(s3, tmp_path)
    # Each is really there: a connection without the restriction reads it.
    free = duckdb.connect(config=DUCKDB_CONFIG)
    try:
        s3.root("other").configure_duckdb(free)
        assert free.execute("SELECT count(*) FROM read_parquet(?)", [outside["other prefix"]]).fetchone() == (1,)
    finally:
        free.close()
    assert pq.read_table(outside["local file"]).num_rows == 1

    root = s3.root()
    con = duck(root)
    try:
        assert con.execute("SELECT count(*) FROM read_parquet(?)",
                           [root.file_url("tenant=default/inside.parquet")]).fetchone() == (1,)
        for url in outside.values():
            with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
                con.execute("SELECT count(*) FROM read_parquet(?)", [url]).fetchall()
        with pytest.raises(duckdb.PermissionException):
            con.execute("SELECT count(*) FROM read_csv(?)", [outside["local file"]]).fetchall()
        # The restriction cannot be lifted from inside.
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()


@pytest.mark.xfail(strict=True, reason=(
    "configure_duckdb's allowed_directories check is lexical for s3:// URLs: "
    "s3://bucket/lake/../other/x is allowed (it starts with s3://bucket/lake/) and httpfs then "
    "requests bucket/other/x with the root's secret; a local root refuses the same `..`"))
def test_duckdb_cannot_climb_out_of_the_root_with_dot_dot(s3: S3, tmp_path: Path) -> None:
    _outside(s3, tmp_path)
    con = duck(s3.root())
    try:
        with pytest.raises(duckdb.PermissionException):
            con.execute("SELECT count(*) FROM read_parquet(?)",
                        [f"s3://{s3.bucket}/{PREFIX}/../other/tenant=default/x.parquet"]).fetchall()
    finally:
        con.close()


def test_search_refuses_a_catalog_path_that_climbs_out_of_the_root(
        lake: tuple[Config, DataRoot, Catalog], s3: S3) -> None:
    cfg, root, catalog = lake
    store(root, catalog, [record("mine", "10:00")], "mine.parquet")
    s3.root("other").write_parquet("tenant=default/x.parquet", table_of([record("secret", "10:30")]))
    # A catalog row (a shared catalog is another trust boundary) pointing outside the root.
    commit(catalog, [SegmentInfo("default", "../other/tenant=default/x.parquet", at("10:30"), at("10:30"), 1, 100,
                                 {"api": 1}, {"info": 1})])
    service = SearchService(cfg, catalog)
    with pytest.raises(StorageError, match="leaves the data root"):
        service.search("", *ALL)
    assert ids(service.search("", ALL[0], f"{DAY}T10:15:00Z")) == ["mine"], "the rest of the root stays searchable"


# -- 3. search -------------------------------------------------------------------------


SEARCH_ROWS = {
    "first.parquet": [
        record("a1", "10:00", "api", "info", "GET /users 200"),
        record("a2", "10:10", "api", "error", "timeout talking to db"),
        record("d1", "10:20", "db", "warn", "slow query"),
        record("a3", "11:05", "api", "info", "GET /orders 200"),
        record("d2", "11:40", "db", "error", "deadlock detected"),
    ],
    "second.parquet": [
        record("w1", "10:15", "web", "info", "page served"),
        record("a4", "10:50", "api", "error", "timeout again"),
        record("w2", "12:30", "web", "error", "upstream timeout"),
    ],
}
ORDERED = ["a1", "a2", "w1", "d1", "a4", "a3", "d2", "w2"]


def build_search_lake(root: DataRoot, catalog: Catalog) -> None:
    for name, rows in SEARCH_ROWS.items():
        store(root, catalog, rows, name)
    # Another tenant's rows in the same hours: never in a search of "default".
    store(root, catalog, [record("x1", "10:30", "api", "error", "timeout elsewhere")], "other.parquet", "acme")


def test_search_service_on_s3_finds_exactly_the_committed_rows(lake: tuple[Config, DataRoot, Catalog]) -> None:
    cfg, root, catalog = lake
    build_search_lake(root, catalog)
    # Written but never committed: invisible.
    write_segments(root, "default", table_of([record("u1", "10:30", "api", "error", "timeout uncommitted")]),
                   "uncommitted.parquet")
    service = SearchService(cfg, catalog)

    assert ids(service.search("", *ALL, order="asc")) == ORDERED
    assert ids(service.search("", *ALL)) == ORDERED[::-1], "newest first by default"
    assert ids(service.search("", *ALL, limit=3)) == ["w2", "d2", "a3"]
    # Start inclusive, end exclusive.
    assert ids(service.search("", f"{DAY}T10:10:00Z", f"{DAY}T11:05:00Z", order="asc")) == ["a2", "w1", "d1", "a4"]
    assert ids(service.search("", f"{DAY}T13:00:00Z", f"{DAY}T14:00:00Z")) == []
    assert ids(service.search("timeout", *ALL, order="asc")) == ["a2", "a4", "w2"]
    assert ids(service.search("level:error", *ALL, order="asc")) == ["a2", "a4", "d2", "w2"]
    assert ids(service.search("service:db OR service:web", *ALL, order="asc")) == ["w1", "d1", "d2", "w2"]
    assert ids(service.search("level:error AND NOT service:api", *ALL)) == ["w2", "d2"]
    assert ids(service.search("service:api", *ALL, tenant="acme")) == ["x1"]

    r = service.search("service:db", *ALL)
    assert r.stats["segments_total"] == 4 and r.stats["segments_scanned"] == 2, "pruned by the catalog's stats"

    row = service.search("slow", *ALL).rows[0]
    assert row["service"] == "db" and row["level"] == "warn" and row["host"] == "web-1"
    assert (row["ts"], row["observed_ts"]) == (f"{DAY}T10:20:00.000000Z", f"{DAY}T10:20:00.001000Z")
    assert row["attrs"] == {"id": "d1"}


def test_search_api_on_s3(lake: tuple[Config, DataRoot, Catalog]) -> None:
    import httpx

    from query.api.app import create_app

    cfg, root, catalog = lake
    build_search_lake(root, catalog)
    app = create_app(cfg.model_copy(update={"auth": cfg.auth.model_copy(update={"enabled": False})}), catalog)

    async def get(path: str, **params: str) -> httpx.Response:
        # localhost: a server on loopback answers only to the names of loopback (DNS rebinding).
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
            return await client.get(path, params=params)

    resp = asyncio.run(get("/api/v1/search", q="timeout", start=ALL[0], end=ALL[1], order="asc"))
    assert resp.status_code == 200, resp.text
    assert [r["attrs"]["id"] for r in resp.json()["rows"]] == ["a2", "a4", "w2"]
    # Ready on an S3 root; what is stored is the catalog's to say, not an open probe's (issue 19).
    assert asyncio.run(get("/readyz")).json() == {"status": "ready"}
    assert catalog.totals()["rows"] == 9


# -- 4. ingest ---------------------------------------------------------------------------


@dataclass
class Source:
    """Frames of one shipped file, built the way ``loglake ship`` builds them."""

    name: str
    offset: int = 0

    def __post_init__(self) -> None:
        self.source_id = f"s3test:{self.name}:{uuid.uuid4().hex[:8]}"

    def frame(self, first: int, count: int) -> tuple[bytes, bytes, list[str]]:
        """Records ``first``..``first+count-1`` of this source, as the next frame; (key, value, messages)."""
        from loglake.core.frame import FrameMeta, encode_frame, record_offsets

        messages = [f"INFO s3 ingest record {self.name}-{i:04d}" for i in range(first, first + count)]
        data = "".join(m + "\n" for m in messages).encode()
        meta = FrameMeta(source_id=self.source_id, source=f"/var/log/{self.name}.log", host="s3host",
                         service=self.name, tenant="default", first_offset=self.offset,
                         end_offset=self.offset + len(data), observed_us=time.time_ns() // 1000, count=count)
        self.offset += len(data)
        return self.source_id.encode(), encode_frame(meta, data, record_offsets(data)), messages


async def _produce(bootstrap: str, topic: str, frames: list[tuple[bytes, bytes, list[str]]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for key, value, _ in frames:
            await producer.send_and_wait(topic, value, key=key, headers=[("tenant", b"default")])
    finally:
        await producer.stop()


async def _ingest_until(cfg: Config, catalog: Catalog, rows: int, produce: list[tuple[bytes, bytes, list[str]]],
                        timeout_s: float = 30) -> dict[str, int]:
    """Run an IngestWorker, produce ``produce``, wait until the catalog holds ``rows`` rows (and a moment)."""
    from ingest.worker import IngestWorker

    worker = IngestWorker(cfg, catalog)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await _produce(cfg.kafka.bootstrap_servers, cfg.kafka.topic, produce)
        deadline = time.monotonic() + timeout_s
        while catalog.totals()["rows"] < rows:
            if task.done():
                task.result()
            assert time.monotonic() < deadline, f"catalog has {catalog.totals()}, want {rows} rows"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.8)          # a duplicate would be flushed by now
    finally:
        stop.set()
        await task
    return dict(worker.stats)


def test_ingest_worker_stores_every_record_exactly_once_on_s3(broker: str, s3: S3, tmp_path: Path) -> None:
    from loglake.core.topics import ensure_topic

    topic = f"s3test.{uuid.uuid4().hex[:12]}"

    def config(group: str) -> Config:
        return lake_config(s3, tmp_path, kafka={"bootstrap_servers": broker, "topic": topic, "partitions": 2},
                           ingest={"group_id": f"{topic}-{group}", "flush_interval_s": 0.3,
                                   "dead_letter_topic": f"{topic}.dead"})

    cfg = config("first")
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    try:
        asyncio.run(ensure_topic(cfg.kafka))
        a, b = Source("alpha"), Source("beta")
        first = [a.frame(0, 50), a.frame(50, 50), b.frame(0, 40), a.frame(100, 25), b.frame(40, 40)]
        stats1 = asyncio.run(_ingest_until(cfg, catalog, 205, first))
        assert stats1["records"] == 205

        # A second worker (a restart) resumes from the catalog's offsets, not Kafka's: it
        # joins a new consumer group (no committed offsets there; also a quicker join
        # than waiting out the old group's rebalance). The shipper of alpha re-sends its
        # last frame, byte for byte (an acknowledgement was lost), before new ones.
        second = [first[3], a.frame(125, 30), b.frame(80, 20)]
        stats2 = asyncio.run(_ingest_until(config("second"), catalog, 255, second))
        assert stats2["records"] == 50 and stats2["deduplicated"] == 25

        want = Counter(m for frames in (first, second[1:]) for _, _, ms in frames for m in ms)
        assert len(want) == 255
        assert catalog.totals()["rows"] == 255

        root = DataRoot.from_config(cfg.storage)
        live = [s.path for s in catalog.live_segments()]
        assert all(p.startswith("tenant=default/") and p.endswith(".parquet") for p in live)
        assert set(root.files()) == set(live), "every live segment is an object on S3, and nothing else is"
        assert s3.object_keys() == set(live)
        stored = Counter(m for p in live for m in root.read_parquet(p)["message"].to_pylist())
        assert stored == want, "every record exactly once"
        # And the search service sees the same.
        got = SearchService(cfg, catalog).search("ingest", "now-1h", "now+1h", limit=1000)
        assert Counter(r["message"] for r in got.rows) == want
    finally:
        catalog.close()


# -- 5. compaction, garbage, fsck -----------------------------------------------------------


def small_segments(root: DataRoot, catalog: Catalog, n: int = 12) -> list[dict[str, Any]]:
    """``n`` small segments in hour 10, services interleaved, one commit each."""
    rows = []
    for i in range(n):
        part = [record(f"s{i}-{j}", f"10:{(i * 5 + j * 7) % 60:02d}:{i:02d}", ["api", "db", "web"][(i + j) % 3],
                       ["info", "warn", "error"][j % 3]) for j in range(6)]
        store(root, catalog, part, f"small-{i:02d}.parquet")
        rows += part
    return rows


def test_compaction_on_s3_merges_an_hour_and_garbage_collection_deletes_the_inputs(
        lake: tuple[Config, DataRoot, Catalog], s3: S3) -> None:
    cfg, root, catalog = lake
    small_segments(root, catalog)
    [lone] = store(root, catalog, [record("lone", "11:00")], "lone.parquet")     # alone in its hour
    inputs = [s.path for s in catalog.live_segments() if "/hour=10/" in s.path]
    assert len(inputs) == 12
    before = live_rows(root, catalog)
    service = SearchService(cfg, catalog)
    found_before = ids(service.search("", *ALL, limit=1000, order="asc"))

    # The hours are years old; first as a service compacts an hour still being written.
    report = compact(root, catalog, CompactionConfig(min_age_s=0, settle_s=1e12))

    assert (report.batches, report.inputs, report.outputs, report.rows) == (1, 12, 1, 72)
    live = catalog.live_segments()
    [merged] = [s for s in live if "/hour=10/" in s.path]
    assert merged.path.startswith("tenant=default/date=2024-03-01/hour=10/compacted-")
    assert sorted(s.path for s in live) == sorted([merged.path, lone.path])
    assert live_rows(root, catalog) == before, "the same rows, no more, no fewer"
    t = root.read_parquet(merged.path)
    keys = list(zip(t["service"].cast(pa.string()).to_pylist(), t["ts"].to_pylist(), strict=True))
    assert keys == sorted(keys), "sorted by (service, ts)"
    assert ids(service.search("", *ALL, limit=1000, order="asc")) == found_before
    # The inputs wait out the grace period.
    assert all(root.exists(p) for p in inputs)
    assert catalog.retired() and {s.path for s in catalog.retired()} == set(inputs)
    assert collect_garbage(root, catalog, grace_s=600).retired_deleted == 0
    # A retired input whose object someone already deleted: fsck forgets it.
    s3.remove(f"{PREFIX}/{inputs[0]}")
    report = fsck(root, catalog)
    assert [s.path for s in report.retired_gone] == [inputs[0]] and report.missing == [] and report.orphans == []
    fsck(root, catalog, repair=True)
    assert inputs[0] not in catalog.known_paths()

    gc = collect_garbage(root, catalog, grace_s=0)

    assert (gc.retired_deleted, gc.orphans_deleted) == (11, 0)
    assert not any(root.exists(p) for p in inputs)
    assert catalog.retired() == []
    assert set(root.files()) == {merged.path, lone.path}
    assert s3.object_keys() == {merged.path, lone.path}
    assert live_rows(root, catalog) == before
    assert fsck(root, catalog).clean
    # Settled (settle_s after the last segment came): both hours written once more at the
    # settled level, on S3 as on disk.
    settled = CompactionConfig(min_age_s=0)
    later = time.time_ns() // 1000 + int(settled.settle_s * 1e6) + 1
    again = compact(root, catalog, settled, now_us=later)
    assert (again.batches, again.inputs, again.outputs, again.rows) == (2, 2, 2, 73)
    assert {s.zstd_level for s in catalog.live_segments()} == {settled.settled_zstd_level}
    assert compact(root, catalog, settled, now_us=later).batches == 0
    collect_garbage(root, catalog, grace_s=0)
    assert s3.object_keys() == {s.path for s in catalog.live_segments()}
    assert live_rows(root, catalog) == before
    assert ids(service.search("", *ALL, limit=1000, order="asc")) == found_before
    assert fsck(root, catalog).clean


def test_fsck_on_s3_reports_and_deletes_an_orphan_object(lake: tuple[Config, DataRoot, Catalog], s3: S3) -> None:
    cfg, root, catalog = lake
    [seg] = store(root, catalog, [record("k1", "10:00"), record("k2", "10:30")], "kept.parquet")
    orphan = "tenant=default/date=2024-03-01/hour=10/crashed-writer.parquet"
    body = pq_bytes(table_of([record("o1", "10:10")]))
    s3.put(f"{PREFIX}/{orphan}", body)
    s3.put(f"{PREFIX}/README.txt", b"not a segment")                            # not ours to judge
    s3.put(f"{PREFIX}/tenant=default/notes.json", b"{}")

    young = fsck(root, catalog)                       # default grace: it may be a commit under way
    assert [o[0] for o in young.young_orphans] == [orphan] and young.orphans == [] and young.clean

    report = fsck(root, catalog, grace_s=0)
    assert [(p, size) for p, size, _ in report.orphans] == [(orphan, len(body))]
    assert report.missing == [] and report.retired_gone == [] and not report.clean
    assert s3.size(f"{PREFIX}/{orphan}") == len(body), "a report alone deletes nothing"

    repaired = fsck(root, catalog, repair=True, grace_s=0)
    assert repaired.deleted_orphans == 1
    assert s3.object_keys() == {seg.path, "README.txt", "tenant=default/notes.json"}
    assert [s.path for s in catalog.live_segments()] == [seg.path]
    assert fsck(root, catalog, grace_s=0).clean
    assert ids(SearchService(cfg, catalog).search("", *ALL, order="asc")) == ["k1", "k2"]


def test_fsck_on_s3_takes_a_segment_whose_object_is_gone_out_of_the_live_set(
        lake: tuple[Config, DataRoot, Catalog], s3: S3) -> None:
    cfg, root, catalog = lake
    [kept] = store(root, catalog, [record("k1", "10:00", "api"), record("k2", "10:30", "db")], "kept.parquet")
    [lost] = store(root, catalog, [record("l1", "11:00", "api"), record("l2", "11:10", "api"),
                                   record("l3", "11:20", "web")], "lost.parquet")
    s3.remove(f"{PREFIX}/{lost.path}")
    service = SearchService(cfg, catalog)
    with pytest.raises(duckdb.Error):
        service.search("", *ALL)                       # why it matters: the query fails on it

    report = fsck(root, catalog)
    assert [s.path for s in report.missing] == [lost.path] and report.orphans == [] and not report.clean
    assert [s.path for s in catalog.live_segments()] == [kept.path, lost.path], "a report changes nothing"

    fsck(root, catalog, repair=True)

    assert [s.path for s in catalog.live_segments()] == [kept.path]
    assert catalog.known_paths()[lost.path][1] == "missing", "kept for the record"
    audit = [a for a in catalog.audit_log() if a.action == "missing"]
    assert sorted((a.service, a.rows, a.detail["segment"]) for a in audit) == [
        ("api", 2, lost.path), ("web", 1, lost.path)]
    assert ids(service.search("", *ALL, order="asc")) == ["k1", "k2"]
    assert fsck(root, catalog).clean


# -- 6. retention and deletion ---------------------------------------------------------------


def test_retention_on_s3_drops_and_rewrites_and_the_rest_stays_searchable(
        lake: tuple[Config, DataRoot, Catalog], s3: S3) -> None:
    cfg, root, catalog = lake
    [old] = store(root, catalog, [record("o1", "09:00"), record("o2", "09:40", "db")], "old.parquet")
    [straddling] = store(root, catalog, [record("s1", "10:00"), record("s2", "10:20", "db"),
                                         record("s3", "10:40"), record("s4", "10:50", "db")], "straddling.parquet")
    [new] = store(root, catalog, [record("n1", "11:10"), record("n2", "11:50", "web")], "new.parquet")
    rules = retention.Rules.of(RetentionConfig(policies=[RetentionPolicy(max_age="1h")]))

    report = retention.run(root, catalog, rules, now_us=at("11:30"))          # rows before 10:30 expire

    assert sum(r.rows for r in report.removed) == 4 and report.conflicts == 0
    live = {s.path: s for s in catalog.live_segments()}
    [rewritten] = [p for p in live if "/hour=10/" in p]
    assert rewritten.startswith("tenant=default/date=2024-03-01/hour=10/rewritten-")
    assert sorted(live) == sorted([rewritten, new.path])
    kept = root.read_parquet(rewritten).cast(RECORD_SCHEMA).to_pylist()
    assert sorted(dict(r["attrs"])["id"] for r in kept) == ["s3", "s4"]
    assert live[rewritten].rows == 2 and live[rewritten].min_ts_us == at("10:40")
    assert ids(SearchService(cfg, catalog).search("", *ALL, order="asc")) == ["s3", "s4", "n1", "n2"]
    assert {a.action for a in catalog.audit_log()} == {"retention"}
    assert sum(a.rows for a in catalog.audit_log()) == 4

    collect_garbage(root, catalog, grace_s=0)
    assert s3.object_keys() == {rewritten, new.path}, "expired objects really gone from the bucket"
    assert not root.exists(old.path) and not root.exists(straddling.path)


def test_delete_matching_on_s3_rewrites_the_segment_without_the_matching_rows(
        lake: tuple[Config, DataRoot, Catalog], s3: S3) -> None:
    cfg, root, catalog = lake
    [seg] = store(root, catalog, [
        record("m1", "10:00", "api", "info", "login ok user=ann"),
        record("m2", "10:10", "api", "error", "leaked password=hunter2 in log"),
        record("m3", "10:20", "db", "info", "vacuum done"),
        record("m4", "10:30", "api", "warn", "retrying with password=hunter2"),
    ], "secrets.parquet")
    [later] = store(root, catalog, [record("m5", "11:30", "api", "info", "password=hunter2 again")], "later.parquet")
    service = SearchService(cfg, catalog)
    assert ids(service.search("hunter2", *ALL, order="asc")) == ["m2", "m4", "m5"]

    report = delete_matching(root, catalog, tenant="default", query="hunter2", start_us=at("10:00"),
                             end_us=at("11:00"), actor="test: leaked password")

    assert report.rows == 2 and report.conflicts == 0
    live = [s.path for s in catalog.live_segments()]
    [rewritten] = [p for p in live if "/hour=10/" in p]
    assert "rewritten-" in rewritten and sorted(live) == sorted([rewritten, later.path])
    assert ids(service.search("hunter2", *ALL, order="asc")) == ["m5"], "outside the range: kept"
    assert ids(service.search("", *ALL, order="asc")) == ["m1", "m3", "m5"]
    [a] = [a for a in catalog.audit_log() if a.action == "delete"]
    assert (a.actor, a.service, a.rows, a.detail["segment"]) == ("test: leaked password", "api", 2, seg.path)

    collect_garbage(root, catalog, grace_s=0)
    assert s3.object_keys() == {rewritten, later.path}
    left = [m for p in s3.object_keys() for m in root.read_parquet(p)["message"].to_pylist()]
    assert sorted(m for m in left if "hunter2" in m) == ["password=hunter2 again"], "really gone from the bucket"
