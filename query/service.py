"""The one search service object: the HTTP API, the CLI and dashboards go through it.

Every call is planned against the catalog (and the segments' trigram
indexes), checked against the limits (bytes to scan, concurrent queries),
then run on a DuckDB that can read the data root and nothing else, with a
timer that interrupts it at the time limit.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from loglake.core.config import Config
from query.errors import (QueryError, QueryOutOfMemory, QueryTimeout, SavedQueryExists, SavedQueryNotFound,
                          ScanTooLarge, TooManyQueries, UnknownField)
from query.metrics import QueryMetrics
from query.language import And, MatchAll, Node, Or, Term, parse
from query.planner import (SELECT_COLUMNS, Compiled, Scan, choose, compile_filter, numeric_sql, regexes, term_count,
                           required_values, resolve)
from query.timerange import format_us, parse_duration_us, parse_range
from storage.catalog import Catalog, SavedQueryRow, SegmentRow
from storage.errors import CatalogConflict
from storage.root import DataRoot
from storage.tokens import IndexCache, SegmentIndex

Order = Literal["asc", "desc"]
AGGREGATE_FNS = ("count", "sum", "avg", "min", "max", "p50", "p95", "p99")
_QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
_NICE_INTERVALS_US = [s * 1_000_000 for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
                                              10800, 21600, 43200, 86400, 172800, 604800)]
_HOUR_US = 3_600_000_000
MAX_BUCKETS = 10_000
#: Rows sharing a timestamp are ordered by this hash of all they hold, so a cursor can resume
#: between them; only rows identical in every column share a hash, and those are interchangeable.
_TIE = "hash(observed_ts, service, host, source, level, message, attrs, trace_id, span_id)"
_RANGE = "ts >= make_timestamptz(?::BIGINT) AND ts < make_timestamptz(?::BIGINT)"
#: Fields one search may return: each is a column of every row DuckDB holds (20,000 of them ran it
#: out of memory).
MAX_FIELDS = 256


@dataclass
class SearchResult:
    rows: list[dict[str, Any]]
    stats: dict[str, Any]
    cursor: str | None = None


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


@dataclass
class FieldInfo:
    name: str
    type: str                              # string | number
    count: int                             # sampled rows that have it
    distinct: int
    top: list[dict[str, Any]] = field(default_factory=list)


def _format_ts(table: pa.Table) -> dict[str, pa.ChunkedArray | pa.Array]:
    cols: dict[str, Any] = {name: table[name] for name in table.column_names}
    for name in ("ts", "observed_ts"):
        if name in cols:
            us = pc.cast(cols[name], pa.int64()).to_pylist()
            cols[name] = pa.array([format_us(u) for u in us], pa.string())
    return cols


def _encode_cursor(ts_us: int, tie: int, skip: int, order: str) -> str:
    raw = orjson.dumps({"v": 1, "t": ts_us, "h": tie, "n": skip, "o": order})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, order: str) -> tuple[int, int, int]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        t, h, n, o = int(data["t"]), int(data["h"]), int(data["n"]), data["o"]
    except (ValueError, KeyError, TypeError) as e:
        raise QueryError(f"invalid cursor: {e}") from None
    if o != order:
        raise QueryError(f"this cursor continues a search in {o} order, not {order}")
    if not (0 <= h < 2**64 and 0 <= n <= 1_000_000 and 0 <= t < 2**62):
        raise QueryError("invalid cursor")
    return t, h, n


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


def _group_sql(name: str) -> Compiled:
    kind, key = resolve(name)
    if kind == "attr":
        return Compiled("attrs[?]", [key])
    if key in ("ts", "observed_ts", "attrs"):
        raise UnknownField(f"cannot group by {key}")
    return Compiled(f"CAST({key} AS VARCHAR)")


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


#: When the running request's wait for a slot ends (time.monotonic()), set by whatever admitted it
#: (the HTTP API's QueryGate), so a request never waits more than queue_timeout_s in all.
queue_deadline: ContextVar[float | None] = ContextVar("queue_deadline", default=None)


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
        # Segments are immutable: parse each footer once, not on every query.
        self._db.execute("SET parquet_metadata_cache = true")
        # Queries may read the data root and nothing else, and never another host.
        self.root.configure_duckdb(self._db)
        self._db.execute("SET lock_configuration = true")
        self._local = threading.local()
        self._slots = threading.BoundedSemaphore(q.max_concurrent)
        self._indexes = IndexCache()
        self.metrics = QueryMetrics()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._db.cursor()
        return cur

    # -- running -------------------------------------------------------------

    @contextmanager
    def _slot(self) -> Iterator[None]:
        deadline = queue_deadline.get()
        wait = self.cfg.query.queue_timeout_s if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._slots.acquire(timeout=wait):
            raise TooManyQueries(f"all {self.cfg.query.max_concurrent} query slots are busy; retry shortly")
        try:
            yield
        finally:
            self._slots.release()

    def _run(self, sql: str, params: list[Any]) -> pa.Table:
        """Run on this thread's cursor, interrupted at the time limit."""
        cur = self._cursor()
        timer = threading.Timer(self.cfg.query.timeout_s, cur.interrupt)
        timer.start()
        try:
            return cur.execute(sql, params).to_arrow_table()
        except duckdb.InterruptException:
            raise QueryTimeout(f"query interrupted after {self.cfg.query.timeout_s:g} s") from None
        except duckdb.OutOfMemoryException:
            raise QueryOutOfMemory(f"the query needed more memory than query.memory_limit "
                                   f"({self.cfg.query.memory_limit}); narrow the time range or ask for fewer "
                                   "rows or fields") from None
        except duckdb.InvalidInputException as e:
            raise QueryError(f"invalid query: {e}") from None
        finally:
            timer.cancel()

    def _index(self, seg: SegmentRow) -> SegmentIndex | None:
        hit, idx = self._indexes.get(seg.path)
        if not hit:
            try:
                idx = self.root.read_index(seg.path)
            except (OSError, ValueError):
                idx = None      # unreadable footer: scan the segment whole, as before the index
            self._indexes.put(seg.path, idx)
        return idx

    def _check_regexes(self, node: Node) -> None:
        for pattern in regexes(node):
            try:
                self._cursor().execute("SELECT regexp_matches('', ?)", [pattern])
            except duckdb.Error as e:
                raise QueryError(f"invalid regular expression /{pattern}/: {e}") from None

    def check_query_text(self, text: str) -> None:
        """Refuse query text over ``query.max_query_chars`` before parsing it (either language)."""
        limit = self.cfg.query.max_query_chars
        if len(text) > limit:
            raise QueryError(f"the query is {len(text)} characters long; the limit is {limit} "
                             "(query.max_query_chars)")

    def parse_query(self, q: str) -> Node:
        """``q`` parsed, after the length check."""
        self.check_query_text(q)
        return parse(q)

    def _plan(self, node: Node, tenant: str, start_us: int, end_us: int,
              segments: list[SegmentRow] | None = None) -> Scan:
        terms, limit = term_count(node), self.cfg.query.max_query_terms
        if terms > limit:
            raise QueryError(f"the query has {terms} terms; the limit is {limit} (query.max_query_terms)")
        self._check_regexes(node)
        compile_filter(node)     # unknown fields and bad values are refused before any reading
        if segments is None:
            segments = self.catalog.segments(tenant, start_us, end_us)
        scan = choose(node, segments, self.root.url, self._index)
        if scan.bytes_scanned > self.cfg.query.max_scan_bytes:
            raise ScanTooLarge(scan.bytes_scanned, self.cfg.query.max_scan_bytes)
        self.metrics.scanned(scan)
        return scan

    # -- search --------------------------------------------------------------

    def search(self, q: str = "", start: str | None = None, end: str | None = None,
               limit: int | None = None, order: Order = "desc", tenant: str = "default",
               fields: list[str] | None = None, cursor: str | None = None) -> SearchResult:
        """Records matching ``q`` with start <= ts < end, newest first by default; ``cursor``
        continues exactly where the previous page ended."""
        t0 = time.perf_counter()
        limit = self.cfg.query.default_limit if limit is None else limit
        if not 1 <= limit <= self.cfg.query.max_limit:
            raise QueryError(f"limit must be between 1 and {self.cfg.query.max_limit}")
        if order not in ("asc", "desc"):
            raise QueryError("order must be asc or desc")
        start_us, end_us = parse_range(start, end)
        return self.search_node(self.parse_query(q), start_us, end_us, limit, order, tenant, fields, cursor, t0)

    def search_node(self, node: Node, start_us: int, end_us: int, limit: int, order: Order = "desc",
                    tenant: str = "default", fields: list[str] | None = None, cursor: str | None = None,
                    t0: float | None = None) -> SearchResult:
        """:meth:`search` for a query already parsed (the Loki API builds its own)."""
        t0 = time.perf_counter() if t0 is None else t0
        projection = self._projection(fields)
        after: tuple[int, int, int] | None = None
        lo, hi = start_us, end_us
        if cursor:
            after = _decode_cursor(cursor, order)
            lo, hi = (lo, min(hi, after[0] + 1)) if order == "desc" else (max(lo, after[0]), hi)
        with self._slot():
            scan = self._plan(node, tenant, lo, hi)
            rows: list[dict[str, Any]] = []
            next_cursor = None
            if not scan.empty and lo < hi:
                rows, next_cursor = self._page(node, scan, lo, hi, limit, order, projection, after)
        stats = {**scan.stats(), "returned": len(rows), "start": format_us(start_us), "end": format_us(end_us),
                 "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return SearchResult(rows, stats, next_cursor)

    def _projection(self, fields: list[str] | None) -> list[tuple[str, Compiled]]:
        if not fields:
            return [(c, Compiled(c)) for c in SELECT_COLUMNS]
        check_fields(fields)
        out: list[tuple[str, Compiled]] = [("ts", Compiled("ts"))]
        for name in fields:
            name = name.strip()
            if not name or name == "ts" or any(n == name for n, _ in out):
                continue
            kind, key = resolve(name)
            out.append((name, Compiled(key) if kind == "column" else Compiled("attrs[?]", [key])))
        return out

    def _page(self, node: Node, scan: Scan, lo: int, hi: int, limit: int, order: str,
              projection: list[tuple[str, Compiled]], after: tuple[int, int, int] | None,
              ) -> tuple[list[dict[str, Any]], str | None]:
        """One page. Rows are ordered by ts; only the rows sharing the page's last timestamp
        need a finer order (for the cursor), so only they are hashed, in a second small query
        that leaves the main one DuckDB's top-N with late materialisation."""
        cond = compile_filter(node)
        source = scan.relation()
        desc = order == "desc"
        select = ", ".join(f"{c.sql} AS c{i}" for i, (_, c) in enumerate(projection))
        select_params: list[Any] = [p for _, c in projection for p in c.params]

        def query(lo_: int, hi_: int, n: int, ties: bool) -> pa.Table:
            extra = f", {_TIE} AS _h" if ties else ", 0::UBIGINT AS _h"
            key = "_h" if ties else "ts"
            sql = (f"SELECT {select}, epoch_us(ts) AS _t{extra} FROM {source.sql} AS logs "
                   f"WHERE {_RANGE} AND ({cond.sql}) ORDER BY {key} {'DESC' if desc else 'ASC'} LIMIT ?")
            return self._run(sql, [*select_params, *source.params, lo_, hi_, *cond.params, n])

        parts: list[pa.Table] = []
        if after is not None:
            # The rest of the cursor's timestamp: rows past (hash, skip) in hash order.
            t, h, skip = after
            tie = query(t, t + 1, 1 << 62, ties=True)
            hs = tie["_h"].to_pylist()
            past = [i for i, x in enumerate(hs) if (x < h if desc else x > h)]
            same = [i for i, x in enumerate(hs) if x == h][skip:]
            keep = sorted(same + past)
            parts.append(tie.take(pa.array(keep[:limit], pa.int64())))
            lo, hi = (lo, t) if desc else (t + 1, hi)
        taken = sum(p.num_rows for p in parts)
        if taken < limit and lo < hi:
            main = query(lo, hi, limit - taken, ties=False)
            if main.num_rows == limit - taken and main.num_rows:
                # The page ends inside a timestamp: take that timestamp's rows in hash order.
                last = main["_t"][main.num_rows - 1].as_py()
                at_last = pc.equal(main["_t"], last)
                k = pc.sum(at_last).as_py()
                tie = query(last, last + 1, k, ties=True)
                main = pa.concat_tables([main.filter(pc.invert(at_last)), tie])
            parts.append(main)
        table = pa.concat_tables(parts)     # never empty: search() calls only with lo < hi
        table = table.slice(0, limit)
        next_cursor = None
        if table.num_rows == limit:
            ts_col, h_col = table["_t"].to_pylist(), table["_h"].to_pylist()
            last_t, last_h = ts_col[-1], h_col[-1]
            same_n = 0
            for t_, h_ in zip(reversed(ts_col), reversed(h_col), strict=True):
                if (t_, h_) != (last_t, last_h):
                    break
                same_n += 1
            if after is not None and (after[0], after[1]) == (last_t, last_h):
                same_n += after[2]
            next_cursor = _encode_cursor(last_t, last_h, same_n, order)
        names = [n for n, _ in projection]
        out = table.select([f"c{i}" for i in range(len(names))]).rename_columns(names)
        rows = pa.table(_format_ts(out)).to_pylist()
        if "attrs" in names:
            for r in rows:
                r["attrs"] = dict(r["attrs"] or ())
        return rows, next_cursor

    # -- aggregate -----------------------------------------------------------

    def aggregate(self, q: str = "", start: str | None = None, end: str | None = None,
                  interval: str | None = None, by: list[str] | None = None, fn: str = "count",
                  top: int | None = None, tenant: str = "default") -> AggregateResult:
        """Buckets of ``interval`` over [start, end), one series per group of ``by`` (the top
        ``top`` groups, the rest folded into one "other" series)."""
        t0 = time.perf_counter()
        node = self.parse_query(q)
        start_us, end_us = parse_range(start, end)
        iv = pick_interval(start_us, end_us, interval)
        by = [b.strip() for b in (by or []) if b.strip()]
        if len(by) > 4:
            raise QueryError("by takes at most 4 fields")
        groups = [_group_sql(b) for b in by]
        fname, ffield = parse_fn(fn)
        top = self.cfg.query.default_top if top is None else top
        if not 1 <= top <= 1000:
            raise QueryError("top must be between 1 and 1000")
        first = start_us // iv * iv
        buckets = list(range(first, end_us, iv))
        segments = self.catalog.segments(tenant, start_us, end_us)
        from_catalog: dict[tuple[int, tuple[str | None, ...]], float] = {}
        counted = 0
        shortcut = _catalog_counts(node, by) if fname == "count" and iv % _HOUR_US == 0 else None
        if shortcut is not None:
            column, keep = shortcut
            rest = []
            for seg in segments:
                if seg.min_ts_us >= start_us and seg.max_ts_us < end_us:
                    b = seg.min_ts_us // iv * iv
                    for value, n in (seg.services if column == "service" else seg.levels).items():
                        if keep is None or value in keep:
                            k = (value,) if by else ()
                            from_catalog[(b, k)] = from_catalog.get((b, k), 0) + n
                    counted += 1
                else:
                    rest.append(seg)
            segments = rest
        with self._slot():
            scan = self._plan(node, tenant, start_us, end_us, segments)
            rows: list[tuple[int, tuple[str | None, ...], bool, float | None]] = []
            if not scan.empty:
                rows = self._aggregate_sql(node, scan, start_us, end_us, iv, groups, fname, ffield,
                                           top if by and not from_catalog else None)
        if from_catalog:
            merged: dict[tuple[int, tuple[str | None, ...]], float] = dict(from_catalog)
            for b, k, _, v in rows:
                merged[(b, k)] = merged.get((b, k), 0) + (v or 0)
            rows = self._fold_top(merged, top) if by else [(b, k, False, v) for (b, k), v in merged.items()]
        series = self._series(rows, by, buckets, iv, first, fname)
        stats = {**scan.stats(), "segments_answered_by_catalog": counted,
                 "start": format_us(start_us), "end": format_us(end_us),
                 "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return AggregateResult(iv, fn if fname == "count" else f"{fname}({ffield})", by, buckets, series, stats)

    @staticmethod
    def _fold_top(merged: dict[tuple[int, tuple[str | None, ...]], float], top: int,
                  ) -> list[tuple[int, tuple[str | None, ...], bool, float | None]]:
        totals: dict[tuple[str | None, ...], float] = {}
        for (_, k), v in merged.items():
            totals[k] = totals.get(k, 0) + v
        keep = set(sorted(totals, key=lambda k: (-totals[k], [x or "" for x in k]))[:top])
        out: dict[tuple[int, tuple[str | None, ...], bool], float] = {}
        for (b, k), v in merged.items():
            key = (b, k, False) if k in keep else (b, (), True)
            out[key] = out.get(key, 0) + v
        return [(b, k, o, v) for (b, k, o), v in out.items()]

    def _aggregate_sql(self, node: Node, scan: Scan, start_us: int, end_us: int, iv: int,
                       groups: list[Compiled], fname: str, ffield: str | None, top: int | None,
                       ) -> list[tuple[int, tuple[str | None, ...], bool, float | None]]:
        """(bucket, group, is_other, value) rows. Count, sum, avg, min and max are computed once per
        (bucket, group) and the top groups folded from that small result; quantiles cannot be
        folded, so they group the raw rows a second time by (bucket, top group or other)."""
        cond = compile_filter(node)
        source = scan.relation()
        value = Compiled("NULL::DOUBLE")
        if ffield is not None:
            kind, key = resolve(ffield)
            subject = Compiled(key) if kind == "column" else Compiled("attrs[?]", [key])
            value = numeric_sql(subject, "s") if kind == "attr" else Compiled(f"TRY_CAST({key} AS DOUBLE)")
        keys = [f"k{i}" for i in range(len(groups))]
        key_cols = "".join(f", {g.sql} AS {k}" for g, k in zip(groups, keys, strict=True))
        params: list[Any] = [iv, iv, *[p for g in groups for p in g.params], *value.params, *source.params,
                             start_us, end_us, *cond.params]
        base = (f"SELECT (epoch_us(ts) // ?) * ? AS b{key_cols}, {value.sql} AS v "
                f"FROM {source.sql} AS logs WHERE {_RANGE} AND ({cond.sql})")
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
        table = self._run(sql, params)
        cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
        out = []
        for i in range(table.num_rows):
            other = bool(cols[1][i])
            key = () if other else tuple(None if c[i] is None else str(c[i]) for c in cols[2:-1])
            out.append((int(cols[0][i]), key, other, cols[-1][i]))
        return out

    @staticmethod
    def _series(rows: list[tuple[int, tuple[str | None, ...], bool, float | None]], by: list[str],
                buckets: list[int], iv: int, first: int, fname: str) -> list[Series]:
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

    def buckets(self, node: Node, tenant: str, lo_us: int, hi_us: int, origin_us: int, width_us: int,
                labels: list[str], acc: dict[str, int] | None = None) -> pa.Table:
        """Rows with lo < ts <= hi counted per bucket (origin + (k-1)*width, origin + k*width] and per
        value of ``labels``: columns ``k``, the labels, ``n`` (rows) and ``bytes`` (message bytes).
        Windows are open on the left, as Loki's range vectors are."""
        groups = [_group_sql(name) for name in labels]
        with self._slot():
            scan = self._plan(node, tenant, lo_us, hi_us + 1)
            if acc is not None:
                acc["lines"] = acc.get("lines", 0) + scan.rows_scanned
                acc["bytes"] = acc.get("bytes", 0) + scan.bytes_scanned
            if scan.empty:
                return pa.table({"k": pa.array([], pa.int64())})
            cond = compile_filter(node)
            source = scan.relation()
            cols = "".join(f", {g.sql} AS l{i}" for i, g in enumerate(groups))
            sql = (f"SELECT (epoch_us(ts) - ? + ? - 1) // ? AS k{cols}, count(*) AS n, "
                   f"sum(strlen(message))::BIGINT AS bytes FROM {source.sql} AS logs "
                   f"WHERE ts > make_timestamptz(?::BIGINT) AND ts <= make_timestamptz(?::BIGINT) "
                   f"AND ({cond.sql}) GROUP BY ALL")
            params = [origin_us, width_us, width_us, *[p for g in groups for p in g.params], *source.params,
                      lo_us, hi_us, *cond.params]
            return self._run(sql, params)

    # -- fields and values ---------------------------------------------------

    def fields(self, q: str = "", start: str | None = None, end: str | None = None,
               tenant: str = "default", top: int = 5) -> tuple[list[FieldInfo], dict[str, Any]]:
        """Fields seen in the newest sampled rows of the range, with their type and top values."""
        start_us, end_us = parse_range(start, end)
        return self.fields_node(self.parse_query(q), start_us, end_us, tenant, top)

    def fields_node(self, node: Node | None, start_us: int, end_us: int, tenant: str = "default",
                    top: int = 5) -> tuple[list[FieldInfo], dict[str, Any]]:
        """:meth:`fields` for a parsed query (None: every record)."""
        t0 = time.perf_counter()
        node = node or MatchAll()
        with self._slot():
            scan = self._plan(node, tenant, start_us, end_us)
            if scan.empty:
                return [], {**scan.stats(), "sampled_rows": 0}
            cond = compile_filter(node)
            source = scan.relation()
            sample = (f"SELECT service, host, source, level, trace_id, span_id, attrs FROM {source.sql} AS logs "
                      f"WHERE {_RANGE} AND ({cond.sql}) ORDER BY ts DESC LIMIT ?")
            params = [*source.params, start_us, end_us, *cond.params, self.cfg.query.fields_sample_rows]
            sql = (f"WITH s AS MATERIALIZED ({sample}), "
                   "kv AS (SELECT unnest(['service', 'host', 'source', 'level', 'trace_id', 'span_id']) AS k, "
                   "unnest([service, host, source, level, trace_id, span_id]::VARCHAR[]) AS v, TRUE AS col FROM s "
                   "UNION ALL SELECT unnest(map_keys(attrs)) AS k, unnest(map_values(attrs)) AS v, FALSE FROM s) "
                   "SELECT k, col, v, count(*) AS n, (SELECT count(*) FROM s) AS total FROM kv "
                   "WHERE v IS NOT NULL GROUP BY ALL")
            table = self._run(sql, params)
        by_field: dict[tuple[str, bool], list[tuple[str, int]]] = {}
        total = int(table["total"][0].as_py()) if table.num_rows else 0
        for k, col, v, n in zip(*(table.column(i).to_pylist() for i in range(4)), strict=True):
            by_field.setdefault((k, col), []).append((v, n))
        out = []
        for (k, col), values in by_field.items():
            values.sort(key=lambda x: (-x[1], x[0]))
            numeric = all(_is_number(v) for v, _ in values)
            name = k if col or k not in SELECT_COLUMNS else f"attrs.{k}"
            out.append(FieldInfo(name, "number" if numeric and not col else "string", sum(n for _, n in values),
                                 len(values), [{"value": v, "count": n} for v, n in values[:top]]))
        out.sort(key=lambda f: (f.name not in SELECT_COLUMNS, -f.count, f.name))
        return out, {**scan.stats(), "sampled_rows": total,
                     "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}

    def values(self, fieldname: str, q: str = "", start: str | None = None, end: str | None = None,
               limit: int = 20, tenant: str = "default") -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The most frequent values of one field in the range, with their counts."""
        t0 = time.perf_counter()
        if not 1 <= limit <= 1000:
            raise QueryError("limit must be between 1 and 1000")
        group = _group_sql(fieldname)
        node = self.parse_query(q)
        start_us, end_us = parse_range(start, end)
        table, scan = self._select(node, start_us, end_us, tenant, f"{group.sql} AS v, count(*) AS n",
                                   "AND v IS NOT NULL GROUP BY v ORDER BY n DESC, v LIMIT ?", group.params, [limit])
        values = [] if table is None else [{"value": v, "count": n} for v, n in
                                           zip(table["v"].to_pylist(), table["n"].to_pylist(), strict=True)]
        return values, {**scan.stats(), "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}

    def cardinalities(self, node: Node | None, start_us: int, end_us: int, tenant: str,
                      labels: list[str]) -> dict[str, int]:
        """How many distinct values each of ``labels`` (columns or attribute keys) takes in the range."""
        groups = [_group_sql(name) for name in labels]
        select = ", ".join(f"count(DISTINCT {g.sql}) AS c{i}" for i, g in enumerate(groups))
        table, _ = self._select(node, start_us, end_us, tenant, select, "", [p for g in groups for p in g.params],
                                [])
        if table is None:
            return {name: 0 for name in labels}
        return {name: int(table[f"c{i}"][0].as_py()) for i, name in enumerate(labels)}

    def _select(self, node: Node | None, start_us: int, end_us: int, tenant: str, select: str,
                tail: str, select_params: list[Any], tail_params: list[Any]) -> tuple[pa.Table | None, Scan]:
        """``SELECT select FROM <the planned data> WHERE <range and node> tail``; None if nothing to read."""
        node = node or MatchAll()
        with self._slot():
            scan = self._plan(node, tenant, start_us, end_us)
            if scan.empty:
                return None, scan
            cond = compile_filter(node)
            source = scan.relation()
            sql = f"SELECT {select} FROM {source.sql} AS logs WHERE {_RANGE} AND ({cond.sql}) {tail}"
            return self._run(sql, [*select_params, *source.params, start_us, end_us, *cond.params,
                                   *tail_params]), scan

    def distinct(self, fieldname: str, node: Node | None, start_us: int, end_us: int, tenant: str = "default",
                 limit: int = 1000) -> list[str]:
        """Distinct values of one field in the range (label values for the Loki API)."""
        group = _group_sql(fieldname)
        table, _ = self._select(node, start_us, end_us, tenant, f"DISTINCT {group.sql} AS v",
                                "AND v IS NOT NULL ORDER BY v LIMIT ?", group.params, [limit])
        return [] if table is None else [str(v) for v in table["v"].to_pylist()]

    def label_sets(self, node: Node | None, start_us: int, end_us: int, tenant: str,
                   labels: list[str]) -> list[dict[str, str | None]]:
        """Distinct combinations of ``labels`` (columns) in the range."""
        groups = [_group_sql(name) for name in labels]
        select = "DISTINCT " + ", ".join(f"{g.sql} AS l{i}" for i, g in enumerate(groups))
        table, _ = self._select(node, start_us, end_us, tenant, select, "LIMIT ?",
                                [p for g in groups for p in g.params], [100_000])
        if table is None:
            return []
        cols = [table[f"l{i}"].to_pylist() for i in range(len(labels))]
        return [{name: cols[i][j] for i, name in enumerate(labels)} for j in range(table.num_rows)]

    def volume(self, node: Node | None, start_us: int, end_us: int, tenant: str,
               labels: list[str]) -> list[dict[str, Any]]:
        """Rows, message bytes and streams per combination of ``labels``, most bytes first."""
        groups = [_group_sql(name) for name in labels]
        keys = "".join(f"{g.sql} AS l{i}, " for i, g in enumerate(groups))
        select = (f"{keys}count(*) AS n, sum(strlen(message))::BIGINT AS b, "
                  "count(DISTINCT (service, host, level, source)) AS streams")
        tail = ("GROUP BY ALL " if groups else "") + "ORDER BY b DESC LIMIT ?"
        table, scan = self._select(node, start_us, end_us, tenant, select, tail,
                                   [p for g in groups for p in g.params], [10_000])
        if table is None:
            return []
        cols = [table[f"l{i}"].to_pylist() for i in range(len(labels))]
        return [{"labels": tuple(c[j] for c in cols), "rows": int(table["n"][j].as_py()),
                 "bytes": int(table["b"][j].as_py() or 0), "streams": int(table["streams"][j].as_py()),
                 "segments": scan.segments_scanned} for j in range(table.num_rows) if table["n"][j].as_py()]

    # -- saved queries -------------------------------------------------------

    def saved(self, name: str, tenant: str = "default") -> SavedQueryRow:
        found = self.catalog.saved_query(tenant, name)
        if found is None:
            raise SavedQueryNotFound(f"no saved query named {name!r} (it may have been renamed or deleted); "
                                     "GET /api/v1/saved-queries lists them")
        return found

    def save(self, q: SavedQueryRow, replacing: str | None = None) -> SavedQueryRow:
        """Create ``q``, or replace the saved query ``replacing`` (renaming it if names differ)."""
        check_saved_name(q.name)
        check_saved(q, self.cfg.query.max_limit)
        self._check_regexes(self.parse_query(q.query))
        try:
            if replacing is None:
                self.catalog.create_saved_query(q)
            elif not self.catalog.replace_saved_query(replacing, q):
                raise SavedQueryNotFound(f"no saved query named {replacing!r}")
        except CatalogConflict:
            raise SavedQueryExists(f"a saved query named {q.name!r} exists already") from None
        return self.saved(q.name, q.tenant)

    def delete_saved(self, name: str, tenant: str = "default") -> None:
        if not self.catalog.delete_saved_query(tenant, name):
            raise SavedQueryNotFound(f"no saved query named {name!r}")

    def run_saved(self, name: str, start: str | None = None, end: str | None = None,
                  tenant: str = "default") -> SearchResult | AggregateResult:
        """Run a saved query over ``start``/``end``, or its own default range."""
        sq = self.saved(name, tenant)
        check_saved(sq, self.cfg.query.max_limit)   # saved by an older loglake, perhaps
        p = sq.params
        start = start or p.get("start")
        end = end or p.get("end")
        if sq.kind == "aggregate":
            return self.aggregate(sq.query, start, end, p.get("interval"), p.get("by"), p.get("fn", "count"),
                                  p.get("top"), tenant)
        return self.search(sq.query, start, end, p.get("limit"), p.get("order", "desc"), tenant, p.get("fields"))


#: A saved query's name: ASCII letters, digits, '.', '_', '-' and inner spaces, starting with a
#: letter or digit, at most 128 characters. It appears in URLs, dashboards and terminals, so no
#: '/', '..' alone, control characters or bidirectional overrides. Names saved before the rule
#: still run, read and delete; only new names (and renames) are checked.
SAVED_NAME_RULE = ("1-128 characters: ASCII letters, digits, '.', '_', '-' and spaces, starting with a letter or "
                   "digit and not ending with a space")
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_REST = _NAME_FIRST | frozenset("._- ")


def check_saved_name(name: str) -> None:
    """Refuse a new saved-query name outside :data:`SAVED_NAME_RULE` (HTTP 400, saying the rule)."""
    if not (0 < len(name) <= 128 and name[0] in _NAME_FIRST and name[-1] != " "
            and all(c in _NAME_REST for c in name)):
        raise QueryError(f"invalid saved query name {name[:60]!r}: a name is {SAVED_NAME_RULE}")


def check_fields(fields: list[str]) -> None:
    """Refuse more than :data:`MAX_FIELDS` distinct fields to return (HTTP 400)."""
    distinct = {f.strip() for f in fields if f.strip()}
    if len(distinct) > MAX_FIELDS:
        raise QueryError(f"{len(distinct)} fields asked for; a search returns at most {MAX_FIELDS}")


_SAVED_PARAMS = {"search": {"start", "end", "limit", "order", "fields"},
                 "aggregate": {"start", "end", "interval", "by", "fn", "top"}}


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
        _group_sql(name)
    top = typed("top", int, "a whole number")
    if top is not None and not 1 <= top <= 1000:
        raise QueryError("saved query parameter top must be between 1 and 1000")
    interval = typed("interval", str, "a duration like 5m")
    if interval not in (None, "auto"):
        parse_duration_us(interval)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

