"""A data root and its catalog filled the way ingest fills them: one segment per flush and hour.

Every record written is remembered (as a whole-row key), so a test can check that
compaction, retention or maintenance kept exactly the rows it should.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage.catalog import Catalog, PartitionCommit
from storage.root import DataRoot
from storage.schema import COLUMNS, RECORD_SCHEMA, SEVERITY
from storage.segments import HOUR_US, SegmentInfo, segment_name, write_segments

TOPIC = "logs"
DAY_US = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp()) * 1_000_000
SERVICES = ("api", "web", "db", "billing")
LEVELS = ("info", "warn", "error", "debug")

#: A record as a hashable tuple of every column.
RowKey = tuple[Any, ...]


def make_table(rng: random.Random, tenant: str, hour: int, n: int, first_id: int) -> pa.Table:
    """``n`` (or a few more) records in ``hour`` of the day: every column varies, some exact duplicates."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        uid = first_id + i
        ts = DAY_US + hour * HOUR_US + rng.randrange(HOUR_US)
        level = rng.choice(LEVELS)
        attrs: list[tuple[str, str]] | None = [
            None, [], [("id", str(uid))], [("id", str(uid)), ("http.status", rng.choice(["200", "500"]))],
            [("zeta", "last"), ("alpha", "first"), ("id", str(uid)), ("naïve", "ü ✓")],
        ][uid % 5]
        rows.append({
            "ts": ts, "observed_ts": ts + rng.randrange(5_000_000), "service": rng.choice(SERVICES),
            "host": f"host-{uid % 3}", "source": f"/var/log/{uid % 2}.log", "level": level,
            "severity": SEVERITY.get(level, 0), "message": f"{tenant} row {uid} {rng.getrandbits(64):016x} ✓",
            "attrs": attrs, "trace_id": None if uid % 4 else f"{rng.getrandbits(128):032x}",
            "span_id": None if uid % 4 else f"{rng.getrandbits(64):016x}",
        })
        if uid % 97 == 0:
            rows.append(dict(rows[-1]))               # an exact duplicate: both copies must survive
        if uid % 89 == 0:
            rows.append(dict(rows[-1], observed_ts=rows[-1]["observed_ts"] + 1))   # same ts, a tie to sort
    return pa.Table.from_pydict({c: [r.get(c) for r in rows] for c in COLUMNS}, schema=RECORD_SCHEMA)


def keys_of(table: pa.Table) -> list[RowKey]:
    """Each record as a hashable tuple of every column (attrs as its ordered pairs)."""
    out = []
    for r in table.cast(RECORD_SCHEMA).to_pylist():
        attrs = r["attrs"]
        r["attrs"] = None if attrs is None else tuple(attrs)
        out.append(tuple(r[c] for c in COLUMNS))
    return out


class Lake:
    """A data root and its catalog, filled the way ingest fills them: one segment per flush and hour."""

    def __init__(self, base: Path, catalog_url: str, seed: int = 7) -> None:
        self.dir = base / "data"
        self.url = catalog_url
        self.root = DataRoot(str(self.dir))
        self.catalog = Catalog(catalog_url)
        self.rng = random.Random(seed)
        self.next_id = 0
        self.offsets: dict[int, int] = defaultdict(int)
        self.expected: Counter[RowKey] = Counter()
        self.by_tenant: dict[str, Counter[RowKey]] = defaultdict(Counter)
        self._lock = threading.Lock()

    def batch(self, tenant: str, hour: int, n: int, *, partition: int = 0) -> tuple[pa.Table, int, int]:
        """The next records a worker of ``partition`` would flush, and the offsets they cover."""
        with self._lock:
            table = make_table(self.rng, tenant, hour, n, self.next_id)
            self.next_id += n
            first = self.offsets[partition]
            self.offsets[partition] += table.num_rows
        return table, first, first + table.num_rows - 1

    def store(self, tenant: str, table: pa.Table, first: int, last: int, *, partition: int = 0,
              catalog: Catalog | None = None) -> list[SegmentInfo]:
        """Write the segments of ``table`` and commit them with the partition's offsets, as ingest does."""
        infos = write_segments(self.root, tenant, table, segment_name(TOPIC, partition, 0, first, last))
        (catalog or self.catalog).commit([PartitionCommit(
            TOPIC, partition, 0, first, last + 1, infos, {(tenant, f"src-{partition}"): last + 1})])
        keys = keys_of(table)
        with self._lock:
            self.expected.update(keys)
            self.by_tenant[tenant].update(keys)
        return infos

    def flush(self, tenant: str, hour: int, n: int, *, partition: int = 0,
              catalog: Catalog | None = None) -> list[SegmentInfo]:
        table, first, last = self.batch(tenant, hour, n, partition=partition)
        return self.store(tenant, table, first, last, partition=partition, catalog=catalog)

    def fill(self, tenants: tuple[str, ...], hours: range | list[int], segments: int, rows: int) -> None:
        for tenant in tenants:
            for hour in hours:
                for _ in range(segments):
                    self.flush(tenant, hour, rows)

    def close(self) -> None:
        self.catalog.close()
