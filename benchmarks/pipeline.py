"""Running loglake's real stages in-process for the benchmarks: broker, ship, ingest, store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.app_corpus import generate_app
from benchmarks.corpus import Truth, generate
from ingest.worker import IngestWorker
from loglake.broker import start_broker, stop_process
from loglake.core.config import Config
from loglake.core.topics import ensure_topic
from shippers.shipper import Shipper
from storage.catalog import Catalog

WORK = Path(os.environ.get("LOGLAKE_BENCH_WORK", "/tmp/loglake-bench"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def broker(cores: set[int] | None = None) -> Iterator[str]:
    """A fresh in-memory tansu broker; yields its bootstrap address."""
    address = f"127.0.0.1:{free_port()}"
    proc: subprocess.Popen[bytes] = start_broker(address)
    if cores:
        os.sched_setaffinity(proc.pid, cores)
    try:
        yield address
    finally:
        stop_process(proc)


def config(work: Path, bootstrap: str, topic: str, include: list[str], **sections: dict[str, Any]) -> Config:
    base: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "partitions": 3},
        "shipper": {"include": include, "state_dir": str(work / "shipper"), "host": "bench",
                    "poll_interval_s": 0.01, "max_frame_bytes": 1 << 20},
        "ingest": {"group_id": f"{topic}-ingest", "flush_rows": 1_000_000, "flush_bytes": 256 << 20,
                   "flush_interval_s": 5.0},
        "storage": {"data_root": str(work / "data")},
        "log": {"level": "warning"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Config.model_validate(base)


#: Corpus shapes: ``mixed`` (benchmarks/corpus.py: JSON, nginx, Java, syslog) and ``app`` (benchmarks/app_corpus.py:
#: JSON application logs, the shape of issue 26).
SHAPES = ("mixed", "app")


def _prefix(shape: str) -> str:
    if shape not in SHAPES:
        raise ValueError(f"unknown corpus shape {shape!r}")
    return "" if shape == "mixed" else f"{shape}-"


def corpus(lines: int, seed: int = 42, shape: str = "mixed") -> tuple[Path, Truth]:
    """The corpus of ``shape`` for ``lines`` records, generated once and cached under WORK."""
    d = WORK / f"corpus-{_prefix(shape)}{lines}-{seed}"
    truth_file = d / "truth.json"
    if not truth_file.exists():
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        truth = (generate if shape == "mixed" else generate_app)(d / "logs", lines, seed=seed)
        truth.save(truth_file)
        print(f"  corpus: {lines:,} records, {truth.raw_bytes / 1e6:,.0f} MB in {time.perf_counter() - t0:.0f}s")
    return d / "logs", Truth.load(truth_file)


async def ship_once(cfg: Config) -> dict[str, int]:
    """Ship every file under ``cfg.shipper.include`` to its end; returns the shipper's stats."""
    await ensure_topic(cfg.kafka)
    shipper = Shipper(cfg)
    await shipper.run(asyncio.Event(), once=True)
    return shipper.stats


@dataclass
class IngestRun:
    seconds: float              # from partition assignment to the last commit
    rows: int
    worker_stats: dict[str, int]
    complete: bool = True       # False: stopped on a stall, ``rows`` is what the catalog held then


async def ingest_until(cfg: Config, rows: int, timeout_s: float = 1800,
                       stall_s: float | None = None) -> IngestRun:
    """One ingest worker consuming until the catalog holds ``rows`` rows.

    With ``stall_s``, a catalog whose row count has not grown for that long
    since partition assignment (or its last growth) ends the run early with
    ``complete=False`` (records lost somewhere), so a caller can report a wrong
    count instead of waiting out ``timeout_s``; ``seconds`` then runs to when
    the stall was seen, and ``rows`` is what the catalog held after the worker
    stopped.
    """
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    assigned_at: list[float] = []

    class Timed(IngestWorker):
        async def _assigned(self, partitions: Any) -> None:
            await super()._assigned(partitions)
            if partitions and not assigned_at:
                assigned_at.append(time.perf_counter())

    worker = Timed(cfg, catalog)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + timeout_s
    done_at = None
    stored, grew_at, stalled_at = -1, time.perf_counter(), None
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if task.done():
                task.result()
            # The worker's own count of rows it committed to the catalog: free to read. Asking
            # the catalog every 50 ms cost the worker's core about 4% of a run; it is asked once,
            # at the end, and that figure is what the run reports.
            now_rows = worker.stats["records"]
            if now_rows != stored:
                stored, grew_at = now_rows, time.perf_counter()
            if now_rows >= rows:
                done_at = time.perf_counter()
                break
            if stall_s is not None and assigned_at and \
                    time.perf_counter() - max(grew_at, assigned_at[0]) > stall_s:
                stalled_at = time.perf_counter()
                break
        stop.set()
        await task
        final_rows = catalog.totals()["rows"]
    finally:
        catalog.close()
    if not assigned_at:
        raise RuntimeError("ingest worker was never assigned a partition")
    if done_at is None:
        if stalled_at is None:
            raise RuntimeError(f"ingest did not store {rows} rows within {timeout_s}s")
        return IngestRun(stalled_at - assigned_at[0], final_rows, dict(worker.stats), complete=False)
    return IngestRun(done_at - assigned_at[0], final_rows, dict(worker.stats), complete=final_rows >= rows)


def store(lines: int, seed: int = 42, shape: str = "mixed") -> tuple[Path, Truth, Config]:
    """The corpus of ``shape`` shipped and ingested by the real pipeline, cached under WORK."""
    logs, truth = corpus(lines, seed, shape)
    work = WORK / f"store-{_prefix(shape)}{lines}-{seed}"
    marker = work / "done.json"
    if marker.exists():
        return logs, truth, Config.model_validate(json.loads(marker.read_text()))
    shutil.rmtree(work, ignore_errors=True)
    with broker() as address:
        cfg = config(work, address, "bench.store", [str(logs / "*.log")])
        t0 = time.perf_counter()
        asyncio.run(ship_once(cfg))
        run = asyncio.run(ingest_until(cfg, truth.physical_lines))
        print(f"  store: shipped and ingested {truth.physical_lines:,} lines in {time.perf_counter() - t0:.0f}s "
              f"(ingest {run.seconds:.1f}s)")
    marker.write_text(cfg.model_dump_json())
    return logs, truth, cfg


def serve_config(cfg: Config, work: Path) -> Path:
    """A configuration file for `loglake serve` over ``cfg``'s data root and catalog, auth off."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "loglake.toml"
    path.write_text(f'[storage]\ndata_root = "{cfg.storage.data_root}"\n'
                    f'catalog_url = "{cfg.storage.resolved_catalog_url()}"\n\n'
                    '[auth]\nenabled = false\n\n[log]\nlevel = "warning"\n')
    return path


@contextlib.contextmanager
def serve(config: Path) -> Iterator[str]:
    """`loglake serve` over ``config`` on a free loopback port, as a real process; yields its URL."""
    port = free_port()
    log = config.parent / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "loglake", "--config", str(config), "serve",
                                 "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield url
    finally:
        stop_process(proc, 15)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    """Wait until the loglake process ``proc`` (logging to ``log``) answers ``/readyz`` at ``url``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not get ready in {timeout_s:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(0.1)
