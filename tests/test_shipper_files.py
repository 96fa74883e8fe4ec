"""The shipper's file layer, without a broker: reading, joining, identifying and checkpointing files.

Everything here runs on real files in a temporary directory: ``FileWatcher``
reading appends in arbitrary pieces, over-long and partial lines, multiline
rules and container-runtime joining, fingerprints, the shipper's scan and the
checkpoint store, and the configuration that drives them.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from loglake.core.config import Config, InputConfig, MultilineConfig, ShipperConfig
from loglake.core.frame import FrameMeta, decode_frame, encode_frame
from shippers.checkpoint import CheckpointStore, FileCheckpoint
from shippers.discovery import discover
from shippers.fingerprint import fingerprint, head_hash, inode_key
from shippers.inputs import kubernetes_labels, wrapper_for
from shippers.multiline import LineJoiner, line_starts
from shippers.shipper import Shipper
from shippers.watcher import Chunk, FileWatcher

NEVER = 1e9          # a timeout that does not pass during a test
BIG_FRAME = 1 << 16  # a frame size no test line comes near


# -- helpers ------------------------------------------------------------------


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _records(chunk: Chunk) -> list[bytes]:
    """The records of a chunk: its data split at its offsets."""
    offsets = chunk.offsets.tolist()
    return [chunk.data[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _drain(w: FileWatcher, max_bytes: int) -> list[Chunk]:
    """Read until the watcher has nothing more to give right now."""
    chunks: list[Chunk] = []
    while (chunk := w.read(max_bytes)) is not None:
        chunks.append(chunk)
        assert len(chunks) < 100_000, "the watcher keeps returning chunks"
    return chunks


def _split(data: bytes, starts: np.ndarray) -> list[bytes]:
    """``data`` cut at the given record starts."""
    bounds = [int(s) for s in starts] + [len(data)]
    return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _joined(joiner: LineJoiner, lines: list[str]) -> list[bytes]:
    """The records ``joiner`` makes of these lines (each given a newline)."""
    data = "".join(line + "\n" for line in lines).encode()
    return _split(data, joiner.record_starts(data, line_starts(data)))


def _text(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


WatcherFactory = Callable[..., FileWatcher]


@pytest.fixture
def watcher() -> Iterator[WatcherFactory]:
    """Opens watchers on a path (offset 0, nothing waited for by default); closes them after the test."""
    opened: list[FileWatcher] = []

    def make(path: Path, *, offset: int = 0, partial_timeout_s: float = NEVER,
             joiner: LineJoiner | None = None, max_line_bytes: int = 1 << 20) -> FileWatcher:
        w = FileWatcher(str(path), key="k", source_id="s", offset=offset, input_index=0,
                        partial_timeout_s=partial_timeout_s, joiner=joiner, max_line_bytes=max_line_bytes)
        opened.append(w)
        return w

    yield make
    for w in opened:
        w.close()


ShipperFactory = Callable[..., Shipper]


@pytest.fixture
def make_shipper(tmp_path: Path) -> Iterator[ShipperFactory]:
    """A Shipper over ``tmp_path/logs`` with a small fingerprint; its files are closed after the test."""
    made: list[Shipper] = []
    (tmp_path / "logs").mkdir()

    def make(**shipper: Any) -> Shipper:
        settings_: dict[str, Any] = {
            "include": [str(tmp_path / "logs" / "*.log")],
            "state_dir": str(tmp_path / "state"),
            "fingerprint_bytes": 32,
            "host": "test-host",
        }
        settings_.update(shipper)
        s = Shipper(Config.model_validate({"shipper": settings_}))
        made.append(s)
        return s

    yield make
    for s in made:
        for w in s.files.watchers.values():
            w.close()


HEADER = b"2024-05-01T12:00:00Z app started, pid 4242, version 1.2.3\n"   # longer than 32 bytes


# -- FileWatcher: complete lines from appends ---------------------------------

_CHARS = st.sampled_from(list("abz 09:\t-") + ["é", "ß", "€", "日", "本", "😀", "🚀"])
_LINES = st.lists(st.tuples(st.text(_CHARS, max_size=15), st.booleans()), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=_LINES, max_bytes=st.integers(64, 4096), data=st.data())
def test_appends_in_arbitrary_pieces_read_back_as_the_original_lines(
        lines: list[tuple[str, bool]], max_bytes: int, data: st.DataObject) -> None:
    expected = [text.encode() + (b"\r\n" if crlf else b"\n") for text, crlf in lines]
    content = b"".join(expected)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(content) - 1), max_size=30), label="cuts")
                  if len(content) > 1 else set())
    pieces = [content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)], strict=True)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "app.log"
        path.write_bytes(b"")
        w = FileWatcher(str(path), key="k", source_id="s", offset=0, input_index=0, partial_timeout_s=NEVER)
        try:
            chunks: list[Chunk] = []
            for piece in pieces:
                _append(path, piece)
                chunks += _drain(w, max_bytes)
            end_offset, acked = w.offset, w.acked
        finally:
            w.close()
    assert b"".join(c.data for c in chunks) == content
    position = 0
    for c in chunks:
        assert c.first_offset == position
        assert c.truncated_from == 0 and 0 < len(c.data) <= max_bytes
        assert c.offsets.dtype == np.dtype("<u4")
        assert int(c.offsets[0]) == 0 and int(c.offsets[-1]) == len(c.data)
        position = c.end_offset
    assert [r for c in chunks for r in _records(c)] == expected
    assert end_offset == len(content)
    assert acked == 0                       # reading acknowledges nothing


def test_watcher_starts_reading_at_its_checkpoint_offset(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"old one\nold two\nnew one\n")
    w = watcher(path, offset=16)
    chunk = w.read(BIG_FRAME)
    assert chunk is not None
    assert (chunk.first_offset, _records(chunk)) == (16, [b"new one\n"])
    assert (w.offset, w.acked) == (24, 16)


def test_rewind_reads_again_from_the_acknowledged_offset(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"first\n")
    w = watcher(path)
    first = w.read(BIG_FRAME)
    assert first is not None
    w.acked = first.end_offset
    _append(path, b"second\nthird\n")
    lost = w.read(BIG_FRAME)
    assert lost is not None and w.offset == 19
    w.rewind()
    again = w.read(BIG_FRAME)
    assert again is not None
    assert (again.first_offset, again.data) == (lost.first_offset, lost.data) == (6, b"second\nthird\n")


def test_shrunken_file_is_reported_truncated_and_restart_reads_from_zero(
        tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"one\ntwo\n")
    w = watcher(path)
    assert w.read(BIG_FRAME) is not None and not w.truncated()
    os.truncate(path, 0)
    _append(path, b"x\n")
    assert w.truncated()
    w.restart("k2", "s2")
    chunk = w.read(BIG_FRAME)
    assert chunk is not None
    assert (chunk.first_offset, chunk.data, w.key, w.source_id, w.acked) == (0, b"x\n", "k2", "s2", 0)


# -- partial last lines -------------------------------------------------------


def test_partial_last_line_waits_for_its_newline(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"done\nhalf a li")
    w = watcher(path, partial_timeout_s=NEVER)
    first = w.read(BIG_FRAME)
    assert first is not None and first.data == b"done\n"
    assert w.read(BIG_FRAME) is None
    _append(path, b"ne\n")
    rest = w.read(BIG_FRAME)
    assert rest is not None
    assert (rest.first_offset, _records(rest)) == (5, [b"half a line\n"])


def test_partial_last_line_is_shipped_without_terminator_after_the_timeout(
        tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"done\nno newline yet")
    w = watcher(path, partial_timeout_s=0.2)
    assert w.read(BIG_FRAME) is not None
    assert w.read(BIG_FRAME) is None         # the clock starts here
    time.sleep(0.05)
    assert w.read(BIG_FRAME) is None         # not yet
    time.sleep(0.25)
    chunk = w.read(BIG_FRAME)
    assert chunk is not None
    assert (chunk.first_offset, _records(chunk), chunk.end_offset) == (5, [b"no newline yet"], 19)
    assert w.read(BIG_FRAME) is None


# -- over-long lines ----------------------------------------------------------


def test_over_long_line_between_short_lines_is_cut_and_flagged(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    long_line = bytes(range(97, 123)) * 192 + b"abcdefgh"     # 5,000 bytes before its newline
    assert len(long_line) == 5000
    path.write_bytes(b"short one\n" + long_line + b"\n" + b"short two\n")
    w = watcher(path, max_line_bytes=100, partial_timeout_s=NEVER)
    chunks = _drain(w, BIG_FRAME)
    assert [(c.first_offset, _records(c), c.truncated_from, c.end_offset) for c in chunks] == [
        (0, [b"short one\n"], 0, 10),
        (10, [long_line[:100] + b"\n"], 5001, 5011),
        (5011, [b"short two\n"], 0, 5021),
    ]


def test_line_of_exactly_max_line_bytes_is_kept_whole(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"short\n" + b"x" * 100 + b"\n")
    w = watcher(path, max_line_bytes=100)
    chunk = w.read(BIG_FRAME)
    assert chunk is not None
    assert (_records(chunk), chunk.truncated_from) == ([b"short\n", b"x" * 100 + b"\n"], 0)


def test_chunk_stops_before_an_over_long_line(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"short\n" + b"x" * 101 + b"\n")
    w = watcher(path, max_line_bytes=100)
    chunk = w.read(BIG_FRAME)
    assert chunk is not None
    assert (_records(chunk), chunk.end_offset, w.offset) == ([b"short\n"], 6, 6)


def test_terminated_over_long_line_is_shipped_without_waiting(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"x" * 200 + b"\n")
    w = watcher(path, max_line_bytes=100, partial_timeout_s=NEVER)
    chunk = w.read(BIG_FRAME)
    assert chunk is not None
    assert (_records(chunk), chunk.truncated_from, chunk.end_offset) == ([b"x" * 100 + b"\n"], 201, 201)


def test_line_longer_than_the_frame_is_found_in_one_read(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    long_line = b"y" * 5000
    path.write_bytes(b"short one\n" + long_line + b"\n" + b"short two\n")
    w = watcher(path, max_line_bytes=100, partial_timeout_s=NEVER)
    first = w.read(1024)
    assert first is not None and _records(first) == [b"short one\n"]
    cut = w.read(1024)                       # one call scans 5 frames' worth for the newline
    assert cut is not None
    assert (cut.first_offset, _records(cut), cut.truncated_from, cut.end_offset) == (
        10, [b"y" * 100 + b"\n"], 5001, 5011)
    after = w.read(1024)
    assert after is not None and (after.first_offset, _records(after)) == (5011, [b"short two\n"])


def test_over_long_line_is_cut_at_the_frame_size_when_that_is_smaller(
        tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"z" * 3000 + b"\n")
    w = watcher(path, max_line_bytes=1 << 20)
    chunk = w.read(1024)
    assert chunk is not None
    assert (len(chunk.data), chunk.data[-1:], chunk.truncated_from, chunk.end_offset) == (1024, b"\n", 3001, 3001)


def test_unterminated_over_long_line_is_shipped_only_after_the_timeout(
        tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"q" * 500)
    w = watcher(path, max_line_bytes=100, partial_timeout_s=0.2)
    assert w.read(BIG_FRAME) is None
    _append(path, b"q" * 300)
    assert w.read(BIG_FRAME) is None
    time.sleep(0.25)
    chunk = w.read(BIG_FRAME)
    assert chunk is not None
    assert (chunk.first_offset, _records(chunk), chunk.truncated_from, chunk.end_offset) == (
        0, [b"q" * 100], 800, 800)
    assert w.offset == 800


def test_truncated_chunk_makes_a_frame_that_decodes(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"w" * 5000 + b"\n")
    w = watcher(path, max_line_bytes=100)
    chunk = w.read(1024)
    assert chunk is not None and chunk.truncated_from == 5001
    meta = FrameMeta(source_id="s", source=str(path), host="h", service="svc", tenant="t",
                     first_offset=chunk.first_offset, end_offset=chunk.end_offset, observed_us=1,
                     count=len(chunk.offsets) - 1, truncated_from=chunk.truncated_from)
    frame = decode_frame(encode_frame(meta, chunk.data, chunk.offsets))
    assert frame.meta.truncated_from == 5001
    assert frame.records.to_pylist() == [b"w" * 100 + b"\n"]


# -- multiline rules ----------------------------------------------------------

JAVA_BEFORE = "2024-05-01 12:00:00,101 INFO  [main] com.example.shop.App - Started App in 3.2 seconds"
JAVA_TRACE = [
    "2024-05-01 12:00:01,456 ERROR [http-nio-8080-exec-1] com.example.shop.OrderService - Order 42 failed",
    "java.lang.IllegalStateException: Payment gateway unavailable",
    "\tat com.example.shop.PaymentClient.charge(PaymentClient.java:87)",
    "\tat com.example.shop.OrderService.place(OrderService.java:42)",
    "\tat org.apache.catalina.core.ApplicationFilterChain.doFilter(ApplicationFilterChain.java:166)",
    "Caused by: java.net.ConnectException: Connection refused (Connection refused)",
    "\tat java.base/java.net.PlainSocketImpl.socketConnect(Native Method)",
    "\tat java.base/java.net.Socket.connect(Socket.java:609)",
    "\t... 5 more",
]
JAVA_AFTER = "2024-05-01 12:00:02,003 INFO  [http-nio-8080-exec-2] com.example.shop.OrderService - Order 43 placed"

PYTHON_BEFORE = "2024-05-01 12:00:00,101 INFO app: listening on :8000"
PYTHON_TRACE = [
    "2024-05-01 12:00:01,456 ERROR app: request failed",
    "Traceback (most recent call last):",
    '  File "x.py", line 3, in f',
    '    raise ValueError("boom")',
    "ValueError: boom",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "x.py", line 9, in handle',
    "    f()",
    '  File "x.py", line 5, in f',
    '    raise RuntimeError("could not handle boom")',
    "RuntimeError: could not handle boom",
]
PYTHON_AFTER = "2024-05-01 12:00:02,003 INFO app: GET /health 200"

GO_BEFORE = "2024/05/01 12:00:00 listening on :8080"
GO_TRACE = [
    "panic: runtime error: index out of range [5] with length 3",
    "",
    "goroutine 1 [running]:",
    "main.main()",
    "\t/app/main.go:8 +0x1d",
    "exit status 2",
]
GO_AFTER = "2024/05/01 12:00:01 listening on :8080"


def _preset(name: str, **kw: Any) -> LineJoiner:
    return LineJoiner.from_config(MultilineConfig(preset=name, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(("preset", "before", "trace", "after"), [
    ("java", JAVA_BEFORE, JAVA_TRACE, JAVA_AFTER),
    ("python", PYTHON_BEFORE, PYTHON_TRACE, PYTHON_AFTER),
    ("go", GO_BEFORE, GO_TRACE, GO_AFTER),
])
def test_preset_joins_a_trace_into_one_record_between_normal_lines(
        preset: str, before: str, trace: list[str], after: str) -> None:
    records = _joined(_preset(preset), [before, *trace, after])
    assert records == [_text([before]), _text(trace), _text([after])]


def test_preset_keeps_consecutive_normal_lines_apart() -> None:
    lines = [JAVA_BEFORE, JAVA_AFTER, JAVA_BEFORE]
    assert _joined(_preset("java"), lines) == [_text([line]) for line in lines]


def test_start_pattern_starts_a_record_on_each_matching_line() -> None:
    joiner = LineJoiner.from_config(MultilineConfig(start_pattern=r"^\d{4}-\d{2}-\d{2} "))
    lines = ["2024-05-01 12:00:00 a", "  detail one", "detail two", "2024-05-01 12:00:01 b", "2024-05-01 12:00:02 c",
             "tail"]
    assert _joined(joiner, lines) == [_text(lines[0:3]), _text(lines[3:4]), _text(lines[4:6])]


def test_continue_pattern_appends_matching_lines_to_the_record() -> None:
    joiner = LineJoiner.from_config(MultilineConfig(continue_pattern=r"\s+at |\.\.\."))
    lines = ["boom", "   at a()", "...", "next", "   at b()", "last"]
    assert _joined(joiner, lines) == [_text(lines[0:3]), _text(lines[3:5]), _text(lines[5:6])]


def test_first_line_starts_a_record_even_when_it_matches_a_continue_pattern() -> None:
    joiner = LineJoiner.from_config(MultilineConfig(continue_pattern=r"\s"))
    lines = ["  orphan continuation", "  more", "new"]
    assert _joined(joiner, lines) == [_text(lines[0:2]), _text(lines[2:3])]


def test_continue_pattern_that_can_span_a_blank_line_still_continues_the_next_line() -> None:
    # A blank line is followed by an indented line; "^\s+" matches the indented line,
    # so it must continue the record, however the blank line is judged.
    joiner = LineJoiner.from_config(MultilineConfig(continue_pattern=r"^\s+"))
    data = _text(["2024-05-01 12:00:00 ERROR query failed:", "    SELECT *", "      FROM orders", "",
                  "    WHERE id = 42", "2024-05-01 12:00:01 INFO next"])
    where = data.index(b"    WHERE")
    assert where not in joiner.record_starts(data, line_starts(data)).tolist()


def test_start_pattern_that_can_span_a_blank_line_starts_the_record_at_the_matching_line() -> None:
    joiner = LineJoiner.from_config(MultilineConfig(start_pattern=r"^\s*\d{4}-"))
    data = _text(["2024-05-01 first", "  detail", "", "2024-05-01 second"])
    starts = joiner.record_starts(data, line_starts(data)).tolist()
    assert starts == [0, data.index(b"2024-05-01 second")]


def test_max_lines_splits_a_long_record() -> None:
    joiner = _preset("java", max_lines=3)
    trace = JAVA_TRACE[:7]
    assert _joined(joiner, [*trace, JAVA_AFTER]) == [
        _text(trace[0:3]), _text(trace[3:6]), _text(trace[6:7]), _text([JAVA_AFTER])]


def test_max_bytes_splits_a_record_at_line_boundaries() -> None:
    joiner = LineJoiner.from_config(MultilineConfig(continue_pattern=r"\t", max_bytes=64))
    lines = ["Err", *[f"\tframe {i:02d} " + "x" * 9 for i in range(8)], "next"]   # 20 bytes a frame line
    records = _joined(joiner, lines)
    assert b"".join(records) == _text(lines)
    assert [len(r) for r in records] == [4 + 3 * 20, 3 * 20, 2 * 20, 5]     # the first fills 64 exactly
    assert all(r.endswith(b"\n") for r in records)


def test_max_bytes_leaves_a_single_over_size_line_whole() -> None:
    joiner = LineJoiner.from_config(MultilineConfig(continue_pattern=r"\t", max_bytes=64))
    lines = ["head", "\t" + "y" * 100, "\tshort"]
    assert _joined(joiner, lines) == [_text(lines[0:1]), _text(lines[1:2]), _text(lines[2:3])]


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(st.sampled_from(["start", "  cont", "\tat x()", "", "start " + "s" * 40, "  " + "c" * 70]),
                   min_size=1, max_size=60),
    max_lines=st.integers(1, 8),
    max_bytes=st.integers(64, 300),
)
def test_record_starts_respect_line_boundaries_and_both_caps(lines: list[str], max_lines: int, max_bytes: int) -> None:
    joiner = LineJoiner.from_config(MultilineConfig(continue_pattern=r"\s", max_lines=max_lines, max_bytes=max_bytes))
    data = _text(lines)
    ls = line_starts(data)
    starts = joiner.record_starts(data, ls)
    assert starts.tolist() == sorted(set(starts.tolist())) and int(starts[0]) == 0
    assert set(starts.tolist()) <= set(ls.tolist())
    # Every line the rule does not continue starts a record.
    must = [int(s) for s, line in zip(ls, lines, strict=True) if not line[:1].isspace() and line != ""]
    assert set(must) <= set(starts.tolist())
    for record in _split(data, starts):
        n_lines = record.count(b"\n")
        assert n_lines <= max_lines
        assert len(record) <= max_bytes or n_lines == 1


# -- the watcher with a joiner ------------------------------------------------


def test_watcher_holds_back_the_last_record_until_a_new_record_starts(
        tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(_text([JAVA_BEFORE, *JAVA_TRACE]))
    w = watcher(path, joiner=_preset("java", timeout_s=NEVER))
    first = w.read(BIG_FRAME)
    assert first is not None and _records(first) == [_text([JAVA_BEFORE])]
    assert w.read(BIG_FRAME) is None            # the trace may go on
    _append(path, _text(["\tat com.example.shop.Main.main(Main.java:12)"]))
    assert w.read(BIG_FRAME) is None            # it did, and may still
    _append(path, _text([JAVA_AFTER]))
    trace = w.read(BIG_FRAME)
    assert trace is not None
    assert _records(trace) == [_text([*JAVA_TRACE, "\tat com.example.shop.Main.main(Main.java:12)"])]
    assert trace.first_offset == first.end_offset
    assert w.read(BIG_FRAME) is None            # the new line is held in turn


def test_watcher_ships_the_held_record_after_the_joiner_timeout(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(_text(PYTHON_TRACE))
    w = watcher(path, joiner=_preset("python", timeout_s=0.2))
    assert w.read(BIG_FRAME) is None
    time.sleep(0.25)
    chunk = w.read(BIG_FRAME)
    assert chunk is not None
    assert (chunk.first_offset, _records(chunk)) == (0, [_text(PYTHON_TRACE)])


def test_watcher_ships_several_joined_records_in_one_chunk(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(_text([GO_BEFORE, *GO_TRACE, GO_AFTER, GO_BEFORE]))
    w = watcher(path, joiner=_preset("go", timeout_s=NEVER))
    chunk = w.read(BIG_FRAME)
    assert chunk is not None
    assert _records(chunk) == [_text([GO_BEFORE]), _text(GO_TRACE), _text([GO_AFTER])]


# -- container runtime wrapping -------------------------------------------------

CRI_F1 = "2024-05-01T12:00:00.000000001Z stdout F GET /health 200"
CRI_P1 = "2024-05-01T12:00:00.100000000Z stdout P {\"msg\":\"a very long line, first part"
CRI_P2 = "2024-05-01T12:00:00.100000001Z stdout P , second part"
CRI_F2 = "2024-05-01T12:00:00.100000002Z stdout F , last part\"}"
CRI_F3 = "2024-05-01T12:00:01.000000000Z stderr F warning: low disk"


def test_cri_partial_lines_join_the_following_full_line() -> None:
    joiner = LineJoiner.for_wrapper("cri", BIG_FRAME, NEVER)
    assert _joined(joiner, [CRI_F1, CRI_P1, CRI_P2, CRI_F2, CRI_F3]) == [
        _text([CRI_F1]), _text([CRI_P1, CRI_P2, CRI_F2]), _text([CRI_F3])]


def test_watcher_holds_a_trailing_cri_partial_line_until_its_full_line(
        tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(_text([CRI_F1, CRI_P1]))
    w = watcher(path, joiner=LineJoiner.for_wrapper("cri", BIG_FRAME, NEVER))
    first = w.read(BIG_FRAME)
    assert first is not None and _records(first) == [_text([CRI_F1])]
    assert w.read(BIG_FRAME) is None
    _append(path, _text([CRI_P2]))
    assert w.read(BIG_FRAME) is None
    _append(path, _text([CRI_F2]))
    joined = w.read(BIG_FRAME)
    assert joined is not None
    assert (joined.first_offset, _records(joined)) == (first.end_offset, [_text([CRI_P1, CRI_P2, CRI_F2])])


def test_watcher_ships_a_cri_full_line_without_waiting(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(_text([CRI_F1, CRI_F3]))
    w = watcher(path, joiner=LineJoiner.for_wrapper("cri", BIG_FRAME, NEVER))
    chunk = w.read(BIG_FRAME)
    assert chunk is not None and _records(chunk) == [_text([CRI_F1]), _text([CRI_F3])]


def _docker(log: str, stream: str = "stdout") -> str:
    return orjson.dumps({"log": log, "stream": stream, "time": "2024-05-01T12:00:00.000000000Z"}).decode()


def test_docker_lines_without_a_final_newline_join_the_next() -> None:
    joiner = LineJoiner.for_wrapper("docker", BIG_FRAME, NEVER)
    lines = [_docker("starting\n"), _docker("part one, "), _docker("part two, "), _docker("end\n"),
             _docker("said \"bye\"\n", "stderr")]
    assert _joined(joiner, lines) == [_text(lines[0:1]), _text(lines[1:4]), _text(lines[4:5])]


def test_docker_log_ending_in_an_escaped_backslash_n_is_not_complete() -> None:
    joiner = LineJoiner.for_wrapper("docker", BIG_FRAME, NEVER)
    lines = [_docker("path is C:\\n"), _docker("ext\n")]     # a literal backslash and n, no newline
    assert '\\\\n"' in lines[0]
    assert _joined(joiner, lines) == [_text(lines)]


@pytest.mark.parametrize("wrapper", ["docker", "cri"])
def test_a_suggested_wrapper_joins_only_lines_of_its_runtimes_shape(wrapper: str) -> None:
    # An application's own JSON (even with a "log" key, no final \n) and text lines that only
    # look partial: the wrapper came from the file's name or place, so none of them is joined.
    lines = ['{"log":"no newline","level":"info"}', '{"time":"2024-05-01T12:00:00Z","msg":"app"}',
             "2024-05-01 12:00:00 stdout P not RFC 3339", '{"log":"x","stream":"stdout"}']
    joiner = LineJoiner.for_wrapper(wrapper, BIG_FRAME, NEVER)
    assert _joined(joiner, lines) == [_text([line]) for line in lines]
    data = _text(lines)
    assert joiner.last_record_complete(data, line_starts(data))     # nothing held back either


def test_docker_partial_line_with_attrs_joins_the_next() -> None:
    # --log-opt labels=... puts "attrs" between "stream" and "time".
    partial = '{"log":"one ","stream":"stdout","attrs":{"tag":"a}b"},"time":"2024-05-01T12:00:00Z"}'
    full = '{"log":"two\\n","stream":"stdout","attrs":{"tag":"a}b"},"time":"2024-05-01T12:00:00Z"}'
    assert _joined(LineJoiner.for_wrapper("docker", BIG_FRAME, NEVER), [partial, full]) == [_text([partial, full])]


def test_watcher_holds_a_trailing_docker_partial_line(tmp_path: Path, watcher: WatcherFactory) -> None:
    path = tmp_path / "abc-json.log"
    path.write_bytes(_text([_docker("done\n"), _docker("to be ")]))
    w = watcher(path, joiner=LineJoiner.for_wrapper("docker", BIG_FRAME, NEVER))
    first = w.read(BIG_FRAME)
    assert first is not None and _records(first) == [_text([_docker("done\n")])]
    assert w.read(BIG_FRAME) is None
    _append(path, _text([_docker("continued\n")]))
    rest = w.read(BIG_FRAME)
    assert rest is not None and _records(rest) == [_text([_docker("to be "), _docker("continued\n")])]


UID = "5f3c1e2a-1b2c-4d5e-8f90-123456789abc"
CONTAINER_ID = "0123456789abcdef" * 4


def test_kubernetes_labels_from_a_pod_log_path() -> None:
    assert kubernetes_labels(f"/var/log/pods/shop_web-7d4b9c-xk2p1_{UID}/nginx/0.log") == {
        "k8s.namespace.name": "shop", "k8s.pod.name": "web-7d4b9c-xk2p1", "k8s.pod.uid": UID,
        "k8s.container.name": "nginx"}


def test_kubernetes_labels_from_a_container_log_link() -> None:
    path = f"/var/log/containers/web-7d4b9c-xk2p1_shop_istio-proxy-{CONTAINER_ID}.log"
    assert kubernetes_labels(path) == {
        "k8s.namespace.name": "shop", "k8s.pod.name": "web-7d4b9c-xk2p1", "k8s.container.name": "istio-proxy"}


def test_kubernetes_labels_of_a_plain_path_are_empty() -> None:
    assert kubernetes_labels("/var/log/nginx/access.log") == {}


@pytest.mark.parametrize(("path", "expected"), [
    (f"/var/log/pods/shop_web-7d4b9c-xk2p1_{UID}/nginx/0.log", "cri"),
    (f"/var/log/containers/web-7d4b9c-xk2p1_shop_nginx-{CONTAINER_ID}.log", "cri"),
    (f"/srv/copy/shop_web-7d4b9c-xk2p1_{UID}/nginx/3.log", "cri"),
    (f"/var/lib/docker/containers/{CONTAINER_ID}/{CONTAINER_ID}-json.log", "docker"),
    ("/var/log/nginx/access.log", ""),
])
def test_wrapper_for_auto_is_taken_from_the_path(path: str, expected: str) -> None:
    assert wrapper_for(path, "auto") == expected


@pytest.mark.parametrize(("fmt", "expected"), [("plain", ""), ("cri", "cri"), ("docker", "docker")])
def test_wrapper_for_an_explicit_format_ignores_the_path(fmt: str, expected: str) -> None:
    assert wrapper_for(f"/var/lib/docker/containers/{CONTAINER_ID}/{CONTAINER_ID}-json.log", fmt) == expected
    assert wrapper_for("/var/log/app.log", fmt) == expected


# -- fingerprints -----------------------------------------------------------------


def _fingerprint_of(path: Path, nbytes: int) -> str | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return fingerprint(fd, os.fstat(fd).st_size, nbytes)
    finally:
        os.close(fd)


def test_files_with_the_same_first_bytes_share_a_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(HEADER + b"tail of a\n")
    (tmp_path / "b").write_bytes(HEADER + b"a different tail\n")
    fp = _fingerprint_of(tmp_path / "a", 32)
    assert fp is not None and fp.startswith("fp:")
    assert _fingerprint_of(tmp_path / "b", 32) == fp


def test_files_with_different_first_bytes_differ(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(HEADER)
    (tmp_path / "b").write_bytes(b"X" + HEADER[1:])
    assert _fingerprint_of(tmp_path / "a", 32) != _fingerprint_of(tmp_path / "b", 32)


def test_file_shorter_than_the_fingerprint_has_none(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 31)
    assert _fingerprint_of(tmp_path / "a", 32) is None


def test_file_of_exactly_the_fingerprint_size_has_one(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 32)
    fp = _fingerprint_of(tmp_path / "a", 32)
    assert fp is not None and fp.startswith("fp:")


def test_fingerprint_is_none_when_the_file_is_shorter_than_its_stated_size(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    fd = os.open(tmp_path / "a", os.O_RDONLY)
    try:
        assert fingerprint(fd, 64, 32) is None
    finally:
        os.close(fd)


# -- the shipper's scan -------------------------------------------------------------


def _only_watcher(s: Shipper) -> FileWatcher:
    assert len(s.files.watchers) == 1, s.files.watchers
    return next(iter(s.files.watchers.values()))


def test_scan_watches_a_new_file_from_the_start_under_its_fingerprint(
        tmp_path: Path, make_shipper: ShipperFactory) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(HEADER)
    s = make_shipper()
    s.files.scan(first=True)
    w = _only_watcher(s)
    assert (w.path, w.offset, w.key) == (str(log), 0, _fingerprint_of(log, 32))
    assert w.source_id.startswith(f"test-host:{w.key}:")
    assert {k: (c.source_id, c.path, c.offset) for k, c in s.checkpoints.view.items()} == \
        {w.key: (w.source_id, str(log), 0)}


def test_renamed_file_within_the_glob_keeps_its_watcher_and_source_id(
        tmp_path: Path, make_shipper: ShipperFactory) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(HEADER)
    s = make_shipper()
    s.files.scan(first=True)
    before = _only_watcher(s)
    key, source_id = before.key, before.source_id
    log.rename(tmp_path / "logs" / "app-2024-05-01.log")
    s.files.scan()
    after = _only_watcher(s)
    assert after is before
    assert (after.path, after.key, after.source_id, after.in_glob) == (
        str(tmp_path / "logs" / "app-2024-05-01.log"), key, source_id, True)


def test_renamed_file_out_of_the_glob_is_still_watched_but_not_in_the_glob(
        tmp_path: Path, make_shipper: ShipperFactory) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(HEADER)
    s = make_shipper()
    s.files.scan(first=True)
    log.rename(tmp_path / "logs" / "app.log.1")
    s.files.scan()
    assert _only_watcher(s).in_glob is False


def test_copy_with_identical_first_bytes_is_not_watched_twice(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(HEADER + b"more\n")
    s = make_shipper()
    s.files.scan(first=True)
    shutil.copyfile(log, tmp_path / "logs" / "app-copy.log")
    s.files.scan()
    assert _only_watcher(s).path == str(log)


def test_file_with_different_first_bytes_is_watched_separately(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    (tmp_path / "logs" / "a.log").write_bytes(HEADER)
    (tmp_path / "logs" / "b.log").write_bytes(b"B" + HEADER[1:])
    s = make_shipper()
    s.files.scan(first=True)
    assert sorted(w.path for w in s.files.watchers.values()) == [
        str(tmp_path / "logs" / "a.log"), str(tmp_path / "logs" / "b.log")]
    assert len({w.source_id for w in s.files.watchers.values()}) == 2


def test_short_file_is_keyed_by_inode_then_rekeyed_keeping_its_checkpoint(
        tmp_path: Path, make_shipper: ShipperFactory) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(b"short\n")
    s = make_shipper()
    s.files.scan(first=True)
    w = _only_watcher(s)
    ino = inode_key(os.stat(log))
    assert w.key == ino and s.checkpoints.view[ino].offset == 0
    s.checkpoints.update(ino, FileCheckpoint(w.source_id, str(log), 6))     # as if acknowledged
    s.files._rekey(w)
    assert w.key == ino                       # still too short
    _append(log, b"a line that makes the file long enough\n")
    s.files._rekey(w)
    fp = _fingerprint_of(log, 32)
    assert fp is not None and w.key == fp
    views = {k: (c.source_id, c.path, c.offset) for k, c in s.checkpoints.view.items()}
    assert views == {fp: (w.source_id, str(log), 6)}


def test_scan_resumes_from_a_saved_checkpoint(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(HEADER + b"second line\n")
    fp = _fingerprint_of(log, 32)
    assert fp is not None
    CheckpointStore(tmp_path / "state").save({fp: FileCheckpoint("old-source", "/elsewhere/app.log", len(HEADER))})
    s = make_shipper()
    s.files.scan(first=True)
    w = _only_watcher(s)
    assert (w.key, w.source_id, w.offset, w.acked) == (fp, "old-source", len(HEADER), len(HEADER))
    chunk = w.read(BIG_FRAME)
    assert chunk is not None and chunk.data == b"second line\n"


def test_checkpoint_past_the_end_of_the_file_starts_a_new_source(
        tmp_path: Path, make_shipper: ShipperFactory) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(HEADER)
    fp = _fingerprint_of(log, 32)
    assert fp is not None
    CheckpointStore(tmp_path / "state").save({fp: FileCheckpoint("old-source", str(log), 10_000)})
    s = make_shipper()
    s.files.scan(first=True)
    w = _only_watcher(s)
    assert w.offset == 0 and w.source_id != "old-source"


def _head_hash_of(data: bytes, tmp_path: Path) -> str:
    other = tmp_path / "head-of.bin"
    other.write_bytes(data)
    fd = os.open(other, os.O_RDONLY)
    try:
        return head_hash(fd, len(data))
    finally:
        os.close(fd)


def test_checkpoint_covering_sent_but_unacknowledged_bytes_resumes_the_file_that_has_them(
        tmp_path: Path, make_shipper: ShipperFactory) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(b"short\nmore\n")                      # short: known by its inode
    ino = inode_key(os.stat(log))
    CheckpointStore(tmp_path / "state").save(
        {ino: FileCheckpoint("old-source", str(log), 0, _head_hash_of(b"short\n", tmp_path), 6)})
    s = make_shipper()
    s.files.scan(first=True)
    w = _only_watcher(s)
    assert (w.source_id, w.offset, w.sent_end) == ("old-source", 0, 6)
    assert s.checkpoints.view[ino].head_len == 6, "the head still covers what the broker may hold"


def test_checkpoint_at_offset_zero_is_not_inherited_by_a_file_without_the_bytes_sent(
        tmp_path: Path, make_shipper: ShipperFactory) -> None:
    """A file made again in a deleted file's inode, when none of the old one's sends were acknowledged."""
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(b"fresh\n")
    ino = inode_key(os.stat(log))
    CheckpointStore(tmp_path / "state").save(
        {ino: FileCheckpoint("old-source", str(log), 0, _head_hash_of(b"stale\n", tmp_path), 6)})
    s = make_shipper()
    s.files.scan(first=True)
    w = _only_watcher(s)
    assert w.source_id != "old-source" and w.offset == 0


def test_start_at_end_skips_what_a_new_file_holds_at_the_first_scan(
        tmp_path: Path, make_shipper: ShipperFactory) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(HEADER)
    s = make_shipper(start_at="end")
    s.files.scan(first=True)
    assert _only_watcher(s).offset == len(HEADER)


def test_start_at_end_reads_files_created_later_from_their_start(
        tmp_path: Path, make_shipper: ShipperFactory) -> None:
    s = make_shipper(start_at="end")
    s.files.scan(first=True)
    (tmp_path / "logs" / "later.log").write_bytes(HEADER)
    s.files.scan()
    assert _only_watcher(s).offset == 0


def test_compressed_files_are_skipped_by_default(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    (tmp_path / "logs" / "app.log").write_bytes(HEADER)
    (tmp_path / "logs" / "app.log.1.gz").write_bytes(b"\x1f\x8b" + b"z" * 40)
    s = make_shipper(include=[str(tmp_path / "logs" / "app.log*")])
    s.files.scan(first=True)
    assert [w.path for w in s.files.watchers.values()] == [str(tmp_path / "logs" / "app.log")]


def test_compressed_files_are_watched_with_include_compressed(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    (tmp_path / "logs" / "app.log").write_bytes(HEADER)
    (tmp_path / "logs" / "app.log.1.gz").write_bytes(gzip.compress(b"R" + HEADER[1:]))   # an older file
    s = make_shipper(include=[str(tmp_path / "logs" / "app.log*")], include_compressed=True)
    s.files.scan(first=True)
    assert sorted(w.path for w in s.files.watchers.values()) == [
        str(tmp_path / "logs" / "app.log"), str(tmp_path / "logs" / "app.log.1.gz")]


def test_exclude_globs_leave_matching_files_unwatched(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    (tmp_path / "logs" / "app.log").write_bytes(HEADER)
    (tmp_path / "logs" / "debug-app.log").write_bytes(b"D" + HEADER[1:])
    s = make_shipper(exclude=[str(tmp_path / "logs" / "debug-*")])
    s.files.scan(first=True)
    assert [w.path for w in s.files.watchers.values()] == [str(tmp_path / "logs" / "app.log")]


def test_discover_recurses_with_double_star_and_skips_directories(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.log").write_bytes(b"x\n")
    (tmp_path / "top.log").write_bytes(b"x\n")
    (tmp_path / "dir.log").mkdir()
    assert discover([str(tmp_path / "**" / "*.log")]) == sorted(
        [str(tmp_path / "a" / "b" / "deep.log"), str(tmp_path / "top.log")])


def test_first_input_that_matches_a_file_owns_it(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    (tmp_path / "logs" / "app.log").write_bytes(HEADER)
    glob = str(tmp_path / "logs" / "*.log")
    s = make_shipper(inputs=[{"include": [glob], "service": "first"}, {"include": [glob], "service": "second"}])
    s.files.scan(first=True)
    w = _only_watcher(s)
    assert (w.input_index, s.service_for(w)) == (0, "first")


def test_pod_log_gets_the_cri_joiner_and_kubernetes_labels(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    pod_dir = tmp_path / "logs" / f"shop_web-7d4b9c-xk2p1_{UID}" / "nginx"
    pod_dir.mkdir(parents=True)
    (pod_dir / "0.log").write_bytes(_text([CRI_F1]))
    s = make_shipper(include=[str(tmp_path / "logs" / "**" / "*.log")])
    s.files.scan(first=True)
    w = _only_watcher(s)
    assert w.wrapper == "cri" and w.joiner is not None and w.joiner.wrapper == "cri"
    assert s.labels_for(w)["k8s.pod.name"] == "web-7d4b9c-xk2p1"
    assert s.service_for(w) == "nginx"


def test_multiline_input_gives_its_watchers_the_rule(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    (tmp_path / "logs" / "app.log").write_bytes(HEADER)
    s = make_shipper(multiline={"preset": "java", "timeout_s": 3.0})
    s.files.scan(first=True)
    joiner = _only_watcher(s).joiner
    assert joiner is not None and (joiner.wrapper, joiner.timeout_s, joiner.starts_on_match) == ("", 3.0, False)


# -- checkpoint store ----------------------------------------------------------------


def test_checkpoint_store_round_trip(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state")
    files = {"fp:abc": FileCheckpoint("host:fp:abc:1", "/var/log/é.log", 123),
             "ino:1:2": FileCheckpoint("host:ino:1:2:5", "/var/log/b.log", 0)}
    store.save(files)
    assert CheckpointStore(tmp_path / "state").load() == files


def test_checkpoint_save_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state")
    store.save({"a": FileCheckpoint("s", "/p", 1)})
    store.save({"b": FileCheckpoint("t", "/q", 2)})
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["checkpoints.json"]
    assert store.load() == {"b": FileCheckpoint("t", "/q", 2)}


def test_checkpoint_of_another_version_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state")
    store.file.write_bytes(orjson.dumps({"version": 1, "files": {}}))
    with pytest.raises(ValueError, match="version"):
        store.load()


def test_missing_checkpoint_file_loads_as_empty(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "new-state").load() == {}


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize("rules", [
    {},
    {"preset": "java", "start_pattern": "^x"},
    {"start_pattern": "^x", "continue_pattern": "^y"},
    {"preset": "go", "start_pattern": "^x", "continue_pattern": "^y"},
])
def test_multiline_needs_exactly_one_rule(rules: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        MultilineConfig(**rules)  # type: ignore[arg-type]


@pytest.mark.parametrize("rules", [{"preset": "python"}, {"start_pattern": r"^\d"}, {"continue_pattern": r"^\s"}])
def test_multiline_accepts_one_rule(rules: dict[str, str]) -> None:
    MultilineConfig(**rules)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["start_pattern", "continue_pattern"])
def test_multiline_rejects_an_invalid_regex(field: str) -> None:
    with pytest.raises(ValidationError, match="invalid pattern"):
        MultilineConfig(**{field: "(unclosed"})


def test_multiline_rejects_an_unknown_preset() -> None:
    with pytest.raises(ValidationError):
        MultilineConfig(preset="ruby")  # type: ignore[arg-type]


def test_service_from_path_needs_a_service_group() -> None:
    with pytest.raises(ValidationError, match="service"):
        InputConfig(include=["/var/log/*.log"], service_from_path=r"/var/log/(?P<name>[^/]+)/")


def test_service_from_path_rejects_an_invalid_regex() -> None:
    with pytest.raises(ValidationError, match="invalid pattern"):
        InputConfig(include=["/var/log/*.log"], service_from_path=r"(?P<service>[")


def test_service_from_path_names_the_service(tmp_path: Path, make_shipper: ShipperFactory) -> None:
    (tmp_path / "logs" / "checkout-api.log").write_bytes(HEADER)
    s = make_shipper(service_from_path=r"/(?P<service>[a-z]+)-api\.log$")
    s.files.scan(first=True)
    assert s.service_for(_only_watcher(s)) == "checkout"


def test_resolved_inputs_without_inputs_is_the_top_level_input() -> None:
    sc = ShipperConfig(include=["/var/log/app/*.log"], exclude=["*.tmp"], service="app", tenant="acme",
                       env="prod", labels={"team": "core"}, start_at="end",
                       multiline=MultilineConfig(preset="java"), include_compressed=True, format="cri")
    assert sc.resolved_inputs() == [InputConfig(
        include=["/var/log/app/*.log"], exclude=["*.tmp"], service="app", tenant="acme", env="prod",
        labels={"team": "core"}, start_at="end", multiline=MultilineConfig(preset="java"),
        include_compressed=True, format="cri")]


def test_resolved_inputs_are_the_inputs_tables_then_the_top_level_input() -> None:
    cfg = Config.model_validate(tomllib.loads("""
        [shipper]
        include = ["/var/log/other/*.log"]
        tenant = "other"

        [[shipper.inputs]]
        include = ["/var/log/java/*.log"]
        service = "billing"
        multiline = { preset = "java" }

        [[shipper.inputs]]
        include = ["/var/log/pods/*/*/*.log"]
        format = "cri"
        tenant = "k8s"
    """))
    inputs = cfg.shipper.resolved_inputs()
    assert [(i.include, i.service, i.tenant, i.format) for i in inputs] == [
        (["/var/log/java/*.log"], "billing", "default", "auto"),
        (["/var/log/pods/*/*/*.log"], "", "k8s", "cri"),
        (["/var/log/other/*.log"], "", "other", "auto"),
    ]
    assert inputs[0].multiline == MultilineConfig(preset="java") and inputs[1].multiline is None
