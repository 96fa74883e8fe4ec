"""Push ingest over HTTP (`loglake receive`) with real clients, through the real pipeline.

One broker (our own: a test pauses it), one `loglake ingest`, one `loglake receive` and one `loglake
serve` for the module; each test writes to its own tenant. Records sent by the OpenTelemetry SDK's
OTLP exporter, by a Promtail-shaped Loki push (protobuf + snappy), by the Elasticsearch client's bulk
helper and as NDJSON are found by search with the right columns and attributes.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from loglake.broker import start_broker, stop_process
from tests.helpers.processes import Stack, free_port, wait_until
from tests.helpers.push import loki_entry, loki_push, otlp_json
from tests.helpers.stored import open_catalog

#: One tenant with limits of its own (a TOML array of inline tables, as the variable takes it).
# The SDK's logging handler is what most Python services use today, deprecated or not.
pytestmark = pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")

LIMITED = '[{tenant = "limited", bytes_per_s = 200, burst_bytes = 0, max_request_bytes = 4096}]'


@dataclass
class Push:
    stack: Stack
    url: str
    broker: subprocess.Popen[bytes]

    def search(self, tenant: str, q: str = "", want: int = 1, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Rows of ``tenant`` matching ``q`` (oldest first), once at least ``want`` are there."""
        def rows() -> list[dict[str, Any]] | None:
            resp = httpx.get(f"{self.stack.url}/api/v1/search", params={"q": q, "start": "now-2d", "limit": 1000,
                                                                        "order": "asc"},
                             headers={"X-Scope-OrgID": tenant}, timeout=30)
            resp.raise_for_status()
            got = resp.json()["rows"]
            return got if len(got) >= want else None
        return wait_until(rows, timeout_s, 0.3, f"{want} rows of tenant {tenant} matching {q!r}")

    def count(self, tenant: str) -> int:
        resp = httpx.get(f"{self.stack.url}/api/v1/search", params={"q": "", "start": "now-2d", "limit": 10_000},
                         headers={"X-Scope-OrgID": tenant}, timeout=30)
        resp.raise_for_status()
        return len(resp.json()["rows"])


@pytest.fixture(scope="module")
def push(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Push]:
    root = tmp_path_factory.mktemp("push")
    address = f"127.0.0.1:{free_port()}"
    broker = start_broker(address, log_file=root / "broker.log")
    stack = Stack(root=root, bootstrap=address, topic="push.test")
    port = free_port()
    try:
        stack.start("ingest")
        stack.start("receive", LOGLAKE_RECEIVE__PORT=str(port), LOGLAKE_RECEIVE__ACK_TIMEOUT_S="2",
                    LOGLAKE_RECEIVE__MAX_REQUEST_BYTES="1048576", LOGLAKE_RECEIVE__TENANTS=LIMITED)
        stack.start("serve")
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(up, 30, what=f"receiver ready; log:\n{stack.log_text('receive')[-2000:]}")
        stack.wait_ready()
        open_catalog(stack)
        yield Push(stack, url, broker)
    finally:
        stack.stop_all()
        stop_process(broker)


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# -- OTLP ------------------------------------------------------------------------------------------

def _otel_logs(tenant: str, url: str, exporter_cls: Any = None) -> tuple[Any, Any, Any]:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create({"service.name": "checkout", "host.name": "node-7",
                                "deployment.environment": "prod", "k8s.pod.name": "checkout-1"})
    provider = LoggerProvider(resource=resource)
    exporter = exporter_cls() if exporter_cls else OTLPLogExporter(
        endpoint=f"{url}/v1/logs", headers={"X-Scope-OrgID": tenant}, compression=Compression.Gzip, timeout=10)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logging.getLogger(f"otel.{tenant}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))
    tracer = TracerProvider(resource=resource).get_tracer("checkout.tracer")
    return logger, tracer, exporter


def test_otlp_sdk_protobuf_records_are_found_with_columns_and_attributes(push: Push) -> None:
    tenant = _tenant()
    logger, tracer, _ = _otel_logs(tenant, push.url)
    with tracer.start_as_current_span("pay") as span:
        logger.warning("payment declined for order %s", "o-17", extra={"order.id": "o-17", "amount": 42.5,
                                                                        "severity": "an attribute named severity"})
        ctx = span.get_span_context()
    logger.info("cart viewed", extra={"user": "u1"})
    logger.error("stock service timed out")
    rows = push.search(tenant, want=3)
    by_msg = {r["message"]: r for r in rows}
    assert set(by_msg) == {"payment declined for order o-17", "cart viewed", "stock service timed out"}
    warn = by_msg["payment declined for order o-17"]
    assert (warn["service"], warn["host"], warn["level"], warn["severity"]) == ("checkout", "node-7", "warn", 13)
    assert warn["trace_id"] == f"{ctx.trace_id:032x}" and warn["span_id"] == f"{ctx.span_id:016x}"
    attrs = warn["attrs"]
    assert attrs["deployment.environment"] == "prod" and attrs["k8s.pod.name"] == "checkout-1"
    assert attrs["order.id"] == "o-17" and attrs["amount"] == "42.5"
    assert attrs["attributes.severity"] == "an attribute named severity"
    assert attrs["otel.scope.name"] == f"otel.{tenant}"
    assert "service.name" not in attrs and "host.name" not in attrs
    assert (by_msg["cart viewed"]["level"], by_msg["stock service timed out"]["level"]) == ("info", "error")
    assert by_msg["cart viewed"]["trace_id"] is None
    # The record's own time, not the time it was received.
    assert abs(warn["ts"] - warn["observed_ts"]) < 10_000_000 if isinstance(warn["ts"], int) else True
    # Searchable by column and by attribute.
    assert [r["message"] for r in push.search(tenant, 'service:checkout AND level:error')] == \
        ["stock service timed out"]
    assert len(push.search(tenant, 'deployment.environment:prod', want=3)) == 3


def test_otlp_json_from_the_sdk_encoding_keeps_exact_severity_and_ids(push: Push) -> None:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.sdk._logs.export import InMemoryLogExporter

    tenant = _tenant()
    logger, tracer, memory = _otel_logs(tenant, push.url, InMemoryLogExporter)
    with tracer.start_as_current_span("batch") as span:
        logger.warning("json encoded record", extra={"nested": "yes"})
        ctx = span.get_span_context()
    request = encode_logs(memory.get_finished_logs())
    data = otlp_json(request)
    record = data["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    record["severityNumber"] = 14          # WARN2: the exact number must survive
    record["severityText"] = "WARN2"
    record["attributes"].append({"key": "http", "value": {"kvlistValue": {"values": [
        {"key": "method", "value": {"stringValue": "GET"}}, {"key": "status", "value": {"intValue": "503"}}]}}})
    resp = httpx.post(f"{push.url}/otlp/v1/logs", content=gzip.compress(json.dumps(data).encode()),
                      headers={"Content-Type": "application/json", "Content-Encoding": "gzip",
                               "X-Scope-OrgID": tenant})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json") and resp.json() == {}
    (row,) = push.search(tenant)
    assert (row["message"], row["service"], row["host"], row["level"], row["severity"]) == \
        ("json encoded record", "checkout", "node-7", "warn", 14)
    assert row["trace_id"] == f"{ctx.trace_id:032x}" and row["span_id"] == f"{ctx.span_id:016x}"
    assert row["attrs"]["http.method"] == "GET" and row["attrs"]["http.status"] == "503"
    assert row["attrs"]["nested"] == "yes" and "level" not in row["attrs"]


def test_otlp_bad_bodies_are_refused_saying_why(push: Push) -> None:
    resp = httpx.post(f"{push.url}/v1/logs", content=b"\xff\xff\xff",
                      headers={"Content-Type": "application/x-protobuf"})
    assert resp.status_code == 400 and b"protobuf" in resp.content
    resp = httpx.post(f"{push.url}/v1/logs", content=b"{}", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415
    resp = httpx.post(f"{push.url}/v1/logs", content=b'{"resourceLogs": 3}',
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "OTLP/JSON" in resp.json()["message"]


# -- Loki push -------------------------------------------------------------------------------------

def test_loki_protobuf_snappy_push_with_structured_metadata(push: Push) -> None:
    tenant = _tenant()
    now = time.time_ns()
    body = loki_push([
        ('{service_name="api", host="web-3", filename="/var/log/api.log", env="prod", level="error"}',
         [loki_entry(now - 2_000_000, 'GET /orders 500 "upstream gone"', {"trace_id": "abc123", "pod": "api-1"}),
          loki_entry(now - 1_000_000, "retrying", {"level": "warn"})]),
        ('{job="batch", detected_level="info"}', [loki_entry(now, "job done")]),
    ])
    resp = httpx.post(f"{push.url}/loki/api/v1/push", content=body,
                      headers={"Content-Type": "application/x-protobuf", "User-Agent": "promtail/3.0.0",
                               "X-Scope-OrgID": tenant})
    assert resp.status_code == 204, resp.text
    rows = push.search(tenant, want=3)
    by_msg = {r["message"]: r for r in rows}
    first = by_msg['GET /orders 500 "upstream gone"']
    assert (first["service"], first["host"], first["source"], first["level"]) == ("api", "web-3", "/var/log/api.log",
                                                                                  "error")
    assert first["attrs"]["env"] == "prod" and first["attrs"]["pod"] == "api-1"
    assert first["trace_id"] == "abc123"
    assert first["ts"] // 1000 == (now - 2_000_000) // 1_000_000 if isinstance(first["ts"], int) else True
    assert by_msg["retrying"]["level"] == "warn"
    assert (by_msg["job done"]["service"], by_msg["job done"]["level"]) == ("batch", "info")


def test_python_logging_loki_handler_records_are_found_with_labels_and_level(push: Push) -> None:
    """A real Loki client: python-logging-loki's LokiHandler (JSON push) behind Python logging."""
    import logging_loki

    tenant = _tenant()
    handler = logging_loki.LokiHandler(url=f"{push.url}/loki/api/v1/push", version="1",
                                       tags={"service_name": "billing", "env": "prod"})
    handler.emitter.session.headers["X-Scope-OrgID"] = tenant      # multi-tenant Loki's header
    logger = logging.getLogger(f"loki.{tenant}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        logger.warning("disk %s almost full", "/var", extra={"tags": {"host": "pod-3", "region": "eu-west"}})
        logger.error("invoice run failed")
        logger.debug("cache warmed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    by_msg = {r["message"]: r for r in push.search(tenant, want=3)}
    assert set(by_msg) == {"disk /var almost full", "invoice run failed", "cache warmed"}
    disk = by_msg["disk /var almost full"]
    assert (disk["service"], disk["host"], disk["source"], disk["level"]) == ("billing", "pod-3", "loki", "warn")
    assert disk["attrs"]["env"] == "prod" and disk["attrs"]["region"] == "eu-west"
    assert disk["attrs"]["logger"] == f"loki.{tenant}"
    assert "severity" not in disk["attrs"] and "service_name" not in disk["attrs"]
    assert (by_msg["invoice run failed"]["level"], by_msg["cache warmed"]["level"]) == ("error", "debug")
    assert [r["message"] for r in push.search(tenant, "level:error AND env:prod")] == ["invoice run failed"]


def test_loki_json_push(push: Push) -> None:
    tenant = _tenant()
    now = time.time_ns()
    body = {"streams": [{"stream": {"service_name": "worker", "region": "eu"},
                         "values": [[str(now), "queue drained", {"queue": "emails"}]]}]}
    resp = httpx.post(f"{push.url}/loki/api/v1/push", json=body, headers={"X-Scope-OrgID": tenant})
    assert resp.status_code == 204, resp.text
    (row,) = push.search(tenant)
    assert (row["message"], row["service"]) == ("queue drained", "worker")
    assert row["attrs"]["region"] == "eu" and row["attrs"]["queue"] == "emails"
    bad = httpx.post(f"{push.url}/loki/api/v1/push", json={"streams": [{"stream": {}, "values": [["x", "y"]]}]})
    assert bad.status_code == 400 and "nanoseconds" in bad.text
    # Without service_name, the service is found as Loki 3 finds it: the first of its labels, in its order.
    other = _tenant()
    body = {"streams": [{"stream": {"job": "cron", "container": "mailer", "namespace": "prod"},
                         "values": [[str(now), "sent"]]}]}
    resp = httpx.post(f"{push.url}/loki/api/v1/push", json=body, headers={"X-Scope-OrgID": other})
    assert resp.status_code == 204, resp.text
    (row,) = push.search(other)
    assert row["service"] == "mailer" and row["attrs"]["job"] == "cron" and row["attrs"]["namespace"] == "prod"


# -- Elasticsearch bulk ----------------------------------------------------------------------------

def test_elasticsearch_client_bulk_helper(push: Push) -> None:
    from elasticsearch import Elasticsearch, helpers

    tenant = _tenant()
    es = Elasticsearch(push.url, headers={"X-Scope-OrgID": tenant}, request_timeout=30)
    assert es.info()["version"]["number"].startswith("8.")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    docs = [{"_index": "app-logs", "_source": {"@timestamp": stamp, "message": f"order {i} shipped",
                                                "log": {"level": "warn" if i == 2 else "info"},
                                                "service": {"name": "shipping"}, "host": {"name": "es-host"},
                                                "order": {"id": i}}} for i in range(3)]
    docs.append({"_op_type": "create", "_index": "app-logs", "_id": "fixed-id",
                 "_source": {"@timestamp": stamp, "message": "created one"}})
    ok, errors = helpers.bulk(es, docs, raise_on_error=False)
    assert (ok, errors) == (4, [])
    rows = push.search(tenant, want=4)
    by_msg = {r["message"]: r for r in rows}
    r2 = by_msg["order 2 shipped"]
    assert (r2["service"], r2["host"], r2["level"], r2["source"]) == ("shipping", "es-host", "warn", "app-logs")
    assert r2["attrs"]["order.id"] == "2" and by_msg["order 0 shipped"]["level"] == "info"
    assert "created one" in by_msg
    # Items the receiver cannot take are answered per item, the others stored.
    tenant2 = _tenant()
    es2 = Elasticsearch(push.url, headers={"X-Scope-OrgID": tenant2})
    ok, errors = helpers.bulk(es2, [{"_index": "x", "_source": {"message": "good"}},
                                    {"_op_type": "delete", "_index": "x", "_id": "1"}], raise_on_error=False)
    assert ok == 1 and len(errors) == 1 and errors[0]["delete"]["status"] == 400
    assert "not supported" in errors[0]["delete"]["error"]["reason"]
    assert [r["message"] for r in push.search(tenant2)] == ["good"]


# -- NDJSON, retries, limits -----------------------------------------------------------------------

def test_ndjson_retried_request_is_stored_once(push: Push) -> None:
    tenant = _tenant()
    body = b"".join(json.dumps({"msg": f"line {i}", "level": "info", "i": i}).encode() + b"\n" for i in range(50))
    params = {"service": "importer", "host": "h1"}
    for encoding in ("", "gzip", ""):      # the same request three times, compressed or not
        content = gzip.compress(body) if encoding else body
        resp = httpx.post(f"{push.url}/api/v1/ingest", params=params, content=content,
                          headers={"X-Scope-OrgID": tenant, **({"Content-Encoding": encoding} if encoding else {})})
        assert resp.status_code == 200 and resp.json() == {"records": 50}, resp.text
    # With an Idempotency-Key, the key is the identity: the same body under another key is another request.
    keyed = b"".join(b'{"msg": "keyed %d"}\n' % i for i in range(5))
    for key, encoding in (("batch-77", ""), ("batch-77", "gzip"), ("batch-78", "")):
        resp = httpx.post(f"{push.url}/api/v1/ingest", params=params,
                          content=gzip.compress(keyed) if encoding else keyed,
                          headers={"X-Scope-OrgID": tenant, "Idempotency-Key": key,
                                   **({"Content-Encoding": encoding} if encoding else {})})
        assert resp.status_code == 200
    rows = push.search(tenant, want=60)
    time.sleep(1.5)            # a duplicate would be stored by now
    assert push.count(tenant) == 60
    assert sorted(r["attrs"]["i"] for r in rows if "i" in r["attrs"]) == sorted(str(i) for i in range(50))
    assert {r["service"] for r in rows} == {"importer"}
    bad = httpx.post(f"{push.url}/api/v1/ingest", content=b'{"ok": 1}\nnot json\n')
    assert bad.status_code == 400 and "line 2" in bad.json()["message"]


def test_request_size_and_rate_limits_answer_413_and_429(push: Push) -> None:
    # ~1 kB a request against a 4 kB bucket refilled at 200 B/s: drained within a few requests however
    # slowly a loaded machine sends them.
    small = b'{"msg": "x"}\n' * 80
    resp = httpx.post(f"{push.url}/api/v1/ingest", content=b'{"msg": "x"}\n' * 400,
                      headers={"X-Scope-OrgID": "limited"})
    assert resp.status_code == 413 and "max_request_bytes" in resp.json()["message"]
    bomb = gzip.compress(b'{"msg": "x"}\n' * 200_000)        # 2.6 MB once inflated
    resp = httpx.post(f"{push.url}/api/v1/ingest", content=bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 413
    statuses = []
    for i in range(40):
        r = httpx.post(f"{push.url}/api/v1/ingest", content=small + b'{"n": %d}\n' % i,
                       headers={"X-Scope-OrgID": "limited"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and "bytes_per_s" in r.json()["message"]
            break
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    metrics = httpx.get(f"{push.url}/metrics").text
    assert 'loglake_receive_rejections_total{protocol="ndjson",reason="rate_limited",tenant="limited"}' in metrics
    assert 'loglake_receive_rejections_total{protocol="ndjson",reason="too_large",tenant="limited"}' in metrics


def test_a_request_during_a_broker_pause_is_answered_503_and_its_retry_stored_once(push: Push) -> None:
    tenant = _tenant()
    body = b"".join(b'{"msg": "during pause %d"}\n' % i for i in range(20))
    os.kill(push.broker.pid, signal.SIGSTOP)
    try:
        resp = httpx.post(f"{push.url}/api/v1/ingest", content=body, headers={"X-Scope-OrgID": tenant}, timeout=30)
        assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
        assert "not be stored twice" in resp.json()["message"]
    finally:
        os.kill(push.broker.pid, signal.SIGCONT)

    def retried() -> bool:
        r = httpx.post(f"{push.url}/api/v1/ingest", content=body, headers={"X-Scope-OrgID": tenant}, timeout=30)
        return r.status_code == 200
    wait_until(retried, 30, 0.5, "the retry to be acknowledged")
    push.search(tenant, want=20)
    time.sleep(2)              # the first attempt's frames reach the broker too: dropped by ingest
    assert push.count(tenant) == 20


# -- authentication --------------------------------------------------------------------------------

def test_with_authentication_on_ingest_and_writer_keys_push_to_their_own_tenants_only(push: Push) -> None:
    from query.auth import create_key
    from storage.catalog import Catalog

    catalog = Catalog(f"sqlite:///{push.stack.data_root / 'catalog.sqlite'}")
    writer = create_key(catalog, ["team-a", "team-b"], "writer", None)
    reader = create_key(catalog, ["team-a"], "reader", None)
    ingest = create_key(catalog, ["team-c"], "ingest", None)
    port, query_port = free_port(), free_port()
    push.stack.start("receive", name="receive-auth", LOGLAKE_RECEIVE__PORT=str(port), LOGLAKE_AUTH__ENABLED="true")
    # A query server with authentication on over the same catalog, for what the keys may read.
    push.stack.start("serve", name="serve-auth", LOGLAKE_QUERY__PORT=str(query_port), LOGLAKE_AUTH__ENABLED="true")
    url, query_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{query_port}"

    def ready() -> bool:
        try:
            return all(httpx.get(f"{u}/readyz", timeout=1).status_code == 200 for u in (url, query_url))
        except httpx.HTTPError:
            return False
    wait_until(ready, 30, what="the receiver and query server with authentication on")
    line = b'{"msg": "from a key"}\n'

    def post(key: str | None, tenant: str | None = None, body: bytes = line) -> httpx.Response:
        headers = {**({"Authorization": f"Bearer {key}"} if key else {}),
                   **({"X-Scope-OrgID": tenant} if tenant else {})}
        return httpx.post(f"{url}/api/v1/ingest", content=body, headers=headers)

    assert post(None).status_code == 401
    assert post(reader).status_code == 403                      # a reader may not push
    assert post(writer, "team-c").status_code == 403            # nor may a writer outside its tenants
    assert post(writer).status_code == 200                      # the key's first tenant
    assert post(writer, "team-b", b'{"msg": "to team b"}\n').status_code == 200
    assert [r["message"] for r in push.search("team-a")] == ["from a key"]
    assert [r["message"] for r in push.search("team-b")] == ["to team b"]
    # An ingest key pushes to its tenant, and reads nothing, not even what it pushed.
    assert post(ingest, None, b'{"msg": "from an agent"}\n').status_code == 200
    assert post(ingest, "team-a").status_code == 403
    assert [r["message"] for r in push.search("team-c")] == ["from an agent"]

    def search_with(key: str) -> httpx.Response:
        return httpx.get(f"{query_url}/api/v1/search", params={"q": "", "start": "now-2d"},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)
    denied = search_with(ingest)
    assert denied.status_code == 403 and "ingest" in denied.json()["message"], denied.text
    assert [r["message"] for r in search_with(writer).json()["rows"]] == ["from a key"]
    # Elasticsearch clients send the key as basic auth's password; probes and GET / stay open.
    from elasticsearch import Elasticsearch, helpers
    es = Elasticsearch(url, basic_auth=("loglake", writer), headers={"X-Scope-OrgID": "team-b"})
    assert helpers.bulk(es, [{"_index": "i", "_source": {"message": "bulk with a key"}}]) == (1, [])
    assert len(push.search("team-b", want=2)) == 2
    assert httpx.get(f"{url}/metrics").status_code == 200


# -- every route's body, fuzzed --------------------------------------------------------------------

_ROUTES = [("/v1/logs", "application/x-protobuf"), ("/otlp/v1/logs", "application/json"),
           ("/loki/api/v1/push", "application/x-protobuf"), ("/loki/api/v1/push", "application/json"),
           ("/_bulk", "application/x-ndjson"), ("/fuzz-index/_bulk", "application/x-ndjson"),
           ("/api/v1/ingest", "application/x-ndjson")]


def _json_ish() -> Any:
    from hypothesis import strategies as st

    leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                     st.text(max_size=20))
    return st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(st.sampled_from(
                                                          ["streams", "stream", "values", "resourceLogs", "scopeLogs",
                                                           "logRecords", "body", "stringValue", "timeUnixNano",
                                                           "traceId", "index", "_index", "msg", "attributes", "key",
                                                           "value", "severityNumber"]) | st.text(max_size=8),
                                                          kids, max_size=4)), max_leaves=20)


def test_fuzzed_bodies_never_get_a_5xx_and_every_refusal_says_why(push: Push) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    bodies = st.one_of(st.binary(max_size=300), _json_ish().map(lambda v: json.dumps(v).encode()),
                       st.lists(_json_ish().map(json.dumps), max_size=5).map(lambda ls: "\n".join(ls).encode()))
    client = httpx.Client(timeout=30)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(route=st.sampled_from(_ROUTES), body=bodies, gzipped=st.booleans())
    def check(route: tuple[str, str], body: bytes, gzipped: bool) -> None:
        path, ctype = route
        headers = {"Content-Type": ctype, "X-Scope-OrgID": "fuzz"}
        if gzipped:
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        resp = client.post(f"{push.url}{path}", content=body, headers=headers)
        assert resp.status_code < 500, (path, body[:200], resp.status_code, resp.text[:300])
        if resp.status_code >= 400:
            assert len(resp.content.strip()) > 10, (path, resp.status_code, resp.content)
    try:
        check()
    finally:
        client.close()
    assert "failed decoding in an unforeseen way" not in push.stack.log_text("receive")
