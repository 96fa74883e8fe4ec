"""The label queries only the Loki API asks: distinct values, label sets, volume, cardinalities.

Each is one SELECT over the planned data (:meth:`QueryRunner.select`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from query.language import Node
from query.planner import Compiled, group_sql
from query.runner import QueryRunner
from storage.schema import LINE_SQL


def _group(label: str | Compiled) -> Compiled:
    return label if isinstance(label, Compiled) else group_sql(label)


class LabelQueries:
    """Label values and volumes over the runner, for the Loki API's label and volume routes."""

    def __init__(self, runner: QueryRunner) -> None:
        self.runner = runner

    def distinct(self, fieldname: str | Compiled, node: Node | None, start_us: int, end_us: int,
                 tenant: str = "default", limit: int = 1000) -> list[str]:
        """Distinct values of one field (or SQL over a row) in the range (label values)."""
        group = _group(fieldname)
        table, _ = self.runner.select(node, start_us, end_us, tenant, f"DISTINCT {group.sql} AS v",
                                      "AND v IS NOT NULL ORDER BY v LIMIT ?", group.params, [limit])
        return [] if table is None else [str(v) for v in table["v"].to_pylist()]

    def cardinalities(self, node: Node | None, start_us: int, end_us: int, tenant: str,
                      labels: dict[str, str | Compiled]) -> dict[str, int]:
        """How many distinct values each of ``labels`` (name: a column, an attribute key or SQL over a row)
        takes in the range, by name."""
        groups = [_group(g) for g in labels.values()]
        select = ", ".join(f"count(DISTINCT {g.sql}) AS c{i}" for i, g in enumerate(groups))
        table, _ = self.runner.select(node, start_us, end_us, tenant, select, "",
                                      [p for g in groups for p in g.params], [])
        if table is None:
            return {name: 0 for name in labels}
        return {name: int(table[f"c{i}"][0].as_py()) for i, name in enumerate(labels)}

    def label_sets(self, node: Node | None, start_us: int, end_us: int, tenant: str,
                   labels: list[str]) -> list[dict[str, str | None]]:
        """Distinct combinations of ``labels`` (columns) in the range."""
        groups = [group_sql(name) for name in labels]
        select = "DISTINCT " + ", ".join(f"{g.sql} AS l{i}" for i, g in enumerate(groups))
        table, _ = self.runner.select(node, start_us, end_us, tenant, select, "LIMIT ?",
                                      [p for g in groups for p in g.params], [100_000])
        if table is None:
            return []
        cols = [table[f"l{i}"].to_pylist() for i in range(len(labels))]
        return [{name: cols[i][j] for i, name in enumerate(labels)} for j in range(table.num_rows)]

    def volume(self, node: Node | None, start_us: int, end_us: int, tenant: str,
               labels: Sequence[str | Compiled]) -> list[dict[str, Any]]:
        """Rows, bytes (of the original lines, as Loki counts them) and streams per combination of
        ``labels`` (columns, attribute keys or SQL over a row), most bytes first."""
        groups = [_group(g) for g in labels]
        keys = "".join(f"{g.sql} AS l{i}, " for i, g in enumerate(groups))
        select = (f"{keys}count(*) AS n, sum(strlen({LINE_SQL}))::BIGINT AS b, "
                  "count(DISTINCT (service, host, level, source)) AS streams")
        tail = ("GROUP BY ALL " if groups else "") + "ORDER BY b DESC LIMIT ?"
        table, scan = self.runner.select(node, start_us, end_us, tenant, select, tail,
                                         [p for g in groups for p in g.params], [10_000], original=True)
        if table is None:
            return []
        cols = [table[f"l{i}"].to_pylist() for i in range(len(labels))]
        return [{"labels": tuple(c[j] for c in cols), "rows": int(table["n"][j].as_py()),
                 "bytes": int(table["b"][j].as_py() or 0), "streams": int(table["streams"][j].as_py()),
                 "segments": scan.segments_scanned} for j in range(table.num_rows) if table["n"][j].as_py()]
