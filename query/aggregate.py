"""Aggregation: a function of the matching records per time bucket, one series per group.

The top groups are kept and the rest folded into one "other" series. A count
whose query and groups name only the service and the level is answered from
the catalog's per-segment counts (rows per service and level) for each
segment that lies wholly inside the range and inside one bucket; only the
others are scanned. The Loki API's range vectors use :meth:`Aggregator.buckets`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from query.errors import QueryError
from query.language import And, MatchAll, Node, Not, Or, Term
from query.planner import (
    ORIGINAL_FIELDS,
    Compiled,
    field_sql,
    group_sql,
    level_value,
    numeric_sql,
    required_values,
    resolve,
)
from query.runner import RANGE_SQL, Plan, QueryRunner
from query.timerange import format_us, parse_duration_us, parse_range
from query.timing import span
from storage.catalog import SegmentRow
from storage.schema import LINE_SQL
from storage.segments import MINUTE_US, MinuteCounts

AGGREGATE_FNS = ("count", "sum", "avg", "min", "max", "p50", "p95", "p99")
_QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
_NICE_INTERVALS_US = [s * 1_000_000 for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
                                              10800, 21600, 43200, 86400, 172800, 604800)]
MAX_BUCKETS = 10_000
#: Whether a record of (service, level) matches a query.
CellTest = Callable[[str, str], bool]

#: (bucket start, group values, is the "other" series, value)
Row = tuple[int, tuple[str | None, ...], bool, float | None]
#: A value per (bucket start, group values).
Cells = dict[tuple[int, tuple[str | None, ...]], float]


@dataclass
class Series:
    group: dict[str, str | None]
    other: bool
    total: float | None
    points: list[float | None]


@dataclass
class AggregateResult:
    interval_us: int
    fn: str
    by: list[str]
    buckets: list[int]                     # bucket starts, epoch microseconds
    series: list[Series]
    stats: dict[str, Any]


def pick_interval(start_us: int, end_us: int, interval: str | None) -> int:
    """The bucket width: the given one, or a round one giving about 100 buckets."""
    if interval and interval != "auto":
        iv = parse_duration_us(interval)
        if iv <= 0:
            raise QueryError("interval must be positive")
    else:
        span = max(1, end_us - start_us)
        iv = next((n for n in _NICE_INTERVALS_US if n * 100 >= span), _NICE_INTERVALS_US[-1])
    if (end_us - start_us) // iv > MAX_BUCKETS:
        raise QueryError(f"interval too small: more than {MAX_BUCKETS} buckets in the range")
    return iv


def parse_fn(fn: str) -> tuple[str, str | None]:
    """``count`` or ``p95(field)`` -> (name, field)."""
    text = fn.strip()
    if text == "count":
        return "count", None
    name, sep, rest = text.partition("(")
    name = name.strip()
    if not sep or not rest.endswith(")") or name not in AGGREGATE_FNS or name == "count":
        raise QueryError(f"fn must be count or one of {', '.join(AGGREGATE_FNS[1:])} over a field, "
                         f"e.g. p95(duration_ms); not {fn!r}")
    fieldname = rest[:-1].strip()
    resolve(fieldname)
    return name, fieldname


def _catalog_counts(node: Node, by: list[str]) -> tuple[str, set[str] | None] | None:
    """When per-segment catalog counts answer a count: (column counted, values kept or None for all)."""
    if len(by) > 1:
        return None
    target = resolve(by[0])[1] if by else None
    if target not in (None, "service", "level"):
        return None
    if isinstance(node, MatchAll):
        return (target or "level"), None

    def only(n: Node, column: str) -> bool:
        match n:
            case Term(field=f, kind="word" | "phrase") if f is not None:
                return resolve(f) == ("column", column)
            case Or(items=items) | And(items=items):
                return all(only(i, column) for i in items)
        return False

    for column in ("service", "level"):
        if only(node, column) and target in (None, column):
            return column, required_values(node, column)
    return None


def cell_test(node: Node) -> CellTest | None:
    """``node`` as a test of a record's (service, level), when that is all it looks at (exact service
    and level terms under AND, OR and NOT, as the SQL compares them); None otherwise."""
    match node:
        case MatchAll():
            return lambda s, lv: True
        case Term(field=f, kind="word" | "phrase", value=v) if f is not None:
            match resolve(f):
                case ("column", "service"):
                    return lambda s, lv: s == v
                case ("column", "level"):
                    want = level_value(v)
                    return lambda s, lv: lv == want
            return None
        case Not(item=item):
            inner = cell_test(item)
            return None if inner is None else (lambda s, lv: not inner(s, lv))
        case And(items=items) | Or(items=items):
            tests = [cell_test(i) for i in items]
            if any(t is None for t in tests):
                return None
            parts = [t for t in tests if t is not None]
            if isinstance(node, And):
                return lambda s, lv: all(t(s, lv) for t in parts)
            return lambda s, lv: any(t(s, lv) for t in parts)
    return None


def _cell_key(by: list[str]) -> Callable[[str, str], tuple[str | None, ...]] | None:
    """The group of a (service, level) cell for ``by``, when ``by`` names only those two."""
    names = [resolve(b) for b in by]
    if any(kind != "column" or name not in ("service", "level") for kind, name in names):
        return None
    pick = [name == "service" for _, name in names]
    return lambda s, lv: tuple(s if p else lv for p in pick)


def _columns(node: Node) -> set[str]:
    """The columns ``node``'s terms name (for a node :func:`cell_test` takes)."""
    match node:
        case Term(field=f) if f is not None:
            return {resolve(f)[1]}
        case Not(item=item):
            return _columns(item)
        case And(items=items) | Or(items=items):
            return set().union(*(_columns(i) for i in items))
    return set()


def _add_minutes(minutes: MinuteCounts | None, test: CellTest, by_level: bool, start_us: int, end_us: int,
                 iv: int, into: Cells) -> bool:
    """Add a segment's rows per minute and level that ``test`` takes (it looks at the level only) to
    ``into``, per bucket of ``iv`` (whole minutes) and per level when ``by_level``; False, adding
    nothing, when the counts are not known or a minute holding rows is cut by [start, end)."""
    widths = {len(v) for v in minutes.levels.values()} if minutes is not None else set()
    if minutes is None or len(widths) > 1:
        return False
    starts = (minutes.first + np.arange(widths.pop() if widths else 0)) * MINUTE_US
    inside = (starts >= start_us) & (starts + MINUTE_US <= end_us)
    outside = (starts + MINUTE_US <= start_us) | (starts >= end_us)
    held = np.zeros(len(starts), dtype=bool)
    for counts in minutes.levels.values():
        held |= np.asarray(counts, dtype=np.int64) > 0
    if (held & ~inside & ~outside).any():
        return False
    buckets = starts // iv * iv
    first_bucket = int(buckets[0]) if len(buckets) else 0
    index = (buckets - first_bucket) // iv
    for level, counts in minutes.levels.items():
        if not test("", level):
            continue
        sums = np.bincount(index, weights=np.where(inside, np.asarray(counts, dtype=np.int64), 0))
        for i in np.flatnonzero(sums).tolist():
            k = (first_bucket + i * iv, (level,) if by_level else ())
            into[k] = into.get(k, 0) + int(sums[i])
    return True


def fold_top(merged: dict[tuple[int, tuple[str | None, ...]], float], top: int) -> list[Row]:
    """Keep the ``top`` groups by total; fold the rest into "other" per bucket."""
    totals: dict[tuple[str | None, ...], float] = {}
    for (_, k), v in merged.items():
        totals[k] = totals.get(k, 0) + v
    keep = set(sorted(totals, key=lambda k: (-totals[k], [x or "" for x in k]))[:top])
    out: dict[tuple[int, tuple[str | None, ...], bool], float] = {}
    for (b, k), v in merged.items():
        key = (b, k, False) if k in keep else (b, (), True)
        out[key] = out.get(key, 0) + v
    return [(b, k, o, v) for (b, k, o), v in out.items()]


def to_series(rows: list[Row], by: list[str], buckets: list[int], iv: int, first: int,
              fname: str) -> list[Series]:
    """Rows to one series per group, every bucket filled, largest total first and "other" last."""
    zero: float | None = 0 if fname in ("count", "sum") else None
    found: dict[tuple[tuple[str | None, ...], bool], list[float | None]] = {}
    for b, k, other, v in rows:
        points = found.setdefault((k, other), [zero] * len(buckets))
        i = (b - first) // iv
        if 0 <= i < len(points):
            points[i] = v if v is not None else zero
    out = []
    for (k, other), points in found.items():
        values = [p for p in points if p is not None]
        total: float | None
        if fname in ("count", "sum"):
            total = sum(values)
        elif fname == "min":
            total = min(values, default=None)
        elif fname == "max":
            total = max(values, default=None)
        else:
            total = None     # an average or quantile of buckets is not the range's
        group = {} if other else dict(zip(by, k, strict=True))
        out.append(Series(group, other, total, points))
    out.sort(key=lambda s: (s.other, -(s.total or 0), [str(v) for v in s.group.values()]))
    return out


class Aggregator:
    """Bucketed aggregation over the runner."""

    def __init__(self, runner: QueryRunner) -> None:
        self.runner = runner
        self.cfg = runner.cfg

    def aggregate(self, q: str = "", start: str | None = None, end: str | None = None,
                  interval: str | None = None, by: list[str] | None = None, fn: str = "count",
                  top: int | None = None, tenant: str = "default") -> AggregateResult:
        """Buckets of ``interval`` over [start, end), one series per group of ``by`` (the top
        ``top`` groups, the rest folded into one "other" series)."""
        t0 = time.perf_counter()
        node = self.runner.parse_query(q)
        start_us, end_us = parse_range(start, end)
        iv = pick_interval(start_us, end_us, interval)
        by = [b.strip() for b in (by or []) if b.strip()]
        if len(by) > 4:
            raise QueryError("by takes at most 4 fields")
        groups = [group_sql(b) for b in by]
        fname, ffield = parse_fn(fn)
        top = self.cfg.query.default_top if top is None else top
        if not 1 <= top <= 1000:
            raise QueryError("top must be between 1 and 1000")
        first = start_us // iv * iv
        buckets = list(range(first, end_us, iv))
        with span("catalog"):
            segments = self.runner.catalog.segments(tenant, start_us, end_us)
            from_catalog: Cells = {}
            counted = 0
            if fname == "count":
                segments, counted = self._count_from_catalog(node, by, segments, start_us, end_us, iv,
                                                             from_catalog)
        with self.runner.slot():
            plan = self.runner.plan(node, tenant, start_us, end_us, segments)
            rows: list[Row] = []
            if not plan.scan.empty:
                rows = self._aggregate_sql(plan, start_us, end_us, iv, by, groups, fname, ffield,
                                           top if by and not from_catalog else None)
        if from_catalog:
            merged: dict[tuple[int, tuple[str | None, ...]], float] = dict(from_catalog)
            for b, k, _, v in rows:
                merged[(b, k)] = merged.get((b, k), 0) + (v or 0)
            rows = fold_top(merged, top) if by else [(b, k, False, v) for (b, k), v in merged.items()]
        series = to_series(rows, by, buckets, iv, first, fname)
        stats = {**plan.scan.stats(), "segments_answered_by_catalog": counted,
                 "start": format_us(start_us), "end": format_us(end_us),
                 "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return AggregateResult(iv, fn if fname == "count" else f"{fname}({ffield})", by, buckets, series, stats)

    @staticmethod
    def _count_from_catalog(node: Node, by: list[str], segments: list[SegmentRow], start_us: int, end_us: int,
                            iv: int, into: Cells) -> tuple[list[SegmentRow], int]:
        """Add to ``into`` the counts of every segment the catalog answers for, and return the segments
        left to scan and how many were answered. A segment wholly inside the range and inside one
        bucket is answered by its rows per service and level (or, recorded before those were kept,
        for a query about one of the two, by its rows per that one); when the query and groups name
        only the level and buckets are whole minutes, a segment is answered by its rows per minute
        and level if none of its minutes is cut by the range."""
        test, key = cell_test(node), _cell_key(by)
        single = _catalog_counts(node, by)       # for segments recorded before service_levels
        by_minute = test is not None and iv % MINUTE_US == 0 and "service" not in _columns(node) and \
            (by == [] or (len(by) == 1 and resolve(by[0]) == ("column", "level")))
        rest: list[SegmentRow] = []
        counted = 0
        for seg in segments:
            b = seg.min_ts_us // iv * iv
            inside = seg.min_ts_us >= start_us and seg.max_ts_us < end_us and seg.max_ts_us // iv * iv == b
            if inside and test is not None and key is not None and seg.service_levels is not None:
                for svc, row in seg.service_levels.items():
                    for level, n in row.items():
                        if test(svc, level):
                            k = (b, key(svc, level))
                            into[k] = into.get(k, 0) + n
            elif inside and single is not None:
                column, keep = single
                for value, n in (seg.services if column == "service" else seg.levels).items():
                    if keep is None or value in keep:
                        k = (b, (value,) if by else ())
                        into[k] = into.get(k, 0) + n
            elif not (by_minute and test is not None and
                      _add_minutes(seg.minutes(), test, bool(by), start_us, end_us, iv, into)):
                rest.append(seg)
                continue
            counted += 1
        return rest, counted

    def _aggregate_sql(self, plan: Plan, start_us: int, end_us: int, iv: int, by: list[str], groups: list[Compiled],
                       fname: str, ffield: str | None, top: int | None) -> list[Row]:
        """(bucket, group, is_other, value) rows. Count, sum, avg, min and max are computed once per
        (bucket, group) and the top groups folded from that small result; quantiles cannot be
        folded, so they group the raw rows a second time by (bucket, top group or other)."""
        named = [*by, *([ffield] if ffield is not None else [])]
        source, cond = plan.filtered(original=any(resolve(n)[1] in ORIGINAL_FIELDS for n in named))
        value = Compiled("NULL::DOUBLE")
        if ffield is not None:
            kind, _ = resolve(ffield)
            subject = field_sql(ffield)
            value = numeric_sql(subject, "s") if kind == "attr" else \
                Compiled(f"TRY_CAST({subject.sql} AS DOUBLE)", subject.params)
        keys = [f"k{i}" for i in range(len(groups))]
        key_cols = "".join(f", {g.sql} AS {k}" for g, k in zip(groups, keys, strict=True))
        params: list[Any] = [iv, iv, *[p for g in groups for p in g.params], *value.params, *source.params,
                             start_us, end_us, *cond.params]
        base = (f"SELECT (epoch_us(ts) // ?) * ? AS b{key_cols}, {value.sql} AS v "
                f"FROM {source.sql} AS logs WHERE {RANGE_SQL} AND ({cond.sql})")
        key_list = "".join(f", {k}" for k in keys)
        joined = " AND ".join(f"g.{k} IS NOT DISTINCT FROM t.{k}" for k in keys)
        folded = "".join(f", CASE WHEN t.tot IS NULL THEN NULL ELSE g.{k} END AS {k}" for k in keys)
        if fname in _QUANTILES:
            agg = f"quantile_cont(v, {_QUANTILES[fname]})"
            if top is None:
                sql = f"SELECT b, FALSE AS other{key_list}, {agg} AS val FROM ({base}) GROUP BY ALL"
            else:
                sql = (f"WITH g AS MATERIALIZED ({base}), "
                       f"t AS (SELECT {', '.join(keys)}, count(*) AS tot FROM g GROUP BY ALL "
                       f"ORDER BY tot DESC, {', '.join(keys)} LIMIT ?) "
                       f"SELECT g.b, t.tot IS NULL AS other{folded}, {agg} AS val "
                       f"FROM g LEFT JOIN t ON {joined} GROUP BY ALL")
                params.append(top)
        else:
            partial = (f"SELECT b{key_list}, count(*) AS n, sum(v) AS s, min(v) AS mn, max(v) AS mx, "
                       f"count(v) AS nv FROM ({base}) GROUP BY ALL")
            final = {"count": "sum(n)::BIGINT", "sum": "sum(s)::DOUBLE", "avg": "sum(s) / nullif(sum(nv), 0)",
                     "min": "min(mn)", "max": "max(mx)"}[fname]
            if top is None:
                sql = f"SELECT b, FALSE AS other{key_list}, {final} AS val FROM ({partial}) GROUP BY ALL"
            else:
                sql = (f"WITH g AS MATERIALIZED ({partial}), "
                       f"t AS (SELECT {', '.join(keys)}, sum(n) AS tot FROM g GROUP BY ALL "
                       f"ORDER BY tot DESC, {', '.join(keys)} LIMIT ?) "
                       f"SELECT g.b, t.tot IS NULL AS other{folded}, {final} AS val "
                       f"FROM g LEFT JOIN t ON {joined} GROUP BY ALL")
                params.append(top)
        table = self.runner.run(sql, params)
        cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
        out: list[Row] = []
        for i in range(table.num_rows):
            other = bool(cols[1][i])
            group = () if other else tuple(None if c[i] is None else str(c[i]) for c in cols[2:-1])
            out.append((int(cols[0][i]), group, other, cols[-1][i]))
        return out

    def window(self, node: Node, tenant: str, lo_us: int, hi_us: int, by: list[str],
               fn: str) -> dict[tuple[str | None, ...], float | None]:
        """``fn`` over the rows with lo < ts <= hi (left-open, as the buckets' windows), per group of ``by``."""
        groups = [group_sql(b) for b in by]
        fname, ffield = parse_fn(fn)
        with self.runner.slot():
            plan = self.runner.plan(node, tenant, lo_us + 1, hi_us + 1)
            if plan.scan.empty:
                return {}
            # One bucket wider than any time: a single value per group.
            rows = self._aggregate_sql(plan, lo_us + 1, hi_us + 1, 1 << 62, by, groups, fname, ffield, None)
        return {k: v for _, k, _, v in rows}

    def buckets(self, node: Node, tenant: str, lo_us: int, hi_us: int, origin_us: int, width_us: int,
                labels: Sequence[str | Compiled], acc: dict[str, int] | None = None, *,
                line_bytes: bool = False) -> pa.Table:
        """Rows with lo < ts <= hi counted per bucket (origin + (k-1)*width, origin + k*width] and per
        value of ``labels``: columns ``k``, the labels, ``n`` (rows) and ``bytes`` (bytes of the
        original lines, with ``line_bytes``; else NULL, so that a count reads only what it needs).
        Windows are open on the left, as Loki's range vectors are. A label is a field name, or SQL
        over the row (the Loki API's structured metadata)."""
        groups = [g if isinstance(g, Compiled) else group_sql(g) for g in labels]
        with self.runner.slot():
            plan = self.runner.plan(node, tenant, lo_us, hi_us + 1)
            scan = plan.scan
            if acc is not None:
                acc["lines"] = acc.get("lines", 0) + scan.rows_scanned
                acc["bytes"] = acc.get("bytes", 0) + scan.bytes_scanned
            if scan.empty:
                return pa.table({"k": pa.array([], pa.int64())})
            source, cond = plan.filtered(original=line_bytes)
            cols = "".join(f", {g.sql} AS l{i}" for i, g in enumerate(groups))
            size = f"sum(strlen({LINE_SQL}))::BIGINT" if line_bytes else "NULL::BIGINT"
            sql = (f"SELECT (epoch_us(ts) - ? + ? - 1) // ? AS k{cols}, count(*) AS n, "
                   f"{size} AS bytes FROM {source.sql} AS logs "
                   f"WHERE ts > make_timestamptz(?::BIGINT) AND ts <= make_timestamptz(?::BIGINT) "
                   f"AND ({cond.sql}) GROUP BY ALL")
            params = [origin_us, width_us, width_us, *[p for g in groups for p in g.params], *source.params,
                      lo_us, hi_us, *cond.params]
            return self.runner.run(sql, params)
