"""Container runtime wrapping is recognised by each line's shape, never by a file's name or place.

A file named like a Docker json-file log (``*-json.log``) or kept where the
kubelet keeps pod logs only *suggests* a wrapper: the shipper joins a line to
the next only if it is really a runtime's partial line, and ingest unwraps a
line only if it really is a Docker or CRI line. Each test reads a real file
with the shipper's file layer, sends its chunks through a real frame, and
parses the records with the real normaliser (no broker: the frame is the
whole contract between the two).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from ingest.batch import RecordRun, raw_table
from ingest.normalise import Normaliser
from loglake.core.config import Config
from loglake.core.frame import FrameMeta, decode_frame, encode_frame
from shippers.shipper import Shipper
from shippers.watcher import FileWatcher

OBSERVED_US = 1_717_243_200_000_000             # 2024-06-01T12:00:00Z, long after every line below
UID = "5f3c1e2a-1b2c-4d5e-8f90-123456789abc"
CONTAINER_ID = "0123456789abcdef" * 4


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)     # type: ignore[misc]


@pytest.fixture(scope="module")
def normaliser() -> Iterator[Normaliser]:
    n = Normaliser()
    yield n
    n.close()


def _ship_and_parse(tmp_path: Path, relative: str, lines: list[str], n: Normaliser) -> tuple[str, list[dict[str, Any]]]:
    """Write ``lines`` to ``tmp_path/relative``, read the file as the shipper does, parse what it sends.

    Returns the wrapper the shipper suggested and the parsed records.
    """
    path = tmp_path / "logs" / relative
    path.parent.mkdir(parents=True)
    path.write_bytes("".join(line + "\n" for line in lines).encode())
    s = Shipper(Config.model_validate({"shipper": {
        "include": [str(tmp_path / "logs" / "**" / "*.log")], "state_dir": str(tmp_path / "state"),
        "fingerprint_bytes": 32, "host": "test-host", "partial_line_timeout_s": 1e9}}))
    try:
        s.files.scan(first=True)
        (w,) = s.files.watchers.values()
        runs = []
        while (chunk := w.read(1 << 16)) is not None:
            runs.append(_run(s, w, chunk.first_offset, chunk.end_offset, chunk.data, chunk.offsets))
        return w.wrapper, n(raw_table(runs)).to_pylist()
    finally:
        for watcher in s.files.watchers.values():
            watcher.close()


def _run(s: Shipper, w: FileWatcher, first: int, end: int, data: bytes, offsets: Any) -> RecordRun:
    meta = FrameMeta(source_id=w.source_id, source=w.path, host="test-host", service=s.service_for(w),
                     tenant="default", first_offset=first, end_offset=end, observed_us=OBSERVED_US,
                     count=len(offsets) - 1, labels=s.labels_for(w), wrapper=w.wrapper)
    frame = decode_frame(encode_frame(meta, data, offsets))
    assert frame.meta.wrapper == w.wrapper
    return RecordRun(frame.meta, pa.array(frame.records.to_pylist(), pa.binary()))


LEVELS = ["info", "warn", "error", "debug", "info", "warn", "error", "info", "debug", "info"]
APP_JSON = [orjson.dumps({"time": f"2024-03-04T05:06:{i:02d}.5Z", "level": LEVELS[i], "msg": f"event {i}",
                          "log": "a key named like Docker's", "stream": "stdout"}).decode() for i in range(10)]


@pytest.mark.parametrize("relative", [
    "app-json.log",                                                    # named like Docker's json-file log
    f"{CONTAINER_ID}-json.log",
    f"shop_web-7d4b9c-xk2p1_{UID}/app/0.log",                          # placed like a kubelet pod log
])
def test_an_application_json_log_keeps_its_lines_apart_with_their_time_and_level(
        tmp_path: Path, normaliser: Normaliser, relative: str) -> None:
    suggested, rows = _ship_and_parse(tmp_path, relative, APP_JSON, normaliser)
    assert suggested in ("docker", "cri")          # the path did suggest a wrapper; the lines decided
    assert [r["message"] for r in rows] == [f"event {i}" for i in range(10)]
    assert [r["ts"] for r in rows] == [utc(2024, 3, 4, 5, 6, i, 500000) for i in range(10)]
    assert [r["level"] for r in rows] == LEVELS
    assert all(dict(r["attrs"])["log"] == "a key named like Docker's" for r in rows)


def _docker(log: str, stream: str = "stdout", second: int = 0) -> str:
    return orjson.dumps({"log": log, "stream": stream, "time": f"2024-03-04T05:07:{second:02d}.25Z"}).decode()


def test_a_docker_json_file_log_is_unwrapped_and_its_partial_lines_joined(
        tmp_path: Path, normaliser: Normaliser) -> None:
    lines = [_docker("2024-03-04 05:06:07,000 WARN disk almost full\n"),
             _docker('{"level":"error","msg":"a very long', "stderr", 1), _docker(" json line", "stderr", 1),
             _docker('"}\n', "stderr", 1),
             _docker("no time here: C:\\new\n", second=2)]
    suggested, rows = _ship_and_parse(tmp_path, f"{CONTAINER_ID}-json.log", lines, normaliser)
    assert suggested == "docker"
    assert [r["message"] for r in rows] == ["disk almost full", "a very long json line", "no time here: C:\\new"]
    assert [r["level"] for r in rows] == ["warn", "error", "unknown"]
    assert [r["ts"] for r in rows] == [utc(2024, 3, 4, 5, 6, 7), utc(2024, 3, 4, 5, 7, 1, 250000),
                                       utc(2024, 3, 4, 5, 7, 2, 250000)]       # the runtime's time
    assert [dict(r["attrs"])["stream"] for r in rows] == ["stdout", "stderr", "stdout"]


def test_a_cri_pod_log_is_unwrapped_and_its_partial_lines_joined(tmp_path: Path, normaliser: Normaliser) -> None:
    lines = ["2024-03-04T05:06:09.5Z stdout F 2024-03-04T05:06:07Z INFO listening on :8080",
             '2024-03-04T05:06:10Z stderr P {"level":"warn","msg":"first ',
             '2024-03-04T05:06:10Z stderr F half, second half"}',
             "2024-03-04T05:06:11.75+01:00 stdout F plain words"]
    suggested, rows = _ship_and_parse(tmp_path, f"shop_web-7d4b9c-xk2p1_{UID}/nginx/0.log", lines, normaliser)
    assert suggested == "cri"
    assert [r["message"] for r in rows] == ["listening on :8080", "first half, second half", "plain words"]
    assert [r["level"] for r in rows] == ["info", "warn", "unknown"]
    assert [r["ts"] for r in rows] == [utc(2024, 3, 4, 5, 6, 7), utc(2024, 3, 4, 5, 6, 10),
                                       utc(2024, 3, 4, 4, 6, 11, 750000)]
    assert [(dict(r["attrs"])["stream"], dict(r["attrs"])["k8s.container.name"]) for r in rows] == [
        ("stdout", "nginx"), ("stderr", "nginx"), ("stdout", "nginx")]


def test_a_file_mixing_docker_lines_and_other_lines_unwraps_only_the_docker_ones(
        tmp_path: Path, normaliser: Normaliser) -> None:
    lines = [APP_JSON[0], _docker("2024-03-04 05:06:08,000 ERROR from the runtime\n"), "plain text, no wrapper",
             '{"log":"a docker-like key but no stream or time\\n"}']
    _, rows = _ship_and_parse(tmp_path, "mixed-json.log", lines, normaliser)
    assert [r["message"] for r in rows] == ["event 0", "from the runtime", "plain text, no wrapper",
                                            "a docker-like key but no stream or time\n"]
    assert [dict(r["attrs"]).get("stream") for r in rows] == ["stdout", "stdout", None, None]
