"""Paged search: the records matching a query, in time order, a page at a time.

A cursor continues exactly where the previous page ended, even inside a run
of records sharing one timestamp; ``fields`` chooses what each row returns.
A row holds its columns and ``line``, the original line as received; the
stored parts of it (``head``, ``raw``) only when ``fields`` names them.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from query.errors import QueryError
from query.language import Node
from query.planner import SELECT_COLUMNS, Compiled, field_sql, nearest_segments
from query.runner import RANGE_SQL, Plan, QueryRunner
from query.timerange import format_us, parse_range

Order = Literal["asc", "desc"]
#: Rows sharing a timestamp are ordered by this hash of all they hold, so a cursor can resume
#: between them; only rows identical in every column share a hash, and those are interchangeable.
_TIE = "hash(observed_ts, service, host, source, level, message, attrs, trace_id, span_id, head, raw)"
#: What a row holds when ``fields`` is not given: the columns, and the original line.
DEFAULT_FIELDS = (*SELECT_COLUMNS, "line")
#: Fields one search may return: each is a column of every row DuckDB holds (20,000 of them ran it
#: out of memory).
MAX_FIELDS = 256


@dataclass
class SearchResult:
    #: Each row as the JSON object text the API sends (rendered by DuckDB from the page's rows).
    json_rows: list[str]
    stats: dict[str, Any]
    cursor: str | None = None

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        """The rows as Python objects (what the JSON texts hold)."""
        return [orjson.loads(r) for r in self.json_rows]


def check_fields(fields: list[str]) -> None:
    """Refuse more than :data:`MAX_FIELDS` distinct fields to return (HTTP 400)."""
    distinct = {f.strip() for f in fields if f.strip()}
    if len(distinct) > MAX_FIELDS:
        raise QueryError(f"{len(distinct)} fields asked for; a search returns at most {MAX_FIELDS}")


#: A timestamp column as the API writes it: RFC 3339, microseconds, Z (DuckDB runs with TimeZone UTC).
_TIME_JSON = "strftime({}, '%Y-%m-%dT%H:%M:%S.%fZ')"


def _json_object(projection: list[tuple[str, Compiled]]) -> Compiled:
    """Each row as one JSON object of the projection's fields, in their order: timestamps as RFC 3339
    text, ``attrs`` as an object (``{}`` when it has none), the rest as JSON values."""
    args, params = [], []
    for name, c in projection:
        if c.sql in ("ts", "observed_ts"):
            expr = _TIME_JSON.format(c.sql)
        elif c.sql == "attrs":
            expr = "coalesce(attrs, MAP {}::MAP(VARCHAR, VARCHAR))"
        else:
            expr = c.sql
        args.append(f"?::VARCHAR, {expr}")
        params += [name, *c.params]
    return Compiled(f"json_object({', '.join(args)})::VARCHAR", params)


def _encode_cursor(ts_us: int, tie: int | None, skip: int, order: str) -> str:
    """The cursor after a page: its last row's time and tie hash and how many rows with both were
    returned; ``tie`` None when the page holds every row at that time (the next page starts after it)."""
    data = {"v": 1, "t": ts_us, "h": tie, "n": skip, "o": order} if tie is not None else \
        {"v": 1, "t": ts_us, "d": 1, "o": order}
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


_HASHED = {"v", "t", "h", "n", "o"}
_DONE = {"v", "t", "d", "o"}


def _decode_cursor(cursor: str, order: str) -> tuple[int, int | None, int]:
    """(time, tie hash, rows with both already returned); the hash None: every row at the time was."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        keys = set(data)
        if keys == _DONE and data["d"] == 1 and data["v"] == 1:
            t, h, n, o = int(data["t"]), None, 0, data["o"]
        elif keys == _HASHED and data["v"] == 1:
            t, h, n, o = int(data["t"]), int(data["h"]), int(data["n"]), data["o"]
        else:
            raise ValueError("not a cursor of this version")
    except (ValueError, KeyError, TypeError) as e:
        raise QueryError(f"invalid cursor: {e}") from None
    if o != order:
        raise QueryError(f"this cursor continues a search in {o} order, not {order}")
    if not ((h is None or 0 <= h < 2**64) and 0 <= n <= 1_000_000 and 0 <= t < 2**62):
        raise QueryError("invalid cursor")
    return t, h, n


def _projection(fields: list[str] | None) -> list[tuple[str, Compiled]]:
    if not fields:
        return [(c, field_sql(c)) for c in DEFAULT_FIELDS]
    check_fields(fields)
    out: list[tuple[str, Compiled]] = [("ts", Compiled("ts"))]
    for name in fields:
        name = name.strip()
        if not name or name == "ts" or any(n == name for n, _ in out):
            continue
        out.append((name, field_sql(name)))
    return out


#: Over more segments than this, a page is read first from the ones nearest its start (see
#: :meth:`Searcher._newest_first`), from enough of them to hold this many pages of rows.
_WINDOW_MIN_SEGMENTS = 32
_WINDOW_PAGES = 4


class Searcher:
    """Paged search over the runner."""

    def __init__(self, runner: QueryRunner) -> None:
        self.runner = runner
        self.cfg = runner.cfg

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
        return self.search_node(self.runner.parse_query(q), start_us, end_us, limit, order, tenant, fields,
                                cursor, t0)

    def search_node(self, node: Node, start_us: int, end_us: int, limit: int, order: Order = "desc",
                    tenant: str = "default", fields: list[str] | None = None, cursor: str | None = None,
                    t0: float | None = None) -> SearchResult:
        """:meth:`search` for a query already parsed (the Loki API builds its own)."""
        t0 = time.perf_counter() if t0 is None else t0
        projection = _projection(fields)
        after: tuple[int, int | None, int] | None = None
        lo, hi = start_us, end_us
        if cursor:
            after = _decode_cursor(cursor, order)
            lo, hi = (lo, min(hi, after[0] + 1)) if order == "desc" else (max(lo, after[0]), hi)
        windows = 0
        with self.runner.slot():
            plan = self.runner.plan(node, tenant, lo, hi)
            rows: list[str] = []
            next_cursor = None
            if not plan.scan.empty and lo < hi:
                rows, next_cursor, windows = self._newest_first(node, tenant, plan, lo, hi, limit, order,
                                                                projection, after)
        stats = {**plan.scan.stats(), "returned": len(rows), "start": format_us(start_us),
                 "end": format_us(end_us), "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}
        if windows:
            stats["windows"] = windows
        return SearchResult(rows, stats, next_cursor)

    def _newest_first(self, node: Node, tenant: str, plan: Plan, lo: int, hi: int, limit: int, order: str,
                      projection: list[tuple[str, Compiled]], after: tuple[int, int | None, int] | None,
                      ) -> tuple[list[str], str | None, int]:
        """The page, read first from the segments nearest the end the page starts at.

        Ingest writes a segment per partition every half second or so when it keeps up, and
        compaction merges them minutes later: a search of the last quarter hour would open
        thousands of small files for the hundred newest rows. Over many segments the page is
        first asked of a window [w, hi) that the newest segments cover with four pages' worth
        of rows (every segment overlapping the window is read, so every row at or after w is
        seen); only if fewer rows in the window match than the page holds does the window grow
        (eight times the rows each time), up to the whole range. Returns the rows, the cursor, and how
        many windows were read (0: the whole range at once)."""
        segments = plan.scan.segments
        if len(segments) <= _WINDOW_MIN_SEGMENTS:
            rows, cursor, _ = self._page(plan, lo, hi, limit, order, projection, after)
            return rows, cursor, 0
        desc = order == "desc"
        want = _WINDOW_PAGES * (limit + 1)
        windows = 0
        while True:
            # Nearest the page's start first: newest ends for a descending page, oldest starts otherwise.
            taken = nearest_segments(segments, want, newest=desc)
            if taken is None or len(taken) == len(segments):
                w_lo, w_hi = lo, hi
            elif desc:
                w_lo, w_hi = max(lo, min(g.min_ts_us for g in taken)), hi
            else:
                w_lo, w_hi = lo, min(hi, max(g.max_ts_us for g in taken) + 1)
            windows += 1
            whole = (w_lo, w_hi) == (lo, hi)
            inside = [g for g in segments if g.max_ts_us >= w_lo and g.min_ts_us < w_hi]
            window = plan if whole else self.runner.plan(node, tenant, w_lo, w_hi, segments=inside)
            if window.scan.empty and not whole:
                rows, cursor, ends = [], None, "last"
            else:
                rows, cursor, ends = self._page(window, w_lo, w_hi, limit, order, projection, after)
            # A page that ends inside the window is the page; one the window ran out under is not,
            # unless the window was the whole range.
            if whole or ends != "last":
                return rows, cursor, windows
            want *= 8

    def _page(self, plan: Plan, lo: int, hi: int, limit: int, order: str,
              projection: list[tuple[str, Compiled]], after: tuple[int, int | None, int] | None,
              ) -> tuple[list[str], str | None, str]:
        """One page, as each row's JSON text, the cursor after it, and how the page ends in
        [lo, hi): "last" when no row of the range follows it.

        Rows are ordered by ts. The main statement asks for one row more than the page holds: if
        that row's time differs from the page's last, the page ends between two times and nothing
        else is needed. Only when it ends inside a run of rows sharing a time are that time's rows
        ordered by a hash of everything they hold, in a second small statement, so that a cursor
        can resume between them. Each row's JSON is built by DuckDB after the top-N, for the page's
        rows only."""
        # Always with the original line's columns: the row's ``line``, and the hash that orders ties.
        source, cond = plan.filtered(original=True)
        desc = order == "desc"
        direction = "DESC" if desc else "ASC"
        row = _json_object(projection)

        def query(lo_: int, hi_: int, n: int, ties: bool) -> pa.Table:
            tie, key = (f", {_TIE} AS _h", "_h") if ties else ("", "ts")
            outer_h = "_h" if ties else "0::UBIGINT"
            sql = (f"SELECT {row.sql} AS _j, epoch_us(ts) AS _t, {outer_h} AS _h FROM ("
                   f"SELECT *{tie} FROM {source.sql} AS logs WHERE {RANGE_SQL} AND ({cond.sql}) "
                   f"ORDER BY {key} {direction} LIMIT ?) AS logs ORDER BY {key} {direction}")
            return self.runner.run(sql, [*row.params, *source.params, lo_, hi_, *cond.params, n])

        parts: list[pa.Table] = []
        #: How the page ends: "hashed" (its last rows are ordered by hash: the cursor resumes between
        #: them), "between" (it holds every row at its last time and more follow), "last" (nothing follows).
        ends = "hashed"
        if after is not None:
            t, h, skip = after
            if h is not None:
                # The rest of the cursor's timestamp: rows past (hash, skip) in hash order.
                tie = query(t, t + 1, 1 << 62, ties=True)
                hs = tie["_h"].to_pylist()
                past = [i for i, x in enumerate(hs) if (x < h if desc else x > h)]
                same = [i for i, x in enumerate(hs) if x == h][skip:]
                keep = sorted(same + past)
                parts.append(tie.take(pa.array(keep[:limit], pa.int64())))
            lo, hi = (lo, t) if desc else (t + 1, hi)
        taken = sum(p.num_rows for p in parts)
        if taken < limit and lo >= hi:
            ends = "last"           # the range holds nothing past the cursor's time
        if taken < limit and lo < hi:
            want = limit - taken
            main = query(lo, hi, want + 1, ties=False)
            ends = "last"
            if main.num_rows > want:
                last, beyond = main["_t"][want - 1].as_py(), main["_t"][want].as_py()
                main = main.slice(0, want)
                ends = "between"
                if beyond == last:
                    # The page ends inside a timestamp: take that timestamp's rows in hash order.
                    at_last = pc.equal(main["_t"], last)
                    k = pc.sum(at_last).as_py()
                    tie = query(last, last + 1, k, ties=True)
                    main = pa.concat_tables([main.filter(pc.invert(at_last)), tie])
                    ends = "hashed"
            parts.append(main)
        if not parts:
            return [], None, "last"         # a window that ends at the cursor's time, read to its end
        table = pa.concat_tables(parts)
        table = table.slice(0, limit)
        next_cursor = None
        if table.num_rows == limit and ends != "last":
            ts_col, h_col = table["_t"].to_pylist(), table["_h"].to_pylist()
            last_t, last_h = ts_col[-1], h_col[-1]
            if ends == "between":
                next_cursor = _encode_cursor(last_t, None, 0, order)
            else:
                same_n = 0
                for t_, h_ in zip(reversed(ts_col), reversed(h_col), strict=True):
                    if (t_, h_) != (last_t, last_h):
                        break
                    same_n += 1
                if after is not None and (after[0], after[1]) == (last_t, last_h):
                    same_n += after[2]
                next_cursor = _encode_cursor(last_t, last_h, same_n, order)
        return table["_j"].to_pylist(), next_cursor, ends
