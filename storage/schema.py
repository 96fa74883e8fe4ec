"""The record schema (OpenTelemetry logs data model, named for DuckDB users)."""

from __future__ import annotations

import pyarrow as pa

from storage.lines import ORIGINAL_LINE

_DICT = pa.dictionary(pa.int32(), pa.string())
TS = pa.timestamp("us", tz="UTC")

RECORD_SCHEMA = pa.schema([
    pa.field("ts", TS, nullable=False),
    pa.field("observed_ts", TS, nullable=False),
    pa.field("service", _DICT, nullable=False),
    pa.field("host", _DICT, nullable=False),
    pa.field("source", _DICT, nullable=False),
    pa.field("level", _DICT, nullable=False),
    pa.field("severity", pa.int8(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
    pa.field("attrs", pa.map_(pa.string(), pa.string())),
    pa.field("trace_id", pa.string()),
    pa.field("span_id", pa.string()),
    # The original line (storage/lines.py): head || message when the message is the line's tail,
    # else raw (a JSON line as its skeleton, with its slots filled).
    pa.field("head", pa.string()),
    pa.field("raw", pa.string()),
])


COLUMNS: tuple[str, ...] = tuple(RECORD_SCHEMA.names)
#: The columns that keep the original line; segments written before them have neither.
ORIGINAL_COLUMNS: tuple[str, ...] = ("head", "raw")
#: The original line of a record, as SQL over its columns (storage/lines.py).
LINE_SQL = ORIGINAL_LINE
#: Columns a query may compare as text.
TEXT_COLUMNS = frozenset({"service", "host", "source", "level", "message", "trace_id", "span_id"})

LEVELS: tuple[str, ...] = ("trace", "debug", "info", "warn", "error", "fatal", "unknown")
#: OpenTelemetry severity numbers for each normalised level (the first of its range).
SEVERITY: dict[str, int] = {
    "trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21, "unknown": 0,
}


def conform(table: pa.Table) -> pa.Table:
    """``table`` as ``RECORD_SCHEMA``: columns it lacks (a segment written before they existed) are NULL."""
    if table.schema == RECORD_SCHEMA:
        return table
    extra = [n for n in table.column_names if n not in RECORD_SCHEMA.names]
    if extra:
        raise pa.ArrowInvalid(f"not record columns: {', '.join(extra)}")
    for f in RECORD_SCHEMA:
        if f.name not in table.column_names:
            if not f.nullable:
                raise pa.ArrowInvalid(f"a record needs column {f.name!r}")
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(list(RECORD_SCHEMA.names)).cast(RECORD_SCHEMA)
