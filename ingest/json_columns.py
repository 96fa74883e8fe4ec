"""The record's columns of a batch of compiled JSON lines, made in Arrow instead of by the parsing statement.

The compiled JSON pass (``_native.json_entries``) already gives every line's entries, where its
well-known keys are and, for a plain RFC 3339 time, its instant. For the usual batch of JSON
application logs that is everything the parsing statement would work out: picking the values at
those positions, the time, which entries leave ``attrs``, the stored shape of the line. Done here,
with numpy and Arrow takes over the whole batch, it costs a fraction of planning and running the
statement (whose columns then have to be copied back out of DuckDB).

Only the statement's plainest case is taken: every row a compiled JSON line with a time key, the
time plain RFC 3339 and believable, no labels or container stream, the shipper's
host not clashing with one the line names in a way only the statement resolves, and short of the
attribute cap. :func:`columns` returns None for any other batch, which the statement then parses
whole, so there is one meaning of a line and the statement defines it. The level words, the one
part that is a function of a value rather than a position, are worked out by the statement's own
SQL, once per distinct word (:class:`LevelWords`); a line without a listed level key gets the
statement's deeper search for one, run once per distinct key (:func:`_deeper`).
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest import _native
from ingest.levels import level_sql, severity_sql
from ingest.parsers import bitmap, native_args, one_chunk, string_buffers, strings
from ingest.parsers import json as json_parser

#: The well-known keys in the order ``pos`` holds them, and the order the statement's ``drop`` lists them.
_KEYS = tuple(json_parser.WELL_KNOWN)
_DROP_ORDER = ("ts", "lvl", "msg", "svc", "trace", "span", "host")
#: A key the statement's deeper search takes for the level when the line has none of the listed ones.
_LEVEL_LEAF = json_parser.leaf_pattern(json_parser.LEVEL_LEAVES)
#: Times before this are misread numbers to the statement (``implausible``).
_EARLIEST_US = -2_208_988_800_000_000          # 1900-01-01T00:00:00Z
#: Rows whose message may end the line (its last byte is the line's) are checked one by one; past
#: this many in a batch the statement takes it.
_MAX_SUFFIX_CHECKS = 64
#: A row's attributes as the statement gives them (its ``ATTRS_TYPE``).
_ATTRS = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
#: Distinct level values remembered (one DuckDB statement for each batch that brings new ones).
_MAX_WORDS = 4096


class LevelWords:
    """Per raw level value of a JSON line: its level, severity and whether the key leaves ``attrs``,
    as the parsing statement's own SQL says (run once per distinct value, then remembered)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._known: dict[str, tuple[str, int, bool]] = {}
        p = json_parser.PARSER
        word = p.sql(p.out["lvl"])
        stored = json_parser.STORED_LEVELS
        self._sql = (f"SELECT v, {level_sql('s')} AS level, s AS severity, lower(v) IN ({stored}) AS leaves "
                     f"FROM (SELECT p_json_v.lvl AS v, {severity_sql(word)} AS s "
                     f"FROM (SELECT {{'lvl': v}} AS p_json_v FROM words))")

    def of(self, values: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
        """(level, severity, leaves attrs) for each of ``values`` (strings; a null is JSON's null)."""
        encoded = values.dictionary_encode(null_encoding="encode")
        distinct = encoded.dictionary.to_pylist()
        new = [v for v in distinct if v not in self._known]
        if new:
            if len(self._known) + len(new) > _MAX_WORDS:
                self._known.clear()
            self.con.register("words", pa.table({"v": pa.array(new, pa.string())}))
            try:
                rows = self.con.execute(self._sql).fetchall()
            finally:
                self.con.unregister("words")
            self._known.update({v: (level, int(severity), bool(leaves)) for v, level, severity, leaves in rows})
        known = [self._known[v] for v in distinct]
        indices = encoded.indices
        level = pa.array([k[0] for k in known], pa.string()).take(indices)
        severity = pa.array([k[1] for k in known], pa.int8()).take(indices)
        leaves = np.array([k[2] for k in known], dtype=bool)[indices.to_numpy(zero_copy_only=False)]
        return level, severity, leaves


def columns(c: pa.Table, max_attrs: int, max_ahead_s: float, words: LevelWords) -> pa.Table | None:
    """The parsing statement's output for the batch ``c`` (see :mod:`ingest.normalise`), made in
    Arrow; None unless every row is the statement's plainest JSON case (see the module's doc)."""
    n = c.num_rows
    if n == 0 or "p_json_status" not in c.column_names:
        return None
    status = one_chunk(c.column("p_json_status")).to_numpy(zero_copy_only=False)
    if not (status == json_parser.PARSED).all() or one_chunk(c.column("fmt")).null_count or \
            not pc.all(pc.equal(one_chunk(c.column("fmt")), "json")).as_py():
        return None
    for name in ("labels", "wrap_stream"):
        if one_chunk(c.column(name)).null_count != n:
            return None
    if pc.any(one_chunk(c.column("l_cont"))).as_py():
        return None
    at = one_chunk(c.column("p_json_at"))
    pos = one_chunk(c.column("p_json_pos"))
    if at.null_count or pos.field("ts").null_count:
        return None     # a time not plain RFC 3339 (the statement's macros read the others)
    at_us = at.cast(pa.int64()).to_numpy()
    observed = one_chunk(c.column("observed_ts")).cast(pa.int64()).to_numpy()
    if ((at_us > observed + int(max_ahead_s * 1e6)) | (at_us < _EARLIEST_US)).any():
        return None     # not believed: the statement flags it and falls back to the observed time

    entries = one_chunk(c.column("p_json_c"))
    e_off = np.asarray(entries.offsets, np.int64)
    if (np.diff(e_off) >= max_attrs).any():
        return None     # at the cap: the statement cuts the attributes
    positions = {k: pos.field(k) for k in _KEYS}
    if positions["lvl"].null_count:
        positions["lvl"] = _deeper(entries, e_off, positions["lvl"], _LEVEL_LEAF)
    # (the time's text is not needed: the compiled pass read its instant)
    value = _values(entries.values.field("value"), e_off, positions, [k for k in _KEYS if k != "ts"])

    line = one_chunk(c.column("line"))
    line = line if line.type == pa.string() else line.cast(pa.string())
    host = one_chunk(c.column("host")).cast(pa.string())
    named = value["host"]
    # attrs_from: 1 where the line names no other host than the shipper's, 2 where it does and
    # the line cannot hold an agent.host of its own; anything else is the statement's.
    # (as SQL: coalesce(o_host, '') IN ('', host) OR host = '', a NULL counting as false)
    named_or_empty = pc.fill_null(named, "")
    own = pc.fill_null(pc.or_kleene(pc.or_kleene(pc.equal(named_or_empty, ""), pc.equal(named_or_empty, host)),
                                    pc.equal(host, "")), False)
    attrs_from = np.where(own.to_numpy(zero_copy_only=False), 1, 2).astype(np.int8)
    if (attrs_from == 2).any() and \
            _native.any_contains(*native_args(line, attrs_from == 2), b"agent"):
        return None

    # (the line names a host: it becomes the column, and its key leaves attrs)
    names_host = pc.fill_null(pc.not_equal(named, ""), False)
    level, severity, leaves = words.of(value["lvl"].cast(pa.string()))
    no_msg = positions["msg"].is_null()
    message = pc.if_else(no_msg, line, pc.fill_null(value["msg"], "null"))
    whole = np.asarray(no_msg.to_numpy(zero_copy_only=False))
    ends = _ends_with(line, message, whole)
    if ends is None:
        return None
    # Where the message is the line's tail (the whole line where there is no message key), the line
    # is stored as head || message; any other compiled line as its shape (the batch's own column).
    return pa.table({
        "ts": at.cast(pa.timestamp("us", tz="UTC")),
        "service": pc.coalesce(value["svc"], one_chunk(c.column("service")).cast(pa.string())),
        "host": pc.if_else(names_host, named, host),
        "level": level,
        "severity": severity,
        "message": message,
        "attrs": pa.nulls(n, _ATTRS),
        "attrs_from": pa.array(attrs_from),
        "attrs_drop": _drops(positions, leaves, names_host.to_numpy(zero_copy_only=False), n),
        "trace_id": value["trace"],
        "span_id": value["span"],
        "head": _heads(line, message, ends & ~whole),
        "raw": pa.nulls(n, pa.string()),
        "raw_is_shape": pa.array(~ends),
        "parsed_format": pa.repeat(pa.scalar("json"), n),
    })


def _deeper(entries: pa.ListArray, e_off: np.ndarray, found: pa.Array, pattern: str) -> pa.Array:
    """``found`` (1-based entry positions) with each row that has none given its first entry whose
    key matches ``pattern``, as the statement's deeper search does (``_FIND_DEEPER``). Keys repeat
    from line to line: the pattern runs once per distinct key, not once per entry."""
    missing = np.asarray(found.is_null().to_numpy(zero_copy_only=False))
    n_entries = np.diff(e_off)
    e_row = np.repeat(np.arange(len(found)), n_entries)
    asked = np.nonzero(missing[e_row])[0]
    keys = entries.values.field("key").slice(int(e_off[0]), int(e_off[-1] - e_off[0])).take(pa.array(asked))
    distinct = keys.dictionary_encode()
    hits = pc.match_substring_regex(distinct.dictionary, pattern).to_numpy(zero_copy_only=False)
    hit = asked[hits[distinct.indices.to_numpy(zero_copy_only=False)]]
    rows, first = np.unique(e_row[hit], return_index=True)
    at = np.array(found.fill_null(0).to_numpy(zero_copy_only=False), np.int32)     # (a copy: written to)
    at[rows] = (hit[first] - (e_off[rows] - e_off[0]) + 1).astype(np.int32)
    return pa.array(at, mask=at == 0)


def _values(values: pa.Array, e_off: np.ndarray, pos: dict[str, pa.Array], keys: list[str]) -> dict[str, pa.Array]:
    """Each row's value at its 1-based entry position of each of ``keys`` (null where the row has
    none), in one compiled pass over the entries (``_native.values_at``)."""
    first, last = int(e_off[0]), int(e_off[-1])
    v_off, data = string_buffers(values, first, last)
    grid = np.ascontiguousarray(np.stack([np.asarray(pos[k].fill_null(0).to_numpy(zero_copy_only=False),
                                                     np.int32) for k in keys]))
    columns = _native.values_at(e_off - first, v_off, data, values.buffers()[0], values.offset + first, grid)
    return {k: strings(len(flags), offsets, text, bitmap(np.frombuffer(flags, np.uint8)))
            for k, (offsets, text, flags) in zip(keys, columns, strict=True)}


def _bytes(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's offsets (int64) and data bytes, as numpy arrays."""
    offsets, data = string_buffers(strings)
    return offsets, np.frombuffer(data, np.uint8)


def _ends_with(line: pa.Array, message: pa.Array, whole: np.ndarray) -> np.ndarray | None:
    """Per row, whether ``line`` ends with ``message`` (``whole``: the message is the line); None
    when too many rows need a closer look."""
    (l_off, l_data), (m_off, m_data) = _bytes(line), _bytes(message)
    l_len, m_len = np.diff(l_off), np.diff(m_off)
    ends = whole | (m_len == 0)
    rest = np.nonzero(~ends & (m_len <= l_len))[0]
    if len(rest):
        # Only where the last bytes agree can the message be the line's tail: rare in JSON lines.
        maybe = rest[l_data[l_off[rest + 1] - 1] == m_data[m_off[rest + 1] - 1]]
        if len(maybe) > _MAX_SUFFIX_CHECKS:
            return None
        for i in maybe:
            tail = m_data[m_off[i]:m_off[i + 1]]
            ends[i] = np.array_equal(l_data[l_off[i + 1] - len(tail):l_off[i + 1]], tail)
    return ends


def _heads(line: pa.Array, message: pa.Array, rows: np.ndarray) -> pa.Array:
    """The line without its message at its end, on ``rows`` (null elsewhere)."""
    n = len(line)
    if not rows.any():
        return pa.nulls(n, pa.string())
    (l_off, l_data), (m_off, _) = _bytes(line), _bytes(message)
    h_len = np.where(rows, np.diff(l_off) - np.diff(m_off), 0)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(h_len, out=offsets[1:])
    # Byte k of the heads comes from its row's line start plus how far into that head it is.
    starts = np.repeat(l_off[:-1] - offsets[:-1], h_len)
    data = l_data[starts + np.arange(offsets[-1])]
    return strings(n, offsets.astype(np.int32).tobytes(), data.tobytes(), bitmap(rows))


def _drops(pos: dict[str, pa.Array], leaves: np.ndarray, names_host: np.ndarray, n: int) -> pa.Array:
    """Per row, the 1-based positions of the entries that became columns (they leave ``attrs``):
    the time, the level when its word is a stored level name, the message, service, trace and
    span, and the host when it is not empty."""
    cols = []
    for k in _DROP_ORDER:
        v = np.asarray(pos[k].fill_null(0).to_numpy(zero_copy_only=False), np.int32)
        if k == "lvl":
            v = np.where(leaves, v, 0)
        elif k == "host":
            v = np.where(names_host, v, 0)
        cols.append(v)
    grid = np.stack(cols, axis=1)
    keep = grid > 0
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(grid[keep], pa.int32()))
