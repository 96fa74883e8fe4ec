"""Loki's push API (``/loki/api/v1/push``): protobuf with snappy, as Promtail and Alloy send it, or JSON.

The protobuf messages are declared here (wire-compatible with Loki's ``push.proto``: field numbers
and types), built into classes at import. Strings are read as bytes so that a line that is not
UTF-8 is stored with replacement characters (and flagged by ingest) rather than failing the push.

A stream's labels describe its run: ``service_name`` (else the first of the labels Loki 3 discovers a
service name from: ``service``, ``app``, ``application``, ..., ``job``) is the service, ``host`` (or
``hostname``) the host, ``filename`` the source, the rest become attributes. Each entry becomes a
JSON line: ``ts`` (the entry's time, nanoseconds), ``message`` (the line as it was pushed, as Loki
keeps it), its structured metadata as attributes (``trace_id`` and ``span_id`` as those columns),
and ``level`` from a ``level``, ``detected_level``, ``severity`` or ``lvl`` in its metadata or the
stream's labels.
"""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from receive.errors import BadRequest
from receive.keys import line_key
from receive.records import Run

_F = descriptor_pb2.FieldDescriptorProto


def _push_classes() -> dict[str, type[Message]]:
    fd = descriptor_pb2.FileDescriptorProto(name="loglake_loki_push.proto", package="loglake.lokipush",
                                            syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str | None, bool]) -> None:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            f = m.field.add(name=fname, number=number, type=ftype,
                            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".loglake.lokipush.{type_name}"

    message("Timestamp", ("seconds", 1, _F.TYPE_INT64, None, False), ("nanos", 2, _F.TYPE_INT32, None, False))
    message("LabelPair", ("name", 1, _F.TYPE_BYTES, None, False), ("value", 2, _F.TYPE_BYTES, None, False))
    message("Entry", ("timestamp", 1, _F.TYPE_MESSAGE, "Timestamp", False), ("line", 2, _F.TYPE_BYTES, None, False),
            ("structuredMetadata", 3, _F.TYPE_MESSAGE, "LabelPair", True))
    message("Stream", ("labels", 1, _F.TYPE_BYTES, None, False), ("entries", 2, _F.TYPE_MESSAGE, "Entry", True),
            ("hash", 3, _F.TYPE_UINT64, None, False))
    message("PushRequest", ("streams", 1, _F.TYPE_MESSAGE, "Stream", True))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"loglake.lokipush.{name}"))
            for name in ("PushRequest", "Stream", "Entry", "LabelPair", "Timestamp")}


PUSH = _push_classes()
PushRequest = PUSH["PushRequest"]

#: Loki 3's discover_service_name order (its default ``discover_service_name`` limit).
_SERVICE_LABELS = ("service_name", "service", "app", "application", "app_name", "name", "app_kubernetes_io_name",
                   "container", "container_name", "k8s_container_name", "component", "workload", "job",
                   "k8s_job_name")
#: The keys Loki itself detects a level from (python-logging-loki's handler sends ``severity``).
_LEVEL_KEYS = ("level", "detected_level", "severity", "lvl")
#: Structured metadata that names the entry's trace or span (as OpenTelemetry-instrumented services
#: and Alloy write it) fills those columns.
_ID_KEYS = {"trace_id": "trace_id", "traceId": "trace_id", "span_id": "span_id", "spanId": "span_id"}
_MAX_NS = 1 << 63
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f",
            "v": "\v"}


def parse_labels(text: str) -> dict[str, str]:
    """A Prometheus label set ``{a="b", c="d"}`` as a dict; BadRequest saying where it is wrong."""
    s = text.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise BadRequest(f"labels must be written {{name=\"value\", ...}}: {text[:80]!r}")
    out: dict[str, str] = {}
    i, end = 1, len(s) - 1
    while True:
        while i < end and s[i] in " \t,":
            i += 1
        if i >= end:
            return out
        j = i
        while j < end and (s[j].isalnum() or s[j] in "_.") and s[j].isascii():
            j += 1
        name = s[i:j]
        if not name or name[0].isdigit():
            raise BadRequest(f"labels: a label name is expected at position {i}: {text[:80]!r}")
        while j < end and s[j] == " ":
            j += 1
        if j >= end or s[j] != "=" or j + 1 >= end or s[j + 1] != '"':
            raise BadRequest(f"labels: '=\"' is expected after {name!r} at position {j}")
        j += 2
        chars: list[str] = []
        while True:
            if j >= end:
                raise BadRequest(f"labels: the value of {name!r} has no closing quote")
            c = s[j]
            if c == '"':
                break
            if c == "\\":
                if j + 1 >= end or s[j + 1] not in _ESCAPES:
                    raise BadRequest(f"labels: unknown escape in the value of {name!r} at position {j}")
                chars.append(_ESCAPES[s[j + 1]])
                j += 2
                continue
            chars.append(c)
            j += 1
        out[name] = "".join(chars)
        i = j + 1


def _run(labels: dict[str, str]) -> tuple[Run, str | None]:
    labels = dict(labels)
    service = next((labels[k] for k in _SERVICE_LABELS if labels.get(k)), "unknown_service")
    labels.pop("service_name", None)
    host = labels.pop("host", "") or labels.pop("hostname", "")
    source = labels.pop("filename", "") or "loki"
    level = next((labels.pop(k) for k in _LEVEL_KEYS if k in labels), None)
    return Run(service=service, host=host, source=source, labels=labels), level


def _line(ts_ns: int, line: str, metadata: dict[str, str], level: str | None) -> bytes:
    rec: dict[str, Any] = {"ts": ts_ns, "message": line}
    for k, v in metadata.items():
        if k in _LEVEL_KEYS:
            level = v
        elif k in _ID_KEYS:
            rec[_ID_KEYS[k]] = v
        else:
            rec[line_key(k)] = v
    if level:
        rec["level"] = level
    return orjson.dumps(rec)


def decode_protobuf(body: bytes) -> tuple[list[Run], int]:
    """A PushRequest, already without its snappy compression."""
    req = PushRequest()
    try:
        req.ParseFromString(body)
    except (DecodeError, ValueError) as e:
        raise BadRequest(f"not a Loki PushRequest in protobuf: {e}") from None
    runs: list[Run] = []
    total = 0
    for st in req.streams:
        run, level = _run(parse_labels(st.labels.decode("utf-8", "replace")))
        for entry in st.entries:
            ts = entry.timestamp.seconds * 1_000_000_000 + entry.timestamp.nanos
            if ts < 0:
                raise BadRequest(f"an entry of stream {st.labels[:80]!r} has a negative time")
            meta = {p.name.decode("utf-8", "replace"): p.value.decode("utf-8", "replace")
                    for p in entry.structuredMetadata}
            run.lines.append(_line(ts, entry.line.decode("utf-8", "replace"), meta, level))
        if run.lines:
            runs.append(run)
            total += len(run.lines)
    return runs, total


def _ns(v: Any, where: str) -> int:
    if isinstance(v, str) and v.isdigit() and v.isascii() and len(v) <= 19 and int(v) < _MAX_NS:
        return int(v)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _MAX_NS:
        return v
    raise BadRequest(f"{where}: the time must be nanoseconds since the epoch, as a string of digits (below 2^63)")


def decode_json(body: bytes) -> tuple[list[Run], int]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("streams"), list):
        raise BadRequest('a Loki push in JSON is {"streams": [{"stream": {...}, "values": [[ts, line], ...]}]}')
    runs: list[Run] = []
    total = 0
    for i, st in enumerate(data["streams"]):
        if not isinstance(st, dict):
            raise BadRequest(f"streams[{i}] is not an object")
        labels = st.get("stream", st.get("labels", {}))
        if isinstance(labels, str):
            labels = parse_labels(labels)
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise BadRequest(f"streams[{i}].stream must map label names to text")
        values = st.get("values", [])
        if not isinstance(values, list):
            raise BadRequest(f"streams[{i}].values is not a list")
        run, level = _run(labels)
        for j, v in enumerate(values):
            where = f"streams[{i}].values[{j}]"
            if not isinstance(v, list) or len(v) not in (2, 3) or not isinstance(v[1], str):
                raise BadRequest(f"{where} must be [time, line] or [time, line, {{metadata}}]")
            meta = v[2] if len(v) == 3 else {}
            if not isinstance(meta, dict) or not all(isinstance(x, str) for x in meta.values()):
                raise BadRequest(f"{where}: structured metadata must map names to text")
            run.lines.append(_line(_ns(v[0], where), v[1], meta, level))
        if run.lines:
            runs.append(run)
            total += len(run.lines)
    return runs, total
