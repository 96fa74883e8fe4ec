"""The catalog: which segments are live, and which Kafka offsets they cover.

A segment is visible only once its row is committed, in the same transaction
as the partition's next offset and the per-source high-water marks. Ingest
resumes from these offsets, not Kafka's committed ones: that is what makes
ingestion exactly-once. The commit is conditional on the offset it started
from, so a worker that lost its partition to another cannot record a
duplicate.

Compaction, retention and deletion change the live set with :meth:`Catalog.swap`:
in one transaction the old segments are retired and their replacements go
live, or nothing happens. A retired segment's file stays for the grace period
(a query may have planned it) and is then deleted by :meth:`Catalog.retired`'s
caller, which forgets the row.

One schema, two databases: SQLite (WAL; the embedded default) and PostgreSQL
(several machines sharing one data root). Writers are serialised, by SQLite's
write lock or by a PostgreSQL advisory transaction lock; readers never wait.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from storage.errors import CatalogConflict, CatalogUnavailable
from storage.segments import SegmentInfo

#: Each entry moves the schema from version i to i+1; applied at open. Written for
#: SQLite; on PostgreSQL, INTEGER becomes BIGINT and the integer key an identity.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE segments (
        id           INTEGER PRIMARY KEY,
        tenant       TEXT    NOT NULL,
        path         TEXT    NOT NULL UNIQUE,
        min_ts_us    INTEGER NOT NULL,
        max_ts_us    INTEGER NOT NULL,
        rows         INTEGER NOT NULL,
        bytes        INTEGER NOT NULL,
        services     TEXT    NOT NULL,   -- JSON {service: rows}
        levels       TEXT    NOT NULL,   -- JSON {level: rows}
        topic        TEXT,
        partition    INTEGER,
        epoch        INTEGER,
        first_offset INTEGER,
        last_offset  INTEGER,
        created_us   INTEGER NOT NULL,
        state        TEXT    NOT NULL DEFAULT 'live'
    );
    CREATE INDEX segments_by_time ON segments (tenant, state, min_ts_us, max_ts_us);
    CREATE TABLE partition_offsets (
        topic       TEXT    NOT NULL,
        partition   INTEGER NOT NULL,
        epoch       INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        updated_us  INTEGER NOT NULL,
        PRIMARY KEY (topic, partition)
    );
    CREATE TABLE source_marks (
        tenant     TEXT    NOT NULL,
        source_id  TEXT    NOT NULL,
        end_offset INTEGER NOT NULL,   -- file offset just past the last stored record
        updated_us INTEGER NOT NULL,
        PRIMARY KEY (tenant, source_id)
    );
    """,
    # Which byte ranges of each source are stored: usually one, more after a
    # delivery failure let later frames in before a re-sent earlier one.
    """
    ALTER TABLE source_marks ADD COLUMN ranges TEXT;
    """,
    # Compaction, retention and deletion: retired segments wait out the grace
    # period; every deletion is audited.
    """
    ALTER TABLE segments ADD COLUMN retired_us INTEGER;
    ALTER TABLE segments ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE segments ADD COLUMN sources TEXT;   -- JSON {source_id: end offset stored}
    CREATE INDEX segments_by_state ON segments (state, retired_us);
    CREATE TABLE audit (
        id        INTEGER PRIMARY KEY,
        at_us     INTEGER NOT NULL,
        actor     TEXT    NOT NULL,   -- "retention policy tenant=a service=*", "delete by ...", ...
        action    TEXT    NOT NULL,   -- retention | delete
        tenant    TEXT    NOT NULL,
        service   TEXT    NOT NULL,
        start_us  INTEGER,
        end_us    INTEGER,
        segments  INTEGER NOT NULL,
        rows      INTEGER NOT NULL,
        bytes     INTEGER NOT NULL,
        detail    TEXT    NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_by_time ON audit (at_us);
    CREATE TABLE jobs (
        name      TEXT    PRIMARY KEY,   -- compaction | retention | gc
        started_us INTEGER NOT NULL,
        ended_us  INTEGER NOT NULL,
        result    TEXT    NOT NULL       -- JSON summary of the last run
    );
    """,
    # Saved queries: what dashboards call by name.
    """
    CREATE TABLE saved_queries (
        tenant      TEXT    NOT NULL,
        name        TEXT    NOT NULL,
        kind        TEXT    NOT NULL,   -- search | aggregate
        query       TEXT    NOT NULL,
        params      TEXT    NOT NULL,   -- JSON: default range, limit, fields, interval, by, fn, ...
        description TEXT    NOT NULL,
        owner       TEXT    NOT NULL,
        created_us  INTEGER NOT NULL,
        updated_us  INTEGER NOT NULL,
        PRIMARY KEY (tenant, name)
    );
    """,
    # API keys: only a hash of the secret part is kept.
    """
    CREATE TABLE api_keys (
        id          TEXT    PRIMARY KEY,   -- the key's public part, logged when it is used
        tenants     TEXT    NOT NULL,      -- JSON list of the tenants it may use
        role        TEXT    NOT NULL,      -- reader | writer | admin
        hash        TEXT    NOT NULL,      -- scrypt$n$r$p$salt$digest of the secret part
        description TEXT    NOT NULL,
        created_us  INTEGER NOT NULL,
        expires_us  INTEGER,
        revoked_us  INTEGER
    );
    """,
    # The last stored record's fingerprint per partition: a recreated topic that has grown past
    # the catalog's offset is told apart from the one the catalog stored from.
    """
    ALTER TABLE partition_offsets ADD COLUMN last_record TEXT;
    """,
    # The zstd level a segment was written at: compaction rewrites a settled hour once at a stronger one.
    """
    ALTER TABLE segments ADD COLUMN zstd_level INTEGER;
    """,
)

#: The PostgreSQL advisory lock every catalog writer takes (any fixed number will do).
_PG_WRITE_LOCK = 0x6C6C


@dataclass(frozen=True, slots=True)
class PartitionState:
    epoch: int
    next_offset: int
    #: A fingerprint of the record at next_offset - 1 (see ingest.worker.fingerprint): reading it
    #: back tells whether the topic is still the one the catalog stored from. Not part of equality.
    last_record: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PartitionCommit:
    """One partition's share of a flush: the segments and the offsets they cover."""

    topic: str
    partition: int
    epoch: int
    expected_next: int          # the catalog's next offset when the batch began
    new_next: int               # one past the last offset in the batch
    segments: Sequence[SegmentInfo] = ()
    #: (tenant, source_id) -> end offset now stored
    source_marks: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (tenant, source_id) -> every stored byte range [lo, hi), when known
    source_ranges: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    #: Fingerprint of the batch's last record (offset new_next - 1)
    last_record: str | None = None


@dataclass(frozen=True, slots=True)
class SegmentRow:
    id: int
    tenant: str
    path: str
    min_ts_us: int
    max_ts_us: int
    rows: int
    bytes: int
    services: dict[str, int]
    levels: dict[str, int]
    created_us: int = 0
    generation: int = 0
    state: str = "live"
    retired_us: int | None = None
    zstd_level: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """An API key as the catalog keeps it: never the secret, only its hash."""

    id: str
    tenants: tuple[str, ...]
    role: str
    hash: str
    description: str
    created_us: int
    expires_us: int | None = None
    revoked_us: int | None = None


_KEY_COLUMNS = "id, tenants, role, hash, description, created_us, expires_us, revoked_us"


def _key_row(r: Sequence[Any]) -> ApiKeyRow:
    return ApiKeyRow(r[0], tuple(orjson.loads(r[1])), r[2], r[3], r[4], r[5], r[6], r[7])


@dataclass(frozen=True, slots=True)
class SavedQueryRow:
    """A saved query as the catalog keeps it."""

    tenant: str
    name: str
    kind: str
    query: str
    params: dict[str, Any]
    description: str
    owner: str
    created_us: int
    updated_us: int


_SAVED_COLUMNS = "tenant, name, kind, query, params, description, owner, created_us, updated_us"


def _saved_row(r: Sequence[Any]) -> SavedQueryRow:
    return SavedQueryRow(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5], r[6], r[7], r[8])


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One deletion: what went, why and by whom."""

    actor: str
    action: str                  # "retention" | "delete"
    tenant: str
    service: str                 # "*" when the deletion was not about one service
    start_us: int | None
    end_us: int | None
    segments: int
    rows: int
    bytes: int
    detail: dict[str, Any] = field(default_factory=dict)
    at_us: int = 0


_SEGMENT_COLUMNS = ("id, tenant, path, min_ts_us, max_ts_us, rows, bytes, services, levels, created_us, "
                    "generation, state, retired_us, zstd_level")


def _segment_row(r: Sequence[Any]) -> SegmentRow:
    return SegmentRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], orjson.loads(r[7]), orjson.loads(r[8]),
                      r[9], r[10], r[11], r[12], r[13])


def _now_us() -> int:
    return time.time_ns() // 1000


def _postgres_ddl(sql: str) -> str:
    sql = sql.replace("INTEGER PRIMARY KEY", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    return re.sub(r"\bINTEGER\b", "BIGINT", sql)


class _Tx:
    """A transaction's statements, written once for both databases: ``?`` placeholders,
    ``MAX2(a, b)`` for the larger of two values, and ``ID_IN(?)`` for "id is in this list"
    (one parameter however long the list: see :meth:`ids`)."""

    def __init__(self, conn: Any, postgres: bool) -> None:
        self.conn, self.postgres = conn, postgres

    def ids(self, ids: Sequence[int]) -> Any:
        """The parameter for ``ID_IN(?)``."""
        return [int(i) for i in ids] if self.postgres else orjson.dumps([int(i) for i in ids]).decode()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.postgres:
            sql = sql.replace("ID_IN(?)", "id = ANY(?::bigint[])").replace("?", "%s").replace("MAX2(", "greatest(")
        else:
            sql = sql.replace("MAX2(", "max(").replace("ID_IN(?)", "id IN (SELECT value FROM json_each(?))")
        return self.conn.execute(sql, params)


class Catalog:
    """The SQL catalog, on SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://...``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self._lock = threading.Lock()
        if self.postgres:
            self._open_postgres(url)
        elif url.startswith("sqlite:///"):
            self._open_sqlite(Path(url.removeprefix("sqlite:///")))
        else:
            raise CatalogUnavailable(f"unsupported catalog url {url!r} (expected sqlite:///path or postgresql://...)")

    def _open_sqlite(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db: Any = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=30000")
            self._enable_wal()
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as e:
            raise CatalogUnavailable(f"{path}: {e}") from e

    def _open_postgres(self, url: str) -> None:
        self.path = None
        self._connect_postgres()
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _connect_postgres(self) -> None:
        import psycopg

        try:
            # Autocommit: a read sees what is committed and holds nothing; writes open
            # their own transaction (see _tx).
            self._db = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise CatalogUnavailable(f"{_redact(self.url)}: {e}".strip()) from e

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """The connection, under the lock; a PostgreSQL one that was lost is opened again."""
        with self._lock:
            if not self.postgres:
                yield self._db
                return
            import psycopg

            if self._db.closed or self._db.broken:
                self._connect_postgres()
            try:
                yield self._db
            except psycopg.OperationalError as e:
                # The server went away mid-statement: nothing was committed. The caller
                # may retry; the next call reconnects.
                raise CatalogUnavailable(f"{_redact(self.url)}: {e}".strip()) from e

    def _enable_wal(self, attempts: int = 300) -> None:
        # Switching to WAL needs a moment alone with the file and does not wait
        # on the busy handler, so writers opening a new catalog at once retry.
        for i in range(attempts):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or i == attempts - 1:
                    raise
                time.sleep(0.01 + 0.001 * i)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        """A write transaction, alone among all writers of this catalog.

        A statement that breaks a uniqueness rule (a segment path recorded
        twice) is a conflict with another writer: CatalogConflict, nothing recorded.
        """
        integrity: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
        if self.postgres:
            import psycopg

            integrity = (sqlite3.IntegrityError, psycopg.IntegrityError)
        try:
            with self._connection() as conn:
                if self.postgres:
                    with conn.transaction():
                        # One lock per catalog: catalogs in other schemas of the database do not wait.
                        conn.execute("SELECT pg_advisory_xact_lock(%s::integer, hashtext(current_schema()))",
                                     (_PG_WRITE_LOCK,))
                        yield _Tx(conn, True)
                    return
                # BEGIN IMMEDIATE takes the write lock up front, so two writers queue
                # instead of failing on upgrade from a read lock.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield _Tx(conn, False)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                else:
                    conn.execute("COMMIT")
        except integrity as e:
            raise CatalogConflict(f"catalog refused a duplicate: {e}") from e

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._connection() as conn:
            return list(_Tx(conn, self.postgres).execute(sql, params).fetchall())

    def _migrate(self) -> None:
        with self._tx() as db:
            if self.postgres:
                db.execute("CREATE TABLE IF NOT EXISTS loglake_schema (version INTEGER NOT NULL)")
                row = db.execute("SELECT version FROM loglake_schema").fetchone()
                if row is None:
                    db.execute("INSERT INTO loglake_schema (version) VALUES (0)")
                version = row[0] if row else 0
            else:
                version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise CatalogUnavailable(
                    f"catalog schema version {version} is newer than this loglake ({len(MIGRATIONS)})")
            for i in range(version, len(MIGRATIONS)):
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        db.execute(_postgres_ddl(stmt) if self.postgres else stmt)
            if self.postgres:
                db.execute("UPDATE loglake_schema SET version = ?", (len(MIGRATIONS),))
            else:
                db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    def schema_version(self) -> int:
        if self.postgres:
            return int(self._read("SELECT version FROM loglake_schema")[0][0])
        return int(self._read("PRAGMA user_version")[0][0])

    # -- ingest side ---------------------------------------------------------

    def partition_states(self, topic: str) -> dict[int, PartitionState]:
        rows = self._read("SELECT partition, epoch, next_offset, last_record FROM partition_offsets"
                          " WHERE topic = ?", (topic,))
        return {p: PartitionState(e, n, r) for p, e, n, r in rows}

    def reset_partition(self, topic: str, partition: int, next_offset: int) -> PartitionState:
        """Start a new offset epoch (the topic was recreated under us)."""
        with self._tx() as db:
            row = db.execute("SELECT epoch FROM partition_offsets WHERE topic=? AND partition=?",
                             (topic, partition)).fetchone()
            epoch = (row[0] + 1) if row else 0
            db.execute(
                "INSERT INTO partition_offsets (topic, partition, epoch, next_offset, updated_us, last_record)"
                " VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (topic, partition) DO UPDATE SET"
                " epoch=excluded.epoch, next_offset=excluded.next_offset, updated_us=excluded.updated_us,"
                " last_record=NULL",
                (topic, partition, epoch, next_offset, _now_us()))
        return PartitionState(epoch, next_offset)

    def source_marks(self, tenants: Iterable[str] | None = None) -> dict[tuple[str, str], int]:
        rows = self._read("SELECT tenant, source_id, end_offset FROM source_marks")
        wanted = set(tenants) if tenants is not None else None
        return {(t, s): e for t, s, e in rows if wanted is None or t in wanted}

    def source_ranges(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """Stored byte ranges per source (a source known only by its end: everything below it)."""
        rows = self._read("SELECT tenant, source_id, end_offset, ranges FROM source_marks")
        return {(t, sid): ([(int(lo), int(hi)) for lo, hi in orjson.loads(r)] if r else [(0, e)])
                for t, sid, e, r in rows}

    def commit(self, commits: Sequence[PartitionCommit]) -> None:
        """Record segments and advance offsets atomically, or raise CatalogConflict."""
        now = _now_us()
        with self._tx() as db:
            for c in commits:
                row = db.execute("SELECT epoch, next_offset FROM partition_offsets"
                                 " WHERE topic=? AND partition=?", (c.topic, c.partition)).fetchone()
                current = PartitionState(*row) if row else PartitionState(0, 0)
                if current != PartitionState(c.epoch, c.expected_next):
                    raise CatalogConflict(
                        f"{c.topic}[{c.partition}] is at epoch {current.epoch} offset "
                        f"{current.next_offset}, batch began at epoch {c.epoch} offset {c.expected_next}")
                db.execute(
                    "INSERT INTO partition_offsets (topic, partition, epoch, next_offset, updated_us, last_record)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET"
                    " next_offset=excluded.next_offset, updated_us=excluded.updated_us,"
                    " last_record=excluded.last_record",
                    (c.topic, c.partition, c.epoch, c.new_next, now, c.last_record))
                # What each tenant's segments cover of each source: the marks of this batch.
                covers: dict[str, dict[str, int]] = {}
                for (tenant, sid), end in c.source_marks.items():
                    covers.setdefault(tenant, {})[sid] = end
                for (tenant, sid), ranges in c.source_ranges.items():
                    covers.setdefault(tenant, {})[sid] = max((hi for _, hi in ranges), default=0)
                for s in c.segments:
                    self._insert_segment(db, s, now, topic=c.topic, partition=c.partition, epoch=c.epoch,
                                         first_offset=c.expected_next, last_offset=c.new_next - 1,
                                         sources=covers.get(s.tenant))
                for (tenant, sid), end in c.source_marks.items():
                    db.execute(
                        "INSERT INTO source_marks (tenant, source_id, end_offset, updated_us)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (tenant, source_id) DO UPDATE SET"
                        " end_offset=MAX2(source_marks.end_offset, excluded.end_offset),"
                        " updated_us=excluded.updated_us",
                        (tenant, sid, end, now))
                for (tenant, sid), ranges in c.source_ranges.items():
                    db.execute(
                        "INSERT INTO source_marks (tenant, source_id, end_offset, updated_us, ranges)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, source_id) DO UPDATE SET"
                        " ranges=excluded.ranges,"
                        " end_offset=MAX2(source_marks.end_offset, excluded.end_offset)",
                        (tenant, sid, max((hi for _, hi in ranges), default=0), now,
                         orjson.dumps(ranges).decode()))

    @staticmethod
    def _insert_segment(db: _Tx, s: SegmentInfo, now: int, *, topic: str | None = None,
                        partition: int | None = None, epoch: int | None = None, first_offset: int | None = None,
                        last_offset: int | None = None, generation: int = 0,
                        sources: dict[str, int] | None = None) -> int:
        row = db.execute(
            "INSERT INTO segments (tenant, path, min_ts_us, max_ts_us, rows, bytes, services, levels, topic,"
            " partition, epoch, first_offset, last_offset, created_us, generation, sources, zstd_level)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (s.tenant, s.path, s.min_ts_us, s.max_ts_us, s.rows, s.bytes,
             orjson.dumps(s.services).decode(), orjson.dumps(s.levels).decode(),
             topic, partition, epoch, first_offset, last_offset, now, generation,
             orjson.dumps(sources).decode() if sources else None, s.zstd_level)).fetchone()
        return int(row[0])

    # -- compaction, retention, deletion ---------------------------------------

    def swap(self, retire: Sequence[SegmentRow | int], add: Sequence[SegmentInfo] = (), *, generation: int = 0,
             audit: Sequence[AuditEntry] = ()) -> list[int]:
        """Retire segments ``retire`` and make ``add`` live, in one transaction.

        Raises CatalogConflict (recording nothing) unless every segment to
        retire is still live (and, given as a :class:`SegmentRow`, still at its
        path): another compactor, retention run or deletion got there first.
        Returns the new segments' ids.
        """
        now = _now_us()
        wanted = {(r.id if isinstance(r, SegmentRow) else int(r)): (r.path if isinstance(r, SegmentRow) else None)
                  for r in retire}
        with self._tx() as db:
            sources: dict[str, int] = {}
            if wanted:
                rows = db.execute("SELECT id, path, sources FROM segments WHERE ID_IN(?) AND state='live'",
                                  (db.ids(list(wanted)),)).fetchall()
                live = [(i, p, src) for i, p, src in rows if wanted[i] in (None, p)]
                if len(live) != len(wanted):
                    raise CatalogConflict(f"{len(wanted) - len(live)} of {len(wanted)} segments are no longer live")
                db.execute("UPDATE segments SET state='retired', retired_us=? WHERE ID_IN(?)",
                           (now, db.ids(list(wanted))))
                for _, _, text in live:
                    for sid, end in (orjson.loads(text) if text else {}).items():
                        sources[sid] = max(sources.get(sid, 0), end)
            ids = [self._insert_segment(db, s, now, generation=generation, sources=sources or None) for s in add]
            for a in audit:
                db.execute(
                    "INSERT INTO audit (at_us, actor, action, tenant, service, start_us, end_us, segments, rows,"
                    " bytes, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (a.at_us or now, a.actor, a.action, a.tenant, a.service, a.start_us, a.end_us, a.segments,
                     a.rows, a.bytes, orjson.dumps(a.detail).decode()))
        return ids

    def live_segments(self, tenant: str | None = None) -> list[SegmentRow]:
        """Every live segment (of ``tenant``), oldest first."""
        where, params = ("AND tenant=?", (tenant,)) if tenant is not None else ("", ())
        rows = self._read(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE state='live' {where}"
                          " ORDER BY max_ts_us, id", params)
        return [_segment_row(r) for r in rows]

    def retired(self, before_us: int | None = None) -> list[SegmentRow]:
        """Retired segments (retired before ``before_us``): their files are due for deletion."""
        rows = self._read(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE state='retired'"
                          " AND retired_us < ? ORDER BY retired_us", (before_us if before_us is not None else 1 << 62,))
        return [_segment_row(r) for r in rows]

    def forget(self, ids: Sequence[int]) -> None:
        """Drop the rows of retired or missing segments (their files are gone)."""
        if not ids:
            return
        with self._tx() as db:
            db.execute("DELETE FROM segments WHERE ID_IN(?) AND state IN ('retired', 'missing')", (db.ids(ids),))

    def mark_missing(self, ids: Sequence[int]) -> None:
        """Take live segments whose files are gone out of the live set (kept, for the record)."""
        if not ids:
            return
        with self._tx() as db:
            db.execute("UPDATE segments SET state='missing', retired_us=? WHERE ID_IN(?) AND state='live'",
                       (_now_us(), db.ids(ids)))

    def known_paths(self) -> dict[str, tuple[int, str]]:
        """Every segment path the catalog knows, with its id and state."""
        return {p: (i, st) for i, p, st in self._read("SELECT id, path, state FROM segments")}

    def audit_log(self, limit: int = 100, tenant: str | None = None) -> list[AuditEntry]:
        """The latest deletions, newest first."""
        where, params = ("WHERE tenant=?", (tenant,)) if tenant is not None else ("", ())
        rows = self._read("SELECT actor, action, tenant, service, start_us, end_us, segments, rows, bytes, detail,"
                          f" at_us FROM audit {where} ORDER BY at_us DESC, id DESC LIMIT ?", (*params, limit))
        return [AuditEntry(a, ac, t, s, lo, hi, n, r, b, orjson.loads(d), at)
                for a, ac, t, s, lo, hi, n, r, b, d, at in rows]

    def record_job(self, name: str, started_us: int, result: dict[str, Any]) -> None:
        """Remember the last run of a maintenance job (for ``GET /api/v1/retention``)."""
        with self._tx() as db:
            db.execute("INSERT INTO jobs (name, started_us, ended_us, result) VALUES (?, ?, ?, ?)"
                       " ON CONFLICT (name) DO UPDATE SET started_us=excluded.started_us,"
                       " ended_us=excluded.ended_us, result=excluded.result",
                       (name, started_us, _now_us(), orjson.dumps(result).decode()))

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {n: {"started_us": s, "ended_us": e, "result": orjson.loads(r)}
                for n, s, e, r in self._read("SELECT name, started_us, ended_us, result FROM jobs")}

    # -- API keys ------------------------------------------------------------

    def create_api_key(self, key: ApiKeyRow) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO api_keys (id, tenants, role, hash, description, created_us, expires_us, "
                       "revoked_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (key.id, orjson.dumps(list(key.tenants)).decode(), key.role, key.hash, key.description,
                        key.created_us, key.expires_us, key.revoked_us))

    def api_key(self, key_id: str) -> ApiKeyRow | None:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id=?", (key_id,))
        return _key_row(rows[0]) if rows else None

    def api_keys(self) -> list[ApiKeyRow]:
        return [_key_row(r) for r in self._read(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_us")]

    def revoke_api_key(self, key_id: str) -> bool:
        with self._tx() as db:
            return bool(db.execute("UPDATE api_keys SET revoked_us=? WHERE id=? AND revoked_us IS NULL",
                                   (_now_us(), key_id)).rowcount)

    # -- saved queries -------------------------------------------------------

    def saved_queries(self, tenant: str) -> list[SavedQueryRow]:
        rows = self._read(f"SELECT {_SAVED_COLUMNS} FROM saved_queries WHERE tenant=? ORDER BY name", (tenant,))
        return [_saved_row(r) for r in rows]

    def saved_query(self, tenant: str, name: str) -> SavedQueryRow | None:
        rows = self._read(f"SELECT {_SAVED_COLUMNS} FROM saved_queries WHERE tenant=? AND name=?", (tenant, name))
        return _saved_row(rows[0]) if rows else None

    def create_saved_query(self, q: SavedQueryRow) -> None:
        """Store a new saved query; CatalogConflict if the name is taken."""
        with self._tx() as db:
            db.execute(f"INSERT INTO saved_queries ({_SAVED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (q.tenant, q.name, q.kind, q.query, orjson.dumps(q.params).decode(), q.description,
                        q.owner, q.created_us, q.updated_us))

    def replace_saved_query(self, name: str, q: SavedQueryRow) -> bool:
        """Overwrite (and perhaps rename) the saved query ``name``; False if there is none.
        CatalogConflict if renamed onto a name that is taken."""
        with self._tx() as db:
            cur = db.execute("UPDATE saved_queries SET name=?, kind=?, query=?, params=?, description=?, owner=?,"
                             " updated_us=? WHERE tenant=? AND name=?",
                             (q.name, q.kind, q.query, orjson.dumps(q.params).decode(), q.description, q.owner,
                              q.updated_us, q.tenant, name))
            return bool(cur.rowcount)

    def delete_saved_query(self, tenant: str, name: str) -> bool:
        with self._tx() as db:
            return bool(db.execute("DELETE FROM saved_queries WHERE tenant=? AND name=?", (tenant, name)).rowcount)

    # -- query side ----------------------------------------------------------

    def segments(self, tenant: str, start_us: int, end_us: int) -> list[SegmentRow]:
        """Live segments of ``tenant`` that may hold rows with start <= ts < end."""
        rows = self._read(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE tenant=? AND state='live' AND max_ts_us >= ?"
            " AND min_ts_us < ? ORDER BY max_ts_us DESC",
            (tenant, start_us, end_us))
        return [_segment_row(r) for r in rows]

    def totals(self) -> dict[str, int]:
        n, rows, size = self._read(
            "SELECT count(*), coalesce(sum(rows),0), coalesce(sum(bytes),0) FROM segments WHERE state='live'")[0]
        return {"segments": int(n), "rows": int(rows), "bytes": int(size)}


def _redact(url: str) -> str:
    """A database URL without its password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
