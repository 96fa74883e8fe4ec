"""A lake written straight through the storage package: records as Parquet segments, one catalog commit.

The query tests build their data this way, so no broker or ingest worker is involved;
``write_segments`` and the catalog are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage.catalog import Catalog, PartitionCommit
from storage.schema import ORIGINAL_COLUMNS, RECORD_SCHEMA, SEVERITY
from storage.segments import SegmentInfo, write_segments


def record(ts_us: int, service: str, level: str, message: str, *, attrs: Iterable[tuple[str, str]] = (),
           host: str = "web-1", trace_id: str | None = None, head: str | None = None,
           raw: str | None = None) -> dict[str, Any]:
    """One record as a row of ``RECORD_SCHEMA``: observed a millisecond after ``ts_us``, read from the service's log.

    Its original line is ``raw`` if given, else ``head`` + ``message``."""
    return {
        "ts": ts_us, "observed_ts": ts_us + 1_000, "service": service, "host": host,
        "source": f"/var/log/{service}.log", "level": level, "severity": SEVERITY[level],
        "message": message, "attrs": list(attrs), "trace_id": trace_id, "span_id": None,
        "head": head, "raw": raw,
    }


def original_line(row: dict[str, Any]) -> str:
    """A record's original line, by the rule of the record model."""
    return row["raw"] if row.get("raw") is not None else (row.get("head") or "") + row["message"]


def arrow_table(rows: list[dict[str, Any]]) -> pa.Table:
    """``rows`` (dicts of every column; ``head`` and ``raw`` may be left out) as a ``RECORD_SCHEMA`` table."""
    return pa.Table.from_pydict({name: [r[name] if name not in ORIGINAL_COLUMNS else r.get(name) for r in rows]
                                 for name in RECORD_SCHEMA.names}, schema=RECORD_SCHEMA)


@dataclass(frozen=True)
class Segment:
    """What one ``write_segments`` call writes (one file per hour of its rows)."""

    tenant: str
    name: str
    rows: list[dict[str, Any]]
    row_group_rows: int | None = None      # None: storage's default


def write_lake(data_root: Path, catalog: Catalog, segments: Iterable[Segment], *, topic: str = "test",
               partition: int = 0) -> list[SegmentInfo]:
    """Write ``segments`` and commit them all in one partition commit, as from offset 0."""
    written: list[SegmentInfo] = []
    for s in segments:
        sizes = {} if s.row_group_rows is None else {"row_group_rows": s.row_group_rows}
        written += write_segments(data_root, s.tenant, arrow_table(s.rows), s.name, **sizes)
    catalog.commit([PartitionCommit(topic=topic, partition=partition, epoch=0, expected_next=0,
                                    new_next=len(written), segments=written)])
    return written


def per_service(rows: Iterable[dict[str, Any]], tenant: str = "default") -> list[Segment]:
    """``rows`` as one segment per service (named for it), as ingest splits a batch by service."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_service.setdefault(row["service"], []).append(row)
    return [Segment(tenant, f"{name}.parquet", service_rows) for name, service_rows in sorted(by_service.items())]
