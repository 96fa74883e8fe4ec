"""Backups: a consistent copy of the catalog and every live segment, incremental, verifiable, restorable.

Layout of a destination (a directory or an ``s3://`` prefix, through :class:`DataRoot`)::

    segments/tenant=<t>/date=.../hour=../<name>.parquet   shared by every backup (segments are immutable)
    backups/<id>/catalog.sqlite                           the catalog as of the backup
    backups/<id>/manifest.json                            written last: a backup without it is unfinished

The catalog is snapshotted first: a SQLite catalog by SQLite's online backup,
a PostgreSQL one by reading every table in one REPEATABLE READ transaction
into a fresh SQLite catalog (so a backup restores into either kind). The
segments to copy are the snapshot's live ones; a segment already in
``segments/`` with the right size is not copied again. The manifest records
the size and SHA-256 of every file, which ``verify`` checks and ``restore``
checks again as it copies. The Iceberg mirror's tables are left out: they name
files by their absolute location, and the mirror rebuilds itself from the
restored catalog on its first sync.

A live segment compacted away during a backup keeps its file for the grace
period (``storage.grace_s``); a backup that takes longer than that can find it
gone, and fails saying so (the next one starts from the segments copied).
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from storage.catalog import MIGRATIONS, Catalog
from storage.compaction import is_segment_file
from storage.errors import BackupError
from storage.root import DataRoot

SEGMENTS = "segments"
BACKUPS = "backups"
CATALOG_FILE = "catalog.sqlite"
MANIFEST_FILE = "manifest.json"
CHUNK = 1 << 20
#: Tables that are not loglake's own (the Iceberg SQL catalog's) or that a restore writes itself.
_NOT_COPIED = ("loglake_schema",)


def _is_copied(table: str) -> bool:
    return table not in _NOT_COPIED and not table.startswith("iceberg_")


@dataclass(frozen=True, slots=True)
class BackupFile:
    path: str               # relative to the destination
    size: int
    sha256: str


@dataclass
class Manifest:
    """What one backup holds."""

    id: str
    created_us: int
    schema_version: int
    source: str                                   # "sqlite" | "postgresql": the catalog it was taken from
    catalog: BackupFile
    segments: list[BackupFile] = field(default_factory=list)
    rows: int = 0
    #: Segments this backup copied (the others were in the destination already).
    copied: int = 0
    copied_bytes: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        d = orjson.loads(data)
        return cls(**{**d, "catalog": BackupFile(**d["catalog"]),
                      "segments": [BackupFile(**s) for s in d["segments"]]})

    @property
    def bytes(self) -> int:
        return self.catalog.size + sum(s.size for s in self.segments)


@dataclass(frozen=True, slots=True)
class Problem:
    backup: str
    path: str
    what: str               # "missing" | "size ..." | "checksum differs"


def copy_file(src: DataRoot, rel: str, dest: DataRoot, dest_rel: str, *,
              expect_sha256: str | None = None) -> BackupFile:
    """Copy one file between roots, hashing it on the way; with ``expect_sha256``, a file whose
    bytes differ is refused (and not left behind)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with src.open_input(rel) as inp, dest.writer(dest_rel) as out:
            while chunk := inp.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            if expect_sha256 is not None and digest.hexdigest() != expect_sha256:
                raise BackupError(f"{rel}: checksum differs from the manifest's (the backup copy is damaged)")
    except FileNotFoundError as e:
        raise BackupError(f"{rel}: not found in {src.url}") from e
    return BackupFile(dest_rel, size, digest.hexdigest())


def file_digest(root: DataRoot, rel: str) -> tuple[int, str]:
    """Size and SHA-256 of the file at ``rel``."""
    digest = hashlib.sha256()
    size = 0
    with root.open_input(rel) as inp:
        while chunk := inp.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def new_id(now_us: int) -> str:
    return datetime.fromtimestamp(now_us / 1e6, UTC).strftime("%Y%m%dT%H%M%S.%fZ")


# -- the catalog's snapshot ------------------------------------------------------------------


def snapshot_catalog(catalog: Catalog, dest: Path) -> Catalog:
    """A consistent copy of ``catalog`` as a SQLite catalog at ``dest``, without retired segments
    or the Iceberg mirror's tables; returned open."""
    if not catalog.postgres:
        catalog.db.copy_sqlite_to(dest)
        copy = Catalog(f"sqlite:///{dest}")
    else:
        copy = Catalog(f"sqlite:///{dest}")
        wanted = {t: cols for t, cols in copy.db.tables().items() if _is_copied(t)}
        source_tables = catalog.db.tables()
        with catalog.db.snapshot() as snap, copy.db.transaction() as tx:
            for table, columns in wanted.items():
                cols = [c for c in columns if c in source_tables.get(table, [])]
                if not cols:
                    continue
                names = ", ".join(f'"{c}"' for c in cols)
                rows = snap.execute(f'SELECT {names} FROM "{table}"').fetchall()
                if rows:
                    tx.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({tx.dialect.params(len(cols))})',
                                        [tuple(r) for r in rows])
    mirror_tables = [t for t in copy.db.tables() if t.startswith("iceberg_")]
    with copy.db.transaction() as tx:
        tx.execute("DELETE FROM segments WHERE state <> 'live'")
        for table in mirror_tables:
            if table.startswith("iceberg_"):
                tx.execute(f'DROP TABLE "{table}"')
    return copy


# -- creating, listing, verifying, pruning -----------------------------------------------------


@dataclass
class BackupReport:
    manifest: Manifest
    reused: int = 0
    seconds: float = 0.0


def manifests(dest: DataRoot) -> list[Manifest]:
    """Every finished backup in ``dest``, oldest first."""
    out = []
    for rel in sorted(dest.files(BACKUPS)):
        if rel.endswith("/" + MANIFEST_FILE):
            with dest.open_input(rel) as f:
                out.append(Manifest.from_json(f.read()))
    return sorted(out, key=lambda m: m.id)


def create(root: DataRoot, catalog: Catalog, dest: DataRoot, *, now_us: int | None = None,
           progress: Callable[[int], None] | None = None) -> BackupReport:
    """Back up ``catalog`` and its live segments into ``dest``; copies only segments ``dest`` lacks."""
    t0 = time.perf_counter()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    backup_id = new_id(now_us)
    known = {s.path: s for m in manifests(dest) for s in m.segments}
    have = dest.files(SEGMENTS)
    with tempfile.TemporaryDirectory(prefix="loglake-backup-") as tmp:
        copy = snapshot_catalog(catalog, Path(tmp) / CATALOG_FILE)
        try:
            live = copy.live_segments()
            version = copy.schema_version()
        finally:
            copy.close()
        report = BackupReport(Manifest(backup_id, now_us, version, "postgresql" if catalog.postgres else "sqlite",
                                       BackupFile("", 0, "")))
        m = report.manifest
        for seg in live:
            rel = f"{SEGMENTS}/{seg.path}"
            stat = have.get(rel)
            if stat is not None and stat.size == seg.bytes:
                prior = known.get(rel)
                if prior is not None and prior.size == stat.size:
                    m.segments.append(prior)
                else:
                    m.segments.append(BackupFile(rel, *file_digest(dest, rel)))
                report.reused += 1
            else:
                f = copy_file(root, seg.path, dest, rel)
                if f.size != seg.bytes:
                    raise BackupError(f"{seg.path}: {f.size} bytes, the catalog says {seg.bytes}")
                m.segments.append(f)
                m.copied += 1
                m.copied_bytes += f.size
            m.rows += seg.rows
            if progress is not None:
                progress(seg.bytes)
        local = DataRoot(tmp)
        m.catalog = copy_file(local, CATALOG_FILE, dest, f"{BACKUPS}/{backup_id}/{CATALOG_FILE}")
    with dest.writer(f"{BACKUPS}/{backup_id}/{MANIFEST_FILE}") as out:
        out.write(m.to_json())
    report.seconds = time.perf_counter() - t0
    return report


def find(dest: DataRoot, backup_id: str | None = None) -> Manifest:
    """The backup ``backup_id`` (default: the newest) in ``dest``."""
    found = manifests(dest)
    if not found:
        raise BackupError(f"no backup in {dest.url}")
    if backup_id is None:
        return found[-1]
    for m in found:
        if m.id == backup_id:
            return m
    raise BackupError(f"no backup {backup_id!r} in {dest.url} (there are: {', '.join(m.id for m in found)})")


def verify(dest: DataRoot, backup_ids: Iterable[str] | None = None,
           progress: Callable[[int], None] | None = None) -> list[Problem]:
    """Every file of each backup (default: all) present, of its size, with its SHA-256."""
    chosen = manifests(dest) if backup_ids is None else [find(dest, i) for i in backup_ids]
    files = dest.files()
    checked: dict[str, str | None] = {}      # segment files shared by backups are read once
    problems = []
    for m in chosen:
        for f in [m.catalog, *m.segments]:
            if f.path not in checked:
                checked[f.path] = _check(dest, f, files)
                if progress is not None:
                    progress(f.size)
            if (what := checked[f.path]) is not None:
                problems.append(Problem(m.id, f.path, what))
    return problems


def _check(dest: DataRoot, f: BackupFile, files: dict[str, Any]) -> str | None:
    stat = files.get(f.path)
    if stat is None:
        return "missing"
    if stat.size != f.size:
        return f"size {stat.size}, expected {f.size}"
    if file_digest(dest, f.path)[1] != f.sha256:
        return "checksum differs"
    return None


@dataclass
class PruneReport:
    backups: list[str] = field(default_factory=list)
    segments: int = 0
    bytes: int = 0


def prune(dest: DataRoot, keep: int) -> PruneReport:
    """Delete all but the newest ``keep`` backups, and the segment copies no kept backup names.

    Not to be run while a backup is being created into ``dest`` elsewhere (its segments are not
    in a manifest yet).
    """
    found = manifests(dest)
    report = PruneReport()
    kept = found[-keep:] if keep > 0 else []
    for m in found[: len(found) - len(kept)]:
        # The manifest first: from then on the backup is unfinished, whatever else is left of it.
        dest.delete(f"{BACKUPS}/{m.id}/{MANIFEST_FILE}")
        dest.delete(f"{BACKUPS}/{m.id}/{CATALOG_FILE}")
        report.backups.append(m.id)
    wanted = {s.path for m in kept for s in m.segments}
    for rel, stat in dest.files(SEGMENTS).items():
        if rel not in wanted and dest.delete(rel):
            report.segments += 1
            report.bytes += stat.size
    return report


# -- restoring ---------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    backup: str
    segments: int = 0
    bytes: int = 0
    rows: int = 0
    tables: dict[str, int] = field(default_factory=dict)


def restore(dest: DataRoot, root: DataRoot, catalog_url: str, *, backup_id: str | None = None,
            progress: Callable[[int], None] | None = None) -> RestoreReport:
    """Restore a backup (default: the newest) into an empty data root and an empty catalog.

    The segments are copied first (each checked against its SHA-256), the catalog's rows last,
    in one transaction: a restore cut short leaves the catalog empty and can be run again.
    """
    m = find(dest, backup_id)
    target = Catalog(catalog_url)
    try:
        tables = {t: cols for t, cols in target.db.tables().items() if _is_copied(t)}
        filled = [t for t in tables if target.db.read(f'SELECT count(*) FROM "{t}"')[0][0]]
        if filled:
            raise BackupError(f"the catalog {catalog_url.split('?')[0]} is not empty ({', '.join(sorted(filled))}):"
                              " restore needs an empty one")
        wanted = {s.path.removeprefix(SEGMENTS + "/"): s for s in m.segments}
        strangers = [rel for rel in root.files() if is_segment_file(rel) and rel not in wanted]
        if strangers:
            raise BackupError(f"the data root {root.url} holds {len(strangers)} segment files that are not in the "
                              f"backup (e.g. {strangers[0]}): restore needs an empty data root")
        report = RestoreReport(m.id)
        for rel, f in sorted(wanted.items()):
            copy_file(dest, f.path, root, rel, expect_sha256=f.sha256)
            report.segments += 1
            report.bytes += f.size
            if progress is not None:
                progress(f.size)
        with tempfile.TemporaryDirectory(prefix="loglake-restore-") as tmp:
            copy_file(dest, m.catalog.path, DataRoot(tmp), CATALOG_FILE, expect_sha256=m.catalog.sha256)
            _check_version(Path(tmp) / CATALOG_FILE, len(MIGRATIONS))
            source = Catalog(f"sqlite:///{Path(tmp) / CATALOG_FILE}")     # brought to this version
            try:
                report.tables = _copy_rows(source, target, tables)
                report.rows = sum(s.rows for s in source.live_segments())
            finally:
                source.close()
    finally:
        target.close()
    return report


def _check_version(path: Path, current: int) -> None:
    conn = sqlite3.connect(path)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()
    if version > current:
        raise BackupError(f"the backup's catalog is at schema version {version}, newer than this loglake ({current})")


def _copy_rows(source: Catalog, target: Catalog, tables: dict[str, list[str]]) -> dict[str, int]:
    counts = {}
    source_tables = source.db.tables()
    with target.db.transaction() as tx:
        for table, columns in tables.items():
            cols = [c for c in columns if c in source_tables.get(table, [])]
            if not cols:
                continue
            names = ", ".join(f'"{c}"' for c in cols)
            rows = source.db.read(f'SELECT {names} FROM "{table}"')
            if rows:
                tx.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({tx.dialect.params(len(cols))})',
                                    [tuple(r) for r in rows])
            counts[table] = len(rows)
            if tx.dialect.postgres and "id" in cols and rows:
                # Rows came with their ids: an identity column must go on from past them.
                seq = tx.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()[0]
                if seq:
                    tx.execute(f'SELECT setval(%s, (SELECT max(id) FROM "{table}"))', (seq,))
    return counts
