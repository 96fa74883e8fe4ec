"""patterns: accuracy of the pattern miner on Loghub, and its speed over a lake.

Accuracy: grouping accuracy (Zhu et al., ICSE-SEIP 2019) of each Loghub sample's 2,000 messages
mined as the query service mines them (``mine_messages``: the masking SQL in DuckDB, then Drain),
against the labelled events; skipped, with a note, when ``../shared/data/loghub`` is absent.

Speed: ``mine_messages`` over 100,000 Loghub messages (the ten samples, five times over), split
into DuckDB's masking and counting and Drain's part; then ``PatternMiner.mine`` over the corpus
shipped and ingested by the real pipeline (cached under the bench work directory, as the query
suite's): every service over the whole day and over six hours, cold and again (the segments lying
inside the range come from the per-segment cache), and one service over the last 15 minutes of
the day, as Grafana's Logs Drilldown first asks. Each is checked: the samples add up to the rows
the range holds (counted by a plain DuckDB scan; for the day also the corpus's physical lines, one
row each as this pipeline stores them).
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pyarrow as pa

from benchmarks.harness import Result
from benchmarks.pipeline import store
from query.language import MatchAll, Node, Term
from query.patterns.drain import Drain
from query.patterns.mask import mask_sql
from query.patterns.miner import PatternMiner, mine_messages
from query.service import SearchService
from storage.catalog import Catalog

_HOUR = 3_600_000_000
_MINUTE = 60_000_000


def _loghub() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "loghub"


def _accuracy(result: Result) -> list[str]:
    """GA per system; the messages of all ten (for the speed figures), or [] without the data."""
    import csv
    from collections import defaultdict

    root = _loghub()
    systems = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not systems:
        result.notes.append(f"loghub data not found under {root}: accuracy not measured")
        return []
    everything: list[str] = []
    scores = []
    for system in systems:
        with (root / system / f"{system}_2k.log_structured.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        messages = [r["Content"] for r in rows]
        everything += messages
        mined = mine_messages(messages)
        groups: dict[str, set[int]] = defaultdict(set)
        events: dict[str, set[int]] = defaultdict(set)
        for i, (g, r) in enumerate(zip(mined, rows, strict=True)):
            groups[g].add(i)
            events[r["EventId"]].add(i)
        right = sum(len(m) for m in groups.values() if events[rows[next(iter(m))]["EventId"]] == m)
        ga = right / len(rows)
        scores.append(ga)
        result.metrics[f"ga_{system.lower()}"] = ga
    result.metrics["ga_average"] = sum(scores) / len(scores)
    return everything


def _mining_speed(result: Result, messages: list[str]) -> None:
    lines = (messages * (100_000 // len(messages) + 1))[:100_000]
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.register("m", pa.table({"message": pa.array(lines, pa.string())}))
    t0 = time.perf_counter()
    counted = con.execute(f"SELECT {mask_sql('message')} AS masked, count(*) AS n FROM m GROUP BY ALL").fetchall()
    t1 = time.perf_counter()
    Drain().train((m, n) for m, n in counted)
    t2 = time.perf_counter()
    whole = time.perf_counter()
    mine_messages(lines)
    result.metrics["mask_count_s_per_100k_lines"] = t1 - t0
    result.metrics["drain_s_per_100k_lines"] = t2 - t1
    result.metrics["distinct_masked_per_100k_lines"] = float(len(counted))
    result.metrics["mine_messages_s_per_100k_lines"] = time.perf_counter() - whole


def run(lines: int) -> Result:
    result = Result("patterns", lines)
    messages = _accuracy(result)
    if messages:
        _mining_speed(result, messages)

    _, truth, cfg = store(lines)
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    service = SearchService(cfg, catalog)
    miner = PatternMiner(service.runner)
    day = (truth.day_start_us, truth.day_start_us + 24 * _HOUR)
    biggest = max(truth.per_service, key=lambda s: truth.per_service[s])

    def timed(name: str, node: Node, lo: int, hi: int, step: int) -> int:
        t0 = time.perf_counter()
        mined = miner.mine(node, "default", lo, hi, step, lines=True)
        result.metrics[f"{name}_s"] = time.perf_counter() - t0
        result.metrics[f"{name}_patterns"] = float(len(mined.patterns))
        return sum(p.total for p in mined.patterns)

    def count(node_sql: str, params: list[object], lo: int, hi: int) -> int:
        files = [f"{service.root.url}/{s.path}" for s in catalog.segments("default", lo, hi)]
        if not files:
            return 0
        row = service.runner.cursor().execute(
            f"SELECT count(*) FROM read_parquet(?) WHERE ts >= make_timestamptz(?::BIGINT) "
            f"AND ts < make_timestamptz(?::BIGINT) AND {node_sql}", [files, lo, hi, *params]).fetchone()
        return int(row[0]) if row else 0

    everything = MatchAll()
    n = timed("day_all_cold", everything, *day, 5 * _MINUTE)
    stored = count("TRUE", [], *day)
    result.check("day_all_counts_every_line", n == stored == truth.physical_lines,
                 f"{n} counted, {stored} stored, {truth.physical_lines} lines shipped")
    timed("day_all_again", everything, *day, 5 * _MINUTE)
    six = (day[0] + 12 * _HOUR + 7 * _MINUTE, day[0] + 18 * _HOUR + 7 * _MINUTE)
    n = timed("six_hours_cold", everything, *six, 2 * _MINUTE)
    result.check("six_hours_counts_every_line", n == count("TRUE", [], *six), f"{n} counted")
    timed("six_hours_again", everything, *six, 2 * _MINUTE)
    one = Term("service", biggest, "phrase")
    last = (day[1] - 15 * _MINUTE, day[1])
    n = timed("one_service_15m", one, *last, 10_000_000)
    result.check("one_service_15m_counts_every_line", n == count("service = ?", [biggest], *last), f"{n} counted")
    result.notes.append(f"one service: {biggest}; the day has {len(catalog.segments('default', *day))} segments "
                        f"(as ingested, not compacted); cache {miner.cache.hits} hits, {miner.cache.misses} misses")
    catalog.close()
    return result
