"""query: the five queries of the query issue, over HTTP; baselines ClickHouse (chdb) and a full DuckDB scan.

q1 needle token over the day; q2 one service, level error, one hour, newest
100; q3 count per 5 minutes by level over the day; q4 top 10 services by
errors; q5 case-insensitive substring in 6 hours. Every answer is checked
against the corpus truth, for loglake and for each baseline.

Two corpus shapes (``benchmarks.pipeline.SHAPES``): ``mixed`` (JSON, nginx,
Java and syslog lines: benchmarks/corpus.py) and ``app`` (JSON application
logs, the shape of issue 26: benchmarks/app_corpus.py). Each is shipped and
ingested by the real pipeline, then compacted as `loglake maintain` would (a
copy, with the default compaction settings): the steady state of a day of
logs. loglake is asked as users ask it: `loglake serve` runs over the lake as
a real process on loopback, and each query is an HTTP request
(`/api/v1/search`, `/api/v1/aggregate`) from one keep-alive httpx client,
timed until its JSON answer is read and decoded.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import duckdb
import httpx
import orjson

from benchmarks.clickhouse import ClickHouse
from benchmarks.corpus import NEEDLE, Q2_HOUR, Q2_LEVEL, Q2_SERVICE, Q5_HOURS, Q5_START_HOUR, SUBSTRING, Truth
from benchmarks.harness import Result, interleaved
from benchmarks.pipeline import SHAPES, WORK, serve, serve_config, store
from loglake.core.config import CompactionConfig, Config
from query.planner import literal_regex
from query.timerange import format_us, parse_time_us
from storage.catalog import Catalog
from storage.compaction import collect_garbage, compact
from storage.maintenance import fill_counts
from storage.root import DataRoot

_HOUR = 3_600_000_000
QUERIES = ("q1", "q2", "q3", "q4", "q5")
#: ClickHouse's q1: the needle as a token of lower(message), so that its tokenbf_v1 index on
#: lower(message) applies (checked with EXPLAIN indexes = 1 in every run).
CH_Q1_WHERE = f"hasToken(lower(message), '{NEEDLE.lower()}')"


def _ch_time(us: int) -> str:
    return f"fromUnixTimestamp64Micro({us}, 'UTC')"


class Engines:
    """The same five questions asked of loglake (over HTTP), ClickHouse and a DuckDB full scan."""

    def __init__(self, url: str, ch: ClickHouse, all_files: list[str], truth: Truth, threads: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=120)
        self.ch, self.files, self.t = ch, all_files, truth
        self.day = (truth.day_start_us, truth.day_start_us + 24 * _HOUR)
        self.scan = duckdb.connect()
        self.scan.execute("SET TimeZone = 'UTC'")
        self.scan.execute(f"SET threads = {threads}")

    def close(self) -> None:
        self.http.close()
        self.scan.close()

    # -- loglake: `loglake serve` over HTTP, as users ask it

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        r = self.http.get(path, params=params)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path} {params}: HTTP {r.status_code} {r.text[:500]}")
        return orjson.loads(r.content)

    def _search(self, q: str, lo: int, hi: int, limit: int) -> Any:
        return self._get("/api/v1/search", {"q": q, "start": format_us(lo), "end": format_us(hi), "limit": limit})

    def ours(self, q: str) -> Any:
        """The decoded JSON answer: what is timed (a user's client has it then)."""
        lo, hi = self.day
        if q == "q1":
            return self._search(NEEDLE, lo, hi, 100)
        if q == "q2":
            s = lo + Q2_HOUR * _HOUR
            return self._search(f"service:{Q2_SERVICE} level:{Q2_LEVEL}", s, s + _HOUR, 100)
        if q == "q3":
            return self._get("/api/v1/aggregate", {"q": "", "start": format_us(lo), "end": format_us(hi),
                                                   "interval": "5m", "by": "level", "top": 10})
        if q == "q4":
            return self._get("/api/v1/aggregate", {"q": "level:error", "start": format_us(lo), "end": format_us(hi),
                                                   "interval": "1d", "by": "service", "top": 10})
        s = lo + Q5_START_HOUR * _HOUR
        return self._search(SUBSTRING.lower(), s, s + Q5_HOURS * _HOUR, 10_000)

    @staticmethod
    def ours_answer(q: str, body: Any) -> Any:
        """The answer in an answer check's terms (times as epoch microseconds), outside the timing:
        ClickHouse's SQL gives them so itself."""
        if q in ("q1", "q5"):
            return [r["ts"] for r in body["rows"]]
        if q == "q2":
            return [parse_time_us(r["ts"]) for r in body["rows"]]
        if q == "q3":
            buckets = [parse_time_us(b) for b in body["buckets"]]
            return [(b, s["group"]["level"], n) for s in body["series"]
                    for b, n in zip(buckets, s["points"], strict=True) if n]
        return [(s["group"]["service"], s["total"]) for s in sorted(
            (s for s in body["series"] if not s["other"]), key=lambda s: (-(s["total"] or 0), s["group"]["service"]))]

    # -- ClickHouse, token index on lower(message), caches off

    def clickhouse(self, q: str) -> Any:
        lo, hi = self.day
        settings = " SETTINGS use_query_cache = 0, use_query_condition_cache = 0, max_threads = 2"
        rng = f"ts >= {_ch_time(lo)} AND ts < {_ch_time(hi)}"
        if q == "q1":
            return self.ch.rows(f"SELECT * FROM bench.logs WHERE {CH_Q1_WHERE} AND {rng} "
                                f"ORDER BY ts DESC LIMIT 100{settings}")
        if q == "q2":
            s = lo + Q2_HOUR * _HOUR
            rows = self.ch.rows(f"SELECT toUnixTimestamp64Micro(ts), * FROM bench.logs WHERE service = '{Q2_SERVICE}' "
                                f"AND level = '{Q2_LEVEL}' AND ts >= {_ch_time(s)} AND ts < {_ch_time(s + _HOUR)} "
                                f"ORDER BY ts DESC LIMIT 100{settings}")
            return [int(r[0]) for r in rows]
        if q == "q3":
            return self.ch.rows(f"SELECT toUnixTimestamp64Micro(toDateTime64(toStartOfFiveMinutes(ts), 6, 'UTC')), "
                                f"level, count() FROM bench.logs WHERE {rng} GROUP BY ALL{settings}")
        if q == "q4":
            return self.ch.rows(f"SELECT service, count() c FROM bench.logs WHERE {rng} AND level = 'error' "
                                f"GROUP BY service ORDER BY c DESC, service LIMIT 10{settings}")
        s = lo + Q5_START_HOUR * _HOUR
        return self.ch.rows(f"SELECT * FROM bench.logs WHERE positionCaseInsensitive(message, '{SUBSTRING}') > 0 "
                            f"AND ts >= {_ch_time(s)} AND ts < {_ch_time(s + Q5_HOURS * _HOUR)} "
                            f"ORDER BY ts DESC LIMIT 10000{settings}")

    # -- DuckDB over every segment, no catalog and no index, the same predicates and columns as loglake's

    def full_scan(self, q: str) -> Any:
        lo, hi = self.day
        tr = "ts >= make_timestamptz(?::BIGINT) AND ts < make_timestamptz(?::BIGINT)"
        if q == "q1":
            sql, p = (f"SELECT epoch_us(ts), * FROM read_parquet(?) WHERE {tr} AND regexp_matches(message, ?) "
                      "ORDER BY ts DESC LIMIT 100"), [lo, hi, literal_regex(NEEDLE)]
        elif q == "q2":
            s = lo + Q2_HOUR * _HOUR
            sql, p = (f"SELECT epoch_us(ts), * FROM read_parquet(?) WHERE {tr} AND service = ? AND level = ? "
                      "ORDER BY ts DESC LIMIT 100"), [s, s + _HOUR, Q2_SERVICE, Q2_LEVEL]
        elif q == "q3":
            sql, p = (f"SELECT epoch_us(time_bucket(INTERVAL 5 MINUTE, ts)), level, count(*) FROM read_parquet(?) "
                      f"WHERE {tr} GROUP BY ALL"), [lo, hi]
        elif q == "q4":
            sql, p = (f"SELECT service::VARCHAR, count(*) c FROM read_parquet(?) WHERE {tr} AND level = 'error' "
                      "GROUP BY ALL ORDER BY c DESC, 1 LIMIT 10"), [lo, hi]
        else:
            s = lo + Q5_START_HOUR * _HOUR
            sql, p = (f"SELECT epoch_us(ts), * FROM read_parquet(?) WHERE {tr} AND regexp_matches(message, ?) "
                      "ORDER BY ts DESC LIMIT 10000"), [s, s + Q5_HOURS * _HOUR, literal_regex(SUBSTRING)]
        if q in ("q1", "q2", "q5"):
            # Whole rows, as the search returns them (timestamps alone are not an answer).
            first = self.scan.execute(sql, [self.files, *p]).to_arrow_table().column(0).to_pylist()
            return first if q == "q2" else [(t,) for t in first]
        return self.scan.execute(sql, [self.files, *p]).fetchall()


def _answer_ok(q: str, got: Any, t: Truth) -> tuple[bool, str]:
    if q == "q1":
        return len(got) == t.needle_count, f"{len(got)} rows, expected {t.needle_count}"
    if q == "q2":
        return list(got) == t.q2_ts_us, f"{len(got)} timestamps, first {list(got)[:2]}, expected {t.q2_ts_us[:2]}"
    if q == "q3":
        buckets: dict[str, dict[str, int]] = {}
        for b, level, n in got:
            buckets.setdefault(str(int(b)), {})[str(level)] = int(n)
        return buckets == t.q3_buckets, f"{len(buckets)} buckets, expected {len(t.q3_buckets)}"
    if q == "q4":
        pairs = [(str(s), int(n)) for s, n in got]
        return pairs == [tuple(x) for x in t.q4_top_services], f"{pairs[:3]} vs {t.q4_top_services[:3]}"
    return len(got) == t.substring_in_window, f"{len(got)} rows, expected {t.substring_in_window}"


def _ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _timer(engine: Callable[[str], Any], q: str) -> Callable[[], float]:
    """A no-argument timing of one engine on one query, with the query bound now (not looked up at call time)."""
    return lambda: _ms(lambda: engine(q))


def compacted(lines: int, shape: str = "mixed") -> Config:
    """A compacted copy of the stored corpus of ``shape`` (the stored one is shared with other suites)."""
    _, _, cfg = store(lines, shape=shape)
    work = WORK / (f"query-{lines}" if shape == "mixed" else f"query-{shape}-{lines}")
    marker = work / "compacted.json"
    if not marker.exists():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(cfg.storage.data_root, work)
        root = DataRoot(str(work))
        catalog = Catalog(f"sqlite:///{work / 'catalog.sqlite'}")
        t0 = time.perf_counter()
        # As the service leaves a past day: its hours merged, then (settle_s later) settled.
        settings = CompactionConfig(min_age_s=0)
        report = compact(root, catalog, settings)
        compact(root, catalog, settings, now_us=time.time_ns() // 1000 + int(settings.settle_s * 1e6) + 1_000_000)
        collect_garbage(root, catalog, grace_s=0)
        print(f"  query: compacted {report.rows:,} rows in {time.perf_counter() - t0:.0f}s")
        catalog.close()
        marker.write_text("{}")
    # A lake compacted by an older loglake has segments without rows per service and level; the
    # maintenance loop counts them after an upgrade, as here (nothing to do for a lake written now).
    catalog = Catalog(f"sqlite:///{work / 'catalog.sqlite'}")
    filled = fill_counts(DataRoot(str(work)), catalog, limit=1 << 30)
    catalog.close()
    if filled:
        print(f"  query: counted services and levels of {filled} segments recorded before the catalog kept them")
    return cfg.model_copy(update={"storage": cfg.storage.model_copy(
        update={"data_root": str(work), "catalog_url": f"sqlite:///{work / 'catalog.sqlite'}"})})


def ch_q1_uses_index(ch: ClickHouse, truth: Truth) -> tuple[bool, str]:
    """Whether ClickHouse's q1 reads fewer granules thanks to its token index (EXPLAIN indexes = 1)."""
    lo, hi = truth.day_start_us, truth.day_start_us + 24 * _HOUR
    plan = "\n".join(" ".join(r) for r in ch.rows(
        f"EXPLAIN indexes = 1 SELECT * FROM bench.logs WHERE {CH_Q1_WHERE} AND ts >= {_ch_time(lo)} "
        f"AND ts < {_ch_time(hi)}"))
    skip = plan.split("message_tokens", 1)[1] if "message_tokens" in plan else ""
    granules = [line.strip() for line in skip.splitlines() if "Granules:" in line][:1]
    used = bool(granules) and granules[0].split(":", 1)[1].strip().split("/")[0] != \
        granules[0].split(":", 1)[1].strip().split("/")[1]
    return used, f"skip index message_tokens: {granules[0] if granules else 'not in the plan'}"


def run_shape(shape: str, lines: int, r: Result, repetitions: int = 7) -> None:
    """One corpus shape: `loglake serve` over its compacted lake, ClickHouse and the full scan, into ``r``."""
    _, truth, _ = store(lines, shape=shape)
    cfg = compacted(lines, shape)
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    segs = catalog.live_segments("default")
    catalog.close()
    root = DataRoot.from_config(cfg.storage)
    all_files = [f"{root.url}/{s.path}" for s in segs]
    ch = ClickHouse(WORK / f"chdb-query-{shape}")
    ch.load(f"{cfg.storage.data_root}/tenant=default/**/*.parquet", token_index=True)
    used, detail = ch_q1_uses_index(ch, truth)
    r.check(f"{shape}.q1.clickhouse_token_index_used", used, detail)
    r.notes.append(f"{shape}: ClickHouse's q1 plan, {detail}.")
    with serve(serve_config(cfg, WORK / f"query-serve-{shape}-{lines}")) as url:
        eng = Engines(url, ch, all_files, truth, cfg.query.threads)
        try:
            for q in QUERIES:
                for name, fn in (("loglake", lambda q: eng.ours_answer(q, eng.ours(q))),
                                 ("clickhouse", eng.clickhouse), ("full_scan", eng.full_scan)):
                    ok, why = _answer_ok(q, fn(q), truth)
                    r.check(f"{shape}.{q}.{name}", ok, why)
                mine, theirs, ratios = interleaved(
                    _timer(eng.ours, q),
                    {"clickhouse": _timer(eng.clickhouse, q), "full_scan": _timer(eng.full_scan, q)},
                    repetitions=repetitions, warmup=1)
                r.metrics[f"query.{shape}.{q}.p50_ms"] = mine.median
                r.metrics[f"query.{shape}.{q}.spread"] = mine.spread
                r.baselines[f"clickhouse.{shape}.{q}.p50_ms"] = theirs["clickhouse"].median
                r.baselines[f"full_scan.{shape}.{q}.p50_ms"] = theirs["full_scan"].median
                r.ratios[f"query.{shape}.{q}.p50_ms.vs_clickhouse"] = ratios["clickhouse"].median
                r.ratios[f"query.{shape}.{q}.p50_ms.vs_full_scan"] = ratios["full_scan"].median
        finally:
            eng.close()
            ch.close()
    r.metrics[f"query.{shape}.segments"] = len(segs)
    r.notes.append(f"{shape}: {truth.lines:,} records ({truth.raw_bytes / 1e6:,.0f} MB raw) stored by the pipeline, "
                   f"then compacted: {len(segs)} segments, {sum(s.bytes for s in segs) / 1e6:,.0f} MB.")


def run(lines: int, repetitions: int = 7, shapes: tuple[str, ...] = SHAPES) -> Result:
    r = Result("query", lines)
    for shape in shapes:
        run_shape(shape, lines, r, repetitions)
    r.notes.append(
        "loglake: `loglake serve` (uvicorn, the default query settings, auth off) as a real process on loopback; "
        "each query one HTTP request (search for q1, q2, q5; aggregate for q3, q4) from one keep-alive httpx client, "
        "timed until its JSON answer is read and decoded (turning its times into numbers for the answer check is "
        "not timed; ClickHouse's SQL returns numbers). full_scan: DuckDB in this process over every segment, no "
        "catalog, no index. q1, q2 and q5 return whole rows in all three engines (SELECT *), as a search does. "
        "ClickHouse: chdb MergeTree ORDER BY (service, ts), ZSTD(3), with a tokenbf_v1 index on lower(message), q1 "
        f"as {CH_Q1_WHERE} so that index applies (checked by EXPLAIN), query cache and condition cache off, "
        f"max_threads 2; DuckDB threads 2. Warm page cache; median of {repetitions} interleaved rounds after one "
        "warm-up, ratios the medians of the per-round ratios.")
    return r
