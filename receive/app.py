"""The receiver's HTTP app: one route family per protocol, each answering in its protocol's shape.

Every push goes the same way: the tenant (the key's, or ``X-Scope-OrgID`` among those it allows,
which the auth middleware in front has settled), the body within the tenant's size limit (413),
decompressed within it, the tenant's rate (429 with Retry-After), the protocol's decoding (400
saying why), then frames to the topic and the answer once the broker acknowledged them all (503
with Retry-After if it did not in time). Decoding runs in a thread so the event loop keeps
collecting acknowledgements meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loglake.core.config import Config
from loglake.core.tenants import TENANT_RULE, is_tenant_name
from receive import elastic, loki, ndjson, otlp, otlp_json
from receive.bodies import decode_content, read_limited, snappy_block
from receive.errors import BadRequest, PushRejected, UnsupportedMediaType
from receive.limits import TenantLimits
from receive.metrics import ReceiveMetrics
from receive.producer import FrameProducer
from receive.records import Run, encode_frames, request_id

log = logging.getLogger("loglake.receive")

#: The routes that write, and so need an ingest key (or a writer's) when authentication is on.
PUSH_PATHS = frozenset({"/v1/logs", "/otlp/v1/logs", "/loki/api/v1/push", "/_bulk", "/api/v1/ingest"})
#: Probes and metrics: open to anyone, as on the query server. `GET /` answers Elasticsearch
#: clients' version check, and says nothing about what is stored.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/"})
MAX_IDEMPOTENCY_KEY = 256


def required_role(method: str, path: str) -> str | None:
    """The least role a request to the receiver needs; None for the open paths."""
    if path in OPEN_PATHS:
        return None
    return "ingest"


@dataclass(frozen=True, slots=True)
class Decoded:
    runs: list[Run]
    records: int
    #: What decides the records besides the body (route parameters), for the request's identity.
    context: bytes = b""


def _decoding(decode: Callable[[bytes], Decoded], body: bytes) -> Decoded:
    """``decode(body)``; a failure nobody foresaw is the body's fault as far as the client can
    tell (a 400 saying what broke; nothing was produced), and logged in full for us."""
    try:
        return decode(body)
    except PushRejected:
        raise
    except Exception as e:
        log.exception("push body failed decoding in an unforeseen way")
        raise BadRequest(f"the body could not be decoded ({type(e).__name__}: {str(e)[:200]})") from None


class Receiver:
    """The state the routes share: configuration, limits, metrics and the producer."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.limits = TenantLimits(cfg.receive)
        self.metrics = ReceiveMetrics()
        self.producer = FrameProducer(cfg)
        self.max_frame_bytes = max(1024, cfg.shipper.max_frame_bytes - (4 << 10))

    def tenant(self, request: Request) -> str:
        tenant = request.headers.get("x-scope-orgid", "").strip() or self.cfg.receive.default_tenant
        if not is_tenant_name(tenant):
            raise BadRequest(f"invalid tenant {tenant[:80]!r} in X-Scope-OrgID ({TENANT_RULE})")
        return tenant

    async def push(self, request: Request, protocol: str, tenant: str,
                   decode: Callable[[bytes], Decoded], body_of: Callable[[bytes, int], bytes] | None = None
                   ) -> Decoded:
        """Read, limit, decode and produce one request; return what it held once the broker acked."""
        limit = self.limits.max_request_bytes(tenant)
        raw = await read_limited(request.stream(), request.headers.get("content-length"), limit)
        body = decode_content(raw, request.headers.get("content-encoding", ""), limit)
        if body_of is not None:
            body = body_of(body, limit)
        self.limits.check_size(tenant, len(body))
        self.limits.take(tenant, len(body))
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        decoded = await asyncio.to_thread(_decoding, decode, body)
        self._check_records(decoded.runs)
        sid = request_id(protocol, key, (decoded.context, body))
        frames = encode_frames(sid, tenant, decoded.runs, time.time_ns() // 1000, self.max_frame_bytes)
        if frames:
            await self.producer.send(frames, sid, tenant)
        self.metrics.ready.set(1)
        t = self.metrics.tenant_label(tenant)
        self.metrics.records.labels(protocol, t).inc(decoded.records)
        self.metrics.bytes.labels(protocol, t).inc(len(body))
        return decoded

    def _check_records(self, runs: Sequence[Run]) -> None:
        limit = self.cfg.ingest.max_record_bytes
        for run in runs:
            longest = max((len(x) for x in run.lines), default=0)
            if longest > limit:
                raise BadRequest(f"a record of {longest} bytes is over ingest.max_record_bytes={limit}")

    def count(self, protocol: str, tenant: str, status: int, reason: str | None = None) -> None:
        t = self.metrics.tenant_label(tenant)
        self.metrics.requests.labels(protocol, t, str(status)).inc()
        if reason:
            self.metrics.rejections.labels(protocol, t, reason).inc()
        if reason == "broker_unavailable":
            self.metrics.ready.set(0)


def _retry_headers(e: PushRejected) -> dict[str, str]:
    return {"Retry-After": str(e.retry_after_s)} if e.retry_after_s is not None else {}


def _rpc_status(code: int, message: str) -> bytes:
    """A google.rpc.Status in protobuf: code (field 1), message (field 2)."""
    msg = message.encode()

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    return b"\x08" + varint(code) + b"\x12" + varint(len(msg)) + msg


_GRPC_CODE = {400: 3, 413: 8, 415: 3, 429: 8, 503: 14}


async def _guarded(receiver: Receiver, request: Request, protocol: str,
                   run: Callable[[str], Awaitable[Response]],
                   refuse: Callable[[PushRejected], Response]) -> Response:
    tenant = "?"
    try:
        tenant = receiver.tenant(request)
        response = await run(tenant)
    except PushRejected as e:
        receiver.count(protocol, tenant if tenant != "?" else "_invalid", e.status, e.reason)
        if e.status >= 500:
            log.warning("push refused: %s", e.message, extra={"protocol": protocol, "tenant": tenant})
        return refuse(e)
    receiver.count(protocol, tenant, response.status_code)
    return response


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def build_routes(receiver: Receiver) -> list[Route]:
    async def otlp_logs(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        as_json = ctype == "application/json"

        def refuse(e: PushRejected) -> Response:
            if as_json:
                return Response(orjson.dumps({"code": _GRPC_CODE.get(e.status, 3), "message": e.message}),
                                e.status, _retry_headers(e), media_type="application/json")
            return Response(_rpc_status(_GRPC_CODE.get(e.status, 3), e.message), e.status, _retry_headers(e),
                            media_type="application/x-protobuf")

        async def run(tenant: str) -> Response:
            if ctype not in ("application/x-protobuf", "application/json", "application/protobuf"):
                raise UnsupportedMediaType(f"Content-Type {ctype[:60]!r}: OTLP/HTTP is application/x-protobuf "
                                           "or application/json")

            def decode(body: bytes) -> Decoded:
                runs, n = otlp_json.runs_of_json(body) if as_json else otlp.runs_of(otlp.decode_protobuf(body))
                return Decoded(runs, n, b"json" if as_json else b"proto")

            await receiver.push(request, "otlp", tenant, decode)
            body, media = otlp.answer(as_json)
            return Response(body, 200, media_type=media)

        return await _guarded(receiver, request, "otlp", run, refuse)

    async def loki_push(request: Request) -> Response:
        def refuse(e: PushRejected) -> Response:
            return Response(e.message + "\n", e.status, _retry_headers(e), media_type="text/plain")

        async def run(tenant: str) -> Response:
            as_json = _is_json(request)

            def decode(body: bytes) -> Decoded:
                runs, n = loki.decode_json(body) if as_json else loki.decode_protobuf(body)
                return Decoded(runs, n, b"json" if as_json else b"proto")

            # Promtail and Alloy send protobuf snappy-compressed in the body, not as a Content-Encoding.
            await receiver.push(request, "loki", tenant, decode, None if as_json else snappy_block)
            return Response(status_code=204)

        return await _guarded(receiver, request, "loki", run, refuse)

    def es_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(orjson.dumps(content), status, {**(headers or {}), elastic.PRODUCT_HEADER[0]:
                                                          elastic.PRODUCT_HEADER[1]}, media_type="application/json")

    async def es_bulk(request: Request) -> Response:
        index = request.path_params.get("index")
        started = time.monotonic()

        def refuse(e: PushRejected) -> Response:
            kind = {413: "request_entity_too_large", 429: "es_rejected_execution_exception",
                    503: "unavailable_shards_exception"}.get(e.status, "illegal_argument_exception")
            err = {"type": kind, "reason": e.message}
            return es_response({"error": {"root_cause": [err], **err}, "status": e.status}, e.status,
                               _retry_headers(e))

        async def run(tenant: str) -> Response:
            holder: list[elastic.Bulk] = []

            def decode(body: bytes) -> Decoded:
                bulk = elastic.Bulk(body, index, hashlib.blake2b(body, digest_size=8).hexdigest())
                holder.append(bulk)
                return Decoded(list(bulk.runs.values()), bulk.records, (index or "").encode())

            await receiver.push(request, "elasticsearch", tenant, decode)
            bulk = holder[0]
            refused = sum(1 for it in bulk.items if next(iter(it.values()))["status"] >= 300)
            if refused:
                receiver.metrics.rejections.labels("elasticsearch", receiver.metrics.tenant_label(tenant),
                                                   "bad_item").inc(refused)
            return es_response(bulk.answer(int((time.monotonic() - started) * 1000)))

        return await _guarded(receiver, request, "elasticsearch", run, refuse)

    async def es_info(request: Request) -> Response:
        return es_response(elastic.info())

    async def ingest_ndjson(request: Request) -> Response:
        def refuse(e: PushRejected) -> Response:
            return Response(orjson.dumps({"error": e.reason, "message": e.message}), e.status, _retry_headers(e),
                            media_type="application/json")

        async def run(tenant: str) -> Response:
            q = request.query_params
            service, host, source = q.get("service", "unknown"), q.get("host", ""), q.get("source", "http")

            def decode(body: bytes) -> Decoded:
                runs, n = ndjson.decode(body, service, host, source)
                return Decoded(runs, n, orjson.dumps([service, host, source]))

            decoded = await receiver.push(request, "ndjson", tenant, decode)
            return Response(orjson.dumps({"records": decoded.records}), 200, media_type="application/json")

        return await _guarded(receiver, request, "ndjson", run, refuse)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(receiver.metrics.registry), media_type="text/plain; version=0.0.4")

    async def healthz(request: Request) -> Response:
        return Response(orjson.dumps({"ok": True}), media_type="application/json")

    async def readyz(request: Request) -> Response:
        fault = receiver.producer.fault
        return Response(orjson.dumps({"ready": not fault, **({"reason": fault} if fault else {})}),
                        200 if not fault else 503, media_type="application/json")

    return [
        Route("/v1/logs", otlp_logs, methods=["POST"]),
        Route("/otlp/v1/logs", otlp_logs, methods=["POST"]),
        Route("/loki/api/v1/push", loki_push, methods=["POST"]),
        Route("/_bulk", es_bulk, methods=["POST", "PUT"]),
        Route("/{index}/_bulk", es_bulk, methods=["POST", "PUT"]),
        Route("/", es_info, methods=["GET", "HEAD"]),
        Route("/api/v1/ingest", ingest_ndjson, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]


Middleware = Callable[[Any], Any]


def create_app(cfg: Config, wrap: Middleware | None = None) -> Any:
    """The receiver as an ASGI app; ``wrap`` puts authentication in front (the shell's choice)."""
    receiver = Receiver(cfg)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        receiver.producer.start()
        yield
        await receiver.producer.stop()

    app = Starlette(routes=build_routes(receiver), lifespan=lifespan)
    app.state.receiver = receiver
    return wrap(app) if wrap is not None else app
