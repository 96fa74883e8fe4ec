"""Log patterns of the records a query selects: masked and counted in DuckDB, mined by Drain.

1. DuckDB masks every selected message's variable parts (:mod:`query.patterns.mask`) and counts
   the lines per (level, line shape, masked message, time bucket): one vectorised pass, no
   Python per line.
2. Drain (:mod:`query.patterns.drain`) runs once per level over the distinct masked messages,
   each weighted by its count, most frequent first.
3. The bucket counts are summed per (level, template): every selected line is counted once, in
   the bucket its time falls in (buckets are ``step`` wide, from the epoch, as Loki's).

Segments are immutable, so step 1's result for a segment lying wholly inside the range is kept
(keyed by segment, condition and step, least recently used out past ``cache_bytes``) and
reused by the next request over it; the segments at the range's edges are read with the exact
range every time. Drain itself is cheap: it sees distinct masked messages, not lines.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from query.errors import QueryError
from query.language import Node
from query.patterns.drain import PARAM, Drain, join_template
from query.patterns.mask import mask_sql
from query.planner import Scan
from query.runner import RANGE_SQL, Plan, QueryRunner
from storage.catalog import SegmentRow

#: The line shapes, for templates of whole lines: the line is the message (0), a header and the
#: message (1), or a structured record's line holding the message (2).
SHAPE_SQL = "CASE WHEN raw IS NOT NULL THEN 2 WHEN coalesce(head, '') <> '' THEN 1 ELSE 0 END"
#: Distinct masked messages Drain reads per level; the lines of rarer ones are counted under
#: their masked text as their own template (so no line is left out).
MAX_DISTINCT = 20_000
DEFAULT_CACHE_BYTES = 64 << 20
_EMPTY = pa.schema([("level", pa.string()), ("shape", pa.int32()), ("masked", pa.string()),
                    ("bucket", pa.int64()), ("n", pa.int64())])


@dataclass
class Pattern:
    """One template of one level: its lines' count per bucket."""

    template: str
    level: str
    #: {bucket start (epoch µs): lines}, only buckets with lines.
    samples: dict[int, int]
    #: The message template behind ``template`` (the same unless ``lines`` rendered whole lines).
    message_template: str = ""

    @property
    def total(self) -> int:
        return sum(self.samples.values())


@dataclass
class Mined:
    patterns: list[Pattern]
    stats: dict[str, Any] = field(default_factory=dict)


def line_template(template: str, shape: int) -> str:
    """A message template as a template of the whole line, as Loki's ``|>`` matches it: the
    header before the message, and a structured line's text around it, are one ``<_>`` each."""
    text = (PARAM + template) if shape == 1 else (PARAM + template + PARAM) if shape == 2 else template
    while PARAM + PARAM in text:
        text = text.replace(PARAM + PARAM, PARAM)
    return text


class _Cache:
    """Step 1's tables by (segment, condition, step, shape wanted): least recently used out past a size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Any, ...], pa.Table] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[Any, ...]) -> pa.Table | None:
        with self._lock:
            table = self._items.get(key)
            if table is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return table

    def put(self, key: tuple[Any, ...], table: pa.Table) -> None:
        size = table.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = table
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes


class PatternMiner:
    """Patterns over one query runner (its catalog, limits and DuckDB)."""

    def __init__(self, runner: QueryRunner, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 drain_depth: int = 4, drain_sim: float = 0.5, max_distinct: int = MAX_DISTINCT) -> None:
        self.runner = runner
        self.cache = _Cache(cache_bytes)
        self.depth, self.sim = drain_depth, drain_sim
        self.max_distinct = max_distinct

    def mine(self, node: Node, tenant: str, start_us: int, end_us: int, step_us: int, *,
             lines: bool = False) -> Mined:
        """The patterns of the records ``node`` selects in [start, end), counted per ``step``.

        ``lines``: templates of whole lines (Loki's patterns), else of messages."""
        if step_us <= 0:
            raise QueryError("step must be positive")
        t0 = time.perf_counter()
        hits0, misses0 = self.cache.hits, self.cache.misses
        with self.runner.slot():
            segments = self.runner.catalog.segments(tenant, start_us, end_us)
            plan = self.runner.plan(node, tenant, start_us, end_us, segments)
            scan = plan.scan
            if scan.empty:
                return Mined([], {**scan.stats(), "elapsed_ms": _ms(t0)})
            by_url = {f"{self.runner.root.url}/{s.path}": s for s in segments}
            inside, edge = _split(scan, by_url, start_us, end_us)
            tables = [self._segment(plan, url, ranges, by_url[url], step_us, lines)
                      for url, ranges in inside]
            if not edge.empty:
                tables.append(self._count(plan, edge, step_us, lines, (start_us, end_us)))
        counted = pa.concat_tables(tables) if tables else _EMPTY.empty_table()
        patterns = self._mine_counts(counted, lines)
        stats = {**scan.stats(), "segments_cached": self.cache.hits - hits0,
                 "segments_counted": self.cache.misses - misses0 + (0 if edge.empty else 1),
                 "distinct_masked": pc.count_distinct(counted["masked"]).as_py() if counted.num_rows else 0,
                 "elapsed_ms": _ms(t0)}
        return Mined(patterns, stats)

    # -- step 1: DuckDB --------------------------------------------------------------

    def _segment(self, plan: Plan, url: str, ranges: list[tuple[int, int]] | None, seg: SegmentRow,
                 step_us: int, lines: bool) -> pa.Table:
        key = (seg.id, url, tuple(ranges or ()), plan.where.sql, repr(plan.where.params), step_us, lines)
        table = self.cache.get(key)
        if table is None:
            one = Scan(whole=[url]) if ranges is None else Scan(partial=[(url, ranges)])
            table = self._count(plan, one, step_us, lines, None)
            self.cache.put(key, table)
        return table

    def _count(self, plan: Plan, scan: Scan, step_us: int, lines: bool, rng: tuple[int, int] | None) -> pa.Table:
        """Step 1 over ``scan`` (one of ``plan``'s, or all of it), within ``rng`` if given."""
        source, rest = plan.filtered(original=lines, scan=scan)
        shape = SHAPE_SQL if lines else "0"
        cond = f"{RANGE_SQL} AND ({rest.sql})" if rng is not None else f"({rest.sql})"
        masked = mask_sql("coalesce(message, '')")
        sql = (f"SELECT coalesce(level, 'unknown') AS level, ({shape})::INTEGER AS shape, {masked} AS masked, "
               f"(epoch_us(ts) // ?) * ? AS bucket, count(*) AS n "
               f"FROM {source.sql} AS logs WHERE {cond} GROUP BY ALL")
        params: list[Any] = [step_us, step_us, *source.params, *(rng or ()), *rest.params]
        return self.runner.run(sql, params).cast(_EMPTY)

    # -- steps 2 and 3: Drain, then the counts per template ---------------------------

    def _mine_counts(self, counted: pa.Table, lines: bool) -> list[Pattern]:
        if counted.num_rows == 0:
            return []
        per = counted.group_by(["level", "masked"]).aggregate([("n", "sum")])
        templates: list[str] = []
        index: dict[str, int] = {}
        tids: list[int] = []
        by_level: dict[str, list[tuple[str, int]]] = {}
        for lv, m, w in zip(per["level"].to_pylist(), per["masked"].to_pylist(), per["n_sum"].to_pylist(),
                            strict=True):
            by_level.setdefault(lv, []).append((m, int(w)))
        template_of: dict[tuple[str, str], str] = {}
        for lv, items in by_level.items():
            items.sort(key=lambda mw: (-mw[1], mw[0]))
            drain = Drain(self.depth, self.sim)
            for m, cid in drain.train(items[:self.max_distinct]).items():
                template_of[(lv, m)] = drain.cluster(cid).template
            for m, _ in items[self.max_distinct:]:
                template_of[(lv, m)] = join_template(m.split(" "))
        for lv, m in zip(per["level"].to_pylist(), per["masked"].to_pylist(), strict=True):
            t = template_of[(lv, m)]
            tids.append(index.setdefault(t, len(index)))
            if len(index) > len(templates):
                templates.append(t)
        per = per.select(["level", "masked"]).append_column("tid", pa.array(tids, pa.int64()))
        summed = (counted.join(per, keys=["level", "masked"])
                  .group_by(["level", "shape", "tid", "bucket"]).aggregate([("n", "sum")]))
        out: dict[tuple[str, str], Pattern] = {}
        cols = [summed[c].to_pylist() for c in ("level", "shape", "tid", "bucket", "n_sum")]
        for lv, sh, tid, b, n in zip(*cols, strict=True):
            message_template = templates[tid]
            template = line_template(message_template, sh) if lines else message_template
            p = out.get((lv, template))
            if p is None:
                p = out[(lv, template)] = Pattern(template, lv, {}, message_template)
            p.samples[b] = p.samples.get(b, 0) + int(n)
        return sorted(out.values(), key=lambda p: (-p.total, p.template, p.level))


def _split(scan: Scan, by_url: dict[str, SegmentRow], start_us: int,
           end_us: int) -> tuple[list[tuple[str, list[tuple[int, int]] | None]], Scan]:
    """(the planned segments lying wholly inside [start, end), with their row ranges or None for
    whole; a scan of the others)."""
    inside: list[tuple[str, list[tuple[int, int]] | None]] = []
    edge = Scan()

    def within(url: str) -> bool:
        seg = by_url.get(url)
        return seg is not None and seg.min_ts_us >= start_us and seg.max_ts_us < end_us

    for url in scan.whole:
        if within(url):
            inside.append((url, None))
        else:
            edge.whole.append(url)
    for url, ranges in scan.partial:
        if within(url):
            inside.append((url, ranges))
        else:
            edge.partial.append((url, ranges))
    return inside, edge


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)



def mine_messages(messages: list[str], *, depth: int = 4, sim: float = 0.5) -> list[str]:
    """The template of each message, mined as :meth:`PatternMiner.mine` mines a level's messages
    (masked by the same SQL in a DuckDB of its own, then Drain over the distinct masked texts)."""
    con = duckdb.connect()
    try:
        con.register("messages", pa.table({"message": pa.array(messages, pa.string())}))
        masked = con.execute(f"SELECT {mask_sql('message')} AS masked FROM messages").to_arrow_table()
    finally:
        con.close()
    column = masked["masked"].to_pylist()
    counts = pc.value_counts(masked["masked"])
    drain = Drain(depth, sim)
    ids = drain.train((v["values"].as_py(), v["counts"].as_py()) for v in counts)
    return [drain.cluster(ids[m]).template for m in column]
