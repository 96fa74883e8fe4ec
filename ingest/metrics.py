"""What an ingest worker reports on /metrics: a snapshot the worker takes at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loglake.core.metrics_server import registry_of

#: Per-source counters: (name, help, the count of ingest.source_stats.COUNTS it reports).
_SOURCE_COUNTERS = (
    ("loglake_ingest_source_rows", "Rows committed, per source", "rows"),
    ("loglake_ingest_source_observed_time_rows",
     "Rows whose time was not read from the line (attrs.ts_parse=observed), per source", "observed_time"),
    ("loglake_ingest_source_unknown_format_rows",
     "Rows no format or layout recognised (attrs.format=unknown), per source", "unknown_format"),
    ("loglake_ingest_source_unknown_level_rows", "Rows with no level found (level=unknown), per source",
     "unknown_level"),
    ("loglake_ingest_source_unmatched_rows",
     "Lines their source's configured format did not read (attrs.format=unmatched), per source", "unmatched"),
)

_COUNTERS = {
    "records": ("loglake_ingest_records", "Rows committed to the catalog"),
    "input_bytes": ("loglake_ingest_input_bytes", "Bytes of records taken from Kafka"),
    "segments": ("loglake_ingest_segments", "Segments committed"),
    "flushes": ("loglake_ingest_flushes", "Successful flushes"),
    "deduplicated": ("loglake_ingest_deduplicated_records", "Re-sent records recognised as already stored"),
    "conflicts": ("loglake_ingest_commit_conflicts", "Flushes discarded because another worker stored the offsets"),
    "flush_errors": ("loglake_ingest_flush_errors", "Flushes that failed and will be retried"),
    "tenant_overridden": ("loglake_ingest_tenant_overridden_records",
                          "Records of frames naming another tenant than their topic's configured one"),
}


@dataclass(frozen=True)
class WorkerSnapshot:
    """An ingest worker's figures at one moment."""

    #: The worker's counters by name (those of ``_COUNTERS``; a missing one is 0).
    stats: Mapping[str, int]
    #: Records sent to the dead-letter topic, per reason.
    dead_letters: Mapping[str, int]
    buffered_rows: int
    buffered_bytes: int
    partitions: int
    seconds_since_flush: float
    #: Why flushes fail, while they do.
    fault: str | None
    #: Per (tenant, service, source) label set: committed rows, and those of an observed time,
    #: an unknown format, an unknown level (ingest.source_stats).
    sources: Mapping[tuple[str, str, str], Mapping[str, int]] = field(default_factory=dict)


class IngestCollector(Collector):
    def __init__(self, snapshot: Callable[[], WorkerSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.snapshot()
        for key, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=s.stats.get(key, 0))
        dead = CounterMetricFamily("loglake_ingest_dead_letters", "Records sent to the dead-letter topic",
                                   labels=["reason"])
        for reason, n in sorted(s.dead_letters.items()):
            dead.add_metric([reason], n)
        yield dead
        for name, doc, count in _SOURCE_COUNTERS:
            family = CounterMetricFamily(name, doc + " (the first ingest.metrics_max_sources sources; the rest as "
                                         "source=\"other\")", labels=["tenant", "service", "source"])
            for labels, counts in sorted(s.sources.items()):
                family.add_metric(list(labels), counts.get(count, 0))
            yield family
        yield GaugeMetricFamily("loglake_ingest_buffered_rows", "Rows waiting for the next flush",
                                value=s.buffered_rows)
        yield GaugeMetricFamily("loglake_ingest_buffered_bytes", "Bytes waiting for the next flush",
                                value=s.buffered_bytes)
        yield GaugeMetricFamily("loglake_ingest_partitions", "Partitions this worker owns", value=s.partitions)
        yield GaugeMetricFamily("loglake_ingest_seconds_since_flush", "Seconds since the last successful flush",
                                value=s.seconds_since_flush)
        yield GaugeMetricFamily("loglake_ingest_ready", "1 while flushes succeed, 0 while a fault stops them",
                                value=0 if s.fault is not None else 1)


def registry_for(snapshot: Callable[[], WorkerSnapshot]) -> CollectorRegistry:
    """A registry reporting the figures ``snapshot`` gives at each scrape."""
    return registry_of(IngestCollector(snapshot))
