"""What a shipper reports: Prometheus metrics on /metrics and liveness on /healthz.

The figures come from a snapshot the shipper takes at scrape time (a custom
collector), so the hot loop only bumps plain integers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loglake.core.metrics_server import registry_of
from loglake.core.metrics_server import serve as serve_http

_COUNTERS = {
    "lines": ("loglake_shipper_lines_read", "Records read from files"),
    "bytes": ("loglake_shipper_bytes_read", "Bytes read from files"),
    "frames": ("loglake_shipper_frames_sent", "Frames handed to the producer"),
    "frame_bytes": ("loglake_shipper_frame_bytes_sent", "Bytes of frames handed to the producer"),
    "send_errors": ("loglake_shipper_send_errors", "Failed deliveries (each followed by a retry)"),
    "retries": ("loglake_shipper_retries", "Times the shipper rewound to its acknowledged offsets and retried"),
    "truncated_lines": ("loglake_shipper_truncated_lines", "Lines cut at max_line_bytes"),
}


@dataclass(frozen=True, slots=True)
class ShipperSnapshot:
    """A shipper's figures at one moment."""

    #: The shipper's counters by name (those of ``_COUNTERS``; a missing one is 0).
    stats: Mapping[str, int]
    files_watched: int
    inflight_bytes: int
    #: (path, bytes written but not yet acknowledged) per file read; empty when not asked for.
    file_lag: tuple[tuple[str, int], ...]
    outage_seconds: float
    #: Why the topic is not as configured, while it is not.
    topic_fault: str | None
    #: ``time.monotonic()`` at the start of the shipper's last loop.
    last_loop: float


class Snapshot(Protocol):
    """How a shipper is asked for its figures: ``Shipper.snapshot``."""

    def __call__(self, *, file_lag: bool = True) -> ShipperSnapshot: ...


class ShipperCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.snapshot()
        for key, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=s.stats.get(key, 0))
        yield GaugeMetricFamily("loglake_shipper_files_watched", "Files open for reading", value=s.files_watched)
        yield GaugeMetricFamily("loglake_shipper_inflight_bytes", "Bytes sent but not yet acknowledged",
                                value=s.inflight_bytes)
        lag = GaugeMetricFamily("loglake_shipper_file_lag_bytes", "Bytes written but not yet acknowledged",
                                labels=["path"])
        for path, nbytes in s.file_lag:
            lag.add_metric([path], nbytes)
        yield lag
        yield GaugeMetricFamily("loglake_shipper_broker_outage_seconds", "How long the broker has been unreachable",
                                value=s.outage_seconds)
        yield GaugeMetricFamily("loglake_shipper_ready", "1 while the broker takes frames into the topic as "
                                "configured; 0 during an outage or while its partition count differs",
                                value=0 if s.outage_seconds > 0 or s.topic_fault is not None else 1)


def registry_for(snapshot: Snapshot) -> CollectorRegistry:
    """A registry reporting the figures ``snapshot`` gives at each scrape."""
    return registry_of(ShipperCollector(snapshot))


async def serve(listen: str, snapshot: Snapshot) -> asyncio.Server:
    """GET /metrics, /healthz and /readyz (503 while the broker is unreachable, or while the topic's
    partition count is not ``kafka.partitions``) for the shipper whose figures ``snapshot`` gives
    (called with ``file_lag=False`` for the health checks, which need no per-file figures)."""

    def health() -> tuple[bool, dict[str, object]]:
        return _health(snapshot(file_lag=False))

    def ready() -> tuple[bool, dict[str, object]]:
        s = snapshot(file_lag=False)
        alive, details = _health(s)
        if alive and s.outage_seconds > 0:
            return False, {**details, "status": "broker unreachable"}
        if alive and s.topic_fault is not None:
            return False, {**details, "status": "topic partitions differ", "fault": s.topic_fault}
        return alive, details

    return await serve_http(listen, registry_for(snapshot), health, ready)


def _health(s: ShipperSnapshot) -> tuple[bool, dict[str, object]]:
    """Alive while the loop went round within the last minute."""
    stalled = time.monotonic() - s.last_loop > 60
    return not stalled, {"status": "stalled" if stalled else "ok",
                         "broker_outage_s": round(s.outage_seconds, 1), "files": s.files_watched}
