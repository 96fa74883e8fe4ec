"""A stored row's original line, byte for byte, from what the row keeps.

Text rows keep the line's header in ``head``: the line is ``head || message``.
Other rows keep the line in ``raw``. A JSON line is kept as its *skeleton*: the
line with each value the row holds elsewhere written as a *slot*,
``SLOT name SLOT`` (:data:`SLOT` is byte 7), so that it is not stored twice and
the skeletons of one service's lines repeat (and compress to almost nothing):

- the value of the key that became the message, the service, the trace id, the
  span id or the host, when the line writes it plainly (a string with nothing
  escaped in it, or a number): named by :data:`COLUMN_OF`'s byte;
- any value ``v`` written plainly right after its key ``"k"`` (JSON whitespace,
  ``:``, whitespace, then ``"v"``, or ``v`` followed by ``,``, ``}``, ``]`` or
  whitespace) when ``attrs[k]`` is ``v``: named ``k`` (keys and values with a
  quote, a backslash or a control byte in them, and keys ``attrs`` holds twice,
  never are);
- a string that is the row's time ``ts`` in UTC as one of :data:`TIME_OF`'s
  renderings: named by that rendering's byte (the quotes stay).

Split at its slot bytes, a skeleton's odd pieces are text and its even ones
names. JSON never holds those bytes unescaped, so they cannot be confused with
the line's own text. Any other line that holds one of :data:`RESERVED` bytes is
stored as :data:`LITERAL` followed by the line, and read back without any
replacement. Rows written before skeletons have no slots: their column bytes
stand alone (``"msg":"\x02"``) and are replaced as such.

The line comes back in SQL (:data:`ORIGINAL_LINE`, a scalar expression over the
row's ``raw``, ``head``, ``message``, the columns, ``attrs`` and ``ts``) or here
(:func:`original_line`); ingest writes skeletons with ``ingest._native.skeletons``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

#: The byte that names each column's value in a slot (and stands for it alone in rows from before slots).
COLUMN_OF: dict[str, str] = {"\x02": "message", "\x03": "service", "\x04": "trace_id", "\x05": "span_id",
                             "\x06": "host"}
#: The byte around each slot's name.
SLOT = "\x07"
#: The byte that names the row's time, per rendering (DuckDB strftime formats, in UTC).
TIME_OF: dict[str, str] = {"\x0e": "%Y-%m-%dT%H:%M:%S.%gZ", "\x0f": "%Y-%m-%dT%H:%M:%S.%fZ",
                           "\x10": "%Y-%m-%dT%H:%M:%SZ"}
#: First byte of a ``raw`` that is the line itself after it.
LITERAL = "\x01"
#: Bytes a stored line with slots or column bytes may not hold of its own (the control bytes but tab, LF, CR).
RESERVED = "".join(chr(c) for c in range(1, 32) if chr(c) not in "\t\n\r")


def _original_line_sql() -> str:
    s = ord(SLOT)
    names = " ".join(f"WHEN chr({ord(b)}) THEN coalesce({col}, '')" for b, col in COLUMN_OF.items())
    # (the time is rendered only for its slot)
    times = " ".join(f"WHEN chr({ord(b)}) THEN strftime(make_timestamp(epoch_us(ts)), '{fmt}')"
                     for b, fmt in TIME_OF.items())
    # An even piece names a value; one that names none is put back as it was.
    slots = (f"array_to_string(list_transform(string_split(raw, chr({s})), (p, i) -> CASE WHEN i % 2 = 1 THEN p "
             f"ELSE CASE p {names} {times} ELSE coalesce(attrs[p], chr({s}) || p || chr({s})) END END), '')")
    bare = "raw"
    for b, col in COLUMN_OF.items():
        bare = f"replace({bare}, chr({ord(b)}), coalesce({col}, ''))"
    return ("CASE WHEN raw IS NULL THEN coalesce(head, '') || message "
            f"WHEN starts_with(raw, chr({ord(LITERAL)})) THEN substr(raw, 2) "
            f"WHEN contains(raw, chr({s})) THEN {slots} "
            f"ELSE {bare} END")


#: DuckDB SQL: a stored row's original line (a scalar expression over the row's columns).
ORIGINAL_LINE = _original_line_sql()

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _renderings(ts: Any) -> dict[str, str]:
    """``ts`` (a datetime, or epoch microseconds) as each of TIME_OF's renderings."""
    if isinstance(ts, datetime):
        t = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    else:
        t = _EPOCH + timedelta(microseconds=int(ts))
    secs = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return {"\x0e": f"{secs}.{t.microsecond // 1000:03d}Z", "\x0f": f"{secs}.{t.microsecond:06d}Z",
            "\x10": f"{secs}Z"}


def original_line(row: Mapping[str, Any]) -> str:
    """The line ``row`` (a stored record as a dict) was made from, as it was received."""
    raw = row.get("raw")
    if raw is None:
        return (row.get("head") or "") + (row.get("message") or "")
    line = str(raw)
    if line.startswith(LITERAL):
        return line[1:]
    if SLOT not in line:
        for byte, column in COLUMN_OF.items():
            if byte in line:
                line = line.replace(byte, row.get(column) or "")
        return line
    pieces = line.split(SLOT)
    # (attrs: a mapping, or the (key, value) pairs pyarrow gives for a map; a key held twice names no slot)
    attrs = dict(row.get("attrs") or ())
    times = _renderings(row["ts"]) if any(b in line for b in TIME_OF) else {}
    for i in range(1, len(pieces), 2):
        name = pieces[i]
        if name in COLUMN_OF:
            pieces[i] = row.get(COLUMN_OF[name]) or ""
        elif name in times:
            pieces[i] = times[name]
        elif attrs.get(name) is not None:
            pieces[i] = attrs[name]
        else:
            pieces[i] = SLOT + name + SLOT
    return "".join(pieces)
