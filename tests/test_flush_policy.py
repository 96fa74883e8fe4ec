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
                                 "ingest": {"flush_rows": 1000, "flush_bytes": 1 << 30, "flush_interval_s": 60}})
    return IngestWorker(cfg, Catalog(cfg.storage.resolved_catalog_url()))


def _buffered(worker: IngestWorker, rows: int) -> None:
    buf = PartitionBuffer(PartitionState(0, 0), rows=rows, bytes=rows * 100)
    buf.last_offset = rows - 1 if rows else None
    worker.buffers[("t", 0)] = buf


def test_a_trickle_waits_for_the_interval(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    _buffered(worker, 50)                      # under a tenth of flush_rows
    assert not worker._due(caught_up=False)
    assert not worker._due(caught_up=True)
    worker.buffers[("t", 0)].started = time.monotonic() - 61
    assert worker._due(caught_up=True)


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
