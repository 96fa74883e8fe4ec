"""How honestly each source is parsed: rows whose time, format or level ingest could not read.

Counted per (tenant, service, source) from the normaliser's output, in a few
Arrow kernels and one group-by per batch (never a loop over rows), when a flush
commits; exported by the worker as Prometheus counters (:mod:`ingest.metrics`).

Label cardinality is capped: the first ``max_sources`` sources a worker sees get
series of their own (for the worker's life); the rows of later ones are summed
under ``source="other"`` of their tenant and service, and once ``max_sources`` of
those exist too, under ``tenant="other", service="other", source="other"``.
A "top N by rows" choice would let a source move out of ``other``, making that
series fall, which Prometheus reads as a counter reset; first come keeps every
series monotonic.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

#: (tenant, service, source)
SourceKey = tuple[str, str, str]
#: What is counted per source, in this order.
COUNTS: tuple[str, ...] = ("rows", "observed_time", "unknown_format", "unknown_level", "unmatched")
OTHER = "other"


def count_rows(records: pa.Table) -> dict[tuple[str, str], Counter[str]]:
    """Per (service, source) of ``records`` (``RECORD_SCHEMA``): rows, and rows whose time was not read
    from the line (``attrs.ts_parse = observed``), of an unknown format, of an unknown level, and lines
    their source's configured format did not read (``attrs.format = unmatched``)."""
    if records.num_rows == 0:
        return {}
    attrs = records.column("attrs")
    ts_parse = pc.map_lookup(attrs, pa.scalar("ts_parse"), "first")
    fmt = pc.map_lookup(attrs, pa.scalar("format"), "first")
    flags = pa.table({
        "service": records.column("service").cast(pa.string()),
        "source": records.column("source").cast(pa.string()),
        "observed_time": pc.cast(pc.fill_null(pc.equal(ts_parse, "observed"), False), pa.int64()),
        "unknown_format": pc.cast(pc.fill_null(pc.equal(fmt, "unknown"), False), pa.int64()),
        "unknown_level": pc.cast(pc.fill_null(pc.equal(records.column("level").cast(pa.string()), "unknown"),
                                              False), pa.int64()),
        "unmatched": pc.cast(pc.fill_null(pc.equal(fmt, "unmatched"), False), pa.int64()),
    })
    sums = flags.group_by(["service", "source"]).aggregate(
        [([], "count_all"), ("observed_time", "sum"), ("unknown_format", "sum"), ("unknown_level", "sum"),
         ("unmatched", "sum")])
    columns = [sums.column(c).to_pylist() for c in ("service", "source", "count_all", "observed_time_sum",
                                                    "unknown_format_sum", "unknown_level_sum", "unmatched_sum")]
    return {(svc or "", src or ""): Counter(dict(zip(COUNTS, values, strict=True)))
            for svc, src, *values in zip(*columns, strict=True)}


@dataclass
class SourceTally:
    """Counts per exported label set, with at most ``max_sources`` sources named."""

    max_sources: int = 100

    def __post_init__(self) -> None:
        self.counts: dict[SourceKey, Counter[str]] = {}
        self._named: set[SourceKey] = set()
        self._others: set[SourceKey] = set()

    def labels(self, key: SourceKey) -> SourceKey:
        """The label set ``key``'s rows are counted under."""
        if key in self._named:
            return key
        if len(self._named) < self.max_sources:
            self._named.add(key)
            return key
        other = (key[0], key[1], OTHER)
        if other in self._others or len(self._others) < self.max_sources:
            self._others.add(other)
            return other
        return (OTHER, OTHER, OTHER)

    def add(self, tenant: str, counts: dict[tuple[str, str], Counter[str]]) -> None:
        """Count one tenant's committed rows (:func:`count_rows`)."""
        for (service, source), c in counts.items():
            self.counts.setdefault(self.labels((tenant, service, source)), Counter()).update(c)

    def snapshot(self) -> dict[SourceKey, dict[str, int]]:
        return {k: {name: int(c[name]) for name in COUNTS} for k, c in self.counts.items()}
