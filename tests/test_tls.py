"""HTTPS straight from `loglake serve`: a real server process with a certificate made here."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import free_port, wait_until
from tests.helpers.tls import self_signed


def _env(tmp: Path, port: int, **extra: str) -> dict[str, str]:
    (tmp / "empty.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    env.update({"LOGLAKE_CONFIG": str(tmp / "empty.toml"), "LOGLAKE_STORAGE__DATA_ROOT": str(tmp / "data"),
                "LOGLAKE_QUERY__PORT": str(port), **extra})
    return env


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = _env(tmp_path, port, LOGLAKE_QUERY__TLS_CERT=str(cert), LOGLAKE_QUERY__TLS_KEY=str(key))
    proc = subprocess.Popen([sys.executable, "-m", "loglake", "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"

    def up() -> bool:
        try:
            trusted = ssl.create_default_context(cafile=str(cert))
            return httpx.get(f"{url}/healthz", verify=trusted, timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None
    try:
        wait_until(up, 20, 0.1, "the HTTPS server")
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        yield url, cert
    finally:
        proc.terminate()
        proc.wait(10)


def test_serves_https_with_the_configured_certificate(https_server: tuple[str, Path]) -> None:
    url, cert = https_server
    resp = httpx.get(f"{url}/healthz", verify=ssl.create_default_context(cafile=str(cert)), timeout=5)
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    # The API is there and still asks for a key over TLS.
    assert httpx.get(f"{url}/api/v1/search", verify=ssl.create_default_context(cafile=str(cert)),
                     timeout=5).status_code == 401


def test_plain_http_is_not_answered_on_the_tls_port(https_server: tuple[str, Path]) -> None:
    url, _ = https_server
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)


def test_a_client_that_does_not_trust_the_certificate_is_refused(https_server: tuple[str, Path]) -> None:
    url, _ = https_server
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)        # the system CAs do not know our certificate


@pytest.mark.parametrize("extra", [{"LOGLAKE_QUERY__TLS_CERT": "{cert}"}, {"LOGLAKE_QUERY__TLS_KEY": "{key}"},
                                   {"LOGLAKE_QUERY__TLS_CERT": "/nonexistent.crt", "LOGLAKE_QUERY__TLS_KEY": "{key}"}],
                         ids=["cert without key", "key without cert", "missing file"])
def test_bad_tls_settings_stop_serve_with_exit_2(tmp_path: Path, extra: dict[str, str]) -> None:
    cert, key = self_signed(tmp_path)
    env = _env(tmp_path, free_port(), **{k: v.format(cert=cert, key=key) for k, v in extra.items()})
    proc = subprocess.run([sys.executable, "-m", "loglake", "serve"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "tls_" in proc.stderr
