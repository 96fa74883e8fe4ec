"""Issue 19, the shipper's part: compressed rotated files, `[[shipper.inputs]]`, tenant names in the
shipper's configuration, and start-up retries that a signal stops and a deadline ends."""

from __future__ import annotations

import collections
import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from loglake.core.config import Config, ConfigError, load_config
from shippers.shipper import Shipper
from tests.helpers.corpus import make_lines, now_utc, uids_in
from tests.helpers.processes import Stack, free_port, wait_until

# -- helpers -----------------------------------------------------------------------------------


def _lines(n: int, start_uid: int) -> list:
    return make_lines(n, now_utc() - timedelta(minutes=30) + timedelta(seconds=start_uid), timedelta(milliseconds=10),
                      start_uid=start_uid)


def _text(lines: list) -> bytes:
    return "".join(ln.text + "\n" for ln in lines).encode()


def _append(path: Path, lines: list) -> None:
    with open(path, "ab") as f:
        f.write(_text(lines))


def _rows(stack: Stack) -> list[dict]:
    return stack.search("", start="now-2h", end="now+1h", limit=10_000)["rows"]


def _wait_rows(stack: Stack, n: int, timeout_s: float = 30) -> list[dict]:
    """At least ``n`` rows stored; then a moment more, in which a late duplicate would arrive."""
    wait_until(lambda: len(_rows(stack)) >= n, timeout_s, interval_s=0.3, what=f"{n} rows")
    time.sleep(1.0)
    return _rows(stack)


def _assert_each_once(rows: list[dict], n: int) -> None:
    # A .gz stored as it is would be a binary row (flagged invalid_utf8) with no uid: uids_in fails on it.
    counts = collections.Counter(uids_in(rows))
    assert sorted(counts) == list(range(n)), "a line is missing"
    assert max(counts.values()) == 1, f"stored twice: {sorted(u for u, c in counts.items() if c > 1)[:10]}"


def _start(stack: Stack, **ship_env: str) -> None:
    stack.start("ingest")
    stack.start("serve")
    stack.start("ship", **ship_env)
    stack.wait_ready()


#: Rotated names in the glob, as the README advises, and compressed files read.
GZ_ENV = {"LOGLAKE_SHIPPER__INCLUDE_COMPRESSED": "true"}


def _gz_glob(stack: Stack) -> dict[str, str]:
    return {**GZ_ENV, "LOGLAKE_SHIPPER__INCLUDE": json.dumps([str(stack.input_dir / "app.log*")])}


# -- 8: rotated .gz files ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 300], ids=["shorter-than-a-fingerprint", "fingerprinted"])
def test_a_gz_file_is_decompressed_and_its_lines_stored_once(stack: Stack, n: int) -> None:
    (stack.input_dir / "app.log.1.gz").write_bytes(gzip.compress(_text(_lines(n, 0))))
    _start(stack, **_gz_glob(stack))
    _assert_each_once(_wait_rows(stack, n), n)
    wait_until(lambda: "compressed file read" in stack.log_text("ship"), 10, what="the .gz read to its end")


@pytest.mark.parametrize("n", [3, 300], ids=["shorter-than-a-fingerprint", "fingerprinted"])
def test_a_shipped_file_compressed_after_it_was_let_go_is_not_shipped_again(stack: Stack, n: int) -> None:
    """logrotate's compress: the rotated file is gone, and only then its .gz appears."""
    log = stack.input_dir / "app.log"
    _append(log, _lines(n, 0))
    _start(stack, **_gz_glob(stack))
    _wait_rows(stack, n)
    os.rename(log, stack.input_dir / "app.log.1")
    _append(stack.input_dir / "app.log.1", _lines(10, n))      # written just before the rename took
    _append(log, _lines(10, n + 10))
    _wait_rows(stack, n + 20)
    rotated = stack.input_dir / "app.log.1"
    staged = stack.root / "app.log.1.gz"                        # outside the glob until complete
    staged.write_bytes(gzip.compress(rotated.read_bytes()))
    rotated.unlink()
    wait_until(lambda: "released file" in stack.log_text("ship"), 10, what="the rotated file let go")
    os.rename(staged, stack.input_dir / "app.log.1.gz")
    time.sleep(1.0)                     # rescans every 0.5 s
    _append(log, _lines(10, n + 20))
    _assert_each_once(_wait_rows(stack, n + 30), n + 30)
    assert "compressed file read" in stack.log_text("ship")


def test_a_gz_that_appears_while_its_original_is_read_is_not_shipped_again(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    _append(log, _lines(200, 0))
    _start(stack, **_gz_glob(stack))
    _wait_rows(stack, 200)
    os.rename(log, stack.input_dir / "app.log.1")
    (stack.input_dir / "app.log.1.gz").write_bytes(gzip.compress((stack.input_dir / "app.log.1").read_bytes()))
    time.sleep(1.5)                     # rescans every 0.5 s: the .gz is seen while app.log.1 is open
    (stack.input_dir / "app.log.1").unlink()
    _append(log, _lines(20, 200))
    wait_until(lambda: "released file" in stack.log_text("ship"), 10, what="the rotated file let go")
    time.sleep(1.5)                     # and the .gz is looked at again after that
    _assert_each_once(_wait_rows(stack, 220), 220)


def test_a_file_compressed_while_the_shipper_was_down_ships_only_its_unsent_tail(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    _append(log, _lines(300, 0))
    _start(stack, **_gz_glob(stack))
    _wait_rows(stack, 300)
    stack.kill("ship", signal.SIGINT)   # a clean stop: the checkpoint is saved
    _append(log, _lines(100, 300))
    sent = log.stat().st_size
    (stack.input_dir / "app.log.1.gz").write_bytes(gzip.compress(log.read_bytes()))
    log.unlink()
    stack.start("ship", name="ship-2", **_gz_glob(stack))
    _assert_each_once(_wait_rows(stack, 400), 400)
    watching = [json.loads(line) for line in stack.log_text("ship-2").splitlines()
                if line.startswith("{") and '"watching file"' in line]
    assert [(Path(w["path"]).name, 0 < w["offset"] < sent) for w in watching] == [("app.log.1.gz", True)], watching


# -- 9: [[shipper.inputs]] adds to the top-level input ------------------------------------------


def test_inputs_tables_add_to_the_top_level_input(stack: Stack) -> None:
    other = stack.root / "other"
    other.mkdir()
    _append(stack.input_dir / "top.log", _lines(50, 0))          # the stack's top-level include
    _append(other / "extra.log", _lines(50, 50))
    _start(stack, LOGLAKE_SHIPPER__INPUTS=f'[{{include = [{json.dumps(str(other / "*.log"))}], service = "extra"}}]')
    rows = _wait_rows(stack, 100)
    _assert_each_once(rows, 100)
    # Which input read each line (JSON lines, uid % 3 == 0, name their own service).
    services = {(u < 50, r["service"]) for u, r in zip(uids_in(rows), rows, strict=True) if u % 3}
    assert services == {(True, "top"), (False, "extra")}
    assert "setting ignored" not in stack.log_text("ship")


def test_a_file_both_inputs_match_belongs_to_the_inputs_table_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "app.log").write_bytes(_text(_lines(5, 0)))
    glob = str(tmp_path / "*.log")
    cfg = Config.model_validate({"shipper": {"include": [glob], "service": "top", "state_dir": str(tmp_path / "st"),
                                             "inputs": [{"include": [glob], "service": "table"}]}})
    s = Shipper(cfg)
    try:
        with caplog.at_level(logging.WARNING, logger="loglake.shipper"):
            s.files.scan(first=True)
            s.files.scan()
        (w,) = s.files.watchers.values()
        assert s.service_for(w) == "table"
        shared = [r for r in caplog.records if "more than one input" in r.getMessage()]
        assert len(shared) == 1, "once per file, not per scan"
        assert (shared[0].input, shared[0].ignored) == ("shipper.inputs.0", "shipper")  # type: ignore[attr-defined]
    finally:
        for w in s.files.watchers.values():
            w.close()


def _warnings(caplog: pytest.LogCaptureFixture, shipper: dict) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="loglake.shipper"):
        Shipper(Config.model_validate({"shipper": shipper}))
    return [getattr(r, "reason", "") for r in caplog.records if r.getMessage() == "setting ignored"]


def test_ignored_settings_are_warned_about_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = {"state_dir": str(tmp_path / "st")}
    table = {"include": [str(tmp_path / "*.log")]}
    assert _warnings(caplog, {**state, "include": [], "inputs": [table]}) == []
    assert _warnings(caplog, {**state, "include": [str(tmp_path / "*.log")]}) == []
    # The top-level input reads nothing, so its tenant and service mean nothing.
    reasons = _warnings(caplog, {**state, "include": [], "tenant": "acme", "service": "api", "inputs": [table]})
    assert len(reasons) == 2 and all("shipper.include is empty" in r for r in reasons)
    assert "shipper.service" in reasons[0] and "shipper.tenant" in reasons[1]
    # The default include is read too once tables are given: say so, so nobody is surprised.
    (reason,) = _warnings(caplog, {**state, "inputs": [table]})
    assert "shipper.include is not set" in reason
    (reason,) = _warnings(caplog, {**state, "include": [], "inputs": [{**table, "format": "cri",
                                                                       "multiline": {"preset": "java"}}]})
    assert reason.startswith("shipper.inputs.0.multiline is ignored")
    (reason,) = _warnings(caplog, {**state, "include": [str(tmp_path / "*.gz")]})
    assert "include_compressed" in reason


# -- 10: tenant names checked when the configuration loads --------------------------------------

BAD_TENANTS = ["../x", "a/b", "%2e%2e", ""]


@pytest.mark.parametrize("tenant", BAD_TENANTS)
def test_bad_shipper_tenant_is_a_configuration_error(tenant: str) -> None:
    with pytest.raises(ConfigError, match=r"shipper\.tenant \(env LOGLAKE_SHIPPER__TENANT\): .*invalid tenant"):
        load_config(None, {"LOGLAKE_CONFIG": "/dev/null", "LOGLAKE_SHIPPER__TENANT": tenant})
    tables = f'[{{include = ["a"]}}, {{include = ["b"], tenant = {json.dumps(tenant)}}}]'
    with pytest.raises(ConfigError, match=r"shipper\.inputs\.1\.tenant .*invalid tenant"):
        load_config(None, {"LOGLAKE_CONFIG": "/dev/null", "LOGLAKE_SHIPPER__INPUTS": tables})
    assert load_config(None, {"LOGLAKE_CONFIG": "/dev/null", "LOGLAKE_SHIPPER__TENANT": "team-a.prod_1"})


def _ship(tmp_path: Path, broker: str, config: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "in").mkdir(exist_ok=True)
    path = tmp_path / "loglake.toml"
    path.write_text(f'[kafka]\nbootstrap_servers = "{broker}"\ntopic = "hardening.tenants"\n'
                    f'[shipper]\ninclude = [{json.dumps(str(tmp_path / "in" / "*.log"))}]\n'
                    f'state_dir = {json.dumps(str(tmp_path / "st"))}\n' + config)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    return subprocess.run([sys.executable, "-m", "loglake", "--config", str(path), "ship", "--once"],
                          env={**base, **env}, capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("tenant", ["../x", "a/b", "%2e%2e"])
def test_ship_refuses_a_bad_tenant_naming_its_key(tmp_path: Path, broker: str, tenant: str) -> None:
    done = _ship(tmp_path, broker, f'tenant = "{tenant}"\n')
    assert done.returncode == 2 and "shipper.tenant" in done.stderr, done
    done = _ship(tmp_path, broker, f'[[shipper.inputs]]\ninclude = ["/nowhere/*.log"]\ntenant = "{tenant}"\n')
    assert done.returncode == 2 and "shipper.inputs.0.tenant" in done.stderr, done
    done = _ship(tmp_path, broker, "", LOGLAKE_SHIPPER__TENANT=tenant)
    assert done.returncode == 2 and "LOGLAKE_SHIPPER__TENANT" in done.stderr, done
    assert _ship(tmp_path, broker, 'tenant = "acme"\n').returncode == 0


# -- 11: start-up retries: bounded, stopped by a signal, with the cause logged ------------------


@pytest.fixture
def silent_port() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that accepts connections and never says a word (not Kafka: TLS or another service),
    and the connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    closing = threading.Event()

    def accept() -> None:
        while not closing.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], held
    closing.set()
    server.close()
    for c in held:
        c.close()


def _closed_port() -> int:
    return free_port()      # nothing listens there once the probe socket is closed


def _start_ship(tmp_path: Path, port: int, **env: str) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "ship.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    with open(out, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loglake", "ship"], cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, text=True,
            env={**base, "LOGLAKE_CONFIG": "/dev/null", "LOGLAKE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
                 "LOGLAKE_SHIPPER__STATE_DIR": str(tmp_path / "st"),
                 "LOGLAKE_SHIPPER__INCLUDE": json.dumps([str(tmp_path / "*.log")]), **env},
            start_new_session=True)
    return proc, out


def _exit_within(proc: subprocess.Popen[str], seconds: float) -> int | None:
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ship_stops_at_once_on_a_signal_while_the_port_is_closed(tmp_path: Path, sig: int) -> None:
    proc, out = _start_ship(tmp_path, _closed_port())
    wait_until(lambda: "Unable connect" in out.read_text(), 15, 0.1, "a failed attempt")
    time.sleep(0.3)
    proc.send_signal(sig)
    assert _exit_within(proc, 5) == 0, out.read_text()[-2000:]
    text = out.read_text()
    assert "stopped while waiting for the broker" in text
    # The cause, not just aiokafka's "Unable connect ...:".
    assert "ConnectionRefusedError" in text and "Connect call failed" in text


def test_ship_stops_at_once_on_sigterm_while_a_non_kafka_port_says_nothing(
        tmp_path: Path, silent_port: tuple[int, list[socket.socket]]) -> None:
    port, accepted = silent_port
    proc, out = _start_ship(tmp_path, port)
    wait_until(lambda: accepted or proc.poll() is not None, 20, 0.05, "a connection attempt")
    time.sleep(0.5)                   # in the middle of an attempt that will never be answered
    assert proc.poll() is None, out.read_text()
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert _exit_within(proc, 5) == 0, out.read_text()[-2000:]
    assert time.monotonic() - started < 5
    assert "stopped while waiting for the broker" in out.read_text()


def test_ship_gives_up_after_startup_timeout_with_the_cause(tmp_path: Path) -> None:
    proc, out = _start_ship(tmp_path, _closed_port(), LOGLAKE_SHIPPER__STARTUP_TIMEOUT_S="2")
    assert _exit_within(proc, 15) == 1, out.read_text()[-2000:]
    last = out.read_text().strip().splitlines()[-1]
    assert last.startswith("loglake ship: cannot reach the broker at 127.0.0.1:"), last
    assert "shipper.startup_timeout_s=2" in last and "ConnectionRefusedError" in last


def test_startup_timeout_is_in_the_documented_configuration() -> None:
    shipped = tomllib.loads(Path(__file__).parents[1].joinpath("loglake.toml").read_text())
    assert shipped["shipper"]["startup_timeout_s"] == Config().shipper.startup_timeout_s
