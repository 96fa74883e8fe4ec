"""Helpers for tests of ingest/normalise.py: raw batches in, records out as Python rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from ingest.normalise import RAW_SCHEMA, Normaliser
from storage.lines import original_line
from storage.schema import RECORD_SCHEMA


def raw(lines: list[str], *, observed: datetime, service: str = "file-svc", host: str = "host-1",
        source: str = "/var/log/x.log", labels: dict[str, str] | None = None, wrapper: str = "",
        fmt: str = "", zone: str = "") -> pa.Table:
    """A ``RAW_SCHEMA`` batch of ``lines``, all from one source."""
    n = len(lines)
    return pa.table({"line": lines, "observed_ts": [observed] * n, "service": [service] * n,
                     "host": [host] * n, "source": [source] * n,
                     "labels": [list(labels.items()) if labels else None] * n,
                     "wrapper": [wrapper] * n, "format": [fmt] * n,
                     "zone": [zone] * n}, schema=RAW_SCHEMA)


def parse_all(n: Normaliser, lines: list[str], **kw: Any) -> list[dict[str, Any]]:
    out = n(raw(lines, **kw))
    assert out.schema == RECORD_SCHEMA
    assert out.num_rows == len(lines)
    return out.to_pylist()


def parse(n: Normaliser, line: str | dict[str, Any], **kw: Any) -> dict[str, Any]:
    text = orjson.dumps(line).decode() if isinstance(line, dict) else line
    return parse_all(n, [text], **kw)[0]


def attrs(row: dict[str, Any]) -> dict[str, str | None]:
    return dict(row["attrs"] or [])


#: The attrs flag of a row whose time was not read from its line.
OBSERVED_FLAG: dict[str, str | None] = {"ts_parse": "observed"}


def original(row: dict[str, Any]) -> str:
    """The line as received, put back together from the row's ``head``, ``message`` and ``raw``."""
    return original_line(row)
