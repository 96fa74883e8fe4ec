"""The search service the HTTP API, the CLI and dashboards go through: a facade over its parts.

Each part has one job, all over one :class:`~query.runner.QueryRunner` (the
locked-down DuckDB, the limits, the plan of each request):
:mod:`query.search` (paged search), :mod:`query.aggregate` (buckets and
series), :mod:`query.fields` (fields and values), :mod:`query.saved` (saved
queries). The Loki API's label queries are :mod:`query.loki.labels`, over
:attr:`SearchService.runner`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from loglake.core.config import Config
from query.aggregate import AggregateResult, Aggregator
from query.fields import FieldInfo, FieldQueries
from query.language import Node
from query.planner import Compiled
from query.runner import QueryRunner
from query.saved import SavedQueries
from query.search import Order, Searcher, SearchResult
from query.store import SavedQueryRow, SavedQueryStore
from storage.catalog import Catalog


class SearchService:
    """Searches one data root through its catalog with a locked-down DuckDB."""

    def __init__(self, cfg: Config, catalog: Catalog) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.runner = QueryRunner(cfg, catalog)
        self.root = self.runner.root
        self.metrics = self.runner.metrics
        self.searcher = Searcher(self.runner)
        self.aggregator = Aggregator(self.runner)
        self.field_queries = FieldQueries(self.runner)
        self.saved_queries = SavedQueries(SavedQueryStore(catalog), self.searcher, self.aggregator)

    def check_query_text(self, text: str) -> None:
        """Refuse query text over ``query.max_query_chars`` before parsing it (either language)."""
        self.runner.check_query_text(text)

    def parse_query(self, q: str) -> Node:
        """``q`` parsed, after the length check."""
        return self.runner.parse_query(q)

    def search(self, q: str = "", start: str | None = None, end: str | None = None,
               limit: int | None = None, order: Order = "desc", tenant: str = "default",
               fields: list[str] | None = None, cursor: str | None = None) -> SearchResult:
        """See :meth:`Searcher.search`."""
        return self.searcher.search(q, start, end, limit, order, tenant, fields, cursor)

    def search_node(self, node: Node, start_us: int, end_us: int, limit: int, order: Order = "desc",
                    tenant: str = "default", fields: list[str] | None = None, cursor: str | None = None,
                    t0: float | None = None) -> SearchResult:
        """See :meth:`Searcher.search_node`."""
        return self.searcher.search_node(node, start_us, end_us, limit, order, tenant, fields, cursor, t0)

    def aggregate(self, q: str = "", start: str | None = None, end: str | None = None,
                  interval: str | None = None, by: list[str] | None = None, fn: str = "count",
                  top: int | None = None, tenant: str = "default") -> AggregateResult:
        """See :meth:`Aggregator.aggregate`."""
        return self.aggregator.aggregate(q, start, end, interval, by, fn, top, tenant)

    def buckets(self, node: Node, tenant: str, lo_us: int, hi_us: int, origin_us: int, width_us: int,
                labels: Sequence[str | Compiled], acc: dict[str, int] | None = None, *,
                line_bytes: bool = False) -> pa.Table:
        """See :meth:`Aggregator.buckets`."""
        return self.aggregator.buckets(node, tenant, lo_us, hi_us, origin_us, width_us, labels, acc,
                                       line_bytes=line_bytes)

    def fields(self, q: str = "", start: str | None = None, end: str | None = None,
               tenant: str = "default", top: int = 5) -> tuple[list[FieldInfo], dict[str, Any]]:
        """See :meth:`FieldQueries.fields`."""
        return self.field_queries.fields(q, start, end, tenant, top)

    def fields_node(self, node: Node | None, start_us: int, end_us: int, tenant: str = "default",
                    top: int = 5) -> tuple[list[FieldInfo], dict[str, Any]]:
        """See :meth:`FieldQueries.fields_node`."""
        return self.field_queries.fields_node(node, start_us, end_us, tenant, top)

    def values(self, fieldname: str, q: str = "", start: str | None = None, end: str | None = None,
               limit: int = 20, tenant: str = "default") -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """See :meth:`FieldQueries.values`."""
        return self.field_queries.values(fieldname, q, start, end, limit, tenant)

    def saved(self, name: str, tenant: str = "default") -> SavedQueryRow:
        """See :meth:`SavedQueries.saved`."""
        return self.saved_queries.saved(name, tenant)

    def save(self, q: SavedQueryRow, replacing: str | None = None) -> SavedQueryRow:
        """See :meth:`SavedQueries.save`."""
        return self.saved_queries.save(q, replacing)

    def delete_saved(self, name: str, tenant: str = "default") -> None:
        """See :meth:`SavedQueries.delete_saved`."""
        self.saved_queries.delete_saved(name, tenant)

    def run_saved(self, name: str, start: str | None = None, end: str | None = None,
                  tenant: str = "default") -> SearchResult | AggregateResult:
        """See :meth:`SavedQueries.run_saved`."""
        return self.saved_queries.run_saved(name, start, end, tenant)
