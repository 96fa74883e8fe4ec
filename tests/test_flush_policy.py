"""When the ingest worker flushes: by size, by age, once the log is read to its end, and at the end
of a backlog. A real worker object over a real SQLite catalog; only the buffers' sizes are set."""

from __future__ import annotations

import time
from pathlib import Path

from ingest.buffers import PartitionBuffer
from ingest.worker import IngestWorker
from loglake.core.config import Config
from storage.catalog import Catalog, PartitionState


def _worker(tmp_path: Path) -> IngestWorker:
    cfg = Config.model_validate({"kafka": {"topic": "t"}, "storage": {"data_root": str(tmp_path / "data")},
                                 "ingest": {"flush_rows": 1000, "flush_bytes": 1 << 30, "flush_interval_s": 60,
                                            "flush_caught_up_s": 30}})
    return IngestWorker(cfg, Catalog(cfg.storage.resolved_catalog_url()))


def _buffered(worker: IngestWorker, rows: int) -> None:
    buf = PartitionBuffer(PartitionState(0, 0), rows=rows, bytes=rows * 100)
    buf.last_offset = rows - 1 if rows else None
    worker.buffers[("t", 0)] = buf


def test_a_trickle_waits_flush_caught_up_s_at_the_log_end_and_the_interval_otherwise(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    _buffered(worker, 50)                      # under a tenth of flush_rows
    assert not worker._due(caught_up=False)
    assert not worker._due(caught_up=True)
    worker.buffers[("t", 0)].started = time.monotonic() - 31
    assert worker._due(caught_up=True)
    assert not worker._due(caught_up=False)
    worker.buffers[("t", 0)].started = time.monotonic() - 61
    assert worker._due(caught_up=False)


def test_a_tenth_full_batch_is_flushed_once_the_log_is_read_to_its_end(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    _buffered(worker, 100)
    assert not worker._due(caught_up=False)
    assert worker._due(caught_up=True)


def test_the_last_rows_of_a_backlog_do_not_wait_for_the_interval(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    _buffered(worker, 1000)
    assert worker._due(caught_up=False)        # full: a flush by size, so a backlog is being read
    _buffered(worker, 7)                       # what came after it, before the log's end
    assert not worker._due(caught_up=False)
    assert worker._due(caught_up=True)         # the log's end: flushed at once
    _buffered(worker, 7)                       # from here on a trickle again
    assert not worker._due(caught_up=True)


def test_a_backlog_that_ended_on_a_flush_leaves_no_early_flush_behind(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    _buffered(worker, 1000)
    assert worker._due(caught_up=False)
    _buffered(worker, 0)                       # everything was flushed, then the log's end
    assert not worker._due(caught_up=True)
    _buffered(worker, 7)                       # later records are a trickle
    assert not worker._due(caught_up=True)


def test_records_taken_count_their_wait_from_the_last_read_to_the_log_end(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    now = time.monotonic()
    _buffered(worker, 50)
    assert worker.state.buffered().arrived_after == worker.buffers[("t", 0)].started, "unknown: its own start"
    buf = PartitionBuffer(PartitionState(0, 0), rows=10, bytes=1000, arrived_after=now - 40)
    buf.last_offset = 9
    worker.buffers[("t", 1)] = buf
    assert worker.state.buffered().arrived_after == now - 40
    assert worker._due(caught_up=True), "waited over flush_caught_up_s since the log's end was last read"
    assert not worker._due(caught_up=False), "the interval counts from the first record taken"


def test_the_first_record_taken_into_a_buffer_marks_the_last_read_to_the_log_end(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    worker.buffers[("t", 0)] = PartitionBuffer(PartitionState(0, 0))
    worker.state.log_end_at = end = time.monotonic() - 3
    worker.router.take("t", 0, 0, b"first", [], int(time.time() * 1000))
    worker.state.log_end_at = time.monotonic()
    worker.router.take("t", 0, 1, b"second", [], int(time.time() * 1000))
    assert worker.buffers[("t", 0)].arrived_after == end
