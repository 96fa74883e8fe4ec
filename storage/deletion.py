"""Deletion on demand: the rows a predicate matches in a time range, really gone.

The caller (the query package, for ``loglake delete``) says which rows: a DuckDB
boolean expression over the record columns, with its parameters, and which of the
tenant's segments may hold them. Storage owns the rest: each affected segment is
rewritten without the matching rows, swapped in the catalog and audited (see
:mod:`storage.rewrite`), and a segment compacted away meanwhile is looked at again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from storage.catalog import AuditEntry, Catalog, SegmentRow
from storage.errors import CatalogConflict
from storage.rewrite import Removed, rewrite_segment
from storage.root import DataRoot

#: Rounds of looking again after losing a race with compaction.
MAX_PASSES = 5


@dataclass(frozen=True)
class RowPredicate:
    """Which rows to delete: a DuckDB boolean expression over a segment's columns."""

    sql: str
    params: Sequence[Any] = ()
    #: What the audit log records as the reason (the user's query text).
    text: str = ""


@dataclass
class DeletionReport:
    dry_run: bool
    segments_checked: int = 0
    removed: list[Removed] = field(default_factory=list)
    conflicts: int = 0

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.removed)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removed)


def delete_where(root: DataRoot, catalog: Catalog, *, tenant: str, predicate: RowPredicate, start_us: int,
                 end_us: int, actor: str, dry_run: bool = False, zstd_level: int = 9,
                 candidates: Callable[[list[SegmentRow]], list[SegmentRow]] = lambda segs: segs,
                 progress: Callable[[int], None] | None = None) -> DeletionReport:
    """Remove the rows of ``tenant`` with start <= ts < end that ``predicate`` matches.

    ``candidates`` narrows the segments overlapping the range to those that may match
    (the query planner's pruning); it must never drop a segment that holds a match.
    """
    con = duckdb.connect()
    con.execute("SET threads = 1")             # one thread keeps the rows in file order
    con.execute("SET TimeZone = 'UTC'")
    sql = (f"SELECT coalesce(ts >= make_timestamptz(?::BIGINT) AND ts < make_timestamptz(?::BIGINT) "
           f"AND ({predicate.sql}), FALSE) AS hit FROM rows")

    def matching(table: pa.Table) -> pa.ChunkedArray:
        con.register("rows", table)
        try:
            return con.execute(sql, [start_us, end_us, *predicate.params]).to_arrow_table()["hit"]
        finally:
            con.unregister("rows")

    report = DeletionReport(dry_run)

    def audit(removed: Removed) -> list[AuditEntry]:
        return [AuditEntry(actor, "delete", tenant, svc, *removed.range_of(svc), 1, rows,
                           removed.bytes * rows // max(1, removed.rows),
                           {"segment": removed.segment.path, "query": predicate.text, "start_us": start_us,
                            "end_us": end_us})
                for svc, rows in sorted(removed.by_service.items())]

    try:
        # A segment compacted away under us holds its rows in the new one: look again.
        for _ in range(MAX_PASSES):
            conflicts = 0
            for seg in candidates(catalog.segments(tenant, start_us, end_us)):
                report.segments_checked += 1
                try:
                    r = rewrite_segment(root, catalog, seg, matching, audit=audit, dry_run=dry_run,
                                        zstd_level=zstd_level)
                except CatalogConflict:
                    conflicts += 1
                    continue
                if r is not None:
                    report.removed.append(r)
                if progress is not None:
                    progress(seg.bytes)
            report.conflicts = conflicts
            if not conflicts or dry_run:
                break
    finally:
        con.close()
    return report
