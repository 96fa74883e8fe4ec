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

import httpx

from benchmarks.harness import Result
from benchmarks.pipeline import WORK, free_port, wait_ready
from loglake.broker import start_broker, stop_process
from storage.catalog import Catalog

RATE = 20_000
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
                    next_probe += 0.5
                tick += 1
                time.sleep(max(0.0, start + tick * 0.05 - time.monotonic()))
        finally:
            for f in [*files, probe_file]:
                f.close()


def _prober(url: str, writer: Writer, lags: dict[str, float], stop: threading.Event) -> None:
    client = httpx.Client(timeout=10)
    while not stop.is_set():
        with writer.lock:
            pending = {t: w for t, w in writer.probes.items() if t not in lags}
        if pending:
            oldest = min(pending.values())
            since = max(1, int(time.monotonic() - oldest) + 2)
            try:
                rows = client.get(f"{url}/api/v1/search", params={
                    "q": "service:probe", "start": f"now-{since}s", "limit": 10_000}).json()["rows"]
            except (httpx.HTTPError, KeyError, ValueError):
                rows = []
            seen = time.monotonic()
            for r in rows:
                if r["message"] in pending:
                    lags[r["message"]] = seen - pending[r["message"]]
        stop.wait(0.25)
    client.close()


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
        "LOGLAKE_LOG__LEVEL": "warning", "LOGLAKE_CONFIG": str(work / "none.toml"),
    })
    (work / "none.toml").write_text("")
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
        stop = threading.Event()
        prober = threading.Thread(target=_prober, args=(url, writer, lags, stop), daemon=True)
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
        **{f"e2e.cpu_s_per_million_lines.{n}": (cpu1[n] - cpu0[n]) / lines * 1e6 for n in pids},
    }
    r.check("every probe found", len(lags) == len(writer.probes), f"{len(lags)} of {len(writer.probes)}")
    r.check("every line stored exactly once", stored == expected, f"{stored} rows for {expected} lines")
    r.notes.append(f"{rate:,} lines/s of ~200-byte JSON lines into 4 files for {wrote_s:.0f}s; lag measured on "
                   "probe lines (one every 0.5 s) by polling the search API every 0.25 s. No peer is measured "
                   "here: VictoriaLogs publishes about 1 s; the target is p99 at most 5 s.")
    return r
