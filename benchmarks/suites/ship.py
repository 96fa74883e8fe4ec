"""ship: files -> broker throughput; baseline a plain librdkafka producer, one message per line."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from pathlib import Path

from benchmarks.harness import Result, interleaved
from benchmarks.pipeline import WORK, broker, config, corpus, ship_once

_runs = itertools.count()


def _ours(logs: Path, raw_bytes: int, lines_out: dict[str, int]) -> float:
    work = WORK / f"ship-run-{next(_runs)}"
    shutil.rmtree(work, ignore_errors=True)
    with broker(cores={0}) as address:
        cfg = config(work, address, "bench.ship", [str(logs / "*.log")])
        t0 = time.perf_counter()
        stats = asyncio.run(ship_once(cfg))
        seconds = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    lines_out["ours"] = stats["lines"]
    return raw_bytes / seconds / 1e6


def _librdkafka(logs: Path, raw_bytes: int, lines_out: dict[str, int]) -> float:
    from confluent_kafka import Producer  # the baseline, installed with the bench extra

    with broker(cores={0}) as address:
        asyncio.run(_create(address))
        producer = Producer({"bootstrap.servers": address, "compression.type": "lz4", "acks": "all"})
        sent = 0
        t0 = time.perf_counter()
        for path in sorted(logs.glob("*.log")):
            with open(path, "rb") as f:
                for line in f:
                    while True:
                        try:
                            producer.produce("bench.ship", line[:-1])
                            break
                        except BufferError:
                            producer.poll(0.01)
                    sent += 1
                    if sent % 10_000 == 0:
                        producer.poll(0)
        left = producer.flush(120)
        seconds = time.perf_counter() - t0
        del producer    # closed before its broker goes away
    if left:
        raise RuntimeError(f"librdkafka left {left} messages undelivered")
    lines_out["librdkafka"] = sent
    return raw_bytes / seconds / 1e6


async def _create(address: str) -> None:
    from loglake.core.config import KafkaConfig
    from loglake.core.topics import ensure_topic

    await ensure_topic(KafkaConfig(bootstrap_servers=address, topic="bench.ship", partitions=3))


def run(lines: int, repetitions: int = 3) -> Result:
    logs, truth = corpus(lines)
    os.sched_setaffinity(0, {1})     # the client side gets one core; the broker the other
    counts: dict[str, int] = {}
    mine, theirs, ratios = interleaved(
        lambda: _ours(logs, truth.raw_bytes, counts),
        {"librdkafka": lambda: _librdkafka(logs, truth.raw_bytes, counts)},
        repetitions=repetitions, warmup=1)
    r = Result("ship", lines)
    mb = truth.raw_bytes / 1e6
    r.metrics = {"ship.mb_per_s": mine.median, "ship.mb_per_s.spread": mine.spread,
                 "ship.lines_per_s": mine.median * 1e6 / truth.raw_bytes * truth.physical_lines,
                 "ship.input_mb": mb}
    r.baselines = {"librdkafka.mb_per_s": theirs["librdkafka"].median,
                   "librdkafka.mb_per_s.spread": theirs["librdkafka"].spread}
    r.ratios = {"ship.mb_per_s.vs_librdkafka": ratios["librdkafka"].median}
    r.check("every line shipped", counts.get("ours") == truth.physical_lines,
            f"{counts.get('ours')} of {truth.physical_lines}")
    r.check("every line produced by the baseline", counts.get("librdkafka") == truth.physical_lines,
            f"{counts.get('librdkafka')} of {truth.physical_lines}")
    r.notes.append("Both sides in this process, one core for the client (the broker pinned to core 0); "
                   "each run on a fresh in-memory broker; acks=all, lz4.")
    return r
