"""What a shipper reports: Prometheus metrics on /metrics and liveness on /healthz.

The figures are read from the shipper's own state at scrape time (a custom
collector), so the hot loop only bumps plain integers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

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


def registry_for(shipper: Shipper) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShipperCollector(shipper))
    return registry


async def serve(listen: str, shipper: Shipper) -> asyncio.Server:
    """A minimal HTTP server for GET /metrics and GET /healthz."""
    host, _, port = listen.rpartition(":")
    registry = registry_for(shipper)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = request.split(b" ", 2)[1].split(b"?", 1)[0] if request.count(b" ") >= 2 else b""
            if path == b"/metrics":
                status, ctype, body = "200 OK", "text/plain; version=0.0.4", generate_latest(registry)
            elif path == b"/healthz":
                stalled = time.monotonic() - shipper.last_loop > 60
                status = "503 Service Unavailable" if stalled else "200 OK"
                body = orjson.dumps({"status": "stalled" if stalled else "ok",
                                     "broker_outage_s": round(shipper.outage_seconds(), 1),
                                     "files": len(shipper.watchers)})
                ctype = "application/json"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host or "127.0.0.1", int(port))
