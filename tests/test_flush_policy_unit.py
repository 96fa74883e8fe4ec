"""The flush policy alone: buffered totals and a clock in, a decision out (no worker, no Kafka, no disk).

tests/test_flush_policy.py asks the same questions through a real worker; these pin each rule,
the back-off after a failed flush and what stops reading while flushes fail.
"""

from __future__ import annotations

import pytest

from ingest.buffers import Buffered
from ingest.flush_policy import MAX_RETRY_S, FlushPolicy

T0 = 1000.0     # any monotonic time


def _policy() -> FlushPolicy:
    return FlushPolicy(flush_rows=1000, flush_bytes=100_000, interval_s=60, caught_up_s=5)


def _rows(n: int, started: float | None = T0) -> Buffered:
    return Buffered(rows=n, bytes=n * 10, oldest=started if n else None)


def test_nothing_buffered_is_never_due() -> None:
    p = _policy()
    assert not p.due(Buffered(0, 0, None), T0, caught_up=False)
    assert not p.due(Buffered(0, 0, None), T0 + 3600, caught_up=True)


@pytest.mark.parametrize("buffered", [Buffered(1000, 10, T0), Buffered(1, 100_000, T0)], ids=["rows", "bytes"])
def test_a_full_buffer_is_due_at_once(buffered: Buffered) -> None:
    p = _policy()
    assert p.due(buffered, T0, caught_up=False)
    assert p.behind, "a flush by size means a backlog is being read"


def test_a_small_batch_read_to_the_log_end_waits_caught_up_s_counted_from_its_oldest_buffer() -> None:
    p = _policy()
    assert not p.due(_rows(50), T0 + 4.9, caught_up=True)
    assert p.due(_rows(50), T0 + 5, caught_up=True)
    assert p.due(_rows(1), T0 + 5, caught_up=True), "whatever its size"
    assert not p.due(_rows(50), T0 + 5, caught_up=False), "not while more is being read"


def test_a_small_batch_never_read_to_the_log_end_waits_for_the_interval() -> None:
    p = _policy()
    assert not p.due(_rows(50), T0 + 59.9, caught_up=False)
    assert p.due(_rows(50), T0 + 60, caught_up=False)
    assert p.due(_rows(50), T0 + 60, caught_up=True)


def test_the_interval_caps_the_wait_when_it_is_shorter_than_caught_up_s() -> None:
    p = FlushPolicy(flush_rows=1000, flush_bytes=100_000, interval_s=1, caught_up_s=5)
    assert not p.due(_rows(50), T0 + 0.9, caught_up=True)
    assert p.due(_rows(50), T0 + 1, caught_up=True)


def test_a_tenth_full_batch_is_due_once_the_log_is_read_to_its_end() -> None:
    p = _policy()
    assert not p.due(_rows(100), T0, caught_up=False)
    assert p.due(_rows(100), T0, caught_up=True)
    assert p.due(Buffered(rows=1, bytes=10_000, oldest=T0), T0, caught_up=True), "a tenth of flush_bytes too"
    assert not p.due(_rows(99), T0, caught_up=True)


def test_the_end_of_a_backlog_flushes_its_last_rows_once() -> None:
    p = _policy()
    assert p.due(_rows(1000), T0, caught_up=False)
    assert not p.due(_rows(7), T0, caught_up=False)     # still reading the backlog
    assert p.due(_rows(7), T0, caught_up=True)          # its end
    assert not p.behind
    assert not p.due(_rows(7), T0, caught_up=True)      # a trickle from here on


def test_a_backlog_that_ended_on_a_flush_leaves_no_early_flush_behind() -> None:
    p = _policy()
    assert p.due(_rows(1000), T0, caught_up=False)
    assert not p.due(_rows(0), T0, caught_up=True)
    assert not p.behind
    assert not p.due(_rows(7), T0, caught_up=True)


def test_a_failed_flush_backs_off_doubling_up_to_thirty_seconds_and_never_resets() -> None:
    p = _policy()
    waits = []
    for _ in range(8):
        p.failed(T0)
        waits.append(p.retry_at - T0)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_RETRY_S, MAX_RETRY_S, MAX_RETRY_S]
    p.succeeded()
    assert not p.failing and p.retry_at == 0
    p.failed(T0)
    assert p.retry_at - T0 == MAX_RETRY_S, "the back-off grows over the worker's life, as the flush_errors count"


def test_nothing_is_due_while_a_failed_flush_waits_and_backlog_state_is_left_alone() -> None:
    p = _policy()
    p.failed(T0)                                       # retry at T0 + 1
    assert p.failing and p.retrying(T0 + 0.5)
    assert not p.due(_rows(1000), T0 + 0.5, caught_up=False)
    assert not p.behind, "a decision not taken changes no state"
    assert not p.retrying(T0 + 1)
    assert p.due(_rows(1000), T0 + 1, caught_up=False)
    assert p.failing, "only a success ends the failing state"


def test_reading_stops_only_while_failing_with_twice_flush_bytes_buffered() -> None:
    p = _policy()
    assert not p.backlogged(10 * p.flush_bytes)
    p.failed(T0)
    assert not p.backlogged(2 * p.flush_bytes - 1)
    assert p.backlogged(2 * p.flush_bytes)
    p.succeeded()
    assert not p.backlogged(2 * p.flush_bytes)


def test_records_fetched_during_a_long_flush_count_their_wait_from_the_last_read_to_the_log_end() -> None:
    p = _policy()
    # Taken at T0 + 4 (the worker was flushing), but the log was last read to its end at T0.
    fetched_late = Buffered(rows=50, bytes=500, oldest=T0 + 4, arrived_after=T0)
    assert not p.due(fetched_late, T0 + 4.9, caught_up=True)
    assert p.due(fetched_late, T0 + 5, caught_up=True)
    assert not p.due(fetched_late, T0 + 5, caught_up=False)
    # The interval, for a worker never at the log's end, still counts from the first record taken.
    assert not p.due(fetched_late, T0 + 63.9, caught_up=False)
    assert p.due(fetched_late, T0 + 64, caught_up=False)
