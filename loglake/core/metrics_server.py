"""A minimal HTTP endpoint for a worker process: GET /metrics (Prometheus), /healthz and /readyz.

Shippers and ingest workers run an asyncio loop, not a web framework; this
serves their scrapes on that loop without a thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector


def registry_of(collector: Collector) -> CollectorRegistry:
    """A registry holding only ``collector``, which reads its figures at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


#: Reports (healthy, details) for /healthz.
Health = Callable[[], tuple[bool, dict[str, Any]]]


async def serve(listen: str, registry: CollectorRegistry, health: Health,
                ready: Health | None = None) -> asyncio.Server:
    """Listen on ``host:port`` for GET /metrics, /healthz (alive) and /readyz (doing its work:
    503 with the reason while a fault lasts; the same as /healthz when ``ready`` is None)."""
    host, _, port = listen.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = request.split(b" ", 2)[1].split(b"?", 1)[0] if request.count(b" ") >= 2 else b""
            if path == b"/metrics":
                status, ctype, body = "200 OK", "text/plain; version=0.0.4", generate_latest(registry)
            elif path in (b"/healthz", b"/readyz"):
                ok, details = (ready if path == b"/readyz" and ready is not None else health)()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "application/json", orjson.dumps(details)
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host or "127.0.0.1", int(port))


def serve_in_thread(listen: str, registry: CollectorRegistry, health: Health, ready: Health | None = None) -> None:
    """:func:`serve` on a daemon thread of its own, for a process whose work runs synchronously (a long
    job must not leave a scrape or a probe unanswered); returns once listening, raises if it cannot."""
    started = threading.Event()
    failed: list[BaseException] = []

    async def main() -> None:
        try:
            server = await serve(listen, registry, health, ready)
        except BaseException as e:
            failed.append(e)
            raise
        finally:
            started.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(main()), name="metrics", daemon=True).start()
    started.wait()
    if failed:
        raise failed[0]
