"""The catalog: which segments are live, and which Kafka offsets they cover.

A segment is visible only once its row is committed, in the same transaction
as the partition's next offset and the per-source high-water marks. Ingest
resumes from these offsets, not Kafka's committed ones: that is what makes
ingestion exactly-once. The commit is conditional on the offset it started
from, so a worker that lost its partition to another cannot record a
duplicate.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from storage.errors import CatalogConflict, CatalogUnavailable
from storage.segments import SegmentInfo

#: Each entry moves the schema from version i to i+1; applied at open.
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
)


@dataclass(frozen=True, slots=True)
class PartitionState:
    epoch: int
    next_offset: int


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


def _now_us() -> int:
    return time.time_ns() // 1000


class Catalog:
    """SQL catalog; SQLite (WAL) today, one code path for PostgreSQL later."""

    def __init__(self, url: str) -> None:
        if not url.startswith("sqlite:///"):
            raise CatalogUnavailable(f"unsupported catalog url {url!r} (expected sqlite:///path)")
        self.path = Path(url.removeprefix("sqlite:///"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=30000")
            self._enable_wal()
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as e:
            raise CatalogUnavailable(f"{self.path}: {e}") from e

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
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers queue
        # instead of failing on upgrade from a read lock.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise CatalogUnavailable(
                    f"catalog schema version {version} is newer than this loglake ({len(MIGRATIONS)})")
            for i in range(version, len(MIGRATIONS)):
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    # -- ingest side ---------------------------------------------------------

    def partition_states(self, topic: str) -> dict[int, PartitionState]:
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, epoch, next_offset FROM partition_offsets WHERE topic = ?",
                (topic,)).fetchall()
        return {p: PartitionState(e, n) for p, e, n in rows}

    def reset_partition(self, topic: str, partition: int, next_offset: int) -> PartitionState:
        """Start a new offset epoch (the topic was recreated under us)."""
        with self._tx() as db:
            row = db.execute("SELECT epoch FROM partition_offsets WHERE topic=? AND partition=?",
                             (topic, partition)).fetchone()
            epoch = (row[0] + 1) if row else 0
            db.execute(
                "INSERT INTO partition_offsets (topic, partition, epoch, next_offset, updated_us)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET"
                " epoch=excluded.epoch, next_offset=excluded.next_offset, updated_us=excluded.updated_us",
                (topic, partition, epoch, next_offset, _now_us()))
        return PartitionState(epoch, next_offset)

    def source_marks(self, tenants: Iterable[str] | None = None) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute("SELECT tenant, source_id, end_offset FROM source_marks").fetchall()
        wanted = set(tenants) if tenants is not None else None
        return {(t, s): e for t, s, e in rows if wanted is None or t in wanted}

    def source_ranges(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """Stored byte ranges per source (a source known only by its end: everything below it)."""
        with self._lock:
            rows = self._db.execute("SELECT tenant, source_id, end_offset, ranges FROM source_marks").fetchall()
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
                    "INSERT INTO partition_offsets (topic, partition, epoch, next_offset, updated_us)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET"
                    " next_offset=excluded.next_offset, updated_us=excluded.updated_us",
                    (c.topic, c.partition, c.epoch, c.new_next, now))
                for s in c.segments:
                    db.execute(
                        "INSERT INTO segments (tenant, path, min_ts_us, max_ts_us, rows, bytes, services,"
                        " levels, topic, partition, epoch, first_offset, last_offset, created_us)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (s.tenant, s.path, s.min_ts_us, s.max_ts_us, s.rows, s.bytes,
                         orjson.dumps(s.services).decode(), orjson.dumps(s.levels).decode(),
                         c.topic, c.partition, c.epoch, c.expected_next, c.new_next - 1, now))
                for (tenant, sid), end in c.source_marks.items():
                    db.execute(
                        "INSERT INTO source_marks (tenant, source_id, end_offset, updated_us)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (tenant, source_id) DO UPDATE SET"
                        " end_offset=max(source_marks.end_offset, excluded.end_offset),"
                        " updated_us=excluded.updated_us",
                        (tenant, sid, end, now))
                for (tenant, sid), ranges in c.source_ranges.items():
                    db.execute(
                        "INSERT INTO source_marks (tenant, source_id, end_offset, updated_us, ranges)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, source_id) DO UPDATE SET"
                        " ranges=excluded.ranges,"
                        " end_offset=max(source_marks.end_offset, excluded.end_offset)",
                        (tenant, sid, max((hi for _, hi in ranges), default=0), now,
                         orjson.dumps(ranges).decode()))

    # -- query side ----------------------------------------------------------

    def segments(self, tenant: str, start_us: int, end_us: int) -> list[SegmentRow]:
        """Live segments of ``tenant`` that may hold rows with start <= ts < end."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, tenant, path, min_ts_us, max_ts_us, rows, bytes, services, levels"
                " FROM segments WHERE tenant=? AND state='live' AND max_ts_us >= ? AND min_ts_us < ?"
                " ORDER BY max_ts_us DESC",
                (tenant, start_us, end_us)).fetchall()
        return [SegmentRow(i, t, p, lo, hi, r, b, orjson.loads(s), orjson.loads(lv))
                for i, t, p, lo, hi, r, b, s, lv in rows]

    def totals(self) -> dict[str, int]:
        with self._lock:
            n, rows, size = self._db.execute(
                "SELECT count(*), coalesce(sum(rows),0), coalesce(sum(bytes),0)"
                " FROM segments WHERE state='live'").fetchone()
        return {"segments": n, "rows": rows, "bytes": size}
