"""Deletion on demand (a leaked secret, a GDPR request): the query side.

The query is the search language, compiled by the same planner as a search, so
what ``loglake search`` shows is what ``loglake delete`` removes. Storage does
the deleting (:func:`storage.deletion.delete_where`); this module only says which
rows and which segments may hold them.
"""

from __future__ import annotations

from collections.abc import Callable

from query.language import parse
from query.planner import compile_filter, prune
from storage.catalog import Catalog
from storage.deletion import DeletionReport, RowPredicate, delete_where
from storage.root import DataRoot


def delete_matching(root: DataRoot, catalog: Catalog, *, tenant: str, query: str, start_us: int, end_us: int,
                    actor: str, dry_run: bool = False, zstd_level: int = 9,
                    progress: Callable[[int], None] | None = None) -> DeletionReport:
    """Remove the rows of ``tenant`` matching ``query`` with start <= ts < end."""
    node = parse(query)
    cond = compile_filter(node)
    return delete_where(root, catalog, tenant=tenant, predicate=RowPredicate(cond.sql, cond.params, query),
                        start_us=start_us, end_us=end_us, actor=actor, dry_run=dry_run, zstd_level=zstd_level,
                        candidates=lambda segs: prune(segs, node), progress=progress)
