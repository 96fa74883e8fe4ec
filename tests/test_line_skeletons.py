"""A JSON record's stored line is its skeleton, and the line comes back from it byte for byte.

Lines go through the real :class:`Normaliser` (the compiled JSON pass, the SQL parser for the
lines it defers, labels, flags and the ``max_attrs`` cut), then back through both readers of
storage/lines.py: the SQL expression the query side uses (in DuckDB, over the normaliser's
output) and ``original_line`` in Python. The generated lines are JSON written every way JSON
allows: nested objects and arrays, keys repeated at other depths and at the same one, spaces
around colons, escapes, numbers in every form, literals, dotted keys, keys that are also labels
or parse flags, times in the renderings a skeleton names and in others.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.normalise import Normaliser, ParseSettings
from storage.lines import LITERAL, ORIGINAL_LINE, RESERVED, SLOT, original_line
from tests.helpers.fuzzing import examples
from tests.helpers.normalising import raw

OBSERVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LABELS = {"env": "prod", "region": "eu-west-1", "format": "x", "ts_parse": "y"}

_NORMALISERS: dict[int, Normaliser] = {}


def normaliser(max_attrs: int = 1000) -> Normaliser:
    """One normaliser per setting for every example (making one takes about a second)."""
    if max_attrs not in _NORMALISERS:
        _NORMALISERS[max_attrs] = Normaliser(ParseSettings(max_attrs=max_attrs))
    return _NORMALISERS[max_attrs]


def sql_lines(table: pa.Table) -> list[str]:
    con = duckdb.connect()
    try:
        con.register("stored", table)
        return [r[0] for r in con.execute(f"SELECT {ORIGINAL_LINE} FROM stored").fetchall()]
    finally:
        con.close()


def stored(lines: list[str], max_attrs: int = 1000, labels: dict[str, str] | None = None) -> pa.Table:
    return normaliser(max_attrs)(raw(lines, observed=OBSERVED, labels=labels, source="/var/log/app.json"))


def assert_lines_come_back(lines: list[str], **kw: Any) -> pa.Table:
    table = stored(lines, **kw)
    assert [original_line(r) for r in table.to_pylist()] == lines
    assert sql_lines(table) == lines
    return table


# -- JSON written every way --------------------------------------------------------------------------

_WS = st.sampled_from(["", "", "", " ", "  ", "\t", " \n "])
_KEYS = st.one_of(st.sampled_from(["msg", "message", "time", "ts", "@timestamp", "level", "service", "host",
                                   "trace_id", "span_id", "region", "env", "format", "ts_parse", "stream",
                                   "agent.host", "a", "a.b", "b", "id", "duration_ms", "user", "k: ", "x y"]),
                  st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6))
_NUMBERS = st.one_of(st.sampled_from(["0", "-0", "1.50", "1e3", "1E+3", "-2.5e-3", "12", "0.1", "1.0",
                                      "100000000000000000000", "-7"]), st.integers(-10**6, 10**6).map(str))
_TIMES = st.datetimes(min_value=datetime(2024, 4, 20), max_value=datetime(2024, 5, 1, 11, 59))


@st.composite
def _time_text(draw: st.DrawFn) -> str:
    t = draw(_TIMES)
    secs = t.strftime("%Y-%m-%dT%H:%M:%S")
    return draw(st.sampled_from([f"{secs}.{t.microsecond // 1000:03d}Z", f"{secs}.{t.microsecond:06d}Z",
                                 f"{secs}Z", f"{secs}.{t.microsecond // 1000:03d}+00:00", f"{secs}.{t.microsecond}"]))


_TEXTS = st.one_of(st.sampled_from(["", "prod", "eu-west-1", "x", "y", "observed", "json", "GET", "a b",
                                    "user signed in", "12", "true", "null", "/api/v1", "caf\u00e9"]),
                   st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10), _time_text())


@st.composite
def _string(draw: st.DrawFn, text: str) -> str:
    """``text`` as a JSON string, each character written one of the ways JSON allows."""
    out = []
    # Most strings escape only what they must; the others, any character.
    mixed = draw(st.sampled_from([False, False, True]))
    for ch in text:
        how = draw(st.sampled_from(["plain", "plain", "escaped", "surrogates"])) if mixed else "plain"
        if how == "escaped" or (how == "surrogates" and ord(ch) <= 0xFFFF):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else ch)
        elif how == "surrogates":
            v = ord(ch) - 0x10000
            out.append(f"\\u{0xD800 + (v >> 10):04x}\\u{0xDC00 + (v & 0x3FF):04X}")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "/" and draw(st.booleans()):
            out.append("\\/")
        elif ord(ch) < 0x20:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}.get(ch, f"\\u{ord(ch):04x}"))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json(draw: st.DrawFn, value: Any) -> str:
    """``value`` (a tree: dict-likes are lists of pairs) as JSON text with drawn whitespace and escapes."""
    if isinstance(value, tuple) and value[0] == "num":
        return str(value[1])
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return draw(_string(value))
    if isinstance(value, tuple) and value[0] == "arr":
        inner = ("," + draw(_WS)).join(_json(draw, v) for v in value[1])
        return "[" + inner + "]"
    members = [draw(_string(k)) + draw(_WS) + ":" + draw(_WS) + _json(draw, v) for k, v in value[1]]
    return "{" + draw(_WS) + ("," + draw(_WS)).join(members) + draw(_WS) + "}"


_LEAVES = st.one_of(_TEXTS, _NUMBERS.map(lambda n: ("num", n)), st.booleans(), st.none())
_VALUES = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(lambda v: ("arr", v)),
    st.lists(st.tuples(_KEYS, inner), max_size=4).map(lambda v: ("obj", v))), max_leaves=10)


@st.composite
def json_lines(draw: st.DrawFn) -> str:
    members = draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=8))
    if draw(st.booleans()):                       # mostly a message and a time, as logs have
        members.insert(0, ("msg", draw(_TEXTS)))
        members.insert(draw(st.integers(0, len(members))), (draw(st.sampled_from(["time", "ts"])), draw(_time_text())))
    return _json(draw, ("obj", members))


#: Lines the compiled pass leaves to the SQL parser, and lines that are not JSON at all.
_OTHERS = st.sampled_from([
    '{"msg":"dup","a":"1","a":"2","region":"eu-west-1"}',                     # a key twice at one level
    '{"msg":"nul \\u0000 here","region":"eu-west-1","n":1.50}',               # \u0000
    '{"msg":"lone \\udc00","time":"2024-05-01T10:00:00.123Z","k":"v"}',       # a lone surrogate
    '{"msg":"trailing comma","k":"v",}',                                      # not JSON: text
    '{"msg":"ok","k":"v"} and more',
    'level=info msg="bell \x07 rang" k=a\x07b region=eu-west-1',             # bytes a skeleton uses
    'level=info msg="done" x=a\x02b\x0e',
    'ts=2024-05-01T10:00:00Z level=warn msg="esc \x1b[31mred\x1b[0m" k=v',
    '\x01starts with the literal mark',
    '2024-05-01 10:00:00 INFO plain text line',
])


@settings(max_examples=examples(30), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=st.lists(st.one_of(json_lines(), json_lines(), _OTHERS), min_size=1, max_size=6),
       labelled=st.booleans(), max_attrs=st.sampled_from([1000, 3]))
def test_any_json_line_comes_back_byte_for_byte(lines: list[str], labelled: bool, max_attrs: int) -> None:
    assert_lines_come_back(lines, max_attrs=max_attrs, labels=LABELS if labelled else None)


# -- what a skeleton holds ---------------------------------------------------------------------------


def s(name: str) -> str:
    return SLOT + name + SLOT


def test_the_values_kept_elsewhere_are_slots() -> None:
    line = ('{"time":"2024-05-01T10:00:01.144Z","level":"info","service":"orders","host":"h-1","msg":"done",'
            '"trace_id":"abc","duration_ms":4.799,"region" : "eu-west-1","ok":true,"http":{"method":"GET"}}')
    [row] = assert_lines_come_back([line]).to_pylist()
    # (the level stays: the column keeps its normalised name; a nested key is not its attribute's name)
    assert row["raw"] == ('{"time":"' + s("\x0e") + '","level":"info","service":"' + s("\x03") + '","host":"'
                          + s("\x06") + '","msg":"' + s("\x02") + '","trace_id":"' + s("\x04") + '","duration_ms":'
                          + s("duration_ms") + ',"region" : "' + s("region") + '","ok":' + s("ok")
                          + ',"http":{"method":"GET"}}')


@pytest.mark.parametrize(("text", "slot"), [("2024-05-01T10:00:01.144Z", "\x0e"),
                                            ("2024-05-01T10:00:01.144123Z", "\x0f"),
                                            ("2024-05-01T10:00:01Z", "\x10")])
def test_the_time_is_a_slot_in_each_rendering(text: str, slot: str) -> None:
    [row] = assert_lines_come_back(['{"ts":"' + text + '","msg":"m"}']).to_pylist()
    assert row["raw"] == '{"ts":"' + s(slot) + '","msg":"' + s("\x02") + '"}'


@pytest.mark.parametrize("line", [
    '{"ts":"2024-05-01T10:00:01.144+00:00","msg":"m"}',         # another rendering
    '{"ts":"2024-05-01T12:00:01.144+02:00","msg":"m"}',         # the same instant, another zone
    '{"ts":"2024-05-01T10:00:01.1Z","msg":"m"}',
    '{"ts":"2030-01-01T00:00:00.000Z","msg":"m"}',              # implausible: the row has the observed time
])
def test_other_times_stay_text(line: str) -> None:
    [row] = assert_lines_come_back([line]).to_pylist()
    assert row["raw"].startswith('{"ts":"2')


def test_values_the_attributes_do_not_hold_stay_text() -> None:
    lines = ['{"msg":"m","format":"json","ts_parse":"mine","env":"dev","n":1.50,"s":"a\\"b","e":"","t":"caf\\u00e9"}']
    # labels lose to the line (env); the flag wins over the line's ts_parse (no time was read)
    [row] = assert_lines_come_back(lines, labels={"env": "prod", "format": "x"}).to_pylist()
    attrs = dict(row["attrs"])
    assert attrs["env"] == "dev" and attrs["ts_parse"] == "observed" and attrs["n"] == "1.50"
    assert row["raw"] == ('{"msg":"' + s("\x02") + '","format":"' + s("format") + '","ts_parse":"mine","env":"'
                          + s("env") + '","n":' + s("n") + ',"s":"a\\"b","e":"","t":"caf\\u00e9"}')


def test_only_the_attributes_kept_are_slots() -> None:
    [row] = assert_lines_come_back(['{"msg":"m","a":"1","b":"2","c":"3"}'], max_attrs=2).to_pylist()
    # (c is cut; the ts_parse flag is kept past the cut)
    assert dict(row["attrs"]) == {"a": "1", "b": "2", "attrs_dropped": "1", "ts_parse": "observed"}
    assert row["raw"] == '{"msg":"' + s("\x02") + '","a":"' + s("a") + '","b":"' + s("b") + '","c":"3"}'


def test_the_sql_parsers_json_lines_have_skeletons_too() -> None:
    # a key twice: the compiled pass leaves the line to the SQL parser, which renames the second
    [row] = assert_lines_come_back(['{"message":"hello there","a":"1","a":"2","region":"eu"}']).to_pylist()
    assert dict(row["attrs"]) == {"a": "1", "a#3": "2", "region": "eu", "ts_parse": "observed"}
    assert row["raw"] == '{"message":"' + s("\x02") + '","a":"' + s("a") + '","a":"2","region":"' + s("region") + '"}'


@pytest.mark.parametrize("line", ['level=info msg="bell \x07 rang" k=v', 'level=info msg="done" x=a\x03b',
                                  'level=info msg="m" k=\x0e', 'level=info msg="m" k=\x01v'])
def test_a_line_holding_a_slot_byte_is_kept_marked(line: str) -> None:
    [row] = assert_lines_come_back([line]).to_pylist()
    assert row["raw"] == LITERAL + line


def test_every_reserved_byte_marks_a_line_and_no_other_does() -> None:
    lines = [f'level=info msg="m" k=a{chr(c)}b' for c in range(1, 128)]
    rows = assert_lines_come_back(lines).to_pylist()
    assert [r["raw"].startswith(LITERAL) for r in rows] == [chr(c) in RESERVED for c in range(1, 128)]


def _row(raw_text: str, **kw: Any) -> dict[str, Any]:
    return {"ts": datetime(2024, 5, 1, 10, 0, 1, 144123, tzinfo=UTC), "observed_ts": OBSERVED, "service": "svc",
            "host": "h", "source": "/s", "level": "info", "severity": 9, "message": "m", "attrs": [("k", "v")],
            "trace_id": None, "span_id": None, "head": None, "raw": raw_text, **kw}


@pytest.mark.parametrize(("raw_text", "line"), [
    # rows from before skeletons: column bytes alone, or nothing at all
    ('{"msg":"\x02","service":"\x03","n":1}', '{"msg":"m","service":"svc","n":1}'),
    ('{"msg":"m","k":"v"}', '{"msg":"m","k":"v"}'),
    # a slot naming nothing the row holds is put back as it stands
    ('{"a":"' + SLOT + "nope" + SLOT + '","k":"' + SLOT + "k" + SLOT + '"}',
     '{"a":"' + SLOT + "nope" + SLOT + '","k":"v"}'),
    ('{"t":"' + SLOT + "\x0f" + SLOT + '","u":"' + SLOT + "\x10" + SLOT + '"}',
     '{"t":"2024-05-01T10:00:01.144123Z","u":"2024-05-01T10:00:01Z"}'),
])
def test_sql_and_python_read_any_stored_row_alike(raw_text: str, line: str) -> None:
    row = _row(raw_text)
    assert original_line(row) == line
    table = pa.Table.from_pylist([row], schema=pa.schema([
        ("ts", pa.timestamp("us", tz="UTC")), ("observed_ts", pa.timestamp("us", tz="UTC")), ("service", pa.string()),
        ("host", pa.string()), ("source", pa.string()), ("level", pa.string()), ("severity", pa.int8()),
        ("message", pa.string()), ("attrs", pa.map_(pa.string(), pa.string())), ("trace_id", pa.string()),
        ("span_id", pa.string()), ("head", pa.string()), ("raw", pa.string())]))
    assert sql_lines(table) == [line]
