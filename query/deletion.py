"""Deletion on demand: every row a query matches in a time range, really gone (a leaked secret, a GDPR request).

The query is the search language, compiled by the same planner as a search,
so what ``loglake search`` shows is what ``loglake delete`` removes. Each
affected segment is rewritten without the matching rows and the change is
audited (see :mod:`storage.rewrite`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from query.language import parse
from query.planner import compile_filter, prune
from storage.catalog import AuditEntry, Catalog
from storage.errors import CatalogConflict
from storage.rewrite import Removed, rewrite_segment
from storage.root import DataRoot

#: Rounds of looking again after losing a race with compaction.
MAX_PASSES = 5


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


def delete_matching(root: DataRoot, catalog: Catalog, *, tenant: str, query: str, start_us: int, end_us: int,
                    actor: str, dry_run: bool = False, zstd_level: int = 9,
                    progress: Callable[[int], None] | None = None) -> DeletionReport:
    """Remove the rows of ``tenant`` matching ``query`` with start <= ts < end."""
    node = parse(query)
    cond = compile_filter(node)
    con = duckdb.connect()
    con.execute("SET threads = 1")             # one thread keeps the rows in file order
    con.execute("SET TimeZone = 'UTC'")
    sql = (f"SELECT coalesce(ts >= make_timestamptz(?::BIGINT) AND ts < make_timestamptz(?::BIGINT) "
           f"AND ({cond.sql}), FALSE) AS hit FROM rows")

    def matching(table: pa.Table) -> pa.ChunkedArray:
        con.register("rows", table)
        try:
            return con.execute(sql, [start_us, end_us, *cond.params]).to_arrow_table()["hit"]
        finally:
            con.unregister("rows")

    report = DeletionReport(dry_run)

    def audit(removed: Removed) -> list[AuditEntry]:
        return [AuditEntry(actor, "delete", tenant, svc, *removed.range_of(svc), 1, rows,
                           removed.bytes * rows // max(1, removed.rows),
                           {"segment": removed.segment.path, "query": query, "start_us": start_us, "end_us": end_us})
                for svc, rows in sorted(removed.by_service.items())]

    try:
        # A segment compacted away under us holds its rows in the new one: look again.
        for _ in range(MAX_PASSES):
            conflicts = 0
            for seg in prune(catalog.segments(tenant, start_us, end_us), node):
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
