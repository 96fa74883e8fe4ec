"""What the records hold: their fields (sampled, with types and top values) and one field's values.

The HTTP API's ``/fields`` and ``/values`` and the Loki API's detected fields
ask these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from query.errors import QueryError
from query.language import MatchAll, Node
from query.planner import FIELD_COLUMNS, ORIGINAL_FIELDS, SELECT_COLUMNS, group_sql, nearest_segments, resolve
from query.runner import RANGE_SQL, Plan, QueryRunner
from query.timerange import parse_range


@dataclass
class FieldInfo:
    name: str
    type: str                              # string | number
    count: int                             # sampled rows that have it
    distinct: int
    top: list[dict[str, Any]] = field(default_factory=list)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class FieldQueries:
    """Fields and values over the runner."""

    def __init__(self, runner: QueryRunner) -> None:
        self.runner = runner
        self.cfg = runner.cfg

    def fields(self, q: str = "", start: str | None = None, end: str | None = None,
               tenant: str = "default", top: int = 5) -> tuple[list[FieldInfo], dict[str, Any]]:
        """Fields seen in the newest sampled rows of the range, with their type and top values."""
        start_us, end_us = parse_range(start, end)
        return self.fields_node(self.runner.parse_query(q), start_us, end_us, tenant, top)

    def fields_node(self, node: Node | None, start_us: int, end_us: int, tenant: str = "default",
                    top: int = 5) -> tuple[list[FieldInfo], dict[str, Any]]:
        """:meth:`fields` for a parsed query (None: every record)."""
        t0 = time.perf_counter()
        node = node or MatchAll()
        want = self.cfg.query.fields_sample_rows
        with self.runner.slot():
            plan = self.runner.plan(node, tenant, start_us, end_us)
            scan = plan.scan
            if scan.empty:
                return [], {**scan.stats(), "sampled_rows": 0}
            # The sample is the newest rows: first asked of the newest segments that hold that many
            # rows, [lo, end_us) with lo the oldest time among them (every segment overlapping it is
            # read, so each row at or after lo is seen); if fewer rows there match, of as many rows
            # again as that share of matches needs twice over (at least eight times as many), up to
            # the whole range. A day's sidebar read every row of the day's attributes to keep 10,000.
            table, rows, windows = None, want, 0
            while table is None:
                taken = nearest_segments(scan.segments, rows)
                lo = start_us if taken is None else min(g.min_ts_us for g in taken)
                if lo <= start_us:
                    table = self._sample(plan, start_us, end_us, want)
                    break
                inside = [g for g in scan.segments if g.max_ts_us >= lo]
                window = self.runner.plan(node, tenant, lo, end_us, segments=inside)
                found = self._sample(window, lo, end_us, want)
                windows += 1
                matched = _sampled(found)
                if matched >= want:
                    table = found
                rows = max(rows * 8, want * window.scan.rows_scanned * 2 // max(1, matched))
        by_field: dict[tuple[str, bool], list[tuple[str, int]]] = {}
        total = _sampled(table)
        for k, col, v, n in zip(*(table.column(i).to_pylist() for i in range(4)), strict=True):
            by_field.setdefault((k, col), []).append((v, n))
        out = []
        for (k, col), values in by_field.items():
            values.sort(key=lambda x: (-x[1], x[0]))
            numeric = all(_is_number(v) for v, _ in values)
            name = k if col or k not in FIELD_COLUMNS else f"attrs.{k}"
            out.append(FieldInfo(name, "number" if numeric and not col else "string", sum(n for _, n in values),
                                 len(values), [{"value": v, "count": n} for v, n in values[:top]]))
        out.sort(key=lambda f: (f.name not in SELECT_COLUMNS, -f.count, f.name))
        # The range's plan, as a search reports it, and how many windows were read before the whole range.
        return out, {**scan.stats(), "sampled_rows": total, "windows": windows,
                     "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}

    def _sample(self, plan: Plan, lo: int, hi: int, want: int) -> pa.Table:
        """(field, is a column, value, count, rows sampled) over the newest ``want`` rows in [lo, hi)."""
        source, cond = plan.filtered()
        sample = (f"SELECT service, host, source, level, trace_id, span_id, attrs FROM {source.sql} AS logs "
                  f"WHERE {RANGE_SQL} AND ({cond.sql}) ORDER BY ts DESC LIMIT ?")
        params = [*source.params, lo, hi, *cond.params, want]
        sql = (f"WITH s AS MATERIALIZED ({sample}), "
               "kv AS (SELECT unnest(['service', 'host', 'source', 'level', 'trace_id', 'span_id']) AS k, "
               "unnest([service, host, source, level, trace_id, span_id]::VARCHAR[]) AS v, TRUE AS col FROM s "
               "UNION ALL SELECT unnest(map_keys(attrs)) AS k, unnest(map_values(attrs)) AS v, FALSE FROM s) "
               "SELECT k, col, v, count(*) AS n, (SELECT count(*) FROM s) AS total FROM kv "
               "WHERE v IS NOT NULL GROUP BY ALL")
        return self.runner.run(sql, params)


    def values(self, fieldname: str, q: str = "", start: str | None = None, end: str | None = None,
               limit: int = 20, tenant: str = "default") -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The most frequent values of one field in the range, with their counts."""
        t0 = time.perf_counter()
        if not 1 <= limit <= 1000:
            raise QueryError("limit must be between 1 and 1000")
        group = group_sql(fieldname)
        node = self.runner.parse_query(q)
        start_us, end_us = parse_range(start, end)
        table, scan = self.runner.select(node, start_us, end_us, tenant, f"{group.sql} AS v, count(*) AS n",
                                         "AND v IS NOT NULL GROUP BY v ORDER BY n DESC, v LIMIT ?", group.params,
                                         [limit], original=resolve(fieldname)[1] in ORIGINAL_FIELDS)
        values = [] if table is None else [{"value": v, "count": n} for v, n in
                                           zip(table["v"].to_pylist(), table["n"].to_pylist(), strict=True)]
        return values, {**scan.stats(), "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}


def _sampled(table: pa.Table) -> int:
    return int(table["total"][0].as_py()) if table.num_rows else 0

