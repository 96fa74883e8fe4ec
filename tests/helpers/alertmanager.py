"""A real Alertmanager (Debian's ``prometheus-alertmanager``) on a loopback port, and a webhook receiver.

Without the binary the tests that need it skip, printing why; in CI (``CI`` set) they fail instead.
``make test`` installs it (as root, with apt) like chromium.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.processes import free_port, wait_until

ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")


def require_alertmanager() -> None:
    """Skip (printing why) without Debian's Alertmanager; in CI, fail instead."""
    if ALERTMANAGER.exists():
        return
    reason = (f"the alerting tests need Debian's Alertmanager at {ALERTMANAGER} "
              "(apt-get install prometheus-alertmanager; `make test` does it when run as root)")
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    print(f"\nSKIP: {reason}", file=sys.__stderr__)
    pytest.skip(reason)


@dataclass
class Receiver:
    """Every JSON body POSTed to it, with its path and headers, in order. ``before_answer``, when set, is
    called with the path and body of each POST after it is recorded and before it is answered (to kill
    the sender while it waits for the answer)."""

    url: str
    received: list[tuple[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    before_answer: Callable[[str, Any], None] | None = None

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [b for p, b in self.received if p == path]

    def posts(self, path: str) -> list[tuple[dict[str, str], Any]]:
        """(headers, body) of each POST to ``path``."""
        with self.lock:
            return [(h, b) for (p, b), h in zip(self.received, self.headers, strict=True) if p == path]


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on a loopback port."""
    port = free_port()
    rec = Receiver(f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parsed = json.loads(body)
            with rec.lock:
                rec.received.append((self.path, parsed))
                rec.headers.append({k.lower(): v for k, v in self.headers.items()})
            if rec.before_answer is not None:
                rec.before_answer(self.path, parsed)
            try:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass        # the sender is gone (killed by before_answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def alertmanager(tmp: Path, webhook_url: str) -> Iterator[str]:
    """Alertmanager sending every alert (each its own group, resolved ones too) to ``webhook_url``,
    with waits of about a second; yields its base URL."""
    require_alertmanager()
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "alertmanager.yml"
    config.write_text(json.dumps({
        "route": {"receiver": "hook", "group_by": ["..."], "group_wait": "500ms", "group_interval": "1s",
                  "repeat_interval": "3s"},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp / "alertmanager.log", "ab") as out:
        proc = subprocess.Popen([str(ALERTMANAGER), f"--config.file={config}", f"--storage.path={tmp / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "alertmanager.log").read_text()[-2000:]
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 20, 0.1, "Alertmanager ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
