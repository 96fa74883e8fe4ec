"""storage: bytes on disk per raw byte after compaction; baselines ClickHouse (chdb MergeTree, ZSTD) and gzip -6.

The corpus goes through the real pipeline (shipper, broker, ingest), then
`storage.compaction.compact` merges each hour's segments with the default
settings, and the retired files are collected. Compaction throughput is the
segment bytes it read per second (one process, DuckDB not involved: pyarrow
reads, sorts and writes).
"""

from __future__ import annotations

import shutil
import time
import zlib
from pathlib import Path

from benchmarks.clickhouse import ClickHouse
from benchmarks.harness import Result
from benchmarks.pipeline import WORK, store
from loglake.config import CompactionConfig
from storage.catalog import Catalog
from storage.compaction import collect_garbage, compact
from storage.root import DataRoot


def _gzip6(logs: Path) -> int:
    total = 0
    for path in sorted(logs.glob("*.log")):
        z = zlib.compressobj(6, zlib.DEFLATED, 31)     # gzip container, level 6
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(z.compress(chunk))
        total += len(z.flush())
    return total


def run(lines: int) -> Result:
    logs, truth, stored_cfg = store(lines)
    # Compact a copy: the stored corpus is shared with the query suite.
    work = WORK / f"storage-{lines}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(stored_cfg.storage.data_root, work)
    root = DataRoot(str(work))
    catalog = Catalog(f"sqlite:///{work / 'catalog.sqlite'}")
    before = catalog.totals()
    settings = CompactionConfig(min_age_s=0)
    t0 = time.perf_counter()
    report = compact(root, catalog, settings)
    seconds = time.perf_counter() - t0
    collect_garbage(root, catalog, grace_s=0)
    totals = catalog.totals()
    hours = len({s.path.rsplit("/", 1)[0] for s in catalog.live_segments()})
    catalog.close()
    ch = ClickHouse(WORK / "chdb-storage")
    ch.load(f"{work}/tenant=default/**/*.parquet", token_index=False)
    ch_rows = int(ch.scalar("SELECT count() FROM bench.logs"))
    ch_bytes = ch.bytes_on_disk()
    ch.close()
    gz = _gzip6(logs)
    ours = totals["bytes"]
    r = Result("storage", lines)
    r.metrics = {"storage.bytes": ours, "storage.raw_bytes": truth.raw_bytes,
                 "storage.x_smaller_than_raw": truth.raw_bytes / ours, "storage.segments": totals["segments"],
                 "storage.hours": hours, "storage.bytes_before_compaction": before["bytes"],
                 "storage.segments_before_compaction": before["segments"],
                 "compaction.mb_per_s": report.bytes_in / 1e6 / seconds,
                 "compaction.raw_mb_per_s": truth.raw_bytes / 1e6 / seconds,
                 "compaction.rows_per_s": report.rows / seconds}
    r.baselines = {"clickhouse.bytes": ch_bytes, "clickhouse.x_smaller_than_raw": truth.raw_bytes / ch_bytes,
                   "gzip6.bytes": gz, "gzip6.x_smaller_than_raw": truth.raw_bytes / gz}
    r.ratios = {"storage.bytes.vs_clickhouse": ours / ch_bytes, "storage.bytes.vs_gzip6": ours / gz}
    r.check("ClickHouse holds the same rows", ch_rows == totals["rows"] == truth.physical_lines,
            f"clickhouse {ch_rows}, ours {totals['rows']}, lines {truth.physical_lines}")
    r.check("compaction kept every row", totals["rows"] == before["rows"],
            f"before {before['rows']}, after {totals['rows']}")
    r.notes.append(f"Segments as ingest wrote them ({before['segments']} files, {before['bytes'] / 1e6:.1f} MB), "
                   f"then compacted with the defaults (zstd {settings.zstd_level}, row groups of "
                   f"{settings.row_group_rows:,} rows, up to {settings.target_bytes >> 20} MB or "
                   f"{settings.target_rows:,} rows a file): {totals['segments']} files for {hours} hours. "
                   "ClickHouse: MergeTree ORDER BY (service, ts), ZSTD(3), Delta on times, LowCardinality labels, "
                   "after OPTIMIZE FINAL, loaded from the compacted files.")
    r.notes.append("Targets: at least 6x smaller than the raw NDJSON, and no larger than ClickHouse.")
    return r
