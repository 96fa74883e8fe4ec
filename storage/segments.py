"""Segment files: immutable, zstd Parquet, sorted by (service, ts), one hour each.

Layout under the data root: ``tenant=<t>/date=YYYY-MM-DD/hour=HH/<name>.parquet``.
The name is derived from what the segment covers (topic, partition, offset
epoch and range), so replaying the same offsets writes the same name and
overwrites an orphan rather than adding a duplicate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from loglake.core.tenants import is_tenant_name
from storage.errors import StorageError
from storage.root import DataRoot
from storage.schema import conform

HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000
#: The widest span of minutes a segment's per-minute counts cover (a segment holds one hour).
MAX_MINUTES = 1440
#: Rows are gathered into segment order as slices of the batch (no copy) while its runs of rows
#: already in order average at least this many; else with one take (a copy of every value).
MIN_RUN_ROWS = 256


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What the catalog records about one written segment."""

    tenant: str
    path: str                        # relative to the data root, '/'-separated
    min_ts_us: int
    max_ts_us: int
    rows: int
    bytes: int
    services: dict[str, int] = field(default_factory=dict)
    levels: dict[str, int] = field(default_factory=dict)
    #: The zstd level it was written at (None: not known, as for segments from before it was kept).
    zstd_level: int | None = None
    #: Rows per service and level: ``{service: {level: rows}}`` (None: not known, as for segments
    #: described before the catalog kept it). Counts by service and level come from it.
    service_levels: dict[str, dict[str, int]] | None = None
    #: Rows per minute and level (None: not known); counts over time by level come from it.
    minute_levels: MinuteCounts | None = None


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """Rows per minute and level: ``levels[level][i]`` rows in minute ``first + i`` (epoch minutes)."""

    first: int
    levels: dict[str, list[int]]

    def to_json(self) -> str:
        return orjson.dumps({"first": self.first, "levels": self.levels}).decode()

    @classmethod
    def from_json(cls, text: str) -> MinuteCounts:
        data = orjson.loads(text)
        return cls(int(data["first"]), {str(k): [int(n) for n in v] for k, v in data["levels"].items()})


def check_tenant(tenant: str) -> str:
    """Tenants become directory names: allow only a safe, short alphabet."""
    if not is_tenant_name(tenant):
        raise StorageError(f"invalid tenant name {tenant!r}")
    return tenant


def segment_name(topic: str, partition: int, epoch: int, first: int, last: int) -> str:
    return f"{topic}.p{partition}.e{epoch}.{first:012d}-{last:012d}.parquet"


def hour_dir(tenant: str, hour_start_us: int) -> str:
    t = datetime.fromtimestamp(hour_start_us / 1e6, tz=UTC)
    return f"tenant={tenant}/date={t:%Y-%m-%d}/hour={t:%H}"


def _codes(col: pa.ChunkedArray | pa.Array) -> tuple[list[str], np.ndarray]:
    """A label column as (distinct-or-not values, one index into them per row)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    values = [str(v) for v in arr.dictionary.to_pylist()]
    return values, np.asarray(arr.indices.fill_null(0), dtype=np.int64)


def service_level_counts(part: pa.Table) -> dict[str, dict[str, int]]:
    """Rows per (service, level) of ``part``: ``{service: {level: rows}}``; one bincount of the two
    columns' dictionary indices, no pass per row in Python."""
    if part.num_rows == 0:
        return {}
    services, s = _codes(part["service"])
    levels, lv = _codes(part["level"])
    cells = np.bincount(s * len(levels) + lv, minlength=len(services) * len(levels))
    out: dict[str, dict[str, int]] = {}
    for k in np.flatnonzero(cells).tolist():
        row = out.setdefault(services[k // len(levels)], {})
        level = levels[k % len(levels)]
        row[level] = row.get(level, 0) + int(cells[k])     # a dictionary may repeat a value
    return out


def minute_level_counts(part: pa.Table) -> MinuteCounts | None:
    """Rows per minute and level of ``part`` (None if it spans more than :data:`MAX_MINUTES`); one
    bincount of minute and level index."""
    if part.num_rows == 0:
        return MinuteCounts(0, {})
    minutes = np.floor_divide(np.asarray(pc.cast(part["ts"], pa.int64())), MINUTE_US)
    first, last = int(minutes.min()), int(minutes.max())
    width = last - first + 1
    if width > MAX_MINUTES:
        return None
    levels, codes = _codes(part["level"])
    cells = np.bincount((minutes - first) * len(levels) + codes,
                        minlength=width * len(levels)).reshape(width, len(levels))
    out: dict[str, list[int]] = {}
    for j, level in enumerate(levels):
        column = cells[:, j]
        if not column.any():
            continue
        if level in out:                # a dictionary may repeat a value
            out[level] = [a + b for a, b in zip(out[level], column.tolist(), strict=True)]
        else:
            out[level] = column.tolist()
    return MinuteCounts(first, out)


def _order(table: pa.Table, hours: pa.Array | pa.ChunkedArray | None = None) -> pa.Array:
    """Row indices in (service, ts) order, the order every segment keeps; first by ``hours``
    when given. The sort is stable."""
    service = table["service"]
    if pa.types.is_dictionary(service.type):
        service = service.cast(pa.string())   # Arrow cannot sort dictionary columns directly
    keys = {"service": service, "ts": table["ts"]} if hours is None else \
        {"hour": hours, "service": service, "ts": table["ts"]}
    return pc.sort_indices(pa.table(keys), sort_keys=[(k, "ascending") for k in keys])


def gather(table: pa.Table, order: pa.Array) -> pa.Table:
    """``table.take(order)``; where ``order`` is a few long runs of consecutive rows, as slices.

    A flush's rows arrive as frames, each a file's lines in time order, so a batch sorted by
    (hour, service, ts) is a few dozen runs of the input: slicing them costs nothing, where a
    take copies every value (the attributes' maps most), about a third of writing a segment."""
    at = np.asarray(order)
    if len(at) == 0:
        return table.take(order)
    breaks = np.flatnonzero(np.diff(at) != 1) + 1
    if (len(breaks) + 1) * MIN_RUN_ROWS > len(at):
        return table.take(order)
    starts, ends = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(at)]])
    return pa.concat_tables([table.slice(int(at[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)])


def sort_rows(table: pa.Table) -> pa.Table:
    """Rows ordered by (service, ts), the order every segment keeps."""
    return table.take(_order(table))


def describe(tenant: str, rel: str, part: pa.Table, size: int, zstd_level: int | None = None) -> SegmentInfo:
    """The catalog's description of ``part``, written at ``rel`` with ``size`` bytes."""
    ts = pc.cast(part["ts"], pa.int64())
    pairs = service_level_counts(part)
    services = {svc: sum(row.values()) for svc, row in pairs.items()}
    levels: dict[str, int] = {}
    for row in pairs.values():
        for level, n in row.items():
            levels[level] = levels.get(level, 0) + n
    return SegmentInfo(tenant=tenant, path=rel, min_ts_us=pc.min(ts).as_py(), max_ts_us=pc.max(ts).as_py(),
                       rows=part.num_rows, bytes=size, services=services, levels=levels,
                       zstd_level=zstd_level, service_levels=pairs, minute_levels=minute_level_counts(part))


def hours_of(table: pa.Table) -> pa.Array:
    """Each row's hour (epoch hours of ``ts``)."""
    return pc.divide(pc.cast(table["ts"], pa.int64()), HOUR_US)


def write_segments(root: DataRoot | str | os.PathLike[str], tenant: str, table: pa.Table, name: str, *,
                   zstd_level: int = 3, row_group_rows: int = 16 * 1024) -> list[SegmentInfo]:
    """Split ``table`` by hour of ``ts``, sort each part, write one segment per hour."""
    check_tenant(tenant)
    if not isinstance(root, DataRoot):
        root = DataRoot(os.fspath(root))
    table = conform(table)
    # One stable sort by (hour, service, ts) and one take; each hour is then a slice, in the
    # order sort_rows gives it (filtering out each hour first cost a pass over the batch per hour).
    hours = hours_of(table)
    order = _order(table, hours)
    table = gather(table, order)
    by_hour = np.asarray(hours.take(order))
    starts = np.flatnonzero(np.diff(by_hour)) + 1 if len(by_hour) else np.zeros(0, np.int64)
    out: list[SegmentInfo] = []
    for a, b in zip([0, *starts.tolist()], [*starts.tolist(), len(by_hour)], strict=True):
        if a == b:
            continue
        hour = int(by_hour[a])
        part = table.slice(a, b - a)
        rel = f"{hour_dir(tenant, hour * HOUR_US)}/{name}"
        size = root.write_parquet(rel, part, zstd_level=zstd_level, row_group_rows=row_group_rows)
        out.append(describe(tenant, rel, part, size, zstd_level))
    return out
