"""ingest/parsers/_native.c: the compiled pre-passes of the JSON and access-log parsers.

The SQL steps of each parser are the reference. Every property here compares
the records a normaliser makes with its compiled pre-pass against those of one
whose pre-pass leaves every line to the SQL (``SqlOnly``), over generated
lines, and checks which lines the compiled code takes at all. Lines are
written for these tests; none is copied from a corpus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import _native
from ingest.normalise import Normaliser
from ingest.parsers import access
from ingest.parsers import json as json_parser
from ingest.timestamps import macros
from tests.helpers import normalising
from tests.helpers.fuzzing import examples

OBSERVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PARSED, DEFER = 1, 2


class SqlOnly(Normaliser):
    """A normaliser whose compiled pre-passes take no line: the SQL steps parse them all."""

    def _pre_pass(self, routed: pa.Table, tenant: str = "") -> tuple[pa.Table, frozenset[str]]:
        out, _ = super()._pre_pass(routed, tenant)
        for name in ("p_json_status", "p_clf_status"):
            i = out.schema.get_field_index(name)
            out = out.set_column(i, name, pa.array(np.full(out.num_rows, DEFER, np.int8)))
        for name in ("p_json_at", "p_clf_at"):
            i = out.schema.get_field_index(name)
            out = out.set_column(i, name, pa.nulls(out.num_rows, out.schema.field(i).type))
        return out, frozenset()


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[Normaliser, Normaliser]]:
    native, sql = Normaliser(), SqlOnly()
    yield native, sql
    native.close()
    sql.close()


def _records(n: Normaliser, lines: list[str]) -> list[dict[str, Any]]:
    return normalising.parse_all(n, lines, observed=OBSERVED)


def _status(parser: Any, lines: list[str]) -> list[int]:
    arr = pa.array(lines, pa.string())
    return np.asarray(parser(arr, np.ones(len(lines), bool))["status"]).tolist()


def _same_value(native: str | None, sql: str | None) -> bool:
    """Numbers keep their text natively and are rewritten by DuckDB: equal as JSON, else exactly."""
    if native == sql:
        return True
    try:
        return json.loads(native) == json.loads(sql)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _assert_same(native: list[dict[str, Any]], sql: list[dict[str, Any]]) -> None:
    for a, b in zip(native, sql, strict=True):
        assert [k for k, _ in a["attrs"] or []] == [k for k, _ in b["attrs"] or []], (a, b)
        for (key, va), (_, vb) in zip(a["attrs"] or [], b["attrs"] or [], strict=True):
            assert _same_value(va, vb), (key, va, vb)
        for column in ("ts", "level", "severity"):
            assert a[column] == b[column], (column, a, b)
        for column in ("message", "service", "host", "trace_id", "span_id"):
            assert _same_value(a[column], b[column]), (column, a[column], b[column])


# == JSON ===========================================================================

_KEY = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=4) | \
    st.sampled_from(["msg", "message", "level", "time", "ts", "service", "trace_id", "host", "a.b", "http"])
_SCALAR = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
           | st.sampled_from(["2024-03-04T05:06:07Z", "2024-03-04 05:06:07,123", "1709528767", "WARN", "30"]))
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEY, inner, max_size=4),
                      max_leaves=24)
_DUMPS = {
    "orjson": lambda o: orjson.dumps(o).decode(),
    "spaced": lambda o: json.dumps(o),                   # ", " and ": ", everything else as \uXXXX
    "ascii": lambda o: json.dumps(o, separators=(",", ":")),       # \uXXXX, surrogate pairs
    "pretty": lambda o: json.dumps(o, ensure_ascii=False, indent=1).replace("\n", " \t"),
}


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objs=st.lists(st.dictionaries(_KEY, _VALUE, max_size=8), min_size=1, max_size=8),
       style=st.sampled_from(sorted(_DUMPS)))
def test_json_records_equal_the_sql_parsers(both: tuple[Normaliser, Normaliser], objs: list[dict[str, Any]],
                                            style: str) -> None:
    lines = [_DUMPS[style](o) for o in objs]
    native, sql = both
    native_rows, sql_rows = _records(native, lines), _records(sql, lines)
    _assert_same(native_rows, sql_rows)
    # Either way, each row gives back the line it was made from.
    assert [normalising.original(r) for r in native_rows] == lines
    assert [normalising.original(r) for r in sql_rows] == lines


def _assert_read_as(pre_pass: Any, lines: list[str], times: list[str], sql: str) -> None:
    """Each time the compiled ``pre_pass`` read from ``lines`` is the instant DuckDB's ``sql``
    (one ``?``, the time's text) makes of it."""
    at = pre_pass(pa.array(lines, pa.string()), np.ones(len(lines), bool))["at"].to_pylist()
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        for m in macros():
            con.execute(m)
        for t, got in zip(times, at, strict=True):
            if got is not None:
                micros = con.execute(f"SELECT epoch_us({sql})", [t]).fetchone()[0]
                assert micros == (got - EPOCH) // timedelta(microseconds=1), t


@st.composite
def _instant_text(draw: st.DrawFn) -> str:
    """Times near RFC 3339's plain shape: real and impossible dates and times, fractions of any
    length, every zone spelling, and a separator sometimes changed."""
    year = draw(st.integers(0, 9999))
    month, day = draw(st.integers(0, 13)), draw(st.sampled_from([1, 9, 28, 29, 30, 31, 32]))
    hour, minute, second = draw(st.integers(0, 25)), draw(st.integers(0, 60)), draw(st.integers(0, 61))
    date_sep, time_sep = draw(st.sampled_from("----/")), draw(st.sampled_from("::::."))
    sep = draw(st.sampled_from(["T", "T", " ", "t", "  "]))
    fraction = draw(st.sampled_from(["", "", "."]) | st.from_regex(r"\.\d{1,10}", fullmatch=True))
    zone = draw(st.sampled_from(["Z", "Z", "z", "", " UTC", "+00:00", "-00:00", "+05:30", "-08:00", "+23:59",
                                 "+24:00", "-12:60", "+0530", "+05", " +05:00"]))
    return (f"{year:04d}{date_sep}{month:02d}-{day:02d}{sep}{hour:02d}{time_sep}{minute:02d}:{second:02d}"
            f"{fraction}{zone}")


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(_instant_text(), min_size=1, max_size=8))
def test_json_times_read_by_the_compiled_pass_equal_the_sql_parsers(both: tuple[Normaliser, Normaliser],
                                                                     times: list[str]) -> None:
    lines = [orjson.dumps({"time": t, "msg": "m"}).decode() for t in times]
    native, sql = both
    _assert_same(_records(native, lines), _records(sql, lines))
    # Where the compiled pass read a time, it is the instant the SQL macro makes of the text.
    _assert_read_as(json_parser.native_entries, lines, times, "ll_ts_tz(?)")


def test_the_compiled_pass_reads_plain_rfc3339_times_and_leaves_the_others() -> None:
    times = ["2024-03-04T05:06:07Z", "2024-03-04 05:06:07.123456789+05:30", "2024-02-29T23:59:59.5-00:30",
             "0001-01-01T00:00:00Z",
             # left to the SQL steps: other spellings, and what no calendar has
             "2024-03-04T05:06:07", "2024-03-04T05:06:07+0530", "2024-03-04T05:06:07 UTC", "2024-03-04t05:06:07Z",
             "2023-02-29T00:00:00Z", "2024-04-31T00:00:00Z", "2024-03-04T24:00:00Z", "2024-03-04T05:06:60Z",
             "2024-03-04T05:06:07.Z", "2024-03-04T05:06:07.1234567890Z", "1709528767"]
    lines = [orjson.dumps({"ts": t}).decode() for t in times] + [orjson.dumps({"ts": 1709528767}).decode()]
    at = json_parser.native_entries(pa.array(lines, pa.string()), np.ones(len(lines), bool))["at"].to_pylist()
    assert at[:4] == [datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC), datetime(2024, 3, 3, 23, 36, 7, 123456, tzinfo=UTC),
                      datetime(2024, 3, 1, 0, 29, 59, 500000, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)]
    assert at[4:] == [None] * (len(lines) - 4)


def test_json_lines_the_compiled_pass_takes_and_leaves() -> None:
    taken = ['{}', '{"a":1}', '{ "a" : [1, {"b": 2}] , "c": {"d": {}} }  ', '{"s":"\\ud83d\\ude00 \\u00e9 \\n"}',
             '{"n":-0.5e+3,"t":true,"f":false,"z":null}', '{"deep":' + '{"k":' * 20 + '1' + '}' * 20 + '}']
    left = ['{"a":1,"a":2}', '{"k.v":1,"k":{"v":2}}', '{"s":"\\ud83d"}', '{"s":"\\u0000"}', '{"s":"tab\tinside"}',
            '{"a":01}', '{"a":1.}', '{"a":.5}', '{"a":NaN}', "{'a':1}", '{"a":1}{"b":2}', '{"a":1,}', '{"a" 1}',
            '{"a":[1,]}', '{"a":tru}', '{', '{"a":"unterminated}', '[1,2]', ' {"a":1}',
            '{"a":' + '[' * 300 + ']' * 300 + '}', '{' + ",".join(f'"k{i}":{i}' for i in range(257)) + '}']
    assert _status(json_parser.native_entries, taken) == [PARSED] * len(taken)
    assert _status(json_parser.native_entries, left) == [DEFER] * len(left)


def test_json_entries_of_a_sliced_array_with_a_selection() -> None:
    arr = pa.array(['{"x":0}', '{"a":"1","b":{"c":null}}', 'not json', '{"d":[true]}'], pa.string()).slice(1)
    out = json_parser.native_entries(arr, np.array([True, False, True]))
    assert out["status"].to_pylist() == [PARSED, 0, PARSED]
    assert out["c"].to_pylist() == [[{"key": "a", "value": "1"}, {"key": "b.c", "value": None}], None,
                                    [{"key": "d", "value": "[true]"}]]
    empty = json_parser.native_entries(pa.array([], pa.string()), np.zeros(0, bool))
    assert len(empty["status"]) == 0 and len(empty["c"]) == 0


def test_json_numbers_keep_their_text(both: tuple[Normaliser, Normaliser]) -> None:
    native, sql = both
    line = '{"msg":"m","a":1.50,"b":1e3,"c":123456789012345678901234567890}'
    assert normalising.attrs(_records(native, [line])[0]) == {"a": "1.50", "b": "1e3",
                                                              "c": "123456789012345678901234567890",
                                                              "ts_parse": "observed"}
    # The SQL parser (which a line the compiled pass leaves still goes through) rewrites them.
    assert normalising.attrs(_records(sql, [line])[0])["a"] == "1.5"


def test_json_buffers_are_checked() -> None:
    arr = pa.array(['{"a":1}'], pa.string())
    with pytest.raises(ValueError, match="shorter"):
        _native.json_entries(arr.buffers()[1], arr.buffers()[2], b"\x01", 0, 5, 8, [])


# == access logs ======================================================================

_TOKEN = st.text(st.characters(codec="utf-8", blacklist_categories=("Cs",)), min_size=0, max_size=6)
_PLAIN = st.text(st.sampled_from('abcXYZ09./-:+?=&[]é'), min_size=1, max_size=8)


@st.composite
def _access_line(draw: st.DrawFn) -> str:
    """Access lines near the usual shape: each part plain or arbitrary, and separators sometimes changed."""
    def part(plain: st.SearchStrategy[str] = _PLAIN) -> str:
        return draw(plain | _TOKEN)
    status = draw(st.sampled_from(["200", "404", "503", "20", "2000", "abc"]))
    size = draw(st.sampled_from(["0", "1234", "-", "", "12a"]))
    request = f"{part()} {part()} {part()}" if draw(st.booleans()) else part()
    line = f'{part()} {part()} {part()} [{part()}] "{request}" {status} {size}'
    if draw(st.booleans()):
        line += f' "{part()}" "{part()}"'
    if draw(st.integers(0, 4)) == 0:
        line += draw(_TOKEN)
    if draw(st.integers(0, 4)) == 0:
        i = draw(st.integers(0, len(line)))
        line = line[:i] + draw(st.sampled_from([" ", '"', "\\", "\t", "]", "\\\""])) + line[i:]
    return line


@settings(max_examples=examples(150), deadline=None)
@given(lines=st.lists(_access_line(), min_size=1, max_size=10))
def test_access_fields_equal_the_regexs(lines: list[str]) -> None:
    out = access.native_fields(pa.array(lines, pa.string()), np.ones(len(lines), bool))
    con = duckdb.connect()
    want = con.execute(f"SELECT regexp_extract(line, '{access.REGEX}', {list(access.GROUPS)}) AS m "
                       "FROM (SELECT unnest(?) AS line, generate_subscripts(?, 1) AS i) ORDER BY i",
                       [lines, lines]).fetchall()
    for line, st_, got, (expected,) in zip(lines, out["status"].to_pylist(), out["f"].to_pylist(), want,
                                           strict=True):
        if st_ == PARSED:
            assert got == expected, line
        else:
            assert st_ == DEFER and got is None


def test_access_lines_the_compiled_pass_takes_and_leaves() -> None:
    taken = ['1.2.3.4 - - [04/Mar/2024:05:06:07 +0000] "GET /x?a=1 HTTP/1.1" 200 512 "-" "curl/8.5.0"',
             '::1 - bob [04/Mar/2024:05:06:07 +0000] "POST /api HTTP/2.0" 503 - "https://e.x/" "Mozilla/5.0 (X11)"',
             '10.0.0.1 - - [04/Mar/2024:05:06:07 +0000] "GET / HTTP/1.0" 304 0']
    left = ['1.2.3.4 - - [04/Mar/2024:05:06:07 +0000] "-" 400 0 "-" "-"',
            '1.2.3.4 - - [04/Mar/2024:05:06:07 +0000] "GET /a b HTTP/1.1" 200 1 "-" "-"',
            '1.2.3.4 - - [04/Mar/2024:05:06:07 +0000] "GET / HTTP/1.1" 200 1 "-" "a \\"quoted\\" agent"',
            '1.2.3.4 - - [04/Mar/2024:05:06:07 +0000] "GET / HTTP/1.1" 200 1 "-" "-" 0.012',
            '1.2.3.4  - - [04/Mar/2024:05:06:07 +0000] "GET / HTTP/1.1" 200 1',
            '1.2.3.4 - - [04/Mar/2024:05:06:07 +0000] "GET / HTTP/1.1" 200',
            'not an access line at all']
    assert _status(access.native_fields, taken) == [PARSED] * len(taken)
    assert _status(access.native_fields, left) == [DEFER] * len(left)


def test_access_client_written_as_an_address_list_is_left_to_the_sql_parser(
        both: tuple[Normaliser, Normaliser]) -> None:
    # The compiled split would take "10.0.0.2,10.0.0.1" whole as the client; the SQL parser splits it.
    lines = ['10.0.0.2,10.0.0.1 - - [04/Mar/2024:05:06:07 +0000] "GET / HTTP/1.1" 200 1 "-" "curl/8"',
             '10.0.0.2, 10.0.0.1 - - [04/Mar/2024:05:06:07 +0000] "GET / HTTP/1.1" 200 1 "-" "curl/8"']
    assert _status(access.native_fields, lines) == [DEFER, DEFER]
    native, sql = both
    rows = _records(native, lines)
    _assert_same(rows, _records(sql, lines))
    assert [dict(r["attrs"])["client.ip"] for r in rows] == ["10.0.0.2", "10.0.0.2"]


@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_access_line(), min_size=1, max_size=10))
def test_access_records_equal_the_sql_parsers(both: tuple[Normaliser, Normaliser], lines: list[str]) -> None:
    native, sql = both
    _assert_same(_records(native, lines), _records(sql, lines))


@st.composite
def _access_time(draw: st.DrawFn) -> str:
    """Access-log times near the usual "DD/Mon/YYYY:HH:MM:SS +HHMM": real and impossible dates and
    times, months in any case, and the zone in other spellings."""
    day = draw(st.sampled_from(["01", "09", "28", "29", "30", "31", "32", "00", "7"]))
    month = draw(st.sampled_from(["Jan", "Feb", "Apr", "Dec", "feb", "FEB", "Foo"]))
    year = draw(st.integers(0, 9999))
    clock = (f"{draw(st.integers(0, 25)):02d}:{draw(st.integers(0, 60)):02d}:{draw(st.integers(0, 61)):02d}"
             + draw(st.sampled_from(["", "", ".123"])))
    zone = draw(st.sampled_from([" +0000", " +0000", " -0800", " +0530", " +2359", " +2400", " -0060", " +05:30",
                                 " Z", "", "  +0000"]))
    return f"{day}/{month}/{year:04d}:{clock}{zone}"


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(_access_time(), min_size=1, max_size=8))
def test_access_times_read_by_the_compiled_split_equal_the_sql_parsers(both: tuple[Normaliser, Normaliser],
                                                                       times: list[str]) -> None:
    lines = [f'10.0.0.1 - - [{t}] "GET /x HTTP/1.1" 200 5 "-" "curl/8"' for t in times]
    native, sql = both
    _assert_same(_records(native, lines), _records(sql, lines))
    # Where the compiled split read a time, it is the instant the SQL's strptime makes of it.
    _assert_read_as(access.native_fields, lines, times, "try_strptime(?, ['%d/%b/%Y:%H:%M:%S %z', "
                                                        "'%d/%b/%Y:%H:%M:%S.%f %z'])")


def test_the_compiled_split_reads_the_usual_access_times_and_leaves_the_others() -> None:
    times = ["04/Mar/2024:05:06:07 +0000", "29/Feb/2024:23:59:59 -0830", "01/Jan/0001:00:00:00 +0000",
             # left to the SQL steps
             "04/Mar/2024:05:06:07.123 +0000", "04/mar/2024:05:06:07 +0000", "04/Mar/2024:05:06:07 +00:00",
             "04/Mar/2024:05:06:07", "29/Feb/2023:00:00:00 +0000", "31/Apr/2024:00:00:00 +0000",
             "04/Mar/2024:24:00:00 +0000", "4/Mar/2024:05:06:07 +0000"]
    lines = [f'10.0.0.1 - - [{t}] "GET /x HTTP/1.1" 200 5' for t in times]
    assert _status(access.native_fields, lines) == [PARSED] * len(lines)
    at = access.native_fields(pa.array(lines, pa.string()), np.ones(len(lines), bool))["at"].to_pylist()
    assert at[:3] == [datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC), datetime(2024, 3, 1, 8, 29, 59, tzinfo=UTC),
                      datetime(1, 1, 1, tzinfo=UTC)]
    assert at[3:] == [None] * (len(lines) - 3)


def _entries_as_lists(lines: list[str]) -> dict[str, Any]:
    array = pa.array(lines, pa.string())
    return {k: v.to_pylist() for k, v in json_parser.native_entries(array, np.ones(len(lines), bool)).items()}


def test_memory_handed_back_is_reused_and_never_while_arrow_holds_it() -> None:
    # Outputs of megabytes: the blocks of a dropped result go to the spare memory and the next pass
    # takes them; a result still held keeps its own (spare memory is only what Arrow let go of).
    def batch(tag: str, n: int) -> list[str]:
        return [orjson.dumps({"ts": "2024-05-01T10:00:00Z", "level": "info", "msg": f"{tag} {i} " + tag * 20,
                              "nested": {"k": tag * (i % 7)}}).decode() for i in range(n)]

    a_lines, b_lines, c_lines = batch("a", 30_000), batch("bb", 25_000), batch("ccc", 40_000)
    expected = {name: _entries_as_lists(lines) for name, lines in (("a", a_lines), ("c", c_lines))}
    held = json_parser.native_entries(pa.array(a_lines, pa.string()), np.ones(len(a_lines), bool))
    for _ in range(3):
        dropped = json_parser.native_entries(pa.array(b_lines, pa.string()), np.ones(len(b_lines), bool))
        del dropped
        assert _entries_as_lists(c_lines) == expected["c"]
    assert {k: v.to_pylist() for k, v in held.items()} == expected["a"]
    # Skeletons take spare memory too: the same lines' skeletons, whatever memory they were written in.
    n = Normaliser()
    raw = normalising.raw(c_lines[:5000], observed=datetime(2024, 5, 1, 12, tzinfo=UTC))
    first = n(raw).column("raw").to_pylist()
    for _ in range(2):
        json_parser.native_entries(pa.array(b_lines, pa.string()), np.ones(len(b_lines), bool))
        assert n(raw).column("raw").to_pylist() == first


def test_attrs_kept_refuses_offsets_that_do_not_fit() -> None:
    i64, u8 = (lambda *v: np.array(v, np.int64)), (lambda *v: np.array(v, np.uint8))
    good = (i64(0, 1), i64(0, 1), b"k", i64(0, 1), b"v", u8(1), u8(1), u8(1), i64(0, 2), b"h1")
    lists, ko, kd, vo, vd, vv = _native.attrs_kept(*good)
    assert (bytes(kd), bytes(vd), np.frombuffer(lists, np.int32).tolist()) == (b"agent.hostk", b"h1v", [0, 2])
    for at, bad in ((0, i64(0, 2)), (1, i64(0, 5)), (8, i64(0, 9)), (7, u8(1, 1))):
        with pytest.raises(ValueError):
            _native.attrs_kept(*good[:at], bad, *good[at + 1:])


@settings(max_examples=examples(200), deadline=None)
@given(lines=st.lists(st.text(alphabet="agent .x", max_size=12), max_size=12), data=st.data())
def test_any_contains_is_contains_on_the_selected_lines(lines: list[str], data: st.DataObject) -> None:
    selected = np.array(data.draw(st.lists(st.booleans(), min_size=len(lines), max_size=len(lines))), bool)
    start = data.draw(st.integers(0, len(lines)))
    array = pa.array(["pad agent pad", *lines], pa.string()).slice(1)[start:]
    from ingest.parsers import native_args
    got = _native.any_contains(*native_args(array, selected[start:]), b"agent")
    assert got == any("agent" in line for line, s in zip(lines[start:], selected[start:], strict=True) if s)


def test_values_at_takes_each_rows_entry_or_null_and_refuses_what_does_not_fit() -> None:
    rows, offsets = np.array([0, 2, 2, 3], np.int64), np.array([0, 1, 3, 6], np.int64)
    valid = pa.array([True, False, True]).buffers()[1]       # the second entry's value is JSON null
    grid = np.array([[1, 0, 1], [2, 0, 0]], np.int32)
    got = _native.values_at(rows, offsets, b"abbccc", valid, 0, grid)
    as_lists = [(np.frombuffer(o, np.int32).tolist(), bytes(d), list(bytes(f))) for o, d, f in got]
    assert as_lists == [([0, 1, 1, 4], b"accc", [1, 0, 1]), ([0, 0, 0, 0], b"", [0, 0, 0])]
    with pytest.raises(ValueError):
        _native.values_at(rows, offsets, b"abbccc", None, 0, np.array([[1, 1, 1]], np.int32))  # row 2 has none
    with pytest.raises(ValueError):
        _native.values_at(rows, offsets, b"abb", None, 0, grid)                               # bytes too short
