"""The catalog: which segments are live, and which Kafka offsets they cover.

A segment is visible only once its row is committed, in the same transaction
as the partition's next offset and the byte ranges stored of each source
(``source_marks``: the ranges, and the end of the last). Ingest resumes from
these offsets, not Kafka's committed ones: that is what makes ingestion
exactly-once. The commit is conditional on the offset it started
from, so a worker that lost its partition to another cannot record a
duplicate.

Compaction, retention and deletion change the live set with :meth:`Catalog.swap`:
in one transaction the old segments are retired and their replacements go
live, or nothing happens. A retired segment's file stays for the grace period
(a query may have planned it) and is then deleted by :meth:`Catalog.retired`'s
caller, which forgets the row.

One schema, two databases: SQLite (WAL; the embedded default) and PostgreSQL
(several machines sharing one data root), through :mod:`storage.database`.
Writers are serialised, by SQLite's write lock or by a PostgreSQL advisory
transaction lock; readers never wait. API keys and saved queries live in the
same database (their tables are in :data:`MIGRATIONS`) but belong to the query
side: ``query/store.py``; so do alert rules and their state (``query/alerts/store.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from storage.database import Database, Transaction
from storage.errors import CatalogConflict
from storage.segments import MinuteCounts, SegmentInfo

#: Each entry moves the schema from version i to i+1; applied at open. Written for
#: SQLite; on PostgreSQL, INTEGER becomes BIGINT and the integer key an identity
#: (Dialect.ddl). One sequence for the whole database: the query side's tables
#: (saved queries, API keys; see query/store.py) are here too, in the order they came.
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
    # Alert and recording rules (query/alerts/store.py): groups of rules, each alert's state,
    # the lease that lets one evaluator act for a group, and each evaluation of a group.
    """
    CREATE TABLE alert_groups (
        tenant     TEXT    NOT NULL,
        namespace  TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        interval_s DOUBLE PRECISION NOT NULL,
        rules      TEXT    NOT NULL,   -- JSON list of rule specs
        source     TEXT    NOT NULL,   -- api | the rule file it was loaded from
        updated_us INTEGER NOT NULL,
        PRIMARY KEY (tenant, namespace, name)
    );
    CREATE TABLE alert_state (
        tenant      TEXT    NOT NULL,
        namespace   TEXT    NOT NULL,
        grp         TEXT    NOT NULL,
        rule        TEXT    NOT NULL,
        fingerprint TEXT    NOT NULL,
        state       TEXT    NOT NULL,   -- pending | firing | resolved
        labels      TEXT    NOT NULL,   -- JSON
        annotations TEXT    NOT NULL,   -- JSON
        value       DOUBLE PRECISION,
        active_us   INTEGER NOT NULL,
        fired_us    INTEGER,
        resolved_us INTEGER,
        last_eval_us INTEGER NOT NULL,
        am_sent_us  INTEGER,            -- when Alertmanager was last sent this alert
        am_state    TEXT,               -- the state Alertmanager was last sent
        hook_state  TEXT,               -- the state webhooks were last sent (and confirmed)
        hook_sending TEXT,              -- the state being sent to webhooks, not yet confirmed
        detail      TEXT    NOT NULL DEFAULT '{}',   -- JSON: link, sample lines
        PRIMARY KEY (tenant, namespace, grp, rule, fingerprint)
    );
    CREATE TABLE alert_leases (
        tenant       TEXT    NOT NULL,
        namespace    TEXT    NOT NULL,
        grp          TEXT    NOT NULL,
        owner        TEXT    NOT NULL,
        expires_us   INTEGER NOT NULL,
        next_slot_us INTEGER NOT NULL,   -- the next evaluation time of the group
        PRIMARY KEY (tenant, namespace, grp)
    );
    CREATE TABLE alert_evaluations (
        tenant      TEXT    NOT NULL,
        namespace   TEXT    NOT NULL,
        grp         TEXT    NOT NULL,
        slot_us     INTEGER NOT NULL,   -- the time evaluated: one row per group and slot, ever
        evaluator   TEXT    NOT NULL,
        started_us  INTEGER NOT NULL,
        duration_us INTEGER NOT NULL,
        errors      TEXT    NOT NULL,   -- JSON {rule: error}
        PRIMARY KEY (tenant, namespace, grp, slot_us)
    );
    """,
    # What ingest learned of each source (written by the flusher when it changes, and now and then):
    # `loglake sources` and GET /api/v1/sources list it.
    """
    CREATE TABLE source_layouts (
        tenant     TEXT    NOT NULL,
        service    TEXT    NOT NULL,
        source     TEXT    NOT NULL,
        format     TEXT    NOT NULL,   -- json | syslog | clf | logfmt | apache_error | text | pattern<i>
        layout     TEXT    NOT NULL,   -- the learned text layout, described (empty: none)
        zone       TEXT    NOT NULL,   -- where zone-less times are read, or "in the line"
        detail     TEXT    NOT NULL,   -- JSON: time layout name, example, strptime, counts
        updated_us INTEGER NOT NULL,
        PRIMARY KEY (tenant, service, source)
    );
    """,
    # Rows per service and level, and per minute and level, of each segment, so counts by both (errors
    # per service) and counts over time by level (the histogram) are answered without opening the
    # files; NULL for segments recorded before (the maintenance loop fills them in).
    """
    ALTER TABLE segments ADD COLUMN service_levels TEXT;   -- JSON {service: {level: rows}}
    ALTER TABLE segments ADD COLUMN minute_levels TEXT;    -- JSON {"first": epoch minute, "levels": {level: [rows]}}
    """,
)


@dataclass(frozen=True, slots=True)
class PartitionState:
    epoch: int
    next_offset: int
    #: A fingerprint of the record at next_offset - 1 (see ingest.buffers.fingerprint): reading it
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
    #: ``{service: {level: rows}}``; None for a segment recorded before the catalog kept it.
    service_levels: dict[str, dict[str, int]] | None = None
    #: Rows per minute and level as JSON (see :meth:`minutes`); None as ``service_levels``.
    minute_levels: str | None = None

    def minutes(self) -> MinuteCounts | None:
        """Rows per minute and level, read from the catalog's JSON when asked for (it is the largest
        part of a row, and most queries do not need it)."""
        return MinuteCounts.from_json(self.minute_levels) if self.minute_levels is not None else None


@dataclass(frozen=True, slots=True)
class SourceLayoutRow:
    """What ingest learned of one source: its format, its text layout, the zone its times are read in."""

    tenant: str
    service: str
    source: str
    format: str
    layout: str
    zone: str
    detail: dict[str, Any] = field(default_factory=dict)
    updated_us: int = 0


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
                    "generation, state, retired_us, zstd_level, service_levels, minute_levels")


def _segment_row(r: Sequence[Any]) -> SegmentRow:
    return SegmentRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], orjson.loads(r[7]), orjson.loads(r[8]),
                      r[9], r[10], r[11], r[12], r[13], orjson.loads(r[14]) if r[14] is not None else None, r[15])


def _now_us() -> int:
    return time.time_ns() // 1000


class Catalog:
    """The SQL catalog, on SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://...``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: The SQL layer, shared with the query side's stores (query/store.py).
        self.db = Database(url)
        self.postgres = self.db.dialect.postgres
        self.path = self.db.path
        try:
            self.db.migrate(MIGRATIONS)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def schema_version(self) -> int:
        return self.db.schema_version()

    # -- ingest side ---------------------------------------------------------

    def partition_states(self, topic: str) -> dict[int, PartitionState]:
        rows = self.db.read("SELECT partition, epoch, next_offset, last_record FROM partition_offsets"
                            f" WHERE topic = {self.db.dialect.p}", (topic,))
        return {p: PartitionState(e, n, r) for p, e, n, r in rows}

    def reset_partition(self, topic: str, partition: int, next_offset: int) -> PartitionState:
        """Start a new offset epoch (the topic was recreated under us)."""
        with self.db.transaction() as tx:
            p = tx.dialect.p
            row = tx.execute(f"SELECT epoch FROM partition_offsets WHERE topic={p} AND partition={p}",
                             (topic, partition)).fetchone()
            epoch = (row[0] + 1) if row else 0
            tx.execute(
                "INSERT INTO partition_offsets (topic, partition, epoch, next_offset, updated_us, last_record)"
                f" VALUES ({tx.dialect.params(5)}, NULL) ON CONFLICT (topic, partition) DO UPDATE SET"
                " epoch=excluded.epoch, next_offset=excluded.next_offset, updated_us=excluded.updated_us,"
                " last_record=NULL",
                (topic, partition, epoch, next_offset, _now_us()))
        return PartitionState(epoch, next_offset)

    def source_marks(self, tenants: Iterable[str] | None = None) -> dict[tuple[str, str], int]:
        rows = self.db.read("SELECT tenant, source_id, end_offset FROM source_marks")
        wanted = set(tenants) if tenants is not None else None
        return {(t, s): e for t, s, e in rows if wanted is None or t in wanted}

    def source_ranges(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """Stored byte ranges per source (a source known only by its end: everything below it)."""
        rows = self.db.read("SELECT tenant, source_id, end_offset, ranges FROM source_marks")
        return {(t, sid): ([(int(lo), int(hi)) for lo, hi in orjson.loads(r)] if r else [(0, e)])
                for t, sid, e, r in rows}

    def commit(self, commits: Sequence[PartitionCommit]) -> None:
        """Record segments and advance offsets atomically, or raise CatalogConflict."""
        now = _now_us()
        with self.db.transaction() as tx:
            d = tx.dialect
            for c in commits:
                row = tx.execute("SELECT epoch, next_offset FROM partition_offsets"
                                 f" WHERE topic={d.p} AND partition={d.p}", (c.topic, c.partition)).fetchone()
                current = PartitionState(*row) if row else PartitionState(0, 0)
                if current != PartitionState(c.epoch, c.expected_next):
                    raise CatalogConflict(
                        f"{c.topic}[{c.partition}] is at epoch {current.epoch} offset "
                        f"{current.next_offset}, batch began at epoch {c.epoch} offset {c.expected_next}")
                tx.execute(
                    "INSERT INTO partition_offsets (topic, partition, epoch, next_offset, updated_us, last_record)"
                    f" VALUES ({d.params(6)}) ON CONFLICT (topic, partition) DO UPDATE SET"
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
                    self._insert_segment(tx, s, now, topic=c.topic, partition=c.partition, epoch=c.epoch,
                                         first_offset=c.expected_next, last_offset=c.new_next - 1,
                                         sources=covers.get(s.tenant))
                larger_end = d.greatest("source_marks.end_offset", "excluded.end_offset")
                for (tenant, sid), end in c.source_marks.items():
                    tx.execute(
                        "INSERT INTO source_marks (tenant, source_id, end_offset, updated_us)"
                        f" VALUES ({d.params(4)}) ON CONFLICT (tenant, source_id) DO UPDATE SET"
                        f" end_offset={larger_end}, updated_us=excluded.updated_us",
                        (tenant, sid, end, now))
                for (tenant, sid), ranges in c.source_ranges.items():
                    tx.execute(
                        "INSERT INTO source_marks (tenant, source_id, end_offset, updated_us, ranges)"
                        f" VALUES ({d.params(5)}) ON CONFLICT (tenant, source_id) DO UPDATE SET"
                        f" ranges=excluded.ranges, end_offset={larger_end}",
                        (tenant, sid, max((hi for _, hi in ranges), default=0), now,
                         orjson.dumps(ranges).decode()))

    @staticmethod
    def _insert_segment(tx: Transaction, s: SegmentInfo, now: int, *, topic: str | None = None,
                        partition: int | None = None, epoch: int | None = None, first_offset: int | None = None,
                        last_offset: int | None = None, generation: int = 0,
                        sources: dict[str, int] | None = None) -> int:
        row = tx.execute(
            "INSERT INTO segments (tenant, path, min_ts_us, max_ts_us, rows, bytes, services, levels, topic,"
            " partition, epoch, first_offset, last_offset, created_us, generation, sources, zstd_level,"
            f" service_levels, minute_levels) VALUES ({tx.dialect.params(19)}) RETURNING id",
            (s.tenant, s.path, s.min_ts_us, s.max_ts_us, s.rows, s.bytes,
             orjson.dumps(s.services).decode(), orjson.dumps(s.levels).decode(),
             topic, partition, epoch, first_offset, last_offset, now, generation,
             orjson.dumps(sources).decode() if sources else None, s.zstd_level,
             orjson.dumps(s.service_levels).decode() if s.service_levels is not None else None,
             s.minute_levels.to_json() if s.minute_levels is not None else None)).fetchone()
        return int(row[0])

    def record_source_layouts(self, rows: Sequence[SourceLayoutRow]) -> None:
        """Insert or replace what ingest learned of these sources."""
        if not rows:
            return
        now = _now_us()
        with self.db.transaction() as tx:
            for r in rows:
                tx.execute(
                    "INSERT INTO source_layouts (tenant, service, source, format, layout, zone, detail, updated_us)"
                    f" VALUES ({tx.dialect.params(8)}) ON CONFLICT (tenant, service, source) DO UPDATE SET"
                    " format=excluded.format, layout=excluded.layout, zone=excluded.zone, detail=excluded.detail,"
                    " updated_us=excluded.updated_us",
                    (r.tenant, r.service, r.source, r.format, r.layout, r.zone, orjson.dumps(r.detail).decode(),
                     r.updated_us or now))

    def source_layouts(self, tenant: str | None = None) -> list[SourceLayoutRow]:
        """What ingest learned of each source (of ``tenant``), by tenant, service and source."""
        where, params = (f"WHERE tenant={self.db.dialect.p}", (tenant,)) if tenant is not None else ("", ())
        rows = self.db.read("SELECT tenant, service, source, format, layout, zone, detail, updated_us"
                            f" FROM source_layouts {where} ORDER BY tenant, service, source", params)
        return [SourceLayoutRow(t, svc, src, f, lay, z, orjson.loads(d), u) for t, svc, src, f, lay, z, d, u in rows]

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
        with self.db.transaction() as tx:
            d = tx.dialect
            sources: dict[str, int] = {}
            if wanted:
                rows = tx.execute(f"SELECT id, path, sources FROM segments WHERE {d.id_in()} AND state='live'",
                                  (d.ids(list(wanted)),)).fetchall()
                live = [(i, p, src) for i, p, src in rows if wanted[i] in (None, p)]
                if len(live) != len(wanted):
                    raise CatalogConflict(f"{len(wanted) - len(live)} of {len(wanted)} segments are no longer live")
                tx.execute(f"UPDATE segments SET state='retired', retired_us={d.p} WHERE {d.id_in()}",
                           (now, d.ids(list(wanted))))
                for _, _, text in live:
                    for sid, end in (orjson.loads(text) if text else {}).items():
                        sources[sid] = max(sources.get(sid, 0), end)
            ids = [self._insert_segment(tx, s, now, generation=generation, sources=sources or None) for s in add]
            for a in audit:
                tx.execute(
                    "INSERT INTO audit (at_us, actor, action, tenant, service, start_us, end_us, segments, rows,"
                    f" bytes, detail) VALUES ({d.params(11)})",
                    (a.at_us or now, a.actor, a.action, a.tenant, a.service, a.start_us, a.end_us, a.segments,
                     a.rows, a.bytes, orjson.dumps(a.detail).decode()))
        return ids

    def live_segments(self, tenant: str | None = None) -> list[SegmentRow]:
        """Every live segment (of ``tenant``), oldest first."""
        where, params = (f"AND tenant={self.db.dialect.p}", (tenant,)) if tenant is not None else ("", ())
        rows = self.db.read(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE state='live' {where}"
                            " ORDER BY max_ts_us, id", params)
        return [_segment_row(r) for r in rows]

    def retired(self, before_us: int | None = None) -> list[SegmentRow]:
        """Retired segments (retired before ``before_us``): their files are due for deletion."""
        rows = self.db.read(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE state='retired'"
                            f" AND retired_us < {self.db.dialect.p} ORDER BY retired_us",
                            (before_us if before_us is not None else 1 << 62,))
        return [_segment_row(r) for r in rows]

    def lacking_counts(self, limit: int) -> list[SegmentRow]:
        """Up to ``limit`` live segments recorded without their rows per service and level and per
        minute and level (before schema version 10), oldest first."""
        rows = self.db.read(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE state='live'"
                            " AND (service_levels IS NULL OR minute_levels IS NULL)"
                            f" ORDER BY id LIMIT {self.db.dialect.p}", (limit,))
        return [_segment_row(r) for r in rows]

    def set_counts(self, segment_id: int, service_levels: dict[str, dict[str, int]],
                   minute_levels: MinuteCounts | None) -> bool:
        """Record a segment's rows per service and level and per minute and level where it has none
        yet; whether anything was recorded."""
        with self.db.transaction() as tx:
            p = tx.dialect.p
            cur = tx.execute(f"UPDATE segments SET service_levels=coalesce(service_levels, {p}),"
                             f" minute_levels=coalesce(minute_levels, {p})"
                             f" WHERE id={p} AND (service_levels IS NULL OR minute_levels IS NULL)",
                             (orjson.dumps(service_levels).decode(),
                              minute_levels.to_json() if minute_levels is not None else None, segment_id))
            return bool(cur.rowcount)

    def forget(self, ids: Sequence[int]) -> None:
        """Drop the rows of retired or missing segments (their files are gone)."""
        if not ids:
            return
        with self.db.transaction() as tx:
            d = tx.dialect
            tx.execute(f"DELETE FROM segments WHERE {d.id_in()} AND state IN ('retired', 'missing')", (d.ids(ids),))

    def forget_sources(self, prefix: str, before_us: int) -> int:
        """Forget the stored ranges of sources whose id starts with ``prefix`` and that were first
        stored before ``before_us``; how many. For pushed requests (each a source of its own),
        whose identity only needs remembering for as long as a client may retry."""
        with self.db.transaction() as tx:
            d = tx.dialect
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            cur = tx.execute(f"DELETE FROM source_marks WHERE source_id LIKE {d.p} ESCAPE '\\' AND updated_us < {d.p}",
                             (escaped + "%", before_us))
            return int(cur.rowcount or 0)

    def mark_missing(self, ids: Sequence[int]) -> None:
        """Take live segments whose files are gone out of the live set (kept, for the record)."""
        if not ids:
            return
        with self.db.transaction() as tx:
            d = tx.dialect
            tx.execute(f"UPDATE segments SET state='missing', retired_us={d.p} WHERE {d.id_in()} AND state='live'",
                       (_now_us(), d.ids(ids)))

    def known_paths(self) -> dict[str, tuple[int, str]]:
        """Every segment path the catalog knows, with its id and state."""
        return {p: (i, st) for i, p, st in self.db.read("SELECT id, path, state FROM segments")}

    def audit_log(self, limit: int = 100, tenant: str | None = None) -> list[AuditEntry]:
        """The latest deletions, newest first."""
        p = self.db.dialect.p
        where, params = (f"WHERE tenant={p}", (tenant,)) if tenant is not None else ("", ())
        rows = self.db.read("SELECT actor, action, tenant, service, start_us, end_us, segments, rows, bytes, detail,"
                            f" at_us FROM audit {where} ORDER BY at_us DESC, id DESC LIMIT {p}", (*params, limit))
        return [AuditEntry(a, ac, t, s, lo, hi, n, r, b, orjson.loads(d), at)
                for a, ac, t, s, lo, hi, n, r, b, d, at in rows]

    def record_job(self, name: str, started_us: int, result: dict[str, Any]) -> None:
        """Remember the last run of a maintenance job (for ``GET /api/v1/retention``)."""
        with self.db.transaction() as tx:
            tx.execute(f"INSERT INTO jobs (name, started_us, ended_us, result) VALUES ({tx.dialect.params(4)})"
                       " ON CONFLICT (name) DO UPDATE SET started_us=excluded.started_us,"
                       " ended_us=excluded.ended_us, result=excluded.result",
                       (name, started_us, _now_us(), orjson.dumps(result).decode()))

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {n: {"started_us": s, "ended_us": e, "result": orjson.loads(r)}
                for n, s, e, r in self.db.read("SELECT name, started_us, ended_us, result FROM jobs")}

    # -- query side ----------------------------------------------------------

    def segments(self, tenant: str, start_us: int, end_us: int) -> list[SegmentRow]:
        """Live segments of ``tenant`` that may hold rows with start <= ts < end."""
        p = self.db.dialect.p
        rows = self.db.read(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE tenant={p} AND state='live' AND max_ts_us >= {p}"
            f" AND min_ts_us < {p} ORDER BY max_ts_us DESC",
            (tenant, start_us, end_us))
        return [_segment_row(r) for r in rows]

    def segments_created_since(self, tenant: str, since_us: int) -> list[SegmentRow]:
        """Live segments of ``tenant`` written at or after ``since_us``: every row received since then is in one."""
        p = self.db.dialect.p
        rows = self.db.read(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE tenant={p} AND state='live'"
                            f" AND created_us >= {p} ORDER BY created_us", (tenant, since_us))
        return [_segment_row(r) for r in rows]

    def totals(self) -> dict[str, int]:
        n, rows, size = self.db.read(
            "SELECT count(*), coalesce(sum(rows),0), coalesce(sum(bytes),0) FROM segments WHERE state='live'")[0]
        return {"segments": int(n), "rows": int(rows), "bytes": int(size)}
