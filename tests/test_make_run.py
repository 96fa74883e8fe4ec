"""`make run` smoke test: it starts, answers, makes demo lines searchable, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]


def _processes_with_marker(marker: str) -> list[int]:
    """Pids whose environment carries ``marker`` (every process `make run` starts inherits it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _command(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _nice(pid: int) -> int:
    # /proc/<pid>/stat: the command is in parentheses and may hold spaces; nice is field 19.
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_starts_serves_demo_lines_and_stops_cleanly(tmp_path: Path) -> None:
    broker_port, query_port = free_port(), free_port()
    marker = f"LLTEST_MARKER={tmp_path}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    env.update({
        "LLTEST_MARKER": str(tmp_path),
        "LOGLAKE_BROKER__LISTEN": f"127.0.0.1:{broker_port}",
        "LOGLAKE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{broker_port}",
        "LOGLAKE_QUERY__PORT": str(query_port),
        "LOGLAKE_STORAGE__DATA_ROOT": str(tmp_path / "data"),
        "LOGLAKE_DEMO__DIR": str(tmp_path / "demo"),
        "LOGLAKE_DEMO__LINES_PER_SECOND": "100",
        "LOGLAKE_SHIPPER__INCLUDE": f'["{tmp_path}/demo/*.log"]',
        "LOGLAKE_SHIPPER__STATE_DIR": str(tmp_path / "shipper"),
        "LOGLAKE_LOG__DIR": str(tmp_path / "log"),
        "LOGLAKE_CONFIG": str(REPO / "loglake.toml"),
        # Two ingest processes whatever the machine's cores (the default is one per core).
        "LOGLAKE_INGEST__WORKERS": "2",
    })
    out_path = tmp_path / "make-run.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(["make", "-C", str(REPO), "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: "loglake is up" in out_path.read_text(errors="replace") or proc.poll() is not None,
                   120, what="the banner")
        banner = out_path.read_text()
        assert proc.poll() is None, banner
        url = f"http://127.0.0.1:{query_port}"
        assert f"curl -s '{url}/api/v1/search" in banner
        assert "loglake search 'level:error service:api' --since 15m" in banner
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}

        def demo_rows() -> list[dict]:
            r = httpx.get(f"{url}/api/v1/search", params={"q": "service:api", "start": "now-5m"}, timeout=10)
            return r.json()["rows"] if r.status_code == 200 else []

        rows = wait_until(demo_rows, 60, what="demo lines searchable")
        assert all(r["service"] == "api" for r in rows)
        running = _processes_with_marker(marker)
        # make, the supervisor, broker, two ingest workers, serve, ship, demo
        assert len(running) >= 8, running
        commands = {pid: _command(pid) for pid in running}
        ingest = [pid for pid, argv in commands.items() if argv[-1:] == ["ingest"]]
        assert len(ingest) == 2, commands
        assert (tmp_path / "log" / "ingest-2.log").exists()
        # On the embedded broker: four partitions for two workers (loglake.toml says three), which
        # each hold two, and the shorter group session, both told to every child.
        for pid in ingest:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
            assert b"LOGLAKE_KAFKA__PARTITIONS=4" in environ and b"LOGLAKE_INGEST__SESSION_TIMEOUT_S=3.0" in environ

        def last_assignments() -> list[list[str]]:
            held = []
            for name in ("ingest.log", "ingest-2.log"):
                lines = [json.loads(x) for x in (tmp_path / "log" / name).read_text().splitlines() if x.startswith("{")]
                assigned = [x["partitions"] for x in lines if x.get("msg") == "partitions assigned"]
                held.append(assigned[-1] if assigned else [])
            return held if all(len(h) == 2 for h in held) else []

        assert sorted(p for h in wait_until(last_assignments, 30, what="two partitions each") for p in h) == \
            [f"loglake.logs/{i}" for i in range(4)]
        # Maintenance runs at a lower CPU priority than the stages users wait on.
        maintain = [pid for pid, argv in commands.items() if argv[-1:] == ["maintain"]]
        assert len(maintain) == 1, commands
        assert _nice(maintain[0]) == _nice(ingest[0]) + 10

        os.killpg(proc.pid, signal.SIGINT)          # what Ctrl-C in a terminal does
        proc.wait(60)
        deadline = time.monotonic() + 10
        while _processes_with_marker(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_with_marker(marker) == [], "a process outlived Ctrl-C"
        assert "stopped." in out_path.read_text()
    finally:
        for pid in _processes_with_marker(marker):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
