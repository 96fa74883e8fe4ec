"""The shipper against the real broker: appends, rotation, truncation, partial lines, restarts."""

from __future__ import annotations

import collections
import os
import time
from datetime import timedelta

from tests.corpus import make_lines, now_utc, uids_in
from tests.processes import Stack, wait_until


def _write(path: os.PathLike[str], lines: list) -> None:
    with open(path, "a") as f:
        f.write("".join(ln.text + "\n" for ln in lines))


def _stored(stack: Stack) -> collections.Counter[int]:
    rows = stack.search("", start="now-2h", end="now+1h", limit=10_000)["rows"]
    return collections.Counter(uids_in(rows))


def _wait_stored(stack: Stack, n: int, timeout_s: float = 30) -> collections.Counter[int]:
    wait_until(lambda: sum(_stored(stack).values()) >= n, timeout_s, interval_s=0.3, what=f"{n} rows")
    time.sleep(1.0)   # a late duplicate would arrive within a flush interval
    return _stored(stack)


def _lines(n: int, start_uid: int) -> list:
    return make_lines(n, now_utc() - timedelta(minutes=30) + timedelta(seconds=start_uid), timedelta(milliseconds=10),
                      start_uid=start_uid)


def _start(stack: Stack, **ship_env: str) -> None:
    stack.start("ingest")
    stack.start("serve")
    stack.start("ship", **ship_env)
    stack.wait_ready()


def test_rename_and_create_reads_the_old_file_to_its_end(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    _write(log, _lines(300, 0))
    _start(stack)
    _wait_stored(stack, 300)
    # The application keeps writing to the renamed file for a moment, then reopens.
    os.rename(log, stack.input_dir / "app.log.1")
    _write(stack.input_dir / "app.log.1", _lines(200, 300))
    _write(log, _lines(300, 500))
    counts = _wait_stored(stack, 800)
    assert sorted(counts) == list(range(800)) and max(counts.values()) == 1
    wait_until(lambda: "released file" in stack.log_text("ship"), 10, what="the rotated file released")


def test_copytruncate_reads_the_truncated_file_again_from_the_start(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    _write(log, _lines(400, 0))
    _start(stack)
    _wait_stored(stack, 400)
    with open(log, "r+") as f:
        f.truncate(0)
    _write(log, _lines(100, 400))
    counts = _wait_stored(stack, 500)
    assert sorted(counts) == list(range(500)) and max(counts.values()) == 1


def test_partial_last_line_waits_for_its_newline(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    first, second = _lines(2, 0)
    _write(log, [first])
    with open(log, "a") as f:
        f.write(second.text[:20])
    _start(stack, LOGLAKE_SHIPPER__PARTIAL_LINE_TIMEOUT_S="60")
    _wait_stored(stack, 1)
    with open(log, "a") as f:
        f.write(second.text[20:] + "\n")
    counts = _wait_stored(stack, 2)
    assert sorted(counts) == [0, 1]
    rows = stack.search(second.token, start="now-2h", end="now+1h")["rows"]
    assert len(rows) == 1 and "uid000001x" in rows[0]["message"]


def test_partial_line_is_shipped_after_the_timeout(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    line = _lines(1, 0)[0]
    with open(log, "a") as f:
        f.write(line.text)     # never completed
    _start(stack)
    counts = _wait_stored(stack, 1, timeout_s=30)
    assert counts == {0: 1}


def test_restarted_shipper_resumes_from_its_checkpoint(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    _write(log, _lines(300, 0))
    _start(stack)
    _wait_stored(stack, 300)
    stack.kill("ship", 2)       # SIGINT: a clean stop that saves the checkpoint
    _write(log, _lines(300, 300))
    stack.start("ship", name="ship-2")
    counts = _wait_stored(stack, 600)
    assert sorted(counts) == list(range(600)) and max(counts.values()) == 1
    # It resumed where it stopped: the second run read only the new lines.
    assert '"offset":0' not in stack.log_text("ship-2")


def test_ship_once_reads_to_the_end_and_exits(stack: Stack) -> None:
    _write(stack.input_dir / "app.log", _lines(500, 0))
    stack.start("ingest")
    stack.start("serve")
    stack.wait_ready()
    proc = stack.start("ship", "--once")
    assert proc.wait(60) == 0
    counts = _wait_stored(stack, 500)
    assert sorted(counts) == list(range(500))
