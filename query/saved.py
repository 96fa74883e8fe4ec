"""Saved queries: checked when saved (not when a dashboard first runs them), run by name.

The rows live in :class:`query.store.SavedQueryStore`; this module holds the
rules a saved query must meet and runs it through search or aggregation.
"""

from __future__ import annotations

from typing import Any

from query.aggregate import AggregateResult, Aggregator, parse_fn
from query.errors import QueryError, SavedQueryExists, SavedQueryNotFound
from query.language import parse
from query.planner import compile_filter, group_sql, resolve
from query.search import Searcher, SearchResult, check_fields
from query.store import SavedQueryRow, SavedQueryStore
from query.timerange import parse_duration_us, parse_range
from storage.errors import CatalogConflict

#: A saved query's name: ASCII letters, digits, '.', '_', '-' and inner spaces, starting with a
#: letter or digit, at most 128 characters. It appears in URLs, dashboards and terminals, so no
#: '/', '..' alone, control characters or bidirectional overrides. Names saved before the rule
#: still run, read and delete; only new names (and renames) are checked.
SAVED_NAME_RULE = ("1-128 characters: ASCII letters, digits, '.', '_', '-' and spaces, starting with a letter or "
                   "digit and not ending with a space")
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_REST = _NAME_FIRST | frozenset("._- ")
_SAVED_PARAMS = {"search": {"start", "end", "limit", "order", "fields"},
                 "aggregate": {"start", "end", "interval", "by", "fn", "top"}}


def check_saved_name(name: str) -> None:
    """Refuse a new saved-query name outside :data:`SAVED_NAME_RULE` (HTTP 400, saying the rule)."""
    if not (0 < len(name) <= 128 and name[0] in _NAME_FIRST and name[-1] != " "
            and all(c in _NAME_REST for c in name)):
        raise QueryError(f"invalid saved query name {name[:60]!r}: a name is {SAVED_NAME_RULE}")


def check_saved(q: SavedQueryRow, max_limit: int) -> None:
    """Refuse a saved query that could never run, at save time rather than on a dashboard."""
    if q.kind not in _SAVED_PARAMS:
        raise QueryError("kind must be search or aggregate")
    extra = set(q.params) - _SAVED_PARAMS[q.kind]
    if extra:
        raise QueryError(f"unknown parameters for a {q.kind} query: {', '.join(sorted(extra))}")
    p = q.params

    def typed(key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = p.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise QueryError(f"saved query parameter {key} must be {what}")
        return value

    compile_filter(parse(q.query))
    parse_range(typed("start", str, "a time"), typed("end", str, "a time"))
    if q.kind == "search":
        limit = typed("limit", int, "a whole number")
        if limit is not None and not 1 <= limit <= max_limit:
            raise QueryError(f"saved query parameter limit must be between 1 and {max_limit}")
        if typed("order", str, "asc or desc") not in (None, "asc", "desc"):
            raise QueryError("saved query parameter order must be asc or desc")
        fields = typed("fields", list, "a list of field names")
        for name in fields or []:
            if not isinstance(name, str):
                raise QueryError("saved query parameter fields must be a list of field names")
            resolve(name)
        check_fields(fields or [])
        return
    parse_fn(typed("fn", str, "count or a function like p95(field)") or "count")
    by = typed("by", list, "a list of field names")
    for name in by or []:
        if not isinstance(name, str):
            raise QueryError("saved query parameter by must be a list of field names")
        group_sql(name)
    top = typed("top", int, "a whole number")
    if top is not None and not 1 <= top <= 1000:
        raise QueryError("saved query parameter top must be between 1 and 1000")
    interval = typed("interval", str, "a duration like 5m")
    if interval not in (None, "auto"):
        parse_duration_us(interval)


class SavedQueries:
    """Saved queries of every tenant: read, save (checked), delete and run."""

    def __init__(self, store: SavedQueryStore, searcher: Searcher, aggregator: Aggregator) -> None:
        self.store = store
        self.searcher = searcher
        self.aggregator = aggregator
        self.runner = searcher.runner

    def saved(self, name: str, tenant: str = "default") -> SavedQueryRow:
        found = self.store.saved_query(tenant, name)
        if found is None:
            raise SavedQueryNotFound(f"no saved query named {name!r} (it may have been renamed or deleted); "
                                     "GET /api/v1/saved-queries lists them")
        return found

    def save(self, q: SavedQueryRow, replacing: str | None = None) -> SavedQueryRow:
        """Create ``q``, or replace the saved query ``replacing`` (renaming it if names differ)."""
        check_saved_name(q.name)
        check_saved(q, self.runner.cfg.query.max_limit)
        self.runner.check_regexes(self.runner.parse_query(q.query))
        try:
            if replacing is None:
                self.store.create_saved_query(q)
            elif not self.store.replace_saved_query(replacing, q):
                raise SavedQueryNotFound(f"no saved query named {replacing!r}")
        except CatalogConflict:
            raise SavedQueryExists(f"a saved query named {q.name!r} exists already") from None
        return self.saved(q.name, q.tenant)

    def delete_saved(self, name: str, tenant: str = "default") -> None:
        if not self.store.delete_saved_query(tenant, name):
            raise SavedQueryNotFound(f"no saved query named {name!r}")

    def run_saved(self, name: str, start: str | None = None, end: str | None = None,
                  tenant: str = "default") -> SearchResult | AggregateResult:
        """Run a saved query over ``start``/``end``, or its own default range."""
        sq = self.saved(name, tenant)
        check_saved(sq, self.runner.cfg.query.max_limit)   # saved by an older loglake, perhaps
        p = sq.params
        start = start or p.get("start")
        end = end or p.get("end")
        if sq.kind == "aggregate":
            return self.aggregator.aggregate(sq.query, start, end, p.get("interval"), p.get("by"),
                                             p.get("fn", "count"), p.get("top"), tenant)
        return self.searcher.search(sq.query, start, end, p.get("limit"), p.get("order", "desc"), tenant,
                                    p.get("fields"))
