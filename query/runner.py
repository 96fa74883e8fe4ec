"""The query runner: one locked-down DuckDB, the limits, and the plan of each request.

Every search, aggregation and field query goes through it: the request takes a
concurrency slot (waiting at most until the queue deadline), is planned once
against the catalog and the segments' trigram indexes (its filter compiled once,
its scan checked against ``max_scan_bytes``), then runs parameterised SQL over
the planned files on this thread's cursor, interrupted at the time limit.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from loglake.core.config import Config
from query.errors import QueryError, QueryOutOfMemory, QueryTimeout, ScanTooLarge, TooManyQueries
from query.language import MatchAll, Node, parse
from query.metrics import QueryMetrics
from query.planner import Compiled, Scan, choose, compile_filter, regexes, scan_filter, term_count, uses_original
from query.timing import span
from storage.catalog import Catalog, SegmentRow
from storage.root import DataRoot, SegmentFooter
from storage.schema import ORIGINAL_COLUMNS
from storage.tokens import FooterCache, SegmentIndex

#: The time range of a request as SQL: two bound epoch microseconds, start inclusive.
RANGE_SQL = "ts >= make_timestamptz(?::BIGINT) AND ts < make_timestamptz(?::BIGINT)"

#: When the running request's wait for a slot ends (time.monotonic()), set by whatever admitted it
#: (the HTTP API's QueryGate), so a request never waits more than queue_timeout_s in all.
queue_deadline: ContextVar[float | None] = ContextVar("queue_deadline", default=None)

#: When the running request's query work must end (time.monotonic()): query.timeout_s after its first
#: slot was taken (or its Loki request began). Planning stops there and every statement is interrupted
#: there, so a request of many statements, or a slow plan, has the limit once and not per statement.
query_deadline: ContextVar[float | None] = ContextVar("query_deadline", default=None)

#: How often the watchdog interrupts a statement again once past its limit: an interrupt that lands
#: while DuckDB is still binding the statement is lost (it clears the flag when execution begins), and
#: such a statement ran to its end, seconds past the limit, on a loaded machine.
_INTERRUPT_AGAIN_S = 0.05
#: How many regular expressions known to compile a runner remembers.
_KNOWN_REGEXES = 4096


class Watchdog:
    """One thread that calls each armed function at its deadline, and again every ``_INTERRUPT_AGAIN_S``
    after, until it is disarmed: the time limit of every statement. (A ``threading.Timer`` per
    statement started a thread each time, about 2 ms of a 10 ms search on a busy machine, measured.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], object]]] = []     # a heap by deadline
        self._armed: set[int] = set()
        self._next = 0
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, fn: Callable[[], object]) -> int:
        """Call ``fn`` in ``seconds`` unless :meth:`disarm` is called with the token returned first."""
        deadline = time.monotonic() + seconds
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="loglake-query-watchdog", daemon=True)
                self._thread.start()
            self._next += 1
            token = self._next
            earliest = self._due[0][0] if self._due else None
            heapq.heappush(self._due, (deadline, token, fn))
            self._armed.add(token)
            if earliest is None or deadline < earliest:
                self._cond.notify()     # otherwise the thread wakes up earlier anyway
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.discard(token)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._due and self._due[0][1] not in self._armed:
                    heapq.heappop(self._due)
                if not self._due:
                    self._cond.wait()
                    continue
                deadline, token, fn = self._due[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heapreplace(self._due, (time.monotonic() + _INTERRUPT_AGAIN_S, token, fn))
                # Under the lock: a disarm that comes after returns only once this call is done, so
                # an interrupt can never reach a later statement of the same cursor.
                fn()


@dataclass(frozen=True)
class Plan:
    """What one request reads and the condition it applies, both worked out once per request."""

    scan: Scan
    #: The query's WHERE condition; every statement of the request reuses it.
    where: Compiled
    #: Whether the condition reads the original line's columns.
    original: bool = False
    #: Whether a segment's file has the original line's columns (from its footer).
    has_original: Callable[[SegmentRow], bool] = lambda seg: False
    #: The condition split into what each file's scan evaluates and what is left above it.
    split: tuple[Compiled | None, Compiled] = (None, Compiled("TRUE"))

    def relation(self, *, original: bool = False) -> Compiled:
        """The planned data as a FROM-clause relation; with the original line's columns when the
        condition needs them or ``original`` asks for them (a projection that shows them)."""
        original = original or self.original
        every = original and all(self.has_original(seg) for seg in self.scan.segments)
        return self.scan.relation(original=original, every_file_has_original=every)

    def filtered(self, *, original: bool = False, scan: Scan | None = None) -> tuple[Compiled, Compiled]:
        """The planned data (or ``scan``, a part of it) as a relation that applies the condition
        inside each file's scan where it can (:func:`query.planner.scan_filter`,
        :meth:`Scan.relation`), and the rest of the condition to apply above it (TRUE when nothing
        is left). All of it stays above where the condition reads the original line and a file was
        written before those columns existed."""
        scan = self.scan if scan is None else scan
        original = original or self.original
        every = original and all(self.has_original(seg) for seg in self.scan.segments)
        inside, rest = self.split
        if inside is None or (self.original and not every):
            return scan.relation(original=original, every_file_has_original=every), self.where
        return scan.relation(original=original, every_file_has_original=every, where=inside), rest


class QueryRunner:
    """One data root's DuckDB session (a cursor per thread) with the query limits around it."""

    def __init__(self, cfg: Config, catalog: Catalog) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.root = DataRoot.from_config(cfg.storage)
        self.db = duckdb.connect(config={"autoinstall_known_extensions": False,
                                         "autoload_known_extensions": False})
        q = cfg.query
        self.db.execute("SET TimeZone = 'UTC'")
        self.db.execute(f"SET threads = {int(q.threads)}")
        self.db.execute("SET memory_limit = ?", [q.memory_limit])
        # Segments are immutable: parse each footer once, not on every query.
        self.db.execute("SET parquet_metadata_cache = true")
        # Queries may read the data root and nothing else, and never another host.
        self.root.configure_duckdb(self.db)
        self.db.execute("SET lock_configuration = true")
        self._local = threading.local()
        #: Interrupts a statement still running at the time limit.
        self.watchdog = Watchdog()
        #: The concurrency limit: one slot per running request.
        self.slots = threading.BoundedSemaphore(q.max_concurrent)
        self._footers: FooterCache[SegmentFooter | None] = FooterCache()
        #: Regular expressions RE2 compiled before (a pattern compiles or not, once and for all): a
        #: dashboard's queries repeat theirs every refresh. Oldest first, at most _KNOWN_REGEXES.
        self._compiled: dict[str, None] = {}
        self._compiled_lock = threading.Lock()
        self.metrics = QueryMetrics()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the shared database."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self.db.cursor()
        return cur

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of ``max_concurrent`` slots; TooManyQueries if none frees before the deadline."""
        deadline = queue_deadline.get()
        wait = self.cfg.query.queue_timeout_s if deadline is None else max(0.0, deadline - time.monotonic())
        if not self.slots.acquire(timeout=wait):
            raise TooManyQueries(f"all {self.cfg.query.max_concurrent} query slots are busy; retry shortly")
        try:
            with self.time_limit():
                yield
        finally:
            self.slots.release()

    @contextmanager
    def time_limit(self) -> Iterator[None]:
        """The request's time limit, ``query.timeout_s`` from now; set by the outermost call only."""
        if query_deadline.get() is not None:
            yield
            return
        token = query_deadline.set(time.monotonic() + self.cfg.query.timeout_s)
        try:
            yield
        finally:
            query_deadline.reset(token)

    def in_time(self) -> float:
        """Seconds left of the request's time limit (the whole limit outside one); QueryTimeout if none."""
        deadline = query_deadline.get()
        if deadline is None:
            return self.cfg.query.timeout_s
        left = deadline - time.monotonic()
        if left <= 0:
            raise QueryTimeout(f"query interrupted after {self.cfg.query.timeout_s:g} s")
        return left

    def run(self, sql: str, params: list[Any]) -> pa.Table:
        """Run on this thread's cursor, interrupted at the time limit."""
        cur = self.cursor()
        token = self.watchdog.arm(self.in_time(), cur.interrupt)
        try:
            with span("duckdb"):
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
            self.watchdog.disarm(token)

    def _footer(self, seg: SegmentRow) -> SegmentFooter | None:
        hit, footer = self._footers.get(seg.path)
        if not hit:
            try:
                footer = self.root.read_footer(seg.path)
            except (OSError, ValueError):
                footer = None   # unreadable footer: scan the segment whole, as before the index
            self._footers.put(seg.path, footer)
        return footer

    def _index(self, seg: SegmentRow) -> SegmentIndex | None:
        footer = self._footer(seg)
        return footer.index if footer is not None else None

    def _has_original(self, seg: SegmentRow) -> bool:
        """Whether the segment's file has the original line's columns (those written before do not)."""
        footer = self._footer(seg)
        return footer is not None and footer.columns.issuperset(ORIGINAL_COLUMNS)

    def check_regexes(self, node: Node) -> None:
        """Refuse a regular expression DuckDB's RE2 cannot compile, before any reading."""
        patterns = [p for p in dict.fromkeys(regexes(node)) if p not in self._compiled]
        if not patterns:
            return
        # One statement for all of them, within the time limit (a statement each took 100 ms for a
        # hundred, outside it); only when it fails is each tried alone, to name the one at fault.
        try:
            self.run("SELECT " + ", ".join(["regexp_matches('', ?)"] * len(patterns)), patterns)
        except QueryTimeout:
            raise
        except (QueryError, duckdb.Error):
            for pattern in patterns:
                try:
                    self.cursor().execute("SELECT regexp_matches('', ?)", [pattern])
                except duckdb.Error as e:
                    raise QueryError(f"invalid regular expression /{pattern}/: {e}") from None
        with self._compiled_lock:
            for pattern in patterns:
                self._compiled[pattern] = None
            while len(self._compiled) > _KNOWN_REGEXES:
                del self._compiled[next(iter(self._compiled))]

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

    def plan(self, node: Node, tenant: str, start_us: int, end_us: int,
             segments: list[SegmentRow] | None = None) -> Plan:
        """The data to read for ``node`` and its compiled condition; refused over the limits."""
        terms, limit = term_count(node), self.cfg.query.max_query_terms
        if terms > limit:
            raise QueryError(f"the query has {terms} terms; the limit is {limit} (query.max_query_terms)")
        with span("plan"):
            self.check_regexes(node)
            where = compile_filter(node)     # unknown fields and bad values are refused before any reading
        if segments is None:
            with span("catalog"):
                segments = self.catalog.segments(tenant, start_us, end_us)
        with span("plan"):
            scan = choose(node, segments, self.root.url, self._index)
        if scan.bytes_scanned > self.cfg.query.max_scan_bytes:
            raise ScanTooLarge(scan.bytes_scanned, self.cfg.query.max_scan_bytes)
        self.metrics.scanned(scan)
        return Plan(scan, where, uses_original(node), self._has_original, scan_filter(node, where))

    def select(self, node: Node | None, start_us: int, end_us: int, tenant: str, select: str,
               tail: str, select_params: list[Any], tail_params: list[Any], *,
               original: bool = False) -> tuple[pa.Table | None, Scan]:
        """``SELECT select FROM <the planned data> WHERE <range and node> tail`` in a slot; None if
        nothing is to be read. ``original``: ``select`` reads the original line's columns."""
        node = node or MatchAll()
        with self.slot():
            plan = self.plan(node, tenant, start_us, end_us)
            if plan.scan.empty:
                return None, plan.scan
            source, cond = plan.filtered(original=original)
            sql = f"SELECT {select} FROM {source.sql} AS logs WHERE {RANGE_SQL} AND ({cond.sql}) {tail}"
            return self.run(sql, [*select_params, *source.params, start_us, end_us, *cond.params,
                                  *tail_params]), plan.scan
