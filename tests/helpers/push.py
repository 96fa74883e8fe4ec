"""What the push tests share: a Loki PushRequest written in protobuf's wire format by hand (as
Promtail's Go code marshals it; independent of receive/loki.py's declarations), OTLP/JSON built from
the OpenTelemetry SDK's own encoding, and a running receiver."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import cramjam
from google.protobuf import json_format


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _uint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def loki_entry(ts_ns: int, line: str, metadata: dict[str, str] | None = None) -> bytes:
    ts = _uint(1, ts_ns // 1_000_000_000) + _uint(2, ts_ns % 1_000_000_000)
    out = _field(1, ts) + _field(2, line.encode())
    for k, v in (metadata or {}).items():
        out += _field(3, _field(1, k.encode()) + _field(2, v.encode()))
    return out


def loki_push(streams: Sequence[tuple[str, Sequence[bytes]]]) -> bytes:
    """A PushRequest (streams of (label text, encoded entries)), snappy block-compressed."""
    body = b"".join(_field(1, _field(1, labels.encode()) + b"".join(_field(2, e) for e in entries))
                    for labels, entries in streams)
    return bytes(cramjam.snappy.compress_raw(body))


def otlp_json(request: Any) -> dict[str, Any]:
    """An ExportLogsServiceRequest in OTLP/JSON: the protobuf JSON mapping with ids in hex."""
    data = json_format.MessageToDict(request)
    for rl in data.get("resourceLogs", []):
        for sl in rl.get("scopeLogs", []):
            for r in sl.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if key in r:
                        r[key] = base64.b64decode(r[key]).hex()
    return data
