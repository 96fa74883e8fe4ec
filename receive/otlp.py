"""OTLP/HTTP logs (protobuf or JSON) to runs of records.

Resource attributes describe the run: ``service.name`` is its service, ``host.name`` its host, the
rest its labels (so ``attrs``). Each log record becomes one JSON line: ``ts`` (the event time, else
the client's observed time, in nanoseconds), ``level`` (OpenTelemetry's short name for the severity
number, e.g. ``warn2`` for 14, so ingest stores that exact severity; else the severity text),
``message`` (the body; a structured body as its JSON text), ``trace_id`` and ``span_id`` (hex), the
scope's name and version as ``otel.scope.name`` and ``otel.scope.version``, and the scope's and the
record's attributes (a map value nests, so ingest flattens it into dotted keys).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from receive.errors import BadRequest
from receive.keys import line_key
from receive.records import Run

#: OpenTelemetry's short names of severity numbers 1-24 (the logs data model).
SEVERITY_NAMES = ("",) + tuple(f"{w}{'' if i == 1 else i}" for w in ("trace", "debug", "info", "warn", "error", "fatal")
                               for i in range(1, 5))


def value_of(v: AnyValue) -> Any:
    """An AnyValue as plain JSON data (bytes as base64 text)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode()


def _flat_labels(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flat_labels(f"{prefix}.{k}", v, out)
    elif value is not None:
        out[prefix] = _text(value)


def _hex(raw: bytes) -> str | None:
    return raw.hex() if raw and any(raw) else None


def resource_parts(attributes: Iterable[tuple[str, Any, bool]]) -> tuple[str, str, dict[str, str]]:
    """A resource's (service, host, labels) from its attributes as (key, plain value, whether the
    value is a string); a ``service.name`` or ``host.name`` of another kind is a label."""
    service, host = "unknown_service", ""
    labels: dict[str, str] = {}
    for key, value, is_string in attributes:
        if key == "service.name" and is_string:
            service = value
        elif key == "host.name" and is_string:
            host = value
        else:
            _flat_labels(key, value, labels)
    return service, host, labels


def scope_parts(name: str, version: str, attributes: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """What a scope adds to each of its records."""
    scope: dict[str, Any] = {}
    if name:
        scope["otel.scope.name"] = name
    if version:
        scope["otel.scope.version"] = version
    for key, value in attributes:
        scope[line_key(key)] = value
    return scope


def record_line(t: int, n: int, text: str, body: Any, trace: bytes, span: bytes, event: str,
                scope: dict[str, Any], attributes: Iterable[tuple[str, Any]]) -> bytes:
    """One log record's JSON line, from its fields as plain values (``body`` None when it has none)."""
    rec: dict[str, Any] = {}
    if t:
        rec["ts"] = t
    if 0 < n < len(SEVERITY_NAMES):
        rec["level"] = SEVERITY_NAMES[n]
        if text and text.lower() != SEVERITY_NAMES[n]:
            rec["severity_text"] = text
    elif text:
        rec["level"] = text
    rec["message"] = "" if body is None else _text(body)
    if (trace_id := _hex(trace)) is not None:
        rec["trace_id"] = trace_id
    if (span_id := _hex(span)) is not None:
        rec["span_id"] = span_id
    if event:
        rec["event.name"] = event
    rec.update(scope)
    for key, value in attributes:
        rec[line_key(key)] = value
    return orjson.dumps(rec)


def runs_of(request: ExportLogsServiceRequest) -> tuple[list[Run], int]:
    """The request's runs (one per resource and scope), and how many records they hold."""
    runs: list[Run] = []
    total = 0
    for rl in request.resource_logs:
        service, host, labels = resource_parts(
            (kv.key, value_of(kv.value), kv.value.WhichOneof("value") == "string_value")
            for kv in rl.resource.attributes)
        for sl in rl.scope_logs:
            scope = scope_parts(sl.scope.name, sl.scope.version,
                                ((kv.key, value_of(kv.value)) for kv in sl.scope.attributes))
            run = Run(service=service, host=host, source=sl.scope.name or "otlp", labels=labels)
            for r in sl.log_records:
                run.lines.append(record_line(
                    r.time_unix_nano or r.observed_time_unix_nano, r.severity_number, r.severity_text,
                    value_of(r.body) if r.HasField("body") else None, r.trace_id, r.span_id, r.event_name,
                    scope, ((kv.key, value_of(kv.value)) for kv in r.attributes)))
            if run.lines:
                runs.append(run)
                total += len(run.lines)
    return runs, total


def decode_protobuf(body: bytes) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    try:
        req.ParseFromString(body)
    except (DecodeError, ValueError) as e:
        raise BadRequest(f"not an OTLP ExportLogsServiceRequest in protobuf: {e}") from None
    return req


def _objects(parent: Any, *keys: str) -> list[dict[str, Any]]:
    """The objects in the first list under ``keys`` (the camelCase name or the snake_case one)."""
    for key in keys:
        v = parent.get(key)
        if isinstance(v, list):
            return [x for x in v if isinstance(x, dict)]
    return []


def _ids_to_base64(data: dict[str, Any]) -> None:
    """OTLP/JSON writes trace and span ids in hex; the protobuf JSON mapping wants base64. (What is
    not the right shape here is left for the protobuf parser to refuse, saying where.)"""
    for rl in _objects(data, "resourceLogs", "resource_logs"):
        for sl in _objects(rl, "scopeLogs", "scope_logs"):
            for r in _objects(sl, "logRecords", "log_records"):
                for key in ("traceId", "spanId", "trace_id", "span_id"):
                    v = r.get(key)
                    if isinstance(v, str) and v:
                        try:
                            r[key] = base64.b64encode(bytes.fromhex(v)).decode()
                        except ValueError:
                            raise BadRequest(f"logRecords[].{key} is not hex: {v[:40]!r}") from None


def decode_json(body: bytes) -> ExportLogsServiceRequest:
    """An OTLP/JSON body through protobuf's JSON mapping (``receive/otlp_json.py`` walks the
    usual shape faster, and comes here for the rest)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"not JSON: {e}") from None
    return parse_dict(data)


def parse_dict(data: Any) -> ExportLogsServiceRequest:
    """Parsed OTLP/JSON as a request; BadRequest saying why not. ``data`` is changed (ids to base64)."""
    if not isinstance(data, dict):
        raise BadRequest("an OTLP/JSON request is an object with resourceLogs")
    _ids_to_base64(data)
    req = ExportLogsServiceRequest()
    try:
        json_format.ParseDict(data, req, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as e:
        raise BadRequest(f"not an OTLP/JSON ExportLogsServiceRequest: {str(e)[:300]}") from None
    return req


def answer(json: bool) -> tuple[bytes, str]:
    """The (empty) ExportLogsServiceResponse, in the request's encoding."""
    return (b"{}", "application/json") if json else (b"", "application/x-protobuf")
