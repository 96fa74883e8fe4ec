"""A rule's query evaluated at a time (or at many, for a backtest): its series and their values.

LogQL rules go through the Loki engine, so a rule means what the same query means in Grafana;
native and saved-query rules through the aggregator's window. Either way the window is
``(t - range, t]``. A backtest evaluates all its steps in one pass where the query allows (a LogQL
metric query at every step, a native count or rate from buckets of the step), so it is not the
same code as the evaluation at one time that it must agree with.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass
from typing import Any

import numpy as np

from query.alerts.rules import Condition, Rule
from query.errors import QueryError
from query.language import And, Node, Term
from query.logql import LogQuery, RangeAggregation, log_queries, to_string, walk
from query.loki.engine import Engine, Matrix, Scalar
from query.service import SearchService
from query.timerange import format_us

LabelSet = tuple[tuple[str, str], ...]
#: Steps one backtest pass evaluates at once (Loki's points per series).
CHUNK_STEPS = 10_000


@dataclass(frozen=True, slots=True)
class Found:
    """One series of a rule's result at one time: its labels and value."""

    labels: dict[str, str]
    value: float


class RuleQueries:
    """Evaluates rules of any tenant over one search service."""

    def __init__(self, service: SearchService, external_url: str = "") -> None:
        self.svc = service
        self.engine = Engine(service)
        self.external_url = external_url.rstrip("/")

    # -- what a rule reads ----------------------------------------------------

    def _native(self, rule: Rule, tenant: str) -> tuple[Node, Condition]:
        cond = rule.condition or Condition()
        if rule.query is not None:
            return self.svc.parse_query(rule.query), cond
        assert rule.saved_query is not None
        saved = self.svc.saved(rule.saved_query, tenant)     # SavedQueryNotFound: the evaluation's error
        return self.svc.parse_query(saved.query), cond

    def _native_text(self, rule: Rule, tenant: str) -> str:
        if rule.query is not None:
            return rule.query
        return self.svc.saved(rule.saved_query or "", tenant).query

    # -- one time ---------------------------------------------------------------

    def evaluate(self, rule: Rule, tenant: str, at_us: int) -> list[Found]:
        """The series for which the rule's condition holds at ``at_us`` (all series of a recording rule)."""
        if rule.expr is not None:
            value = self.engine.evaluate(rule.logql(), np.array([at_us], dtype=np.int64), tenant)
            if isinstance(value, Scalar):
                value = {(): value.values}
            return [Found(dict(k), float(v[0])) for k, v in sorted(value.items()) if not math.isnan(v[0])]
        node, cond = self._native(rule, tenant)
        fn = "count" if cond.fn == "rate" else cond.fn
        groups = self.svc.aggregator.window(node, tenant, at_us - cond.window_us, at_us, list(cond.by), fn)
        if not cond.by and not groups and fn == "count":
            groups = {(): 0.0}      # no rows is a count of 0, which `< 1` may alert on
        out = []
        for key, raw in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
            if raw is None:
                continue
            v = float(raw) / (cond.window_us / 1e6) if cond.fn == "rate" else float(raw)
            if rule.kind == "record" or cond.holds(v):
                out.append(Found({b: "" if x is None else x for b, x in zip(cond.by, key, strict=True)}, v))
        return out

    # -- many times (backtests) -------------------------------------------------

    def series(self, rule: Rule, tenant: str, steps: np.ndarray) -> dict[LabelSet, np.ndarray]:
        """The rule's value at each step, NaN where the condition does not hold, per series."""
        out: dict[LabelSet, np.ndarray] = {}
        for i in range(0, len(steps), CHUNK_STEPS):
            chunk = steps[i:i + CHUNK_STEPS]
            for key, values in self._series_chunk(rule, tenant, chunk).items():
                out.setdefault(key, np.full(len(steps), np.nan))[i:i + len(chunk)] = values
        return out

    def _series_chunk(self, rule: Rule, tenant: str, steps: np.ndarray) -> dict[LabelSet, np.ndarray]:
        if rule.expr is not None:
            value: Matrix | Scalar = self.engine.evaluate(rule.logql(), steps, tenant)
            if isinstance(value, Scalar):
                return {(): value.values}
            return {k: v for k, v in value.items() if not np.isnan(v).all()}
        node, cond = self._native(rule, tenant)
        if cond.fn not in ("count", "rate"):
            # Other functions cannot be summed from buckets: one window per step.
            out: dict[LabelSet, np.ndarray] = {}
            for j, t in enumerate(steps):
                for f in self.evaluate(rule, tenant, int(t)):
                    out.setdefault(tuple(sorted(f.labels.items())), np.full(len(steps), np.nan))[j] = f.value
            return out
        return self._counts(node, cond, rule, tenant, steps)

    def _counts(self, node: Node, cond: Condition, rule: Rule, tenant: str,
                steps: np.ndarray) -> dict[LabelSet, np.ndarray]:
        step_us = int(steps[1] - steps[0]) if len(steps) > 1 else cond.window_us
        width = math.gcd(cond.window_us, step_us)
        per = cond.window_us // width
        origin = int(steps[0]) - cond.window_us
        n_buckets = int((steps[-1] - steps[0]) // width) + per
        if n_buckets > 50 * CHUNK_STEPS:
            raise QueryError("window and step too fine for this time range; use a larger step")
        table = self.svc.buckets(node, tenant, origin, int(steps[-1]), origin, width, list(cond.by))
        counts: dict[LabelSet, np.ndarray] = {}
        if table.num_rows:
            ks = table["k"].to_numpy()
            ns = table["n"].to_numpy().astype(float)
            cols = [table[f"l{i}"].to_pylist() for i in range(len(cond.by))]
            for j in range(table.num_rows):
                key = tuple(sorted((b, "" if cols[i][j] is None else str(cols[i][j]))
                                   for i, b in enumerate(cond.by)))
                k = int(ks[j])
                if 0 < k <= n_buckets:
                    counts.setdefault(key, np.zeros(n_buckets + 1))[k] += ns[j]
        if not cond.by and not counts:
            counts[()] = np.zeros(n_buckets + 1)
        starts = ((steps - steps[0]) // width).astype(np.int64)
        out = {}
        for key, c in counts.items():
            cum = np.cumsum(c)
            v = cum[starts + per] - cum[starts]      # buckets starts+1 .. starts+per
            if cond.fn == "rate":
                v = v / (cond.window_us / 1e6)
            held = v if rule.kind == "record" else np.where([cond.holds(x) for x in v], v, np.nan)
            if not np.isnan(held).all():
                out[key] = held
        return out

    # -- what a notification shows ----------------------------------------------

    def window_of(self, rule: Rule) -> int:
        if rule.expr is not None:
            ranges = [n.log_range.range_ns // 1000 for n in walk(rule.logql()) if isinstance(n, RangeAggregation)]
            return max(ranges, default=300_000_000)
        return (rule.condition or Condition()).window_us

    def link(self, rule: Rule, tenant: str, at_us: int, labels: dict[str, str]) -> str:
        """Where to see the matching lines: the search page (native) or the Loki API (LogQL)."""
        lo = at_us - self.window_of(rule)
        if rule.expr is not None:
            queries = log_queries(rule.logql())
            q = to_string(queries[0]) if queries else rule.expr
            params = {"query": q, "start": str(lo * 1000), "end": str(at_us * 1000)}
            return f"{self.external_url}/loki/api/v1/query_range?{urllib.parse.urlencode(params)}"
        try:
            text = self._native_text(rule, tenant)
        except QueryError:
            text = ""
        cond = rule.condition or Condition()
        for b in cond.by:
            value = labels.get(b, "")
            text = f"({text}) AND {b}:\"{_quoted(value)}\"" if text.strip() else f"{b}:\"{_quoted(value)}\""
        params = {"q": text, "start": format_us(lo), "end": format_us(at_us)}
        if tenant != "default":
            params["tenant"] = tenant
        return f"{self.external_url}/?{urllib.parse.urlencode(params)}"

    def samples(self, rule: Rule, tenant: str, at_us: int, labels: dict[str, str], n: int) -> list[dict[str, Any]]:
        """Up to ``n`` of the newest lines the rule counted for this series."""
        if n <= 0:
            return []
        lo = at_us - self.window_of(rule)
        if rule.expr is not None:
            queries = log_queries(rule.logql())
            if not queries:
                return []
            q: LogQuery = queries[0]
            entries, _ = self.engine.logs(q, lo + 1, at_us + 1, 100, "backward", tenant)
            picked = [e for e in entries if all(e.all_labels().get(k, v) == v for k, v in labels.items())][:n]
            return [{"ts": format_us(e.ts_us), "line": e.line} for e in picked]
        node, cond = self._native(rule, tenant)
        for b in cond.by:
            node = And((node, Term(b, labels.get(b, ""), "phrase")))
        rows = self.svc.search_node(node, lo + 1, at_us + 1, n, "desc", tenant).rows
        return [{"ts": r["ts"], "line": r["message"]} for r in rows]


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')

