"""up: ingest end to end as `loglake up` runs it, against ClickHouse's own insert of the same NDJSON.

Ours: `loglake up` as a real process tree with its defaults (embedded broker,
shipper, ingest workers, maintenance, query server, push receiver, alert
evaluator; no demo writer), its shipper pointed at the app corpus (one JSON
file per service, benchmarks/app_corpus.py). Timed from starting the
supervisor to the catalog holding every line; the CPU seconds each process
had used by then are read from /proc. Baseline: chdb (ClickHouse in process,
all cores) `INSERT INTO t SELECT * FROM file(<the same files>, JSONEachRow)`
into a MergeTree ordered by (service, ts), timed to the end of the insert.

``LOGLAKE_BENCH_UP_TOML`` (TOML text) is added to our configuration, to
measure other settings than the defaults (``"[ingest]\nworkers = 1"``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

from benchmarks.harness import Result, console
from benchmarks.pipeline import WORK, corpus, free_port
from loglake.broker import interrupt_group
from storage.catalog import Catalog

REPETITIONS = 3
_CLK = os.sysconf("SC_CLK_TCK")
_runs = count()
#: The app corpus's fields as ClickHouse reads them.
_STRUCTURE = ("ts DateTime64(3, 'UTC'), level LowCardinality(String), service LowCardinality(String), "
              "host LowCardinality(String), msg String, trace_id String, request_id String, duration_ms UInt32")


def _processes(root: int) -> dict[int, str]:
    """Every process under ``root``, by pid, named for what it runs (``ingest``, ``broker``, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                try:
                    argv = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                words = [a.decode(errors="replace") for a in argv if a]
                found[child] = "broker" if any("tansu" in w for w in words[:1]) else (words[-1] if words else "?")
                frontier.append(child)
    return found


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK      # utime + stime


def _config(work: Path, logs: Path) -> Path:
    broker = f"127.0.0.1:{free_port()}"
    path = work / "loglake.toml"
    path.write_text(f"""[kafka]
bootstrap_servers = "{broker}"
topic = "bench.up"

[broker]
embedded = true
listen = "{broker}"

[shipper]
include = ["{logs}/*.log"]
state_dir = "{work}/shipper"
host = "bench"

[storage]
data_root = "{work}/data"

[query]
port = {free_port()}

[receive]
port = {free_port()}

[demo]
enabled = false

[auth]
enabled = false

[log]
level = "warning"
dir = "{work}/log"
""" + os.environ.get("LOGLAKE_BENCH_UP_TOML", ""))
    return path


class Ours:
    """One run of `loglake up` over the corpus until the catalog holds every line."""

    def __init__(self, logs: Path, lines: int) -> None:
        self.logs, self.lines = logs, lines
        self.cpu: list[dict[str, float]] = []
        self.segments: list[tuple[int, int]] = []
        self.complete: list[bool] = []
        self.first_row_s: list[float] = []
        self.steady: list[float] = []           # lines/s from the first row seen to the last
        self.workers = 0

    def __call__(self) -> float:
        work = WORK / f"up-run-{next(_runs)}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        config = _config(work, self.logs)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
        t0 = time.perf_counter()
        with open(work / "up.err", "wb") as err:        # (the child keeps its own copy of the file)
            proc = subprocess.Popen([sys.executable, "-m", "loglake", "--config", str(config), "up"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        catalog_file = work / "data" / "catalog.sqlite"
        rows, first_rows, elapsed = 0, 0, 0.0
        try:
            deadline = t0 + 1800
            catalog: Catalog | None = None
            while time.perf_counter() < deadline:
                time.sleep(0.25)
                if proc.poll() is not None:
                    raise RuntimeError(f"loglake up exited: {(work / 'up.err').read_text()[-2000:]}")
                if catalog is None:
                    if not catalog_file.exists():
                        continue
                    catalog = Catalog(f"sqlite:///{catalog_file}")
                try:
                    rows = int(catalog.totals()["rows"])
                except Exception:           # noqa: BLE001 (the catalog is being created)
                    continue
                if rows and len(self.first_row_s) < len(self.cpu) + 1:
                    self.first_row_s.append(time.perf_counter() - t0)
                    first_rows = rows
                if rows >= self.lines:
                    elapsed = time.perf_counter() - t0
                    if elapsed > self.first_row_s[-1]:
                        self.steady.append((rows - first_rows) / (elapsed - self.first_row_s[-1]))
                    break
            procs = _processes(proc.pid)
            self.workers = sum(1 for name in procs.values() if name == "ingest")
            cpu: dict[str, float] = {}
            for pid, name in procs.items():
                cpu[name] = cpu.get(name, 0.0) + _cpu_s(pid)
            self.cpu.append(cpu)
            if catalog is not None:
                totals = catalog.totals()
                self.segments.append((int(totals["segments"]), int(totals["bytes"])))
                catalog.close()
        finally:
            interrupt_group(proc, 60)
        self.complete.append(rows == self.lines)
        if not elapsed:
            raise RuntimeError(f"loglake up stored {rows:,} of {self.lines:,} lines in 30 minutes")
        shutil.rmtree(work, ignore_errors=True)
        return self.lines / elapsed


class ClickHouseInsert:
    """chdb's insert of the corpus files into a fresh MergeTree."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.rows: list[int] = []

    def __call__(self) -> float:
        from chdb.session import Session  # installed with the bench extra

        path = WORK / "chdb-up"
        shutil.rmtree(path, ignore_errors=True)
        session = Session(str(path))
        try:
            session.query("CREATE DATABASE IF NOT EXISTS bench")
            session.query(f"CREATE TABLE bench.app ({_STRUCTURE}) ENGINE = MergeTree ORDER BY (service, ts)")
            t0 = time.perf_counter()
            structure = _STRUCTURE.replace("'", "\\'")
            session.query(f"INSERT INTO bench.app SELECT * FROM file('{self.logs}/*.log', JSONEachRow, "
                          f"'{structure}')")
            elapsed = time.perf_counter() - t0
            n = int(session.query("SELECT count() FROM bench.app", "CSV").bytes().decode().strip())
        finally:
            session.close()
            shutil.rmtree(path, ignore_errors=True)
        self.rows.append(n)
        return n / elapsed


def run(lines: int, repetitions: int = REPETITIONS) -> Result:
    logs, truth = corpus(lines, shape="app")
    total = truth.physical_lines
    raw_mb = sum(f.stat().st_size for f in logs.glob("*.log")) / 1e6
    ours, theirs = Ours(logs, total), ClickHouseInsert(logs)
    mine: list[float] = []
    ch: list[float] = []
    ratios: list[float] = []
    for k in range(repetitions):
        a = ours()
        b = theirs()
        mine.append(a)
        ch.append(b)
        ratios.append(a / b)
        console.print(f"  round {k + 1}: loglake up {a:,.0f} lines/s, ClickHouse insert {b:,.0f} lines/s "
                      f"({a / b:.3f}x); CPU s: {ours.cpu[-1]}")
    r = Result("up", total)
    med = statistics.median(mine)
    r.metrics["up.lines_per_s"] = med
    r.metrics["up.mb_per_s"] = raw_mb * med / total
    r.metrics["up.seconds"] = total / med
    # CPU seconds by process at the moment the last row was committed, median over the runs.
    for name in sorted({n for c in ours.cpu for n in c}):
        r.metrics[f"up.cpu_s.{name}"] = statistics.median(c.get(name, 0.0) for c in ours.cpu)
    r.metrics["up.segments"], r.metrics["up.segment_mb"] = ours.segments[-1][0], ours.segments[-1][1] / 1e6
    r.baselines["clickhouse_insert.lines_per_s"] = statistics.median(ch)
    r.baselines["clickhouse_insert.seconds"] = total / statistics.median(ch)
    r.ratios["up.lines_per_s.vs_clickhouse_insert"] = statistics.median(ratios)
    r.check("every line stored, in every run", all(ours.complete), f"{ours.complete}")
    r.check("ClickHouse read every line", all(n == total for n in theirs.rows), f"{theirs.rows} of {total}")
    r.metrics["up.first_row_s"] = statistics.median(ours.first_row_s)
    if ours.steady:
        r.metrics["up.after_first_row.lines_per_s"] = statistics.median(ours.steady)
        r.ratios["up.after_first_row.lines_per_s.vs_clickhouse_insert"] = \
            statistics.median(ours.steady) / statistics.median(ch)
    workers = ours.workers
    r.notes += [
        f"Corpus: the app shape (benchmarks/app_corpus.py), {total:,} JSON lines, {raw_mb:,.0f} MB, one file "
        "per service.",
        "Ours: `loglake up` with its defaults (no demo writer, auth off), timed from starting the supervisor "
        "to the catalog holding every line (polled every 0.25 s); CPU seconds per process read from /proc "
        f"at that moment (the ingest figure sums its {workers} workers); segment count and size then, "
        "before compaction has settled. up.first_row_s: from the start to the first row in the catalog "
        "(starting the processes and the broker, joining the consumer group, the first flush); "
        "up.after_first_row: the rate from then to the last row.",
        "Baseline: chdb INSERT INTO a MergeTree ORDER BY (service, ts) SELECT * FROM file(<files>, JSONEachRow, "
        "<the eight fields>), all cores, timed to the end of the insert.",
        f"Rounds: {repetitions}, ours then theirs each round; medians, the ratio the median of per-round ratios.",
        "Target (issue 26): at least 0.33x ClickHouse's insert.",
    ]
    return r
