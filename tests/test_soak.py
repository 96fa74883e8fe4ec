"""Soak: sustained ingest under 20 searching clients, then faults under load. `make soak` runs these.

Not part of `make test` (marker ``soak``): the load test alone runs for
``LOGLAKE_SOAK_S`` seconds (default 600). Each test prints its figures and writes
them to benchmarks/results/soak-*.json; it fails on errors, loss or duplicates,
not on speed (lag and latency are reported against their targets).

Settings (environment): ``LOGLAKE_SOAK_S`` (load duration), ``LOGLAKE_SOAK_RATE``
(lines per second written), ``LOGLAKE_SOAK_CLIENTS`` (concurrent searchers),
``LOGLAKE_SOAK_FAULT_S`` (how long each fault lasts).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pytest

from loglake.broker import start_broker, stop_process
from storage.catalog import Catalog
from tests.helpers.disk import fill, small_disk
from tests.helpers.processes import Stack, free_port, wait_until

SOAK_S = float(os.environ.get("LOGLAKE_SOAK_S", "600"))
RATE = int(os.environ.get("LOGLAKE_SOAK_RATE", "2000"))
CLIENTS = int(os.environ.get("LOGLAKE_SOAK_CLIENTS", "20"))
FAULT_S = float(os.environ.get("LOGLAKE_SOAK_FAULT_S", "30"))
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

pytestmark = pytest.mark.soak

#: What the searchers ask, newest 15 minutes each time (a dashboard's mix).
QUERIES = ["", "handled", "level:error", "service:soak", "rid000001*", "message:/rid\\d+7 handled/",
           "level:warn OR level:error", "NOT handled", "timeout", "handled AND in"]


# -- load ---------------------------------------------------------------------------


class Writer(threading.Thread):
    """Appends numbered lines to a few files at a steady ``rate`` per second."""

    def __init__(self, directory: Path, rate: int, files: int = 4) -> None:
        super().__init__(daemon=True, name="soak-writer")
        self.paths = [directory / f"soak-{i}.log" for i in range(files)]
        self.rate, self.sent, self.stop = rate, 0, threading.Event()

    def run(self) -> None:
        handles = [open(p, "a", buffering=1 << 16) for p in self.paths]  # noqa: SIM115
        t0 = time.monotonic()
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - t0) * self.rate)
                now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
                while self.sent < due:
                    n = self.sent
                    level = "ERROR" if n % 97 == 0 else "WARN" if n % 13 == 0 else "INFO"
                    handles[n % len(handles)].write(
                        f"{now} {level} soak.worker - request rid{n:09d} handled in {n % 500} ms\n")
                    self.sent += 1
                for h in handles:
                    h.flush()
                time.sleep(0.05)
        finally:
            for h in handles:
                h.close()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": len(values)}


@dataclass
class Searchers:
    """``clients`` threads, each searching, then thinking for about a second, until stopped."""

    url: str
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)      # 0: no answer
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _client(self, i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                q = rng.choice(QUERIES)
                path = "/api/v1/aggregate" if rng.random() < 0.2 else "/api/v1/search"
                params = {"q": q, "start": "now-15m", "end": "now"}
                if path.endswith("aggregate"):
                    params["by"] = "level"
                t0 = time.perf_counter()
                try:
                    resp = client.get(path, params=params)
                    ok = resp.status_code == 200
                    detail = f"{resp.status_code} {resp.text[:200]}"
                    self.statuses[resp.status_code] += 1
                except httpx.HTTPError as e:
                    ok, detail = False, repr(e)
                    self.statuses[0] += 1
                self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                if not ok:
                    self.errors.append(f"{path}?q={q}: {detail}")
                self.stop.wait(rng.uniform(0.5, 1.5))


class LagProbe(threading.Thread):
    """Every few seconds, writes a marked line and times until a search finds it."""

    def __init__(self, directory: Path, url: str, every_s: float = 5.0) -> None:
        super().__init__(daemon=True, name="soak-lag")
        self.path, self.url, self.every_s = directory / "probe.log", url, every_s
        self.lags: list[float] = []
        self.lost: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                token = f"lagprobe{n:06d}x"
                with open(self.path, "a") as f:
                    f.write(f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S,%f')[:-3]} INFO probe - {token}\n")
                t0 = time.monotonic()
                while time.monotonic() - t0 < 180:
                    try:
                        rows = client.get("/api/v1/search", params={"q": token, "start": "now-1h",
                                                                    "end": "now+1m"}).json().get("rows")
                    except (httpx.HTTPError, ValueError):
                        rows = None
                    if rows:
                        self.lags.append(time.monotonic() - t0)
                        break
                    time.sleep(0.1)
                else:
                    self.lost.append(token)
                n += 1
                self.stop.wait(max(0.0, self.every_s - (time.monotonic() - t0)))


class ReadyMonitor(threading.Thread):
    """Polls /readyz endpoints; keeps every (time, name, status) change."""

    def __init__(self, urls: dict[str, str]) -> None:
        super().__init__(daemon=True, name="soak-ready")
        self.urls, self.stop = urls, threading.Event()
        self.changes: list[tuple[float, str, int, str]] = []
        self.last: dict[str, int] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            for name, url in self.urls.items():
                try:
                    resp = httpx.get(url, timeout=3)
                    status, body = resp.status_code, resp.text[:300]
                except httpx.HTTPError as e:
                    status, body = 0, type(e).__name__
                if self.last.get(name) != status:
                    self.last[name] = status
                    self.changes.append((time.monotonic(), name, status, body))
            self.stop.wait(0.5)

    def saw(self, name: str, status: int, since: float, until: float) -> str | None:
        """The body of the first ``status`` seen from ``name`` between the two times."""
        state: tuple[int, str] | None = None
        for t, n, s, body in self.changes:
            if n != name:
                continue
            if t <= since:
                state = (s, body)
            elif t <= until and s == status:
                return body
        return state[1] if state and state[0] == status else None


def stored_ids(data_root: Path, catalog: Catalog) -> tuple[int, int, int, int]:
    """(rows, distinct ids, smallest id, largest id) of the writer's lines in live segments."""
    paths = [str(data_root / s.path) for s in catalog.segments("default", 0, 2**62)]
    if not paths:
        return 0, 0, -1, -1
    con = duckdb.connect()
    try:
        row = con.execute(
            "WITH ids AS (SELECT CAST(regexp_extract(message, 'rid(\\d{9})', 1) AS BIGINT) AS id"
            " FROM read_parquet(?) WHERE message LIKE '%rid%handled%')"
            " SELECT count(*), count(DISTINCT id), coalesce(min(id), -1), coalesce(max(id), -1) FROM ids",
            [paths]).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def settle(writer: Writer, data_root: Path, catalog: Catalog, timeout_s: float = 300) -> dict[str, int]:
    """Wait until every line written is stored; the exactly-once figures."""
    sent = writer.sent

    def done() -> tuple[int, int, int, int] | None:
        got = stored_ids(data_root, catalog)
        return got if got[1] >= sent else None

    with contextlib.suppress(AssertionError):
        wait_until(done, timeout_s, 2.0, "every written line stored")
    rows, distinct, lo, hi = stored_ids(data_root, catalog)
    return {"lines_sent": sent, "rows_stored": rows, "distinct_stored": distinct,
            "duplicates": rows - distinct, "missing": sent - distinct, "min_id": lo, "max_id": hi}


def write_report(name: str, report: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"test": name, "finished": datetime.now(UTC).isoformat(timespec="seconds"), **report}
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n== {name} ==\n" + json.dumps(report, indent=2))


@contextlib.contextmanager
def own_broker(tmp_path: Path) -> Iterator[tuple[str, Callable[[], subprocess.Popen[bytes]]]]:
    address = f"127.0.0.1:{free_port()}"
    box: dict[str, subprocess.Popen[bytes]] = {"p": start_broker(address, log_file=tmp_path / "broker.log")}
    yield address, lambda: box["p"]
    stop_process(box["p"])


@pytest.mark.timeout(int(SOAK_S) + 900)
def test_sustained_ingest_with_twenty_searchers(tmp_path: Path) -> None:
    with own_broker(tmp_path) as (address, _):
        stack = Stack(root=tmp_path / "stack", bootstrap=address, topic="soak.logs")
        ship_port, ingest_port = free_port(), free_port()
        try:
            stack.start("ingest", LOGLAKE_INGEST__METRICS_LISTEN=f"127.0.0.1:{ingest_port}",
                        LOGLAKE_INGEST__FLUSH_INTERVAL_S="2")
            stack.start("serve")
            stack.start("maintain")
            stack.start("ship", LOGLAKE_SHIPPER__METRICS_LISTEN=f"127.0.0.1:{ship_port}")
            stack.wait_ready()
            writer = Writer(stack.input_dir, RATE)
            searchers = Searchers(stack.url, CLIENTS)
            lag = LagProbe(stack.input_dir, stack.url)
            writer.start()
            time.sleep(5)
            searchers.start()
            lag.start()
            t0 = time.monotonic()
            while time.monotonic() - t0 < SOAK_S:
                time.sleep(5)
                for name in ("ingest", "serve", "ship", "maintain"):
                    assert stack.procs[name].poll() is None, f"{name} died:\n{stack.log_text(name)[-3000:]}"
            writer.stop.set()
            writer.join(30)
            searchers.join()
            lag.stop.set()
            lag.join(200)
            catalog = Catalog(f"sqlite:///{stack.data_root / 'catalog.sqlite'}")
            counts = settle(writer, stack.data_root, catalog)
            catalog.close()
        finally:
            stack.stop_all()
    report = {
        "duration_s": SOAK_S, "rate_lines_per_s": RATE, "clients": CLIENTS, **counts,
        "ingest_lag_s": percentiles(lag.lags), "lag_probes_lost": len(lag.lost),
        "search_latency_ms": percentiles(searchers.latencies_ms), "search_errors": len(searchers.errors),
        "search_statuses": dict(searchers.statuses), "first_errors": searchers.errors[:5],
        "targets": {"errors": 0, "loss": 0, "lag_s": 10},
        "lag_target_met": bool(lag.lags) and max(lag.lags) < 10,
    }
    write_report("soak-load", report)
    assert not searchers.errors, searchers.errors[:10]
    assert counts["missing"] == 0 and counts["duplicates"] == 0, counts
    assert not lag.lost, f"probe lines never found: {lag.lost[:5]}"


# -- faults under load ----------------------------------------------------------------


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (so it can be stopped), run as the postgres user."""

    directory: Path
    port: int = field(default_factory=free_port)

    @staticmethod
    def binaries() -> Path | None:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        return versions[-1].parent if versions else None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        bin_dir = self.binaries()
        assert bin_dir is not None
        return subprocess.run(["runuser", "-u", "postgres", "--", str(bin_dir / args[0]), *args[1:]],
                              capture_output=True, text=True, check=False, timeout=120)

    def init(self) -> None:
        # Its own directory in /tmp: the postgres user cannot pass pytest's private temporary ones.
        shutil.chown(self.directory, "postgres", "postgres")
        done = self._run("initdb", "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres")
        assert done.returncode == 0, done.stderr
        self.start()

    def start(self) -> None:
        done = self._run("pg_ctl", "-D", str(self.directory / "data"), "-l", str(self.directory / "pg.log"), "-w",
                         "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1", "start")
        assert done.returncode == 0, done.stderr + done.stdout

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.mark.timeout(int(8 * FAULT_S) + 1200)
def test_faults_under_load_lose_nothing_and_are_reported_while_they_last(tmp_path: Path) -> None:
    skipped: list[str] = []
    pg: PrivatePostgres | None = None
    if os.geteuid() == 0 and PrivatePostgres.binaries() is not None and shutil.which("runuser"):
        pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="loglake-soak-pg-")))
        pg.init()
    else:
        skipped.append("catalog database restart: needs root and PostgreSQL's server binaries to run a "
                       "cluster of the test's own")
        print("SKIPPED fault:", skipped[-1])
    faults: list[dict[str, Any]] = []
    with contextlib.ExitStack() as exits, own_broker(tmp_path) as (address, broker):
        stack = Stack(root=tmp_path / "stack", bootstrap=address, topic="soak.faults")
        try:
            exits.enter_context(small_disk(stack.data_root, "512m"))
            disk = True
        except pytest.skip.Exception as e:
            disk = False
            skipped.append(f"full disk: {e}")
            print("SKIPPED fault:", skipped[-1])
        ship_port, ingest_port = free_port(), free_port()
        env = {"LOGLAKE_STORAGE__CATALOG_URL": pg.url} if pg else {}
        ready = ReadyMonitor({"ship": f"http://127.0.0.1:{ship_port}/readyz",
                              "ingest": f"http://127.0.0.1:{ingest_port}/readyz",
                              "serve": f"{stack.url}/readyz"})

        def start_ingest(name: str = "ingest") -> None:
            stack.start("ingest", name=name, LOGLAKE_INGEST__METRICS_LISTEN=f"127.0.0.1:{ingest_port}", **env)

        try:
            start_ingest()
            stack.start("serve", **env)
            stack.start("ship", LOGLAKE_SHIPPER__METRICS_LISTEN=f"127.0.0.1:{ship_port}", **env)
            stack.wait_ready()
            writer = Writer(stack.input_dir, max(200, RATE // 4))
            searchers = Searchers(stack.url, CLIENTS)
            writer.start()
            searchers.start()
            ready.start()
            time.sleep(20)

            def fault(name: str, expect: tuple[str, int] | None, begin: Callable[[], None],
                      end: Callable[[], None]) -> None:
                t0 = time.monotonic()
                begin()
                time.sleep(FAULT_S)
                t1 = time.monotonic()
                end()
                time.sleep(5)
                seen = ready.saw(expect[0], expect[1], t0, t1) if expect else None
                faults.append({"fault": name, "lasted_s": round(t1 - t0, 1),
                               "reported": None if expect is None else {
                                   "endpoint": f"{expect[0]} /readyz", "status": expect[1], "seen": seen is not None,
                                   "body": seen}})
                time.sleep(15)                       # recover under load before the next one

            # Paused, tansu holds connections open: the shipper's sends time out after 15 s.
            fault("broker paused (SIGSTOP)", ("ship", 503),
                  lambda: broker().send_signal(signal.SIGSTOP), lambda: broker().send_signal(signal.SIGCONT))
            fault("ingest worker killed (SIGKILL), restarted", ("ingest", 0), lambda: stack.kill("ingest"),
                  lambda: start_ingest("ingest-2"))
            if pg is not None:
                fault("catalog database stopped, started", ("ingest", 503), pg.stop, pg.start)
            if disk:
                filler: list[Path] = []
                fault("data root's disk full", ("ingest", 503), lambda: filler.append(fill(stack.data_root)),
                      lambda: filler[0].unlink())
            writer.stop.set()
            writer.join(30)
            searchers.join()
            catalog = Catalog(pg.url if pg else f"sqlite:///{stack.data_root / 'catalog.sqlite'}")
            counts = settle(writer, stack.data_root, catalog)
            catalog.close()
        finally:
            ready.stop.set()
            stack.stop_all()
            if pg is not None:
                pg.stop()
                shutil.rmtree(pg.directory, ignore_errors=True)
    report = {"rate_lines_per_s": writer.rate, "clients": CLIENTS, "fault_s": FAULT_S, **counts,
              "faults": faults, "skipped": skipped, "search_latency_ms": percentiles(searchers.latencies_ms),
              "search_errors": len(searchers.errors), "search_statuses": dict(searchers.statuses),
              "first_errors": searchers.errors[:5]}
    write_report("soak-faults", report)
    assert counts["missing"] == 0 and counts["duplicates"] == 0, counts
    # While the catalog or the disk is away a search may be refused (503), never fail as a 500.
    assert not searchers.statuses[500], searchers.errors[:10]
    for f in faults:
        assert f["reported"] is None or f["reported"]["seen"], f"{f['fault']} was not reported: {f}"
