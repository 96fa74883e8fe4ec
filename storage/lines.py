"""A stored row's original line, byte for byte, from what the row keeps.

Text rows keep the line's header in ``head``: the line is ``head || message``.
Structured rows (JSON) keep the line in ``raw``, written so that the values
the record's columns hold are not stored twice: the value of the key that
became the message, the service, the trace id, the span id or the host, when
the line writes it plainly (a string with nothing escaped in it, or a number),
stands in ``raw`` as one byte, :data:`COLUMN_OF`'s. JSON never holds those
bytes unescaped, so they cannot be confused with the line's own text, and the
line comes back with one ``replace`` per column, in SQL
(:data:`ORIGINAL_LINE`) or here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The byte that stands for each column's value in ``raw``.
COLUMN_OF: dict[str, str] = {"\x02": "message", "\x03": "service", "\x04": "trace_id", "\x05": "span_id",
                             "\x06": "host"}

#: DuckDB SQL: a stored row's original line.
ORIGINAL_LINE = ("CASE WHEN raw IS NULL THEN coalesce(head, '') || message ELSE "
                 + "replace(" * len(COLUMN_OF) + "raw"
                 + "".join(f", chr({ord(b)}), coalesce({col}, ''))" for b, col in COLUMN_OF.items())
                 + " END")


def original_line(row: Mapping[str, Any]) -> str:
    """The line ``row`` (a stored record as a dict) was made from, as it was received."""
    raw = row.get("raw")
    if raw is None:
        return (row.get("head") or "") + (row.get("message") or "")
    line = str(raw)
    for byte, column in COLUMN_OF.items():
        if byte in line:
            line = line.replace(byte, row.get(column) or "")
    return line
