"""Types of the compiled loops in ``_native.c`` (what mypy sees; the C module has none).

Every buffer argument is read through the buffer protocol (an Arrow buffer, a numpy
array or bytes); every buffer returned is ``bytes``. A line's status byte is 0 (not
selected), 1 (parsed here) or 2 (left to the SQL parser).
"""

from typing import Any, TypeAlias

import numpy as np
from _typeshed import ReadableBuffer

# Anything with the buffer protocol; numpy's stubs declare it on ndarray only from Python 3.12.
_Buffer: TypeAlias = ReadableBuffer | np.ndarray[Any, Any]

def join_lines(parts: list[tuple[_Buffer, _Buffer, int, int]], /) -> tuple[bytes, bytes]:
    """One binary array of lines from runs of records, each ``(offsets, data, first, n)``
    of an Arrow binary array, every record's terminator dropped: ``(int32 offsets, data)``."""

def json_entries(
    offsets: _Buffer,
    data: _Buffer,
    selected: _Buffer,
    first: int,
    n: int,
    max_depth: int,
    groups: list[list[bytes]],
    /,
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes]:
    """The selected JSON lines flattened: ``(status, list_offsets, key_offsets, keys,
    value_offsets, values, valid, positions, shape_offsets, shapes, instants)``; ``instants``
    holds an int64 per line: the first group's value as µs since the epoch when it is plain
    RFC 3339 with a zone, else the least int64."""

def clf_fields(
    offsets: _Buffer,
    data: _Buffer,
    selected: _Buffer,
    first: int,
    n: int,
    attrs: list[tuple[int, bool]],
    /,
) -> tuple[bytes, list[tuple[bytes, bytes]], tuple[bytes, bytes, bytes, bytes], bytes]:
    """The selected access lines split: ``(status, [(offsets, data)] * 11,
    (list_offsets, keys, value_offsets, values), instants)``; ``attrs`` is (field index,
    whether a lone "-" is absent) per attribute; ``instants`` an int64 per line, the time
    as µs since the epoch when written "DD/Mon/YYYY:HH:MM:SS +HHMM", else the least int64."""

def skeletons(
    offsets: _Buffer,
    data: _Buffer,
    selected: _Buffer,
    first: int,
    n: int,
    ts: _Buffer,
    ts_first: int,
    attr_offsets: _Buffer,
    attr_valid: _Buffer | None,
    attr_first: int,
    key_offsets: _Buffer,
    keys: _Buffer,
    key_first: int,
    value_offsets: _Buffer,
    values: _Buffer,
    value_valid: _Buffer | None,
    value_first: int,
    /,
) -> tuple[bytes, bytes]:
    """The selected stored JSON lines as skeletons (storage/lines.py), the others as they are:
    ``(int32 offsets, data)`` of a string array."""

def any_contains(offsets: _Buffer, data: _Buffer, selected: _Buffer, first: int, n: int, word: bytes, /) -> bool:
    """Whether any selected line of an Arrow string array holds ``word`` (as SQL's ``contains``)."""

def attrs_kept(
    rows: _Buffer,
    key_off: _Buffer,
    keys: _Buffer,
    val_off: _Buffer,
    vals: _Buffer,
    valid: _Buffer,
    keep: _Buffer,
    prepend: _Buffer,
    host_off: _Buffer,
    hosts: _Buffer,
    /,
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
    """Each row's kept entries, after ``agent.host`` where ``prepend`` says: ``(list_offsets,
    key_offsets, keys, value_offsets, values, valid)``, int32 offsets and a byte per element."""

def values_at(
    rows: _Buffer, val_off: _Buffer, vals: _Buffer, valid: _Buffer | None, valid_first: int, positions: _Buffer, /
) -> list[tuple[bytes, bytes, bytes]]:
    """Per column of ``positions`` (int32, k rows of n: each row's 1-based entry, 0 none), each
    row's value there: ``(int32 offsets, bytes, a byte per row: 0 null)``."""
