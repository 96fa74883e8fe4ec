"""ingest: a pre-filled topic to stored segments on one core; baseline DuckDB's own COPY to Parquet."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from pathlib import Path

import duckdb

from benchmarks.harness import Result, interleaved
from benchmarks.pipeline import WORK, broker, config, corpus, ingest_until, ship_once
from storage.catalog import Catalog

_runs = itertools.count()


def _ours(address: str, logs: Path, rows: int, raw_bytes: int, out: dict[str, float]) -> float:
    work = WORK / f"ingest-run-{next(_runs)}"
    shutil.rmtree(work, ignore_errors=True)
    # A fresh data root and consumer group: every run ingests the whole topic.
    cfg = config(work, address, "bench.ingest", [str(logs / "*.log")],
                 ingest={"group_id": f"bench-ingest-{work.name}"})
    run = asyncio.run(ingest_until(cfg, rows))
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    totals = catalog.totals()
    catalog.close()
    out.update(rows=totals["rows"], segment_bytes=totals["bytes"], segments=totals["segments"],
               seconds=run.seconds)
    shutil.rmtree(work, ignore_errors=True)
    return raw_bytes / run.seconds / 1e6


def _duckdb_copy(logs: Path, raw_bytes: int) -> float:
    """DuckDB reading the same records and writing zstd Parquet, one thread.

    JSON records go through ``read_json`` (typed columns); every other line is
    copied as one text column, unparsed, which flatters the baseline.
    """
    out = WORK / f"duckdb-copy-{next(_runs)}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from benchmarks.corpus import SERVICES

    json_files = [str(logs / f"{name}.log") for name, kind in SERVICES if kind == "json"]
    text_files = [str(logs / f"{name}.log") for name, kind in SERVICES if kind != "json"]
    con = duckdb.connect()
    con.execute("SET threads = 1")
    t0 = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM read_json(?, format = 'newline_delimited')) TO '{out}/json.parquet' "
                "(FORMAT parquet, COMPRESSION zstd)", [json_files])
    con.execute(f"COPY (SELECT line FROM read_csv(?, columns = {{'line': 'VARCHAR'}}, delim = '\x1f', quote = '', "
                f"escape = '', header = false)) TO '{out}/text.parquet' (FORMAT parquet, COMPRESSION zstd)",
                [text_files])
    seconds = time.perf_counter() - t0
    con.close()
    shutil.rmtree(out, ignore_errors=True)
    return raw_bytes / seconds / 1e6


def run(lines: int, repetitions: int = 3) -> Result:
    logs, truth = corpus(lines)
    stats: dict[str, float] = {}
    with broker(cores={0}) as address:
        prefill = config(WORK / "ingest-prefill", address, "bench.ingest", [str(logs / "*.log")])
        shutil.rmtree(WORK / "ingest-prefill", ignore_errors=True)
        asyncio.run(ship_once(prefill))
        os.sched_setaffinity(0, {1})     # the worker gets one core; the broker the other
        mine, theirs, ratios = interleaved(
            lambda: _ours(address, logs, truth.physical_lines, truth.raw_bytes, stats),
            {"duckdb_copy": lambda: _duckdb_copy(logs, truth.raw_bytes)},
            repetitions=repetitions, warmup=1)
    r = Result("ingest", lines)
    r.metrics = {
        "ingest.mb_per_s": mine.median, "ingest.mb_per_s.spread": mine.spread,
        "ingest.records_per_s": mine.median * 1e6 / truth.raw_bytes * truth.physical_lines,
        "ingest.input_mb": truth.raw_bytes / 1e6, "ingest.segment_mb": stats["segment_bytes"] / 1e6,
        "ingest.segments": stats["segments"],
    }
    r.baselines = {"duckdb_copy.mb_per_s": theirs["duckdb_copy"].median,
                   "duckdb_copy.mb_per_s.spread": theirs["duckdb_copy"].spread}
    r.ratios = {"ingest.mb_per_s.vs_duckdb_copy": ratios["duckdb_copy"].median}
    r.check("every record stored exactly once", stats["rows"] == truth.physical_lines,
            f"{stats['rows']} rows for {truth.physical_lines} lines")
    r.notes.append("One worker pinned to one core (DuckDB threads=1), the broker on the other; timed from "
                   "partition assignment to the commit of the last row. Multi-line stack traces are stored "
                   "one row per physical line until the shipper joins them.")
    return r
