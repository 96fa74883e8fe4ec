"""query: the five queries of the query issue; baselines ClickHouse (chdb) and a full DuckDB scan.

q1 needle token over the day; q2 one service, level error, one hour, newest
100; q3 count per 5 minutes by level over the day; q4 top 10 services by
errors; q5 case-insensitive substring in 6 hours. Every answer is checked
against the corpus truth, for loglake and for each baseline.

The corpus is shipped and ingested by the real pipeline, then compacted as
`loglake maintain` would (a copy, with the default compaction settings):
the steady state of a day of logs. All five go through the search service
(`search` and `aggregate`), as the HTTP API calls them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import duckdb

from benchmarks.clickhouse import ClickHouse
from benchmarks.corpus import NEEDLE, Q2_HOUR, Q2_LEVEL, Q2_SERVICE, Q5_HOURS, Q5_START_HOUR, SUBSTRING, Truth
from benchmarks.harness import Result, interleaved
from benchmarks.pipeline import WORK, store
from loglake.core.config import CompactionConfig, Config
from query.planner import literal_regex
from query.service import SearchService
from query.timerange import format_us, parse_time_us
from storage.catalog import Catalog
from storage.compaction import collect_garbage, compact
from storage.root import DataRoot

_HOUR = 3_600_000_000


def _ch_time(us: int) -> str:
    return f"fromUnixTimestamp64Micro({us}, 'UTC')"


class Engines:
    """The same five questions asked of loglake, ClickHouse and a DuckDB full scan."""

    def __init__(self, service: SearchService, ch: ClickHouse, all_files: list[str], truth: Truth) -> None:
        self.svc, self.ch, self.files, self.t = service, ch, all_files, truth
        self.day = (truth.day_start_us, truth.day_start_us + 24 * _HOUR)
        self.scan = duckdb.connect()
        self.scan.execute("SET TimeZone = 'UTC'")
        self.scan.execute(f"SET threads = {service.cfg.query.threads}")

    # -- loglake: the search service, as the HTTP API calls it

    def ours(self, q: str) -> Any:
        lo, hi = self.day
        if q == "q1":
            return [r["ts"] for r in self.svc.search(NEEDLE, format_us(lo), format_us(hi), limit=100).rows]
        if q == "q2":
            s = lo + Q2_HOUR * _HOUR
            rows = self.svc.search(f"service:{Q2_SERVICE} level:{Q2_LEVEL}", format_us(s), format_us(s + _HOUR),
                                   limit=100).rows
            return [parse_time_us(r["ts"]) for r in rows]
        if q == "q3":
            a = self.svc.aggregate("", format_us(lo), format_us(hi), interval="5m", by=["level"], top=10)
            return [(b, s.group["level"], n) for s in a.series for b, n in zip(a.buckets, s.points, strict=True) if n]
        if q == "q4":
            a = self.svc.aggregate("level:error", format_us(lo), format_us(hi), interval="1d", by=["service"], top=10)
            return [(s.group["service"], s.total) for s in sorted(
                (s for s in a.series if not s.other), key=lambda s: (-(s.total or 0), s.group["service"]))]
        s = lo + Q5_START_HOUR * _HOUR
        return [r["ts"] for r in self.svc.search(SUBSTRING.lower(), format_us(s), format_us(s + Q5_HOURS * _HOUR),
                                                 limit=10_000).rows]

    # -- ClickHouse, token index on lower(message), caches off

    def clickhouse(self, q: str) -> Any:
        lo, hi = self.day
        settings = " SETTINGS use_query_cache = 0, use_query_condition_cache = 0, max_threads = 2"
        rng = f"ts >= {_ch_time(lo)} AND ts < {_ch_time(hi)}"
        if q == "q1":
            return self.ch.rows(f"SELECT * FROM bench.logs WHERE hasToken(lower(message), '{NEEDLE.lower()}') AND "
                                f"{rng} ORDER BY ts DESC LIMIT 100{settings}")
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


def compacted(lines: int) -> Config:
    """A compacted copy of the stored corpus (the stored one is shared with other suites)."""
    _, _, cfg = store(lines)
    work = WORK / f"query-{lines}"
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
    return cfg.model_copy(update={"storage": cfg.storage.model_copy(
        update={"data_root": str(work), "catalog_url": f"sqlite:///{work / 'catalog.sqlite'}"})})


def run(lines: int, repetitions: int = 7) -> Result:
    _, truth, _ = store(lines)
    cfg = compacted(lines)
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    service = SearchService(cfg, catalog)
    all_files = [f"{service.root.url}/{s.path}" for s in catalog.segments("default", 0, 1 << 62)]
    ch = ClickHouse(WORK / "chdb-query")
    ch.load(f"{cfg.storage.data_root}/tenant=default/**/*.parquet", token_index=True)
    eng = Engines(service, ch, all_files, truth)
    r = Result("query", lines)
    for q in ("q1", "q2", "q3", "q4", "q5"):
        for name, fn in (("loglake", eng.ours), ("clickhouse", eng.clickhouse), ("full_scan", eng.full_scan)):
            ok, detail = _answer_ok(q, fn(q), truth)
            r.check(f"{q}.{name}", ok, detail)
        mine, theirs, ratios = interleaved(
            _timer(eng.ours, q),
            {"clickhouse": _timer(eng.clickhouse, q), "full_scan": _timer(eng.full_scan, q)},
            repetitions=repetitions, warmup=1)
        r.metrics[f"query.{q}.p50_ms"] = mine.median
        r.metrics[f"query.{q}.spread"] = mine.spread
        r.baselines[f"clickhouse.{q}.p50_ms"] = theirs["clickhouse"].median
        r.baselines[f"full_scan.{q}.p50_ms"] = theirs["full_scan"].median
        r.ratios[f"query.{q}.p50_ms.vs_clickhouse"] = ratios["clickhouse"].median
        r.ratios[f"query.{q}.p50_ms.vs_full_scan"] = ratios["full_scan"].median
    ch.close()
    segs = catalog.live_segments("default")
    catalog.close()
    r.metrics["query.segments"] = len(segs)
    r.notes.append(f"data: {truth.lines:,} records stored by the pipeline, then compacted: {len(segs)} segments, "
                   f"{sum(s.bytes for s in segs) / 1e6:,.0f} MB. loglake: every query through the search "
                   "service (search for q1, q2, q5; aggregate for q3, q4), rows turned into JSON-ready dicts. "
                   "full_scan: DuckDB over every segment, no catalog, no index. q1, q2 and q5 return whole rows in "
                   "all three engines (SELECT *), as a search does. ClickHouse: chdb MergeTree "
                   "ORDER BY (service, ts) with a "
                   "tokenbf_v1 index on lower(message), query cache and condition cache off, max_threads 2; "
                   "DuckDB threads 2. Warm page cache; median of 7 interleaved runs after one warm-up.")
    return r
