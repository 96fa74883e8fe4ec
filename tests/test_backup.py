"""Backups (storage/backup.py, `loglake backup`): incremental, verifiable, restorable, on both catalogs.

The destination is a bucket on the S3 server the storage tests use (moto, on loopback), or a
directory; the data root is a directory and the catalog SQLite or PostgreSQL. A restore goes
into a data root and a catalog that were destroyed, and every search answer must be the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loglake.core.config import CompactionConfig, Config
from query.deletion import delete_matching
from query.service import SearchService
from storage import backup
from storage.catalog import Catalog, PartitionCommit, PartitionState
from storage.compaction import compact
from storage.errors import BackupError
from storage.maintenance import Maintenance
from storage.root import DataRoot
from storage.segments import HOUR_US, write_segments
from tests.helpers.catalogs import is_postgres, run_sql
from tests.helpers.lake import arrow_table, record
from tests.helpers.s3 import S3

pytestmark = pytest.mark.timeout(90)

T0 = 1_709_251_200_000_000          # 2024-03-01T00:00:00Z
START, END = "2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z"
QUERIES = ["", "level:error", "service:db", "level:warn AND NOT service:api", "http.status:[200 TO 203]", "line*"]


def flush(root: DataRoot, catalog: Catalog, tenant: str, n: int) -> int:
    """One flush of 12 records over hours 0-2 (one segment per hour); returns the segments written."""
    rows = [record(T0 + (i % 3) * HOUR_US + n * 1_000_000 + i, ("api", "db")[i % 2], ("info", "error", "warn")[i % 3],
                   f"{tenant} flush {n} line {i}", attrs=[("http.status", str(200 + i % 5))])
            for i in range(12)]
    infos = write_segments(root, tenant, arrow_table(rows), f"logs.p0.e0.{n:012d}-{n:012d}.parquet")
    state = catalog.partition_states("logs").get(0, PartitionState(0, 0))
    catalog.commit([PartitionCommit("logs", 0, state.epoch, state.next_offset, state.next_offset + 1, infos)])
    return len(infos)


def answers(cfg: Config, catalog: Catalog) -> dict[tuple[str, str], Any]:
    """Every query's rows and hourly counts, for each tenant."""
    service = SearchService(cfg, catalog)
    out: dict[tuple[str, str], Any] = {}
    for tenant in ("acme", "zeta"):
        for q in QUERIES:
            out[(tenant, q)] = (service.search(q, START, END, limit=1000, tenant=tenant).rows,
                                service.aggregate(q, START, END, interval="1h", tenant=tenant).series)
    return out


def destroy_catalog(url: str) -> None:
    if is_postgres(url):
        tables = [t for (t,) in run_sql(url, "SELECT table_name FROM information_schema.tables"
                                             " WHERE table_schema = current_schema()")]
        for t in tables:
            run_sql(url, f'DROP TABLE "{t}" CASCADE')
    else:
        Path(url.removeprefix("sqlite:///")).unlink()


def config(data: Path, catalog_url: str, **sections: Any) -> Config:
    return Config.model_validate({"storage": {"data_root": str(data), "catalog_url": catalog_url}, **sections})


def test_a_backup_to_s3_is_incremental_and_restores_every_search_answer(
        s3: S3, tmp_path: Path, catalog_url: str) -> None:
    data = tmp_path / "data"
    cfg = config(data, catalog_url)
    root, catalog = DataRoot.from_config(cfg.storage), Catalog(catalog_url)
    dest = DataRoot(s3.url("backups"), s3.config)
    try:
        first = sum(flush(root, catalog, t, n) for n, t in enumerate(["acme", "acme", "zeta"]))
        run_sql(catalog_url, "INSERT INTO saved_queries (tenant, name, kind, query, params, description, owner,"
                             " created_us, updated_us) VALUES ('acme', 'errors', 'search', 'error', '{}', '', 'me',"
                             " 1, 1)")
        b1 = backup.create(root, catalog, dest)
        assert (b1.manifest.copied, b1.reused) == (first, 0) and len(b1.manifest.segments) == first

        # More data, a compaction (new files, old ones retired) and a deletion (audited, rewritten).
        second = flush(root, catalog, "acme", 3) + flush(root, catalog, "zeta", 4)
        compacted = compact(root, catalog, CompactionConfig(min_age_s=0), tenant="zeta")
        assert compacted.batches
        assert delete_matching(root, catalog, tenant="acme", query='"line 5"', start_us=T0, end_us=T0 + 3 * HOUR_US,
                               actor="test").rows
        live = {s.path for s in catalog.live_segments()}
        b2 = backup.create(root, catalog, dest)
        old = {f.path.removeprefix("segments/") for f in b1.manifest.segments}
        assert b2.manifest.copied == len(live - old) and b2.reused == len(live & old), "only new segments copied"
        assert 0 < b2.manifest.copied < len(live) and second
        assert {f.path.removeprefix("segments/") for f in b2.manifest.segments} == live
        assert [m.id for m in backup.manifests(dest)] == [b1.manifest.id, b2.manifest.id]
        assert backup.verify(dest) == []
        before = answers(cfg, catalog)
        assert before[("acme", "")][0] and before[("zeta", "level:error")][0]
        audit = catalog.audit_log()
        assert audit
    finally:
        catalog.close()

    # Disaster: the data root and the catalog are gone.
    import shutil

    shutil.rmtree(data)
    destroy_catalog(catalog_url)
    r = backup.restore(dest, DataRoot(str(data)), catalog_url)
    assert r.backup == b2.manifest.id and r.segments == len(live)
    catalog = Catalog(catalog_url)
    try:
        assert answers(cfg, catalog) == before, "every search answer is what it was"
        assert {s.path for s in catalog.live_segments()} == live
        assert catalog.audit_log() == audit
        assert run_sql(catalog_url, "SELECT name, query FROM saved_queries") == [("errors", "error")]
        # New segments get fresh ids after the restored ones (PostgreSQL's identity went on past them).
        flush(DataRoot(str(data)), catalog, "acme", 9)
        assert len({s.id for s in catalog.live_segments()}) == len(catalog.live_segments())
    finally:
        catalog.close()

    # A restore never writes over a lake: this catalog is not empty now.
    with pytest.raises(BackupError, match="not empty"):
        backup.restore(dest, DataRoot(str(tmp_path / "elsewhere")), catalog_url)


def test_verify_finds_a_missing_or_altered_file_and_restore_refuses_a_damaged_copy(s3: S3, tmp_path: Path) -> None:
    cfg = config(tmp_path / "data", f"sqlite:///{tmp_path}/catalog.sqlite")
    root, catalog = DataRoot.from_config(cfg.storage), Catalog(cfg.storage.resolved_catalog_url())
    dest = DataRoot(s3.url("backups"), s3.config)
    try:
        for n in range(2):
            flush(root, catalog, "acme", n)
        m = backup.create(root, catalog, dest).manifest
    finally:
        catalog.close()
    assert backup.verify(dest) == []
    gone, altered, resized = (f.path for f in m.segments[:3])
    s3.remove(f"backups/{gone}")
    body = s3.client.get_object(Bucket=s3.bucket, Key=f"backups/{altered}")["Body"].read()
    s3.put(f"backups/{altered}", body[:100] + bytes([body[100] ^ 0xFF]) + body[101:])     # same size, one bit
    grown = s3.client.get_object(Bucket=s3.bucket, Key=f"backups/{resized}")["Body"].read() + b"\0"
    s3.put(f"backups/{resized}", grown)
    problems = {p.path: p.what for p in backup.verify(dest)}
    assert problems == {gone: "missing", altered: "checksum differs",
                        resized: f"size {len(grown)}, expected {len(grown) - 1}"}
    target = tmp_path / "restored"
    with pytest.raises(BackupError):
        backup.restore(dest, DataRoot(str(target)), f"sqlite:///{target}/catalog.sqlite")
    restored = Catalog(f"sqlite:///{target}/catalog.sqlite")
    try:
        assert restored.live_segments() == [], "nothing recorded from a damaged backup"
    finally:
        restored.close()


@pytest.mark.slow
def test_a_postgresql_backup_restores_into_sqlite(tmp_path: Path, pg_url: str) -> None:
    cfg = config(tmp_path / "data", pg_url)
    root, catalog = DataRoot.from_config(cfg.storage), Catalog(pg_url)
    dest = DataRoot(str(tmp_path / "backups"))
    try:
        for n, t in enumerate(["acme", "zeta"]):
            flush(root, catalog, t, n)
        before = answers(cfg, catalog)
        m = backup.create(root, catalog, dest).manifest
        assert m.source == "postgresql"
    finally:
        catalog.close()
    target = tmp_path / "restored"
    backup.restore(dest, DataRoot(str(target)), f"sqlite:///{target}/catalog.sqlite")
    restored = Catalog(f"sqlite:///{target}/catalog.sqlite")
    try:
        assert answers(config(target, f"sqlite:///{target}/catalog.sqlite"), restored) == before
    finally:
        restored.close()


def test_maintain_backs_up_on_schedule_and_keeps_the_newest(tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    cfg = config(tmp_path / "data", f"sqlite:///{tmp_path}/catalog.sqlite",
                 backup={"dest": str(dest), "keep": 2, "interval_s": 3600}, iceberg={"enabled": True})
    m = Maintenance(cfg)
    try:
        assert "backup" in m.jobs and m.jobs["backup"][1].interval_s == 3600
        ids = []
        for n in range(3):
            flush(m.root, m.catalog, "acme", n)
            m.run_job("iceberg")           # the mirror's tables stay out of the backup
            m.run_job("backup")
            assert m.jobs["backup"][1].fault is None, m.jobs["backup"][1].fault
            ids.append(m.catalog.jobs()["backup"]["result"]["backup"])
        kept = backup.manifests(DataRoot(str(dest)))
        assert [k.id for k in kept] == ids[1:], "the oldest backup was pruned"
        wanted = {f.path for k in kept for f in k.segments}
        assert set(DataRoot(str(dest)).files(backup.SEGMENTS)) == wanted, "and the copies only it used"
        assert backup.verify(DataRoot(str(dest))) == []
    finally:
        assert m.mirror is not None
        m.mirror.close()
        m.catalog.close()
    catalog_copy = tmp_path / "check.sqlite"
    DataRoot(str(dest)).fs.copy_file(f"{dest}/backups/{ids[-1]}/catalog.sqlite", str(catalog_copy))
    tables = {t for (t,) in run_sql(f"sqlite:///{catalog_copy}", "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "segments" in tables and not {t for t in tables if t.startswith("iceberg")}


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What a command printed, its lines as the terminal width wrapped them joined again."""
    return " ".join(capsys.readouterr().out.split())


def test_the_backup_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from loglake.cli import main

    data, dest, target = tmp_path / "data", tmp_path / "backups", tmp_path / "restored"
    monkeypatch.setenv("LOGLAKE_STORAGE__DATA_ROOT", str(data))
    catalog = Catalog(f"sqlite:///{data}/catalog.sqlite")
    try:
        segments = flush(DataRoot(str(data)), catalog, "acme", 0)
    finally:
        catalog.close()
    assert main(["backup", "create", str(dest)]) == 0
    assert f"copied {segments}" in printed(capsys)
    assert main(["backup", "list", str(dest)]) == 0
    assert main(["backup", "verify", str(dest)]) == 0
    assert "1 backups verified" in printed(capsys)
    assert main(["backup", "restore", str(dest), "--to", str(target)]) == 0
    assert f"{segments} segments (12 rows" in printed(capsys)
    restored = Catalog(f"sqlite:///{target}/catalog.sqlite")
    try:
        assert sum(s.rows for s in restored.live_segments()) == 12
    finally:
        restored.close()
    next(iter((dest / "segments").rglob("*.parquet"))).unlink()
    assert main(["backup", "verify", str(dest)]) == 1
    assert "missing" in printed(capsys)
    assert main(["backup", "restore", str(dest), "--to", str(target)]) == 1, "a restore into a lake is refused"
