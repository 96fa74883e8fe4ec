"""Duplicates and holes: ingest's per-source stored ranges, with a real catalog and real segments."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.marks import add_range, drop_stored
from ingest.worker import IngestWorker
from loglake.core.config import Config
from loglake.core.frame import FrameMeta, decode_frame, encode_frame, record_offsets
from storage.catalog import Catalog


def _frame(first: int, lines: list[bytes]) -> bytes:
    data = b"".join(lines)
    meta = FrameMeta("host:fp:abc:1", "/var/log/app.log", "host", "app", "default", first, first + len(data),
                     1_795_000_000_000_000, len(lines))
    return encode_frame(meta, data, record_offsets(data))


def _lines(lo: int, hi: int) -> list[bytes]:
    return [f"line {i:04d} padding\n".encode() for i in range(lo, hi)]    # 18 bytes each


def _worker(tmp_path: Path) -> IngestWorker:
    cfg = Config.model_validate({"kafka": {"topic": "t"}, "storage": {"data_root": str(tmp_path / "data")}})
    worker = IngestWorker(cfg, Catalog(cfg.storage.resolved_catalog_url()))
    worker.partitions.open([("t", 0)])      # as on assignment: the catalog's offset and stored ranges
    return worker


def _stored_lines(tmp_path: Path) -> list[str]:
    files = sorted((tmp_path / "data").rglob("*.parquet"))
    return sorted(m for f in files for m in pq.read_table(f, columns=["message"])["message"].to_pylist())


def test_a_resent_earlier_range_fills_its_hole_and_duplicates_are_dropped(tmp_path: Path) -> None:
    w = _worker(tmp_path)
    offset = 0
    # Frames 0-99 and 200-299 get through; 100-199 failed and is re-sent after them,
    # together with 200-299 again (the shipper rewinds to its last acknowledged offset).
    for first, lo, hi in ((0, 0, 100), (3600, 200, 300), (1800, 100, 200), (3600, 200, 300)):
        w.router.take("t", 0, offset, _frame(first, _lines(lo, hi)), [], 0)
        offset += 1
    asyncio.run(w.flush())
    assert _stored_lines(tmp_path) == [f"line {i:04d} padding" for i in range(300)]
    assert w.catalog.source_ranges() == {("default", "host:fp:abc:1"): [(0, 5400)]}

    # After a restart the stored ranges come from the catalog: a full re-send is all duplicate.
    again = _worker(tmp_path)
    again.router.take("t", 0, offset, _frame(0, _lines(0, 300)), [], 0)
    asyncio.run(again.flush())
    assert len(_stored_lines(tmp_path)) == 300
    assert again.stats["deduplicated"] == 300


def test_a_hole_survives_a_restart(tmp_path: Path) -> None:
    w = _worker(tmp_path)
    w.router.take("t", 0, 0, _frame(0, _lines(0, 10)), [], 0)
    w.router.take("t", 0, 1, _frame(360, _lines(20, 30)), [], 0)
    asyncio.run(w.flush())
    assert w.catalog.source_ranges()[("default", "host:fp:abc:1")] == [(0, 180), (360, 540)]
    again = _worker(tmp_path)
    again.router.take("t", 0, 2, _frame(180, _lines(10, 30)), [], 0)      # the hole and a duplicate
    asyncio.run(again.flush())
    assert _stored_lines(tmp_path) == [f"line {i:04d} padding" for i in range(30)]


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(1, 60)), max_size=30))
def test_add_range_keeps_disjoint_sorted_ranges_covering_exactly_what_was_added(
        spans: list[tuple[int, int]]) -> None:
    ranges: list[tuple[int, int]] = []
    covered = np.zeros(600, dtype=bool)
    for lo, n in spans:
        ranges = add_range(ranges, lo, lo + n)
        covered[lo:lo + n] = True
    assert all(a < b for a, b in ranges)
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))
    mask = np.zeros(600, dtype=bool)
    for a, b in ranges:
        mask[a:b] = True
    assert (mask == covered).all()


@pytest.mark.parametrize(("ranges", "kept"), [
    ([], [0, 1, 2]), ([(0, 18)], [1, 2]), ([(18, 36)], [0, 2]), ([(0, 54)], []), ([(5, 10)], [0, 1, 2]),
])
def test_drop_stored_keeps_the_records_starting_outside_every_range(
        ranges: list[tuple[int, int]], kept: list[int]) -> None:
    records = decode_frame(_frame(0, _lines(0, 3))).records
    out = drop_stored(records, 0, ranges).to_pylist()
    assert out == [records[i].as_py() for i in kept]
    assert pa.types.is_binary(drop_stored(records, 0, ranges).type)
