"""storage: bytes on disk per raw byte; baselines ClickHouse (chdb MergeTree, ZSTD) and gzip -6."""

from __future__ import annotations

import zlib
from pathlib import Path

from benchmarks.clickhouse import ClickHouse
from benchmarks.harness import Result
from benchmarks.pipeline import WORK, store
from storage.catalog import Catalog


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
    logs, truth, cfg = store(lines)
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    totals = catalog.totals()
    catalog.close()
    ch = ClickHouse(WORK / "chdb-storage")
    ch.load(f"{cfg.storage.data_root}/tenant=default/**/*.parquet", token_index=False)
    ch_rows = int(ch.scalar("SELECT count() FROM bench.logs"))
    ch_bytes = ch.bytes_on_disk()
    ch.close()
    gz = _gzip6(logs)
    ours = totals["bytes"]
    r = Result("storage", lines)
    r.metrics = {"storage.bytes": ours, "storage.raw_bytes": truth.raw_bytes,
                 "storage.x_smaller_than_raw": truth.raw_bytes / ours, "storage.segments": totals["segments"]}
    r.baselines = {"clickhouse.bytes": ch_bytes, "clickhouse.x_smaller_than_raw": truth.raw_bytes / ch_bytes,
                   "gzip6.bytes": gz, "gzip6.x_smaller_than_raw": truth.raw_bytes / gz}
    r.ratios = {"storage.bytes.vs_clickhouse": ours / ch_bytes, "storage.bytes.vs_gzip6": ours / gz}
    r.check("ClickHouse holds the same rows", ch_rows == totals["rows"] == truth.physical_lines,
            f"clickhouse {ch_rows}, ours {totals['rows']}, lines {truth.physical_lines}")
    r.notes.append("Segments as ingest wrote them (flushes of up to 1M rows, one file per partition and hour); "
                   "there is no compaction yet. ClickHouse: MergeTree ORDER BY (service, ts), ZSTD(3), "
                   "Delta on times, LowCardinality labels, after OPTIMIZE FINAL.")
    return r
