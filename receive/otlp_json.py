"""OTLP/JSON walked directly: resourceLogs → scopeLogs → logRecords, to the same runs as the protobuf path.

Building protobuf messages from JSON (``json_format.ParseDict``) costs more than everything else a
push does, so the usual shape is read straight from the parsed JSON: camelCase names, ids in hex,
64-bit integers as strings or numbers, severity as a number or its enum name, attribute values of
the string, bool, int, double, array and kvlist kinds. Anything else (snake_case names, bytes
values, string indexes, entity refs, and every malformed body) goes to the protobuf path, so the
runs, and the reasons a body is refused, are exactly that path's; a test holds the two equal.
"""

from __future__ import annotations

from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from receive import otlp
from receive.errors import BadRequest
from receive.records import Run


class Unusual(Exception):
    """A form the walker leaves to the protobuf path (which also says why a body is wrong)."""


def _names(message: Any) -> tuple[frozenset[str], frozenset[str]]:
    """A message's JSON field names, and its other spellings that ParseDict also takes."""
    fields = message.DESCRIPTOR.fields
    json_names = frozenset(f.json_name for f in fields)
    return json_names, frozenset(f.name for f in fields) - json_names


_REQUEST, _RESOURCE_LOGS, _SCOPE_LOGS = _names(ExportLogsServiceRequest), _names(ResourceLogs), _names(ScopeLogs)
_RECORD, _RESOURCE, _SCOPE, _KV = _names(LogRecord), _names(Resource), _names(InstrumentationScope), _names(KeyValue)
_ANY_KINDS, _ANY_OTHER_NAMES = _names(AnyValue)
_SEVERITY_BY_NAME = {v.name: v.number for v in LogRecord.DESCRIPTOR.fields_by_name["severity_number"].enum_type.values}
_U64, _I64, _U32, _I32 = 1 << 64, 1 << 63, 1 << 32, 1 << 31


def _object(v: Any, names: tuple[frozenset[str], frozenset[str]]) -> dict[str, Any]:
    """``v`` as a message's object: unknown keys are ignored (as ParseDict is told to), other
    spellings and extensions left to the protobuf path."""
    if type(v) is not dict:
        raise Unusual
    if not v.keys() <= names[0]:
        for k in v.keys() - names[0]:
            if k in names[1] or k.startswith("["):
                raise Unusual
    return v


def _list(v: Any) -> list[Any]:
    if v is None:
        return []
    if type(v) is not list:
        raise Unusual
    return v


def _str(v: Any) -> str:
    if type(v) is str:
        return v
    if v is None:
        return ""
    raise Unusual


def _uint(v: Any, limit: int) -> int:
    if type(v) is int:
        if 0 <= v < limit:
            return v
    elif type(v) is str:
        if v.isascii() and v.isdigit() and int(v) < limit:
            return int(v)
    elif v is None:
        return 0
    raise Unusual


def _int(v: Any, limit: int) -> int:
    if type(v) is int:
        n = v
    elif type(v) is str and v.isascii() and (v[1:] if v[:1] == "-" else v).isdigit():
        n = int(v)
    else:
        raise Unusual
    if -limit <= n < limit:
        return n
    raise Unusual


def _id(v: Any) -> bytes:
    if v is None or v == "":
        return b""
    if type(v) is not str:
        raise Unusual
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise Unusual from None


def _severity(v: Any) -> int:
    if type(v) is str:
        n = _SEVERITY_BY_NAME.get(v)
        if n is None:
            raise Unusual
        return n
    return 0 if v is None else _int(v, _I32)


def _value(v: Any) -> Any:
    """An AnyValue object as plain data, as ``otlp.value_of`` gives it."""
    if type(v) is not dict or len(v) > 1:
        raise Unusual
    if not v:
        return None
    ((kind, x),) = v.items()
    if kind == "stringValue":
        if type(x) is str:
            return x
    elif kind == "intValue":
        return _int(x, _I64)
    elif kind == "boolValue":
        if type(x) is bool:
            return x
    elif kind == "doubleValue":
        if type(x) is float or type(x) is int:
            return float(x)
    elif kind == "kvlistValue":
        if type(x) is dict and x.keys() <= {"values"}:
            return dict(_pairs(x.get("values")))
    elif kind == "arrayValue":
        if type(x) is dict and x.keys() <= {"values"}:
            return [_value(e) for e in _list(x.get("values"))]
    elif kind not in _ANY_KINDS and kind not in _ANY_OTHER_NAMES and not kind.startswith("["):
        return None       # an unknown key alone, which ParseDict ignores: no value
    raise Unusual


def _pairs(v: Any) -> list[tuple[str, Any]]:
    out = []
    for kv in _list(v):
        kv = _object(kv, _KV)
        if kv.get("keyStrindex") is not None:
            raise Unusual
        value = kv.get("value")
        out.append((_str(kv.get("key")), None if value is None else _value(value)))
    return out


def _unread(obj: dict[str, Any], *names: str) -> None:
    """The fields nothing reads must still be well-formed, as the protobuf path requires."""
    for name in names:
        if name == "schemaUrl":
            _str(obj.get(name))
        else:
            _uint(obj.get(name), _U32)


def _optional(obj: dict[str, Any], key: str, names: tuple[frozenset[str], frozenset[str]]) -> dict[str, Any]:
    v = obj.get(key)
    return {} if v is None else _object(v, names)


def walk(data: Any) -> tuple[list[Run], int]:
    """Parsed OTLP/JSON to runs; :class:`Unusual` for anything the protobuf path must read."""
    runs: list[Run] = []
    total = 0
    for rl in _list(_object(data, _REQUEST).get("resourceLogs")):
        rl = _object(rl, _RESOURCE_LOGS)
        _unread(rl, "schemaUrl")
        resource = _optional(rl, "resource", _RESOURCE)
        _unread(resource, "droppedAttributesCount")
        if _list(resource.get("entityRefs")):
            raise Unusual
        service, host, labels = otlp.resource_parts(
            (k, v, type(v) is str) for k, v in _pairs(resource.get("attributes")))
        for sl in _list(rl.get("scopeLogs")):
            sl = _object(sl, _SCOPE_LOGS)
            _unread(sl, "schemaUrl")
            sc = _optional(sl, "scope", _SCOPE)
            _unread(sc, "droppedAttributesCount")
            name = _str(sc.get("name"))
            scope = otlp.scope_parts(name, _str(sc.get("version")), _pairs(sc.get("attributes")))
            run = Run(service=service, host=host, source=name or "otlp", labels=labels)
            for r in _list(sl.get("logRecords")):
                r = _object(r, _RECORD)
                _unread(r, "droppedAttributesCount", "flags")
                t = _uint(r.get("timeUnixNano"), _U64)
                observed = _uint(r.get("observedTimeUnixNano"), _U64)
                body = r.get("body")
                run.lines.append(otlp.record_line(
                    t or observed, _severity(r.get("severityNumber")), _str(r.get("severityText")),
                    None if body is None else _value(body), _id(r.get("traceId")), _id(r.get("spanId")),
                    _str(r.get("eventName")), scope, _pairs(r.get("attributes"))))
            if run.lines:
                runs.append(run)
                total += len(run.lines)
    return runs, total


def runs_of_json(body: bytes) -> tuple[list[Run], int]:
    """An OTLP/JSON body's runs: walked when it has the usual shape, else through protobuf."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"not JSON: {e}") from None
    try:
        return walk(data)
    except (Unusual, RecursionError):
        return otlp.runs_of(otlp.parse_dict(data))
