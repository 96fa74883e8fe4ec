"""The one search service object: the HTTP API (and anything else) goes through it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from loglake.config import Config
from query.errors import QueryError
from query.language import parse
from query.planner import plan_search
from query.timerange import format_us, parse_range
from storage.catalog import Catalog
from storage.root import DataRoot


@dataclass
class SearchResult:
    rows: list[dict[str, Any]]
    stats: dict[str, Any]


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    cols = {name: table[name] for name in table.column_names}
    for name in ("ts", "observed_ts"):
        us = pc.cast(cols[name], pa.int64()).to_pylist()
        cols[name] = pa.chunked_array([pa.array([format_us(u) for u in us], pa.string())])
    out = pa.table(cols).to_pylist()
    for r in out:
        r["attrs"] = dict(r["attrs"] or ())
    return out


class SearchService:
    """Searches one data root through its catalog with a locked-down DuckDB."""

    def __init__(self, cfg: Config, catalog: Catalog) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.root = DataRoot.from_config(cfg.storage)
        self._db = duckdb.connect(config={"autoinstall_known_extensions": False,
                                          "autoload_known_extensions": False})
        q = cfg.query
        self._db.execute("SET TimeZone = 'UTC'")
        self._db.execute(f"SET threads = {int(q.threads)}")
        self._db.execute("SET memory_limit = ?", [q.memory_limit])
        # Queries may read the data root and nothing else, and never another host.
        self.root.configure_duckdb(self._db)
        self._db.execute("SET lock_configuration = true")
        self._local = threading.local()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._db.cursor()
        return cur

    def search(self, q: str = "", start: str | None = None, end: str | None = None,
               limit: int | None = None, order: str = "desc", tenant: str = "default") -> SearchResult:
        """Records matching ``q`` with start <= ts < end, newest first by default."""
        t0 = time.perf_counter()
        limit = self.cfg.query.default_limit if limit is None else limit
        if not 1 <= limit <= self.cfg.query.max_limit:
            raise QueryError(f"limit must be between 1 and {self.cfg.query.max_limit}")
        if order not in ("asc", "desc"):
            raise QueryError("order must be asc or desc")
        node = parse(q)
        start_us, end_us = parse_range(start, end)
        segments = self.catalog.segments(tenant, start_us, end_us)
        plan = plan_search(node, segments, self.root.url, start_us, end_us, limit, order)
        if plan.files:
            table = self._cursor().execute(plan.sql, plan.params).to_arrow_table()
            rows = _rows(table)
        else:
            rows = []
        return SearchResult(rows, {
            "segments_total": plan.segments_total, "segments_scanned": plan.segments_scanned,
            "rows_in_scanned_segments": plan.rows_in_segments, "bytes_in_scanned_segments": plan.bytes_in_segments,
            "returned": len(rows), "start": format_us(start_us), "end": format_us(end_us),
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2),
        })
