"""Which keys of a record's JSON line ingest takes for columns, and how other keys stay attributes.

These mirror ingest's JSON parser (``ingest/parsers/json.py``: ``TS_KEYS``, ``LEVEL_KEYS``, ...; a
test holds the two lists equal). A pushed attribute, label or metadata key named like one of them
would otherwise be taken for the column: it is written ``attributes.<key>`` instead.
"""

from __future__ import annotations

RESERVED_KEYS = frozenset({
    "@timestamp", "timestamp", "time", "ts", "t",
    "level", "severity", "lvl", "loglevel",
    "message", "msg", "log",
    "service", "service.name", "app",
    "trace_id", "traceId",
    "span_id", "spanId",
    "host", "hostname", "host.name",
})


def line_key(key: str) -> str:
    """``key`` as an attribute's key in a record's JSON line."""
    return f"attributes.{key}" if key in RESERVED_KEYS else key
