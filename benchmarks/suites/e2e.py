"""e2e: lines written at a steady rate through shipper, broker, ingest and query, as real processes.

Reports the lag from a line being written to it being searchable (probe lines
written twice a second, found by polling the search API), and the CPU seconds
each process spent per million lines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx

from benchmarks.harness import Result
from benchmarks.pipeline import WORK, free_port, wait_ready
from loglake.broker import start_broker, stop_process
from loglake.core.config import CompactionConfig
from storage.catalog import Catalog, SegmentRow
from storage.compaction import compact
from storage.root import DataRoot

RATE = 20_000
#: How often the prober asks the search API for the probe lines; up to this much is added to
#: each lag measured (0.25 s until 2026-11: a quarter of the 1.5 s target).
PROBE_POLL_S = float(os.environ.get("LOGLAKE_BENCH_PROBE_POLL_S", "0.05"))
_CLK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK      # utime + stime


class Writer(threading.Thread):
    """Appends RATE lines/s to four files in 50 ms ticks, plus a probe line every 0.5 s."""

    def __init__(self, directory: Path, total: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.dir, self.total, self.rate = directory, total, rate
        self.written = 0
        self.probes: dict[str, float] = {}       # token -> time written (monotonic)
        self.probes_wall: dict[str, float] = {}  # token -> time written (epoch seconds)
        self.lock = threading.Lock()

    def run(self) -> None:
        files = [open(self.dir / f"app{k}.log", "a") for k in range(4)]  # noqa: SIM115
        probe_file = open(self.dir / "probe.log", "a")  # noqa: SIM115
        per_tick = self.rate // 20
        start = time.monotonic()
        tick = 0
        next_probe = start
        try:
            while self.written < self.total:
                now = datetime.now(UTC)
                stamp = f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}Z"
                n = min(per_tick, self.total - self.written)
                for k, f in enumerate(files):
                    part = range(self.written + k, self.written + n, 4)
                    f.write("".join(
                        f'{{"time":"{stamp}","level":"info","service":"app{k}","msg":"request {i} handled in '
                        f'{i % 997}ms path=/api/v1/items/{i % 10007} user={i % 5003}","region":"eu-west-1"}}\n'
                        for i in part))
                    f.flush()
                self.written += n
                if time.monotonic() >= next_probe:
                    token = f"probe{len(self.probes):06d}x"
                    probe_file.write(f'{{"time":"{stamp}","level":"info","msg":"{token}"}}\n')
                    probe_file.flush()
                    with self.lock:
                        self.probes[token] = time.monotonic()
                        self.probes_wall[token] = time.time()
                    next_probe += 0.5
                tick += 1
                time.sleep(max(0.0, start + tick * 0.05 - time.monotonic()))
        finally:
            for f in [*files, probe_file]:
                f.close()


def _prober(url: str, writer: Writer, lags: dict[str, float], stop: threading.Event,
            query_s: list[float]) -> None:
    client = httpx.Client(timeout=10)
    while not stop.is_set():
        with writer.lock:
            pending = {t: w for t, w in writer.probes.items() if t not in lags}
        if pending:
            oldest = min(pending.values())
            since = max(1, int(time.monotonic() - oldest) + 2)
            asked = time.monotonic()
            try:
                rows = client.get(f"{url}/api/v1/search", params={
                    "q": "service:probe", "start": f"now-{since}s", "limit": 10_000}).json()["rows"]
            except (httpx.HTTPError, KeyError, ValueError):
                rows = []
            seen = time.monotonic()
            query_s.append(seen - asked)
            for r in rows:
                if r["message"] in pending:
                    lags[r["message"]] = seen - pending[r["message"]]
        stop.wait(PROBE_POLL_S)
    client.close()


def _segment_metrics(prefix: str, segments: list[SegmentRow]) -> dict[str, float]:
    """Count and sizes of the live segments, as `loglake stats` would see them."""
    sizes = sorted(s.bytes for s in segments) or [0]
    rows = sorted(s.rows for s in segments) or [0]
    return {f"{prefix}.count": len(segments), f"{prefix}.total_mb": sum(sizes) / 1e6,
            f"{prefix}.median_kb": statistics.median(sizes) / 1e3, f"{prefix}.min_kb": sizes[0] / 1e3,
            f"{prefix}.max_kb": sizes[-1] / 1e3, f"{prefix}.median_rows": statistics.median(rows)}


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def _lag_parts(data: Path, writer: Writer, lags: dict[str, float]) -> dict[str, float]:
    """Where each probe's lag went, from the stored rows: written -> read by the shipper (its
    ``observed_ts``) -> committed in a segment (the segment's ``created_us``) -> found by a search."""
    catalog = Catalog(f"sqlite:///{data / 'catalog.sqlite'}")
    try:
        created = {str(data / s.path): s.created_us / 1e6 for s in catalog.live_segments()}
    finally:
        catalog.close()
    rows = duckdb.sql(f"SELECT message, epoch_us(observed_ts) / 1e6, filename FROM read_parquet({list(created)!r}, "
                      "filename = true) WHERE service = 'probe'").fetchall()
    parts: dict[str, list[float]] = {"shipper_read": [], "to_commit": [], "to_found": []}
    for token, observed, filename in rows:
        if token not in lags or token not in writer.probes_wall:
            continue
        written = writer.probes_wall[token]
        parts["shipper_read"].append(observed - written)
        parts["to_commit"].append(created[filename] - observed)
        parts["to_found"].append(written + lags[token] - created[filename])
    return {f"e2e.lag_part.{k}_{q}_s": _p(v, f) for k, v in parts.items() for q, f in (("p50", 0.5), ("p99", 0.99))}


def _window_queries(url: str, since_s: int, needle: str) -> tuple[dict[str, float], bool]:
    """Median milliseconds (of 5, after one) of a needle search and a count by level over the run's
    whole window: what many small segments cost a query of recent data; and whether the needle
    search found its one row every time."""
    client = httpx.Client(timeout=60)
    asks = {"needle": ("/api/v1/search", {"q": needle, "start": f"now-{since_s}s", "limit": 100}),
            "count_by_level": ("/api/v1/aggregate", {"q": "", "start": f"now-{since_s}s", "by": "level"})}
    out = {}
    found = True
    try:
        for name, (path, params) in asks.items():
            times = []
            for _ in range(6):
                t0 = time.perf_counter()
                resp = client.get(url + path, params=params)
                resp.raise_for_status()
                times.append(time.perf_counter() - t0)
                if name == "needle":
                    found &= [row["message"] for row in resp.json()["rows"]] == [needle]
            out[name] = statistics.median(times[1:]) * 1e3
    finally:
        client.close()
    return out, found


def _segments_and_compaction(data: Path, url: str, since_s: int,
                             needle: str) -> tuple[dict[str, float], int, bool]:
    """The segments as ingest left them and two queries over them, then the same after compacting the
    lake as `loglake maintain` will once they are ``min_age_s`` old (here at once, with the other
    defaults); and the rows after it, and whether the needle was found each time."""
    catalog = Catalog(f"sqlite:///{data / 'catalog.sqlite'}")
    try:
        metrics = _segment_metrics("e2e.segments", catalog.live_segments())
        before, found = _window_queries(url, since_s, needle)
        metrics |= {f"e2e.window_{k}_ms": v for k, v in before.items()}
        t0 = time.perf_counter()
        compact(DataRoot(str(data)), catalog, CompactionConfig(min_age_s=0))
        metrics["e2e.compaction_s"] = time.perf_counter() - t0
        after = catalog.live_segments()
        metrics |= _segment_metrics("e2e.segments_compacted", after)
        compacted, found_again = _window_queries(url, since_s, needle)
        metrics |= {f"e2e.window_{k}_compacted_ms": v for k, v in compacted.items()}
        return metrics, sum(s.rows for s in after), found and found_again
    finally:
        catalog.close()


def run(lines: int, rate: int = RATE) -> Result:
    work = WORK / "e2e"
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    address = f"127.0.0.1:{free_port()}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    env.update({
        "LOGLAKE_KAFKA__BOOTSTRAP_SERVERS": address, "LOGLAKE_KAFKA__TOPIC": "bench.e2e",
        "LOGLAKE_STORAGE__DATA_ROOT": str(work / "data"),
        "LOGLAKE_SHIPPER__INCLUDE": json.dumps([str(work / "in" / "*.log")]),
        "LOGLAKE_SHIPPER__STATE_DIR": str(work / "shipper"), "LOGLAKE_QUERY__PORT": str(port),
        "LOGLAKE_LOG__LEVEL": os.environ.get("LOGLAKE_BENCH_E2E_LOG_LEVEL", "warning"),
        "LOGLAKE_CONFIG": str(work / "none.toml"),
        # Loopback only; the prober has no key (auth is on by default since 2026-11).
        "LOGLAKE_AUTH__ENABLED": "false",
    })
    (work / "none.toml").write_text("")
    # The files exist before the shipper starts: the first lines of a file created later wait up to
    # shipper.rescan_interval_s (2 s) for the shipper to find it, which is not the lag measured here.
    for name in [*(f"app{k}.log" for k in range(4)), "probe.log"]:
        (work / "in" / name).touch()
    broker = start_broker(address)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("ingest", "serve", "ship"):
            procs[name] = subprocess.Popen([sys.executable, "-m", "loglake", name], env=env, cwd=work,
                                           stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, procs["serve"], work / "serve.log")
        time.sleep(6)    # let the ingest worker join its group before the clock starts
        pids = {"broker": broker.pid, **{n: p.pid for n, p in procs.items()}}
        cpu0 = {n: _cpu_s(pid) for n, pid in pids.items()}
        writer = Writer(work / "in", lines, rate)
        lags: dict[str, float] = {}
        query_s: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=_prober, args=(url, writer, lags, stop, query_s), daemon=True)
        t0 = time.monotonic()
        writer.start()
        prober.start()
        writer.join()
        wrote_s = time.monotonic() - t0
        drain_deadline = time.monotonic() + 60
        while len(lags) < len(writer.probes) and time.monotonic() < drain_deadline:
            time.sleep(0.2)
        stop.set()
        prober.join()
        catalog = Catalog(f"sqlite:///{work / 'data' / 'catalog.sqlite'}")
        expected = lines + len(writer.probes)
        while catalog.totals()["rows"] < expected and time.monotonic() < drain_deadline:
            time.sleep(0.2)
        stored = catalog.totals()["rows"]
        catalog.close()
        cpu1 = {n: _cpu_s(pid) for n, pid in pids.items()}
        parts = _lag_parts(work / "data", writer, lags)
        window_s = int(time.monotonic() - t0) + 30
        needle = f"probe{len(writer.probes) // 2:06d}x"
        segments, compacted_rows, needle_found = _segments_and_compaction(work / "data", url, window_s, needle)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        stop_process(broker)

    values = sorted(lags.values())
    r = Result("e2e", lines)
    r.metrics = {
        "e2e.rate_lines_per_s": lines / wrote_s,
        "e2e.lag_p50_s": statistics.median(values) if values else float("nan"),
        "e2e.lag_p99_s": values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan"),
        "e2e.lag_max_s": values[-1] if values else float("nan"),
        "e2e.probes": len(writer.probes),
        # The prober's searches cover the last few seconds: the freshest, smallest segments.
        "e2e.probe_search_p50_ms": statistics.median(query_s) * 1e3 if query_s else float("nan"),
        **{f"e2e.cpu_s_per_million_lines.{n}": (cpu1[n] - cpu0[n]) / lines * 1e6 for n in pids},
    }
    r.metrics |= parts | segments
    r.check("every probe found", len(lags) == len(writer.probes), f"{len(lags)} of {len(writer.probes)}")
    r.check("every line stored exactly once", stored == expected, f"{stored} rows for {expected} lines")
    r.check("the needle searched over the window is found, before and after compaction", needle_found, "")
    r.check("compaction keeps every row", compacted_rows == expected, f"{compacted_rows} rows after compaction")
    r.notes.append(f"{rate:,} lines/s of ~200-byte JSON lines into 4 files for {wrote_s:.0f}s; lag measured on "
                   f"probe lines (one every 0.5 s) by polling the search API every {PROBE_POLL_S:g} s. Segments "
                   "as ingest wrote them, then after one compaction run over all of them (`loglake maintain` "
                   "leaves the newest 5 minutes). The files exist before the shipper starts (a new file waits "
                   "up to shipper.rescan_interval_s, 2 s, to be found). No peer is measured here: "
                   "VictoriaLogs publishes about 1 s; the target is p99 at most 1.5 s.")
    return r
