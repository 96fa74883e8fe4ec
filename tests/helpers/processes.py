"""Running loglake's real processes in tests: config by environment, start, kill, wait."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_thread(app: Any, port: int) -> Iterator[str]:
    """``app`` served by a real uvicorn server on 127.0.0.1:``port`` in a thread; yields its URL."""
    import uvicorn

    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                       lifespan="off"))
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: uv.started or not thread.is_alive(), 10, 0.02, "uvicorn to start")
    assert uv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(10)


def wait_until(check: Callable[[], Any], timeout_s: float, interval_s: float = 0.2, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value: {last!r}")


@dataclass
class Stack:
    """One isolated loglake deployment inside a test's temporary directory."""

    root: Path
    bootstrap: str
    topic: str
    query_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
        env.update({
            "LOGLAKE_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "LOGLAKE_KAFKA__TOPIC": self.topic,
            "LOGLAKE_INGEST__GROUP_ID": f"{self.topic}-ingest",
            "LOGLAKE_INGEST__FLUSH_INTERVAL_S": "0.5",
            "LOGLAKE_STORAGE__DATA_ROOT": str(self.data_root),
            "LOGLAKE_SHIPPER__INCLUDE": json.dumps([str(self.root / "in" / "*.log")]),
            "LOGLAKE_SHIPPER__STATE_DIR": str(self.root / "shipper"),
            "LOGLAKE_SHIPPER__POLL_INTERVAL_S": "0.05",
            "LOGLAKE_SHIPPER__RESCAN_INTERVAL_S": "0.5",
            "LOGLAKE_SHIPPER__PARTIAL_LINE_TIMEOUT_S": "1.0",
            "LOGLAKE_SHIPPER__HOST": "testhost",
            "LOGLAKE_QUERY__PORT": str(self.query_port),
            "LOGLAKE_AUTH__ENABLED": "false",     # keys are tested in test_auth.py
        })
        env.update(extra)
        return env

    @property
    def input_dir(self) -> Path:
        d = self.root / "in"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start(self, command: str, *args: str, name: str | None = None, **env: str) -> subprocess.Popen[bytes]:
        """Start ``loglake <command>`` as a real process; output goes to logs/<name>.log."""
        name = name or command
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "loglake", command, *args], cwd=self.root,
                                    env=self.env(**env), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, timeout_s: float = 30) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(ready, timeout_s, what="query server ready")

    def search(self, q: str = "", **params: Any) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/api/v1/search", params={"q": q, **params}, timeout=30)
        resp.raise_for_status()
        return resp.json()


def running(stack: Stack, proc: str = "ingest") -> Callable[[], None]:
    """A check that fails, with the log tail, once the worker has exited."""
    def check() -> None:
        assert stack.procs[proc].poll() is None, (
            f"{proc} exited with {stack.procs[proc].returncode}:\n{stack.log_text(proc)[-3000:]}")
    return check
