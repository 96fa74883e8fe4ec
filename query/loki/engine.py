"""LogQL evaluation: log queries to streams, metric queries to series over steps.

Log queries run through the search service (one planner for both languages)
and then the pipeline stages SQL cannot express. Metric queries over lines
without such stages are counted in DuckDB per bucket of ``gcd(range, step)``
and summed into each step's window; anything else (parsers, ``unwrap``)
evaluates the pipeline on the lines in Python, bounded by ``MAX_PIPELINE_LINES``.
Vector aggregations and binary operators work on NumPy arrays, one per series.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from query.errors import QueryError
from query.language import Node
from query.logql import (
    BinaryOp,
    Grouping,
    LabelReplace,
    LogQLUnsupported,
    LogQuery,
    MetricExpr,
    Number,
    RangeAggregation,
    Vector,
    VectorAggregation,
)
from query.logql.lexer import parse_bytes, parse_go_duration
from query.loki import pipeline
from query.loki.metadata import label_sql, stream_labels, structured_metadata
from query.loki.pipeline import ERROR, ERROR_DETAILS, Entry
from query.loki.translate import STREAM_COLUMNS, pushdown
from query.planner import Compiled, group_sql
from query.search import Order
from query.service import SearchService
from query.timerange import parse_time_us

Labels = tuple[tuple[str, str], ...]
MAX_POINTS = 11_000                 # Loki's limit of points per series
MAX_PIPELINE_LINES = 1_000_000      # lines a metric query may run through Python stages
MAX_SERIES = 500                    # series a metric query may answer (Loki's max_query_series default)
#: Range aggregations whose series a ``sum`` can add up: the sum's grouping can be applied while
#: counting (Loki injects it into the sample extractor for the same operations).
_SUMMABLE = ("count_over_time", "rate", "bytes_over_time", "bytes_rate", "sum_over_time")
_IDS = ("trace_id", "span_id")      # columns that are structured metadata, beside attrs and level
_PAGE = 5_000


@dataclass
class Scalar:
    values: np.ndarray


Matrix = dict[Labels, np.ndarray]
Value = Matrix | Scalar


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, v) for k, v in labels.items() if k != ERROR_DETAILS))


#: What a log query reads of each record: its stream labels, original line, and what its
#: structured metadata is made of.
FIELDS = [*STREAM_COLUMNS, "line", "attrs", "trace_id", "span_id"]


def _entries(rows: list[dict]) -> list[Entry]:
    return [Entry(parse_time_us(r["ts"]), r["line"], stream_labels(r), meta=structured_metadata(r)) for r in rows]


def series_limit(value: Value) -> None:
    """Loki's limit on the series a metric query answers, with its advice."""
    if not isinstance(value, Scalar) and len(value) > MAX_SERIES:
        raise QueryError(f"maximum number of series ({MAX_SERIES}) reached for a single query; consider reducing "
                         "query cardinality by adding more specific stream selectors, reducing the time range, "
                         "or aggregating results with functions like sum(), count() or topk()")


class Engine:
    """Answers LogQL over one search service."""

    def __init__(self, service: SearchService) -> None:
        self.svc = service
        self._local = threading.local()

    def figures(self) -> dict[str, int]:
        """Lines and bytes the calling thread's queries read since its last call (for ``stats``)."""
        acc = getattr(self._local, "acc", None) or {}
        self._local.acc = {}
        return acc

    def _acc(self) -> dict[str, int]:
        if getattr(self._local, "acc", None) is None:
            self._local.acc = {}
        return self._local.acc

    # -- log queries ----------------------------------------------------------

    def logs(self, q: LogQuery, start_us: int, end_us: int, limit: int, direction: str,
             tenant: str) -> tuple[list[Entry], dict[str, int]]:
        """Up to ``limit`` entries with start <= ts < end after the whole pipeline."""
        with self.svc.runner.time_limit():
            return self._logs(q, start_us, end_us, limit, direction, tenant)

    def _logs(self, q: LogQuery, start_us: int, end_us: int, limit: int, direction: str,
              tenant: str) -> tuple[list[Entry], dict[str, int]]:
        node, stages = pushdown(q)
        order: Order = "desc" if direction == "backward" else "asc"
        fields = FIELDS
        found: list[Entry] = []
        scanned = 0
        cursor = None
        stats: dict[str, int] = {}
        while True:
            page = limit if not stages else max(limit, _PAGE)
            r = self.svc.search_node(node, start_us, end_us, min(page, self.svc.cfg.query.max_limit), order,
                                     tenant, fields, cursor)
            for k in ("rows_scanned", "bytes_scanned", "segments_scanned"):
                stats[k] = stats.get(k, 0) + int(r.stats.get(k, 0))
            scanned += len(r.rows)
            found += pipeline.run(stages, _entries(r.rows))
            self.svc.runner.in_time()
            cursor = r.cursor
            if len(found) >= limit or cursor is None or not stages or scanned >= MAX_PIPELINE_LINES:
                break
        stats["lines_processed"] = scanned
        return found[:limit], stats

    # -- metric queries -------------------------------------------------------

    def evaluate(self, expr: MetricExpr, steps: np.ndarray, tenant: str) -> Value:
        """``expr`` at each step (epoch microseconds)."""
        with self.svc.runner.time_limit():
            return self._evaluate(expr, steps, tenant)

    def _evaluate(self, expr: MetricExpr, steps: np.ndarray, tenant: str) -> Value:
        match expr:
            case Number(value=v):
                return Scalar(np.full(len(steps), v, dtype=float))
            case Vector(value=v):
                return {(): np.full(len(steps), v, dtype=float)}
            case RangeAggregation():
                return self._range(expr, steps, tenant)
            case VectorAggregation():
                inner = expr.expr
                if expr.op == "sum" and isinstance(inner, RangeAggregation) and inner.op in _SUMMABLE \
                        and inner.grouping is None:
                    # Counted per group of the sum straight away, not per series then added up.
                    return _vector_agg(expr, self._range(inner, steps, tenant, expr.grouping or Grouping()))
                return _vector_agg(expr, self._evaluate(inner, steps, tenant))
            case BinaryOp():
                return _binary(expr, self._evaluate(expr.left, steps, tenant),
                               self._evaluate(expr.right, steps, tenant))
            case LabelReplace():
                return _label_replace(expr, _matrix(self._evaluate(expr.expr, steps, tenant), "label_replace"))
        raise LogQLUnsupported(type(expr).__name__)

    def _range(self, agg: RangeAggregation, steps: np.ndarray, tenant: str,
               inject: Grouping | None = None) -> Matrix:
        """A range aggregation at each step; ``inject`` is the grouping of a ``sum`` around it, which
        its series may be merged by."""
        lr = agg.log_range
        range_us, offset_us = lr.range_ns // 1000, lr.offset_ns // 1000
        if range_us <= 0:
            raise QueryError("the range of a range aggregation must be positive")
        step_us = int(steps[1] - steps[0]) if len(steps) > 1 else range_us
        width = math.gcd(range_us, step_us)
        origin = int(steps[0]) - offset_us - range_us
        n_buckets = int((steps[-1] - steps[0]) // width) + range_us // width
        if n_buckets > 50 * MAX_POINTS:
            raise QueryError("range and step too fine for this time range; use a larger step")
        node, stages = pushdown(lr.query)
        lo, hi = origin, int(steps[-1]) - offset_us
        per = range_us // width
        starts = ((steps - steps[0]) // width).astype(np.int64)     # window i is buckets starts[i]+1 .. +per
        simple = lr.unwrap is None and not stages and agg.op in (
            "count_over_time", "rate", "bytes_over_time", "bytes_rate", "absent_over_time")
        if simple:
            value = "bytes" if agg.op.startswith("bytes") else "n"
            counts = self._counts(node, tenant, lo, hi, origin, width, n_buckets, inject,
                                  line_bytes=agg.op.startswith("bytes"), value=value)
            windows = {key: _window_sums(c, starts, per) for key, c in counts.items()}
            return self._finish_counts(agg, windows, range_us, len(steps))
        samples = self._samples(lr.query, stages, agg, lo, hi, tenant, inject)
        return self._from_samples(agg, samples, origin, width, n_buckets, starts, per, range_us, len(steps))

    def _counts(self, node: Node, tenant: str, lo: int, hi: int, origin: int, width: int, n_buckets: int,
                inject: Grouping | None, *, line_bytes: bool, value: str) -> dict[Labels, np.ndarray]:
        """Lines (or their bytes) per bucket and series, counted in DuckDB. A series is a label set:
        with a ``by`` grouping injected, just those labels (each a column, ``service_name``, or an
        attribute by the metadata naming rule); else the stream labels and the structured metadata. The SQL groups
        by the labels' sources and a hash of them, so Python builds each series' labels once."""
        if inject is not None and not inject.without:
            names = list(dict.fromkeys(inject.labels))
            groups = [label_sql(n) for n in names]
        else:
            names = []
            groups = [group_sql(n) for n in STREAM_COLUMNS] + [Compiled("attrs")] + [group_sql(c) for c in _IDS]
        if groups:
            groups.append(Compiled(f"hash({', '.join(g.sql for g in groups)})",
                                   [p for g in groups for p in g.params]))
        table = self.svc.buckets(node, tenant, lo, hi, origin, width, groups, self._acc(), line_bytes=line_bytes)
        out: dict[Labels, np.ndarray] = {}
        if not table.num_rows:
            return out
        ks = table["k"].to_numpy()
        vals = table[value].to_numpy(zero_copy_only=False).astype(float)
        keep = (ks > 0) & (ks <= n_buckets)
        if not groups:
            row = np.zeros(n_buckets + 1)
            np.add.at(row, ks[keep], vals[keep])
            return {(): row}
        hashes = table[f"l{len(groups) - 1}"].to_numpy(zero_copy_only=False)
        _, first, series = np.unique(hashes, return_index=True, return_inverse=True)
        per_series = np.zeros((len(first), n_buckets + 1))
        np.add.at(per_series, (series[keep], ks[keep]), vals[keep])
        for i, row in enumerate(table.take(pa.array(first)).to_pylist()):
            values = [row[f"l{j}"] for j in range(len(groups) - 1)]
            if names:
                labels = {n: str(v) for n, v in zip(names, values, strict=True) if v is not None and v != ""}
            else:
                record = dict(zip((*STREAM_COLUMNS, "attrs", *_IDS), values, strict=True))
                labels = {**structured_metadata(record), **stream_labels(record)}
                if inject is not None:
                    labels = _grouped(labels, inject)
            key = _key(labels)
            out[key] = out[key] + per_series[i] if key in out else per_series[i]
        return out

    def _finish_counts(self, agg: RangeAggregation, windows: dict[Labels, np.ndarray], range_us: int,
                       n_steps: int) -> Matrix:
        if agg.op == "absent_over_time":
            total = sum(windows.values(), np.zeros(n_steps))
            return {(): np.where(total > 0, np.nan, 1.0)}
        out = {}
        for key, w in windows.items():
            if agg.op in ("rate", "bytes_rate"):
                w = w / (range_us / 1e6)
            out[key] = np.where(w > 0, w, np.nan)      # no line in the window: no sample, as in Loki
        return out

    def _samples(self, q: LogQuery, stages: tuple, agg: RangeAggregation, lo: int, hi: int,
                 tenant: str, inject: Grouping | None = None) -> dict[Labels, tuple[list[int], list[float]]]:
        """(ts, value) per series after the pipeline and ``unwrap``; value 1 or the line's bytes without one.
        A series is every label of the entry (stream, structured metadata, parsed), or its grouping's."""
        node, _ = pushdown(q)
        lr = agg.log_range
        out: dict[Labels, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        cursor, seen = None, 0
        while True:
            r = self.svc.search_node(node, lo + 1, hi + 1, self.svc.cfg.query.max_limit, "asc", tenant,
                                     FIELDS, cursor)
            seen += len(r.rows)
            acc = self._acc()
            acc["lines"] = acc.get("lines", 0) + len(r.rows)
            acc["bytes"] = acc.get("bytes", 0) + sum(len(x["line"]) for x in r.rows)
            if seen > MAX_PIPELINE_LINES:
                raise QueryError(f"more than {MAX_PIPELINE_LINES:,} lines to run through a pipeline; "
                                 "narrow the time range or the selector")
            self.svc.runner.in_time()
            for e in pipeline.run(stages, _entries(r.rows)):
                value: float | None = 1.0 if agg.op != "bytes_over_time" and agg.op != "bytes_rate" \
                    else float(len(e.line.encode()))
                if lr.unwrap is not None:
                    raw = e.labels.pop(lr.unwrap.label, None)
                    if raw is None:
                        raw = e.meta.pop(lr.unwrap.label, None)
                    value = _unwrap(raw, lr.unwrap.conversion)
                    if value is None:
                        e.labels.setdefault(ERROR, "SampleExtractionErr")
                    if not all(pipeline.holds(f, e) for f in lr.unwrap.filters):
                        continue
                if ERROR in e.labels or value is None:
                    continue      # Loki fails such a query; we leave the sample out and say so in the docs
                key = _key(_grouped(e.all_labels(), agg.grouping or inject))
                out[key][0].append(e.ts_us)
                out[key][1].append(value)
            self.svc.runner.in_time()
            cursor = r.cursor
            if cursor is None:
                return out

    def _from_samples(self, agg: RangeAggregation, samples: dict[Labels, tuple[list[int], list[float]]],
                      origin: int, width: int, n_buckets: int, starts: np.ndarray, per: int, range_us: int,
                      n_steps: int) -> Matrix:
        out: Matrix = {}
        for key, (ts, vals) in samples.items():
            order = np.argsort(ts, kind="stable")
            t = np.asarray(ts, dtype=np.int64)[order]
            v = np.asarray(vals, dtype=float)[order]
            k = (t - origin + width - 1) // width
            # Step i's window is buckets starts[i]+1 .. starts[i]+per: a slice of the sorted samples.
            lo = np.searchsorted(k, starts + 1, side="left")
            hi = np.searchsorted(k, starts + per, side="right")
            series = np.full(n_steps, np.nan)
            for i in np.nonzero(hi > lo)[0]:
                end = origin + (int(starts[i]) + per) * width        # the window is (end - range, end]
                series[i] = _over_time(agg, v[lo[i]:hi[i]], t[lo[i]:hi[i]], range_us, end)
            out[key] = series
        if agg.op == "absent_over_time":
            present = np.zeros(n_steps, bool)
            for s in out.values():
                present |= ~np.isnan(s)
            return {(): np.where(present, np.nan, 1.0)}
        return out


def _over_time(agg: RangeAggregation, v: np.ndarray, t: np.ndarray, range_us: int, end_us: int) -> float:
    op = agg.op
    if op == "rate_counter":
        return counter_rate(v, t, range_us, end_us)
    if op in ("count_over_time", "absent_over_time"):
        return float(len(v))
    if op in ("sum_over_time", "bytes_over_time"):
        return float(v.sum())
    if op in ("rate", "bytes_rate"):
        return float(v.sum()) / (range_us / 1e6)
    if op == "avg_over_time":
        return float(v.mean())
    if op == "min_over_time":
        return float(v.min())
    if op == "max_over_time":
        return float(v.max())
    if op == "stddev_over_time":
        return float(v.std())
    if op == "stdvar_over_time":
        return float(v.var())
    if op == "quantile_over_time":
        return float(np.quantile(v, agg.param if agg.param is not None else 0.5))
    if op == "first_over_time":
        return float(v[np.argmin(t)])
    if op == "last_over_time":
        return float(v[np.argmax(t)])
    raise LogQLUnsupported(op)


def counter_rate(v: np.ndarray, t: np.ndarray, range_us: int, end_us: int) -> float:
    """``rate_counter``: Loki's (and Prometheus') extrapolated per-second rate of a counter over the window
    ``(end - range, end]``, with resets added back; 0 with fewer than two samples."""
    if len(v) < 2:
        return 0.0
    drops = v[1:] < v[:-1]
    # A drop is a reset: the value before it had been counted up to.
    increase = np.float64(v[-1] - v[0]) + np.float64(v[:-1][drops].sum())
    with np.errstate(all="ignore"):       # samples at one instant: 0/0, a NaN as in Go
        to_start = np.float64(t[0] - (end_us - range_us)) / 1e6
        to_end = np.float64(end_us - t[-1]) / 1e6
        sampled = np.float64(t[-1] - t[0]) / 1e6
        average = sampled / (len(v) - 1)
        if to_start >= average * 1.1:
            to_start = average / 2
        if increase > 0 and v[0] >= 0:
            # A counter is never negative: extrapolate back no further than where it was 0.
            to_start = min(to_start, sampled * (np.float64(v[0]) / increase))
        if to_end >= average * 1.1:
            to_end = average / 2
        return float(increase * ((sampled + to_start + to_end) / sampled) / (range_us / 1e6))


def _unwrap(raw: str | None, conversion: str | None) -> float | None:
    if raw is None:
        return None
    if conversion in ("duration", "duration_seconds"):
        ns = parse_go_duration(raw.strip())
        return None if ns is None else ns / 1e9
    if conversion == "bytes":
        b = parse_bytes(raw.strip())
        return None if b is None else float(b)
    try:
        return float(raw)
    except ValueError:
        return None


def _window_sums(buckets: np.ndarray, starts: np.ndarray, per: int) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(buckets[1:])])      # c[k] = sum of buckets 1..k
    hi = np.minimum(starts + per, len(c) - 1)
    return c[hi] - c[np.minimum(starts, len(c) - 1)]


def _grouped(labels: dict[str, str], grouping: Grouping | None) -> dict[str, str]:
    if grouping is None:
        return labels
    if grouping.without:
        return {k: v for k, v in labels.items() if k not in grouping.labels}
    return {k: v for k, v in labels.items() if k in grouping.labels}


def _matrix(v: Value, what: str) -> Matrix:
    if isinstance(v, Scalar):
        raise QueryError(f"{what} needs a vector, not a scalar")
    return v


_REDUCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sum": lambda a: np.nansum(a, axis=0), "avg": lambda a: np.nanmean(a, axis=0),
    "min": lambda a: np.nanmin(a, axis=0), "max": lambda a: np.nanmax(a, axis=0),
    "count": lambda a: np.sum(~np.isnan(a), axis=0).astype(float),
    "stddev": lambda a: np.nanstd(a, axis=0), "stdvar": lambda a: np.nanvar(a, axis=0),
}


def _vector_agg(agg: VectorAggregation, value: Value) -> Matrix:
    m = _matrix(value, agg.op)
    if agg.op in ("sort", "sort_desc"):
        return m
    if agg.op in ("topk", "bottomk", "approx_topk"):
        # approx_topk is Loki's sketch-based estimate of topk (instant queries only): here, exact.
        k = agg.param or 1
        groups: dict[Labels, list[Labels]] = defaultdict(list)
        for key in m:
            groups[_key(_grouped(dict(key), agg.grouping)) if agg.grouping else ()].append(key)
        out = {key: np.full_like(arr, np.nan) for key, arr in m.items()}
        for members in groups.values():
            stack = np.vstack([m[key] for key in members])
            top = agg.op != "bottomk"
            filled = np.where(np.isnan(stack), -np.inf if top else np.inf, stack)
            order = np.argsort(-filled if top else filled, axis=0, kind="stable")[:k]
            for col in range(stack.shape[1]):
                for row in order[:, col]:
                    if not np.isnan(stack[row, col]):
                        out[members[row]][col] = stack[row, col]
        return {key: arr for key, arr in out.items() if not np.isnan(arr).all()}
    groups2: dict[Labels, list[np.ndarray]] = defaultdict(list)
    for key, arr in m.items():
        groups2[_key(_grouped(dict(key), agg.grouping or Grouping()))].append(arr)
    out2 = {}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for key, arrs in groups2.items():
            stack = np.vstack(arrs)
            r = _REDUCE[agg.op](stack)
            r = np.where(np.isnan(stack).all(axis=0), np.nan, r)
            out2[key] = r
    return out2


_ARITH: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "%": np.fmod, "^": np.power,
    "==": np.equal, "!=": np.not_equal, ">": np.greater, ">=": np.greater_equal, "<": np.less,
    "<=": np.less_equal,
}


def _apply(op: BinaryOp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        r = _ARITH[op.op](a, b).astype(float)
    if op.op in ("==", "!=", ">", ">=", "<", "<="):
        if op.return_bool:
            return np.where(np.isnan(a) | np.isnan(b), np.nan, r)
        return np.where(r == 1.0, a, np.nan)
    return r


def _match_key(key: Labels, op: BinaryOp) -> Labels:
    labels = dict(key)
    m = op.matching
    if m is None:
        return key
    if m.on:
        return tuple(sorted((k, v) for k, v in labels.items() if k in m.labels))
    return tuple(sorted((k, v) for k, v in labels.items() if k not in m.labels))


def _binary(op: BinaryOp, left: Value, right: Value) -> Value:
    if isinstance(left, Scalar) and isinstance(right, Scalar):
        return Scalar(_apply(op, left.values, right.values))
    if op.op in ("and", "or", "unless"):
        lm, rm = _matrix(left, op.op), _matrix(right, op.op)
        rkeys = {_match_key(k, op): v for k, v in rm.items()}
        if op.op == "and":
            return {k: np.where(~np.isnan(rkeys[_match_key(k, op)]), v, np.nan) for k, v in lm.items()
                    if _match_key(k, op) in rkeys}
        if op.op == "unless":
            return {k: (np.where(np.isnan(rkeys[_match_key(k, op)]), v, np.nan) if _match_key(k, op) in rkeys
                        else v) for k, v in lm.items()}
        # Per step: a right sample counts where no left series with its match key has one.
        out = dict(lm)
        present: dict[Labels, np.ndarray] = {}
        for k, v in lm.items():
            mk = _match_key(k, op)
            present[mk] = present.get(mk, np.zeros(len(v), bool)) | ~np.isnan(v)
        for k, v in rm.items():
            mk = _match_key(k, op)
            kept = np.where(present[mk], np.nan, v) if mk in present else v
            if not np.isnan(kept).all():
                out[k] = np.where(np.isnan(out[k]), kept, out[k]) if k in out else kept
        return out
    if isinstance(left, Scalar):
        assert not isinstance(right, Scalar)
        return {k: _apply(op, left.values, v) for k, v in right.items()}
    if isinstance(right, Scalar):
        return {k: _apply(op, v, right.values) for k, v in left.items()}
    return _vector_binop(op, left, right)


def _result_labels(many: Labels, one: Labels, op: BinaryOp) -> Labels:
    """Loki's (and Prometheus') labels of a matched pair: the "many" side's, cut to ``on``/``ignoring`` when
    one-to-one, with the ``group_left(...)``/``group_right(...)`` labels taken from the "one" side."""
    m = op.matching
    if m is None:
        return many
    labels = dict(many)
    if m.card == "one-to-one":
        labels = {k: v for k, v in labels.items() if (k in m.labels) == m.on}
    one_labels = dict(one)
    for name in m.include:
        if one_labels.get(name):
            labels[name] = one_labels[name]
        else:
            labels.pop(name, None)
    return tuple(sorted(labels.items()))


def _vector_binop(op: BinaryOp, left: Matrix, right: Matrix) -> Matrix:
    """Arithmetic or comparison between two vectors, step by step, with Prometheus' vector matching:
    one-to-one, many-to-one (``group_left``) and one-to-many (``group_right``)."""
    card = op.matching.card if op.matching is not None else "one-to-one"
    checked = op.matching is not None or op.return_bool      # Loki checks matches when it has options
    many, one = (right, left) if card == "one-to-many" else (left, right)
    ones: dict[Labels, list[tuple[Labels, np.ndarray]]] = defaultdict(list)
    for key, arr in one.items():
        ones[_match_key(key, op)].append((key, arr))
    for members in ones.values():
        if len(members) > 1 and (sum((~np.isnan(a)).astype(int) for _, a in members) > 1).any():
            side = "left" if card == "one-to-many" else "right"
            raise QueryError(f"found duplicate series on the {side} hand-side; many-to-many matching not allowed: "
                             "matching labels must be unique on one side")
    out: Matrix = {}
    claimed: dict[object, np.ndarray] = {}
    for key, arr in many.items():
        sig = _match_key(key, op)
        for one_key, one_arr in ones.get(sig, ()):
            both = ~np.isnan(arr) & ~np.isnan(one_arr)
            if not both.any():
                continue
            labels = _result_labels(key, one_key, op)
            if checked:
                slot: object = sig if card == "one-to-one" else (sig, labels)
                before = claimed.get(slot)
                if before is not None and (before & both).any():
                    raise QueryError(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                        if card == "one-to-one" else
                        "multiple matches for labels: grouping labels must ensure unique matches")
                claimed[slot] = both if before is None else before | both
            a, b = (one_arr, arr) if card == "one-to-many" else (arr, one_arr)
            r = np.where(both, _apply(op, a, b), np.nan)
            if np.isnan(r).all():
                continue
            prior = out.get(labels)
            out[labels] = r if prior is None else np.where(np.isnan(prior), r, prior)
    return out


def _label_replace(lr: LabelReplace, m: Matrix) -> Matrix:
    rx = pipeline.regex(lr.regex)
    out = {}
    for key, v in m.items():
        labels = dict(key)
        found = rx.fullmatch(labels.get(lr.src, ""))
        if found:
            new = found.expand(re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", lr.replacement))
            if new:
                labels[lr.dst] = new
            else:
                labels.pop(lr.dst, None)
        out[_key(labels)] = v
    return out
