"""Crash safety with real processes: SIGKILL the ingest worker or the shipper mid-flow."""

from __future__ import annotations

import collections
import random
import threading
import time
from datetime import timedelta

import pytest

from tests.helpers.corpus import append, make_lines, now_utc, uids_in
from tests.helpers.processes import Stack, wait_until

N = 9_000


class Writer(threading.Thread):
    """Appends the corpus in small bursts over a few seconds."""

    def __init__(self, stack: Stack, lines: list, bursts: int = 150, pause_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.stack, self.lines, self.bursts, self.pause_s = stack, lines, bursts, pause_s
        self.progress = 0

    def run(self) -> None:
        size = -(-len(self.lines) // self.bursts)
        for i in range(0, len(self.lines), size):
            append(self.stack.input_dir, self.lines[i:i + size])
            self.progress = i + size
            time.sleep(self.pause_s)


def _stored(stack: Stack, start: str, end: str) -> collections.Counter[int]:
    rows = stack.search("", start=start, end=end, limit=10_000)["rows"]
    return collections.Counter(uids_in(rows))


def _run_with_kill(stack: Stack, victim: str) -> collections.Counter[int]:
    base = now_utc() - timedelta(minutes=20)
    lines = make_lines(N, base, timedelta(milliseconds=100))
    start, end = (base - timedelta(minutes=1)).isoformat(), (now_utc() + timedelta(minutes=1)).isoformat()
    for name in ("ingest", "serve", "ship"):
        stack.start(name)
    stack.wait_ready()
    writer = Writer(stack, lines)
    writer.start()
    # Kill while lines flow and something is already stored (so the kill lands mid-stream).
    wait_until(lambda: writer.progress >= N // 3 and sum(_stored(stack, start, end).values()) > 0, 30,
               what="first lines stored")
    stack.kill(victim)
    assert writer.is_alive(), "the kill must land while lines are still being written"
    time.sleep(0.5)
    stack.start(victim, name=f"{victim}-2")
    writer.join()
    wait_until(lambda: sum(_stored(stack, start, end).values()) >= N, 60, interval_s=0.5,
               what=f"{N} lines stored after restart")
    time.sleep(2)   # anything late (a duplicate) would show up by now
    return _stored(stack, start, end)


def test_ingest_killed_mid_flow_stores_every_line_exactly_once(stack: Stack) -> None:
    counts = _run_with_kill(stack, "ingest")
    assert sorted(counts) == list(range(N))
    assert max(counts.values()) == 1, [u for u, c in counts.items() if c > 1][:10]


def test_shipper_killed_mid_flow_loses_nothing_and_duplicates_nothing(stack: Stack) -> None:
    counts = _run_with_kill(stack, "ship")
    assert sorted(counts) == list(range(N)), "no line lost"
    # The shipper re-sends its unacknowledged tail; ingest's per-source marks drop it.
    assert max(counts.values()) == 1, [u for u, c in counts.items() if c > 1][:10]


def _stored_all(stack: Stack, lines: list, window: int = 8_000) -> collections.Counter[int]:
    """Every stored uid, read window by window (a search returns at most 10,000 rows)."""
    counts: collections.Counter[int] = collections.Counter()
    for i in range(0, len(lines), window):
        lo = lines[i].ts - timedelta(seconds=1) if i else lines[0].ts - timedelta(minutes=1)
        hi = (lines[i + window].ts - timedelta(seconds=1) if i + window < len(lines)
              else now_utc() + timedelta(minutes=1))
        rows = stack.search("", start=lo.isoformat(), end=hi.isoformat(), limit=10_000)["rows"]
        assert len(rows) < 10_000, "window too wide to count"
        counts.update(uids_in(rows))
    return counts


@pytest.mark.slow
def test_soak_ingest_killed_again_and_again_stores_every_line_exactly_once(stack: Stack) -> None:
    n = 60_000
    base = now_utc() - timedelta(hours=2)
    lines = make_lines(n, base, timedelta(milliseconds=100))
    for name in ("ingest", "serve", "ship"):
        stack.start(name)
    stack.wait_ready()
    writer = Writer(stack, lines, bursts=300, pause_s=0.1)
    writer.start()
    rng = random.Random(11)
    for k in range(5):
        time.sleep(rng.uniform(2, 6))
        victim = "ingest" if k == 0 else f"ingest-{k}"
        stack.kill(victim)
        stack.start("ingest", name=f"ingest-{k + 1}")
    writer.join()
    wait_until(lambda: sum(_stored_all(stack, lines).values()) >= n, 180, interval_s=2, what=f"{n} lines stored")
    time.sleep(2)
    counts = _stored_all(stack, lines)
    assert sorted(counts) == list(range(n))
    assert max(counts.values()) == 1, [u for u, c in counts.items() if c > 1][:10]
