"""What an ingest worker reports on /metrics; figures are read from the worker at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loglake.core.metrics_server import registry_of

if TYPE_CHECKING:
    from ingest.worker import IngestWorker

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


class IngestCollector(Collector):
    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        w = self.worker
        for key, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=w.stats.get(key, 0))
        dead = CounterMetricFamily("loglake_ingest_dead_letters", "Records sent to the dead-letter topic",
                                   labels=["reason"])
        for reason, n in sorted(w.dead_letter_counts.items()):
            dead.add_metric([reason], n)
        yield dead
        yield GaugeMetricFamily("loglake_ingest_buffered_rows", "Rows waiting for the next flush",
                                value=sum(b.rows for b in w.buffers.values()))
        yield GaugeMetricFamily("loglake_ingest_buffered_bytes", "Bytes waiting for the next flush",
                                value=sum(b.bytes for b in w.buffers.values()))
        yield GaugeMetricFamily("loglake_ingest_partitions", "Partitions this worker owns", value=len(w.buffers))
        yield GaugeMetricFamily("loglake_ingest_seconds_since_flush", "Seconds since the last successful flush",
                                value=time.monotonic() - w.last_flush)
        yield GaugeMetricFamily("loglake_ingest_ready", "1 while flushes succeed, 0 while a fault stops them",
                                value=0 if w.fault is not None else 1)


def registry_for(worker: IngestWorker) -> CollectorRegistry:
    return registry_of(IngestCollector(worker))
