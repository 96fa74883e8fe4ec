"""What a shipper reports: Prometheus metrics on /metrics and liveness on /healthz.

The figures are read from the shipper's own state at scrape time (a custom
collector), so the hot loop only bumps plain integers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loglake.core.metrics_server import registry_of
from loglake.core.metrics_server import serve as serve_http

if TYPE_CHECKING:
    from shippers.shipper import Shipper

_COUNTERS = {
    "lines": ("loglake_shipper_lines_read", "Records read from files"),
    "bytes": ("loglake_shipper_bytes_read", "Bytes read from files"),
    "frames": ("loglake_shipper_frames_sent", "Frames handed to the producer"),
    "frame_bytes": ("loglake_shipper_frame_bytes_sent", "Bytes of frames handed to the producer"),
    "send_errors": ("loglake_shipper_send_errors", "Failed deliveries (each followed by a retry)"),
    "retries": ("loglake_shipper_retries", "Times the shipper rewound to its acknowledged offsets and retried"),
    "truncated_lines": ("loglake_shipper_truncated_lines", "Lines cut at max_line_bytes"),
}


class ShipperCollector(Collector):
    def __init__(self, shipper: Shipper) -> None:
        self.shipper = shipper

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.shipper
        for key, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=s.stats.get(key, 0))
        yield GaugeMetricFamily("loglake_shipper_files_watched", "Files open for reading", value=len(s.watchers))
        yield GaugeMetricFamily("loglake_shipper_inflight_bytes", "Bytes sent but not yet acknowledged",
                                value=s.inflight_bytes)
        lag = GaugeMetricFamily("loglake_shipper_file_lag_bytes", "Bytes written but not yet acknowledged",
                                labels=["path"])
        for w in list(s.watchers.values()):
            try:
                lag.add_metric([w.path], max(0, w.size() - w.acked))
            except OSError:
                continue
        yield lag
        yield GaugeMetricFamily("loglake_shipper_broker_outage_seconds", "How long the broker has been unreachable",
                                value=s.outage_seconds())
        yield GaugeMetricFamily("loglake_shipper_ready", "1 while the broker takes frames into the topic as "
                                "configured; 0 during an outage or while its partition count differs",
                                value=0 if s.outage_seconds() > 0 or s.topic_fault is not None else 1)


def registry_for(shipper: Shipper) -> CollectorRegistry:
    return registry_of(ShipperCollector(shipper))


async def serve(listen: str, shipper: Shipper) -> asyncio.Server:
    """GET /metrics, /healthz and /readyz (503 while the broker is unreachable, or while the topic's
    partition count is not ``kafka.partitions``) for ``shipper``."""

    def health() -> tuple[bool, dict[str, object]]:
        stalled = time.monotonic() - shipper.last_loop > 60
        return not stalled, {"status": "stalled" if stalled else "ok",
                             "broker_outage_s": round(shipper.outage_seconds(), 1), "files": len(shipper.watchers)}

    def ready() -> tuple[bool, dict[str, object]]:
        alive, details = health()
        outage = shipper.outage_seconds()
        if alive and outage > 0:
            return False, {**details, "status": "broker unreachable"}
        if alive and shipper.topic_fault is not None:
            return False, {**details, "status": "topic partitions differ", "fault": shipper.topic_fault}
        return alive, details

    return await serve_http(listen, registry_for(shipper), health, ready)
