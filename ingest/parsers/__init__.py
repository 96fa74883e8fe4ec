"""The formats ingest understands, each a few SQL expressions over a batch.

A parser says how to recognise its lines cheaply (``detect``), how to take
them apart (``steps``, evaluated only on the rows routed to it, after an
optional compiled pre-pass, ``native``, over the same rows), whether a
line really was in its format (``ok``: a line that fails falls back to the
plain-text parser), and what it yields for the record (``out``). The SQL
runs inside the parsing statement built by :mod:`ingest.normalise`; in it,
``{p}`` stands for the parser's own column prefix.

Outputs, all optional (NULL when absent):

- ``ts_tz`` TIMESTAMPTZ: an instant (the text had a zone, or was an epoch);
- ``ts_local`` TIMESTAMP: wall-clock time, read in the configured zone;
- ``ts_noyear`` TIMESTAMP: wall-clock time in the year 2000, for formats without a year;
- ``lvl`` VARCHAR: a level word or letter (see :mod:`ingest.levels`);
- ``message`` VARCHAR (default: the whole line);
- ``attrs``: a list of ``{'key', 'value'}`` text pairs;
- ``service``, ``host``, ``trace_id``, ``span_id`` VARCHAR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

OUTPUTS: tuple[str, ...] = ("ts_tz", "ts_local", "ts_noyear", "lvl", "message", "attrs",
                            "service", "host", "trace_id", "span_id")

#: The SQL type of an empty attribute list.
ATTRS_TYPE = "STRUCT(key VARCHAR, value VARCHAR)[]"


@dataclass(frozen=True)
class Parser:
    name: str
    #: SQL predicate over ``line`` for auto-detection, tried in registry order; None: only when configured.
    detect: str | None
    #: (name, SQL) pairs computed in order; each is available to later SQL as ``{p}_<name>``.
    steps: tuple[tuple[str, str], ...]
    #: SQL predicate: the line is in this format.
    ok: str
    out: dict[str, str] = field(default_factory=dict)
    #: Compiled pre-pass over the lines routed to this parser (a mask), run before the steps:
    #: returns columns, one value per line, available to the steps as ``{p}_<name>``.
    native: Callable[[pa.StringArray, np.ndarray], dict[str, pa.Array]] | None = None
    #: The steps for a batch whose lines of this format the compiled pre-pass took every one of
    #: (status 1): the same values, without the SQL fallbacks, so the statement is smaller to
    #: plan and to run. None: ``steps`` always.
    compiled_steps: tuple[tuple[str, str], ...] | None = None

    def sql(self, template: str) -> str:
        return template.replace("{p}", f"p_{self.name}")


def native_args(lines: pa.StringArray, selected: np.ndarray) -> tuple[pa.Buffer, pa.Buffer, np.ndarray, int, int]:
    """The leading arguments of every compiled pre-pass: the lines' buffers, slice and selection."""
    return lines.buffers()[1], lines.buffers()[2], selected.view(np.uint8), lines.offset, len(lines)


#: A compiled pre-pass's instant for a time it did not read.
_NOT_READ = np.iinfo(np.int64).min


def instants(data: bytes) -> pa.Array:
    """The int64 µs a compiled pre-pass returned, one per line, as UTC times (null where not read)."""
    at = np.frombuffer(data, np.int64)
    return pa.array(at, pa.timestamp("us", tz="UTC"), mask=at == _NOT_READ)


def one_chunk(column: pa.ChunkedArray) -> pa.Array:
    """A column as one array (``combine_chunks`` copies even a single chunk)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def bitmap(flags: np.ndarray) -> pa.Buffer | None:
    """An Arrow validity bitmap from a flag (0 or 1) per value; None when every value is valid."""
    return None if flags.all() else pa.py_buffer(np.packbits(flags, bitorder="little"))


def string_buffers(strings: pa.Array, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, pa.Buffer]:
    """The int64 offsets of values ``lo`` to ``hi`` (all by default) of a string or large string
    array, into its data buffer, and that buffer: what a compiled pass reads."""
    hi = len(strings) if hi is None else hi
    width = np.int64 if strings.type == pa.large_string() else np.int32
    at = np.frombuffer(strings.buffers()[1], width)[strings.offset + lo:strings.offset + hi + 1]
    data = strings.buffers()[2]
    return at.astype(np.int64, copy=False), data if data is not None else pa.py_buffer(b"")


def strings(n: int, offsets: bytes, data: bytes, validity: pa.Buffer | None = None, *,
            large: bool = False) -> pa.Array:
    """A string array of ``n`` values over buffers a compiled pre-pass returned (no copy)."""
    return pa.Array.from_buffers(pa.large_string() if large else pa.string(), n,
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(data)])


def sql_str(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def attrs_sql(pairs: list[tuple[str, str]]) -> str:
    """SQL: an attribute list from (key, value SQL) pairs, leaving out NULL and empty values."""
    items = ", ".join(f"{{'key': {sql_str(k)}, 'value': {v}}}" for k, v in pairs)
    return f"list_filter([{items}]::{ATTRS_TYPE}, e -> coalesce(e.value, '') <> '')"


def body_sql(message: str) -> str:
    """SQL: the message ``message`` cut after a header, without the blanks around it (the run of
    spaces after a syslog tag or a learned header separates, it is not the message, nor are
    trailing blanks); the line stays whole, as head and raw keep what the message leaves out."""
    return f"CASE WHEN {message} IS DISTINCT FROM line THEN trim({message}, chr(32) || chr(9) || chr(13)) " \
           f"ELSE {message} END"


def first_key_sql(m: str, keys: tuple[str, ...]) -> str:
    """SQL: the first of ``keys`` present in map ``m`` (NULL when none is)."""
    whens = " ".join(f"WHEN {m}[{sql_str(k)}] IS NOT NULL THEN {sql_str(k)}" for k in keys)
    return f"CASE {whens} END"
