"""ingest/normalise.py: raw lines (RAW_SCHEMA) -> typed records (RECORD_SCHEMA) in DuckDB SQL."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

import ingest.normalise as normalise_module
from ingest.normalise import RAW_SCHEMA, Normaliser, ParseSettings
from ingest.parsers import json as json_parser
from ingest.sources import SourceBook
from storage.schema import RECORD_SCHEMA, SEVERITY
from tests.helpers import normalising
from tests.helpers.fuzzing import examples

OBSERVED = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"   # beside the checkout, never copied in

WELL_KNOWN = frozenset(json_parser.TS_KEYS + json_parser.LEVEL_KEYS + json_parser.MESSAGE_KEYS
                       + json_parser.SERVICE_KEYS + json_parser.TRACE_KEYS + json_parser.SPAN_KEYS
                       + json_parser.HOST_KEYS)


@pytest.fixture(scope="module")
def con() -> Iterator[Normaliser]:
    c = Normaliser()
    yield c
    c.close()


raw = partial(normalising.raw, observed=OBSERVED)
parse_all = partial(normalising.parse_all, observed=OBSERVED)
parse = partial(normalising.parse, observed=OBSERVED)
attrs = normalising.attrs
original = normalising.original
OBSERVED_FLAG = normalising.OBSERVED_FLAG


@pytest.fixture(autouse=True)
def _sources_of_their_own(con: Normaliser) -> None:
    # Every test's lines come from the same file: each test starts it afresh, so the layout it
    # checks is learned from its own lines, not from the shapes of the tests run before it.
    con.sources = SourceBook()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- general ---------------------------------------------------------------------


def test_output_keeps_order_host_source_and_observed(con: Normaliser) -> None:
    lines = ["first", '{"msg":"second"}', "2024-01-01 00:00:00 INFO third"]
    rows = parse_all(con, lines)
    assert [r["message"] for r in rows] == ["first", "second", "third"]
    assert [original(r) for r in rows] == lines
    assert {(r["host"], r["source"], r["observed_ts"]) for r in rows} == {("host-1", "/var/log/x.log", OBSERVED)}


def test_empty_batch_gives_an_empty_record_table(con: Normaliser) -> None:
    out = con(RAW_SCHEMA.empty_table())
    assert out.num_rows == 0 and out.schema == RECORD_SCHEMA


@pytest.mark.parametrize("level", ["trace", "debug", "info", "warn", "error", "fatal", "unknown"])
def test_severity_follows_the_schema_table(con: Normaliser, level: str) -> None:
    row = parse(con, {"level": level, "msg": "m"})
    assert row["level"] == level
    assert row["severity"] == SEVERITY[level]


# -- JSON lines ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["@timestamp", "timestamp", "time", "ts", "t"])
def test_json_time_keys(con: Normaliser, key: str) -> None:
    row = parse(con, {key: "2024-03-04T05:06:07.250Z", "msg": "m"})
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 250000)
    assert key not in attrs(row)


def test_json_time_key_precedence(con: Normaliser) -> None:
    row = parse(con, {"t": "2020-01-01T00:00:00Z", "@timestamp": "2024-03-04T05:06:07Z"})
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7)
    assert attrs(row) == {"t": "2020-01-01T00:00:00Z"}


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-03-04T05:06:07Z", utc(2024, 3, 4, 5, 6, 7)),
    ("2024-03-04T05:06:07.123456Z", utc(2024, 3, 4, 5, 6, 7, 123456)),
    ("2024-03-04T05:06:07.123456789Z", utc(2024, 3, 4, 5, 6, 7, 123456)),
    ("2024-03-04T05:06:07+02:00", utc(2024, 3, 4, 3, 6, 7)),
    ("2024-03-04T05:06:07.123+0000", utc(2024, 3, 4, 5, 6, 7, 123000)),
    ("2024-03-04T05:06:07.5-05:30", utc(2024, 3, 4, 10, 36, 7, 500000)),
    ("2024-03-04 05:06:07,123", utc(2024, 3, 4, 5, 6, 7, 123000)),
    ("2024-03-04T05:06:07,123Z", utc(2024, 3, 4, 5, 6, 7, 123000)),
    ("2024-03-04 05:06:07", utc(2024, 3, 4, 5, 6, 7)),
])
def test_json_iso_time_strings(con: Normaliser, text: str, expected: datetime) -> None:
    assert parse(con, {"time": text})["ts"] == expected


@pytest.mark.parametrize(("value", "expected"), [
    (1709528767, utc(2024, 3, 4, 5, 6, 7)),                         # seconds
    (1709528767.25, utc(2024, 3, 4, 5, 6, 7, 250000)),               # fractional seconds
    (1709528767123, utc(2024, 3, 4, 5, 6, 7, 123000)),               # milliseconds
    (1709528767123456, utc(2024, 3, 4, 5, 6, 7, 123456)),            # microseconds
    (1709528767123456000, utc(2024, 3, 4, 5, 6, 7, 123456)),         # nanoseconds
    (0, utc(1970, 1, 1)),
    # Numeric strings are epochs too, by the same magnitudes.
    ("1709528767", utc(2024, 3, 4, 5, 6, 7)),
    ("1709528767.25", utc(2024, 3, 4, 5, 6, 7, 250000)),
    ("1709528767123", utc(2024, 3, 4, 5, 6, 7, 123000)),
    ("1709528767123456", utc(2024, 3, 4, 5, 6, 7, 123456)),
    ("1709528767123456000", utc(2024, 3, 4, 5, 6, 7, 123456)),
    ("0", utc(1970, 1, 1)),
])
def test_json_epoch_times_by_magnitude(con: Normaliser, value: float | str, expected: datetime) -> None:
    row = parse(con, {"ts": value})
    assert row["ts"] == expected
    assert "ts" not in attrs(row)


@pytest.mark.parametrize("bad", ["not a time", "2024-13-45T99:99:99Z", ""])
def test_json_unparsable_time_is_kept_in_attrs_and_ts_is_observed(con: Normaliser, bad: str) -> None:
    row = parse(con, {"time": bad, "msg": "m"})
    assert row["ts"] == OBSERVED
    assert attrs(row) == {"time": bad} | OBSERVED_FLAG


def test_json_unparsable_time_of_another_type_is_kept_in_attrs(con: Normaliser) -> None:
    row = parse(con, {"timestamp": [1, 2], "msg": "m"})
    assert row["ts"] == OBSERVED
    assert attrs(row) == {"timestamp": "[1,2]"} | OBSERVED_FLAG


@pytest.mark.parametrize("key", ["level", "severity", "lvl", "loglevel"])
@pytest.mark.parametrize(("value", "level"), [
    ("INFO", "info"), ("Warn", "warn"), ("error", "error"), ("debug", "debug"), ("trace", "trace"),
    ("FATAL", "fatal"),
])
def test_json_level_key_with_a_normalised_name_leaves_attrs(con: Normaliser, key: str, value: str,
                                                             level: str) -> None:
    row = parse(con, {key: value, "msg": "m"})
    assert row["level"] == level
    assert row["severity"] == SEVERITY[level]
    assert attrs(row) == OBSERVED_FLAG


@pytest.mark.parametrize("key", ["level", "severity", "lvl", "loglevel"])
@pytest.mark.parametrize(("value", "level", "severity"), [
    ("warning", "warn", 13), ("WARNING", "warn", 13), ("ERR", "error", 17), ("critical", "fatal", 21),
    ("notice", "info", 10), ("whatever", "unknown", 0), (30, "info", 9), (50, "error", 17),
])
def test_json_level_key_with_another_value_stays_in_attrs(con: Normaliser, key: str, value: str | int,
                                                          level: str, severity: int) -> None:
    # Only trace/debug/info/warn/error/fatal (any case) leave attrs: the producer's own word stays visible.
    row = parse(con, {key: value, "msg": "m"})
    assert row["level"] == level
    assert row["severity"] == severity
    assert attrs(row) == {key: str(value)} | OBSERVED_FLAG


@pytest.mark.parametrize("key", ["message", "msg", "log"])
def test_json_message_keys(con: Normaliser, key: str) -> None:
    obj = {key: "hello \"world\"\n\tüñí", "other": "x"}
    row = parse(con, obj)
    assert row["message"] == "hello \"world\"\n\tüñí"
    assert attrs(row) == {"other": "x"} | OBSERVED_FLAG
    # The message is not the line's tail: the line is kept whole.
    assert row["raw"] is not None and original(row) == orjson.dumps(obj).decode()


@pytest.mark.parametrize(("value", "text"), [
    (42, "42"), (1.5, "1.5"), (True, "true"), ([1, "x"], '[1,"x"]'), ([], "[]"),
])
def test_json_non_string_message_is_its_json_text(con: Normaliser, value: Any, text: str) -> None:
    row = parse(con, {"message": value})
    assert row["message"] == text
    assert attrs(row) == OBSERVED_FLAG


@pytest.mark.parametrize(("obj", "flat"), [
    ({"message": {"a": 1}}, {"message.a": "1"}),
    ({"message": {"a": {"b": 1}}}, {"message.a.b": "1"}),
    ({"msg": {"text": "hi", "n": [1]}, "x": 1}, {"msg.text": "hi", "msg.n": "[1]", "x": "1"}),
])
def test_json_message_key_holding_an_object_is_flattened_like_any_other(con: Normaliser, obj: dict[str, Any],
                                                                        flat: dict[str, str]) -> None:
    # Flattening comes first: the message key is gone, so the message is the whole line.
    line = orjson.dumps(obj).decode()
    row = parse(con, line)
    assert row["message"] == original(row) == line
    assert attrs(row) == flat | OBSERVED_FLAG


def test_json_without_a_message_key_keeps_the_line(con: Normaliser) -> None:
    line = '{"a":1,"b":"two"}'
    row = parse(con, line)
    assert row["message"] == original(row) == line
    assert attrs(row) == {"a": "1", "b": "two"} | OBSERVED_FLAG


@pytest.mark.parametrize("key", ["service", "service.name", "app"])
def test_json_service_keys_override_the_file_service(con: Normaliser, key: str) -> None:
    row = parse(con, {key: "checkout", "msg": "m"})
    assert row["service"] == "checkout"
    assert attrs(row) == OBSERVED_FLAG


def test_json_without_service_keeps_the_file_service(con: Normaliser) -> None:
    assert parse(con, {"msg": "m"}, service="from-file")["service"] == "from-file"


@pytest.mark.parametrize(("trace_key", "span_key"), [("trace_id", "span_id"), ("traceId", "spanId")])
def test_json_trace_and_span_ids(con: Normaliser, trace_key: str, span_key: str) -> None:
    row = parse(con, {trace_key: "4bf92f3577b34da6a3ce929d0e0e4736", span_key: "00f067aa0ba902b7", "msg": "m"})
    assert row["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert row["span_id"] == "00f067aa0ba902b7"
    assert attrs(row) == OBSERVED_FLAG


def test_json_without_ids_has_null_trace_and_span(con: Normaliser) -> None:
    row = parse(con, {"msg": "m"})
    assert row["trace_id"] is None and row["span_id"] is None


def test_json_other_keys_are_attrs_with_nested_objects_flattened_and_arrays_as_json_text(
        con: Normaliser) -> None:
    row = parse(con, {"msg": "m", "user": "ann", "n": 5, "f": 2.5, "ok": False,
                      "ctx": {"req": {"id": 7}, "tags": ["a", "b"]}, "list": [1, {"x": None}]})
    assert attrs(row) == {"user": "ann", "n": "5", "f": "2.5", "ok": "false",
                          "ctx.req.id": "7", "ctx.tags": '["a","b"]', "list": '[1,{"x":null}]'} | OBSERVED_FLAG
    assert row["message"] == "m"


def test_json_null_is_a_null_attr_and_an_empty_object_stays_json_text(con: Normaliser) -> None:
    row = parse(con, {"msg": "m", "n": None, "e": {}, "deep": {"n": None, "e": {}}})
    assert row["attrs"] == [("n", None), ("e", "{}"), ("deep.n", None), ("deep.e", "{}"), ("ts_parse", "observed")]


@pytest.mark.parametrize(("line", "expected"), [
    ('{"a":1,"a":2}', [("a", "1"), ("a#2", "2")]),                              # repeated in the line
    ('{"msg":"m","a":"x","b":0,"a":"y"}', [("a", "x"), ("b", "0"), ("a#4", "y")]),
    ('{"a.b":1,"a":{"b":2}}', [("a.b", "1"), ("a.b#2", "2")]),                  # made equal by flattening
    ('{"a":{"b":2},"a.b":1}', [("a.b", "2"), ("a.b#2", "1")]),
])
def test_json_repeated_keys_get_their_position_appended(con: Normaliser, line: str,
                                                        expected: list[tuple[str, str]]) -> None:
    row = parse(con, line)
    assert row["attrs"] == [*expected, ("ts_parse", "observed")]


def test_json_full_record(con: Normaliser) -> None:
    obj = {"@timestamp": "2024-03-04T05:06:07.123+01:00", "severity": "ERROR", "msg": "boom",
           "service.name": "pay", "traceId": "t1", "spanId": "s1", "code": 500}
    row = parse(con, obj)
    assert row == {
        "ts": utc(2024, 3, 4, 4, 6, 7, 123000), "observed_ts": OBSERVED, "service": "pay", "host": "host-1",
        "source": "/var/log/x.log", "level": "error", "severity": SEVERITY["error"], "message": "boom",
        "attrs": [("code", "500")], "trace_id": "t1", "span_id": "s1",
        "head": None, "raw": row["raw"],
    }
    assert original(row) == orjson.dumps(obj).decode()


@pytest.mark.parametrize("line", ["[1, 2, 3]", '"just a string"', "{not json", "{}x"])
def test_lines_that_are_not_json_objects_are_plain_text(con: Normaliser, line: str) -> None:
    row = parse(con, line)
    assert row["message"] == original(row) == line
    assert row["level"] == "unknown"
    assert row["ts"] == OBSERVED
    assert attrs(row) == {"ts_parse": "observed", "format": "unknown"}


# The empty key is left to its own test below, so the property explores every other key; and so
# are the keys the deeper search reads a time or a level from ("T": 0 is 1970, and leaves attrs).
_LEAVES = "|".join(map(re.escape, json_parser.TS_LEAVES + json_parser.LEVEL_LEAVES))
_DEEPER = re.compile(rf"(?:(?:^|\.)(?:{_LEAVES})|^t)(?:\.\$(?:date|numberlong))*$", re.IGNORECASE)
_key = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda k: k not in WELL_KNOWN and not _DEEPER.search(k))
_value = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20) | st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=st.dictionaries(_key, _value, max_size=8))
def test_any_flat_json_object_keeps_every_key_in_attrs(con: Normaliser,
                                                        obj: dict[str, str | int]) -> None:
    row = parse(con, orjson.dumps(obj).decode())
    expected = {k: v if isinstance(v, str) else str(v) for k, v in obj.items()}
    assert attrs(row) == expected | OBSERVED_FLAG
    assert row["message"] == original(row) == orjson.dumps(obj).decode()
    assert row["ts"] == OBSERVED


@pytest.mark.parametrize("obj", [{"": "v"}, {"": 1, "msg": "m", "level": "info"}])
def test_json_empty_key_is_kept_in_attrs(con: Normaliser, obj: dict[str, Any]) -> None:
    row = parse(con, obj)
    assert attrs(row) == {"": str(obj[""])} | OBSERVED_FLAG


# -- plain text with a leading timestamp --------------------------------------------


@pytest.mark.parametrize(("line", "ts"), [
    ("2024-03-04 05:06:07,123 INFO [main] c.e.Worker - ready", utc(2024, 3, 4, 5, 6, 7, 123000)),
    ("2024-03-04 05:06:07.123 INFO started", utc(2024, 3, 4, 5, 6, 7, 123000)),
    ("2024-03-04 05:06:07 INFO started", utc(2024, 3, 4, 5, 6, 7)),
    ("2024-03-04T05:06:07Z INFO started", utc(2024, 3, 4, 5, 6, 7)),
    ("2024-03-04T05:06:07.123456Z INFO started", utc(2024, 3, 4, 5, 6, 7, 123456)),
    ("2024-03-04T05:06:07+02:00 INFO started", utc(2024, 3, 4, 3, 6, 7)),
    ("2024-03-04T05:06:07.5-0700 INFO started", utc(2024, 3, 4, 12, 6, 7, 500000)),
    ("2024-03-04T05:06:07.123456789Z INFO started", utc(2024, 3, 4, 5, 6, 7, 123456)),
    ("2024-03-04 05:06:07,123+01:00 INFO started", utc(2024, 3, 4, 4, 6, 7, 123000)),
    ("[2024-03-04T05:06:07Z] INFO started", utc(2024, 3, 4, 5, 6, 7)),
])
def test_plain_line_leading_timestamp(con: Normaliser, line: str, ts: datetime) -> None:
    row = parse(con, line)
    assert row["ts"] == ts
    assert row["level"] == "info"
    # The message follows the header (time, level, thread); the line is the header and the message.
    assert row["message"] == ("c.e.Worker - ready" if line.endswith("ready") else "started")
    assert original(row) == line and row["raw"] is None
    assert attrs(row) == {}


@pytest.mark.parametrize(("word", "level"), [
    ("INFO", "info"), ("WARN", "warn"), ("WARNING", "warn"), ("ERROR", "error"), ("DEBUG", "debug"),
    ("FATAL", "fatal"), ("CRITICAL", "fatal"), ("TRACE", "trace"),
])
@pytest.mark.parametrize(("shape", "message"), [
    ("{ts} {w} request handled", "request handled"), ("{ts} [{w}] request handled", "request handled"),
    ("{ts} - {w}  [main:Thing@1] - request handled", "request handled"), ("{ts} [main] {w}: handled", "handled"),
])
def test_plain_line_level_words(con: Normaliser, word: str, level: str, shape: str, message: str) -> None:
    line = shape.format(ts="2024-03-04 05:06:07,123", w=word)
    row = parse(con, line)
    assert row["level"] == level
    assert row["severity"] == SEVERITY[level]
    assert row["message"] == message
    assert original(row) == line
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 123000)


def test_plain_line_level_word_must_be_a_whole_word(con: Normaliser) -> None:
    row = parse(con, "2024-03-04 05:06:07 INFOS ERRORS happened")
    assert row["level"] == "unknown"
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7)
    assert row["message"] == "INFOS ERRORS happened"


def test_plain_line_without_a_level_word_is_unknown_but_keeps_its_ts(con: Normaliser) -> None:
    row = parse(con, "2024-03-04 05:06:07 something happened")
    assert row["level"] == "unknown" and row["severity"] == 0
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7)
    assert row["message"] == "something happened" and original(row) == "2024-03-04 05:06:07 something happened"
    assert attrs(row) == {}


# -- access logs ---------------------------------------------------------------------


def test_common_log_format(con: Normaliser) -> None:
    line = '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326'
    row = parse(con, line)
    assert row["ts"] == utc(2000, 10, 10, 20, 55, 36)
    assert row["level"] == "info"
    assert row["message"] == original(row) == line
    assert attrs(row) == {"client.ip": "127.0.0.1", "http.user": "frank", "http.method": "GET",
                          "http.path": "/apache_pb.gif", "http.status": "200", "http.bytes": "2326"}


def test_combined_log_format(con: Normaliser) -> None:
    line = ('10.1.2.3 - - [04/Mar/2024:05:06:07 +0100] "POST /api/v1/pay?x=1 HTTP/1.1" 201 512 '
            '"https://shop.example/cart" "Mozilla/5.0 (X11; Linux x86_64)"')
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 4, 6, 7)
    assert row["message"] == original(row) == line
    assert attrs(row) == {"client.ip": "10.1.2.3", "http.method": "POST", "http.path": "/api/v1/pay?x=1",
                          "http.status": "201", "http.bytes": "512", "http.referer": "https://shop.example/cart",
                          "http.user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}


def test_access_log_dash_bytes_and_referer_are_omitted(con: Normaliser) -> None:
    row = parse(con, '::1 - - [04/Mar/2024:05:06:07 +0000] "HEAD / HTTP/1.1" 304 - "-" "curl/8.0"')
    assert attrs(row) == {"client.ip": "::1", "http.method": "HEAD", "http.path": "/", "http.status": "304",
                          "http.user_agent": "curl/8.0"}


@pytest.mark.parametrize(("status", "level"), [
    (100, "info"), (200, "info"), (302, "info"), (399, "info"), (400, "warn"), (404, "warn"), (499, "warn"),
    (500, "error"), (503, "error"), (599, "error"),
])
def test_access_log_level_from_status(con: Normaliser, status: int, level: str) -> None:
    row = parse(con, f'1.2.3.4 - - [04/Mar/2024:05:06:07 +0000] "GET /x HTTP/1.1" {status} 10 "-" "ua"')
    assert row["level"] == level
    assert row["severity"] == SEVERITY[level]
    assert attrs(row)["http.status"] == str(status)


# -- no known format -----------------------------------------------------------------


@pytest.mark.parametrize("line", ["just some text", "", "   ", "04/03/2024 05:06 not iso",
                                  "2024-03-04 not a time", "x" * 500, "\ufffd\ufffd binary junk"])
def test_line_in_no_format_is_whole_message_unknown_level_observed_ts(con: Normaliser,
                                                                      line: str) -> None:
    row = parse(con, line)
    assert row["message"] == original(row) == line
    assert row["ts"] == OBSERVED
    assert row["level"] == "unknown" and row["severity"] == 0
    assert row["service"] == "file-svc"
    assert attrs(row) == {"ts_parse": "observed", "format": "unknown"}
    assert row["trace_id"] is None and row["span_id"] is None


def test_level_word_without_a_timestamp_sets_the_level_and_ts_is_observed(
        con: Normaliser) -> None:
    row = parse(con, "ERROR something broke")
    assert row["level"] == "error"
    assert row["ts"] == OBSERVED
    assert row["message"] == original(row) == "ERROR something broke"
    assert attrs(row) == OBSERVED_FLAG          # a level was found: not flagged format=unknown


def test_observed_ts_is_per_row(con: Normaliser) -> None:
    a, b = OBSERVED, OBSERVED + timedelta(hours=3)
    table = pa.concat_tables([raw(["no format"], observed=a), raw(["no format"], observed=b)])
    rows = con(table).to_pylist()
    assert [r["ts"] for r in rows] == [a, b]


def test_iso_timestamp_converts_with_its_zone_not_the_session_zone(con: Normaliser) -> None:
    row = parse(con, "2024-03-04T05:06:07+05:45 ERROR x")
    assert row["ts"] == datetime(2024, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=5, minutes=45)))
    assert row["level"] == "error"


# -- real-world lines (loghub) -------------------------------------------------------


@pytest.mark.parametrize("name", ["Zookeeper", "Hadoop"])
def test_loghub_levels_match_the_structured_csv(con: Normaliser, name: str) -> None:
    log = LOGHUB / name / f"{name}_2k.log"
    structured = LOGHUB / name / f"{name}_2k.log_structured.csv"
    if not (log.is_file() and structured.is_file()):
        reason = f"loghub data not found under {LOGHUB} ({name})"
        print(reason)
        pytest.skip(reason)
    with log.open(encoding="utf-8", errors="replace", newline="") as f:
        lines = [line.rstrip("\r\n") for _, line in zip(range(200), f, strict=False)]
    with structured.open(encoding="utf-8", errors="replace", newline="") as f:
        rows = [row for _, row in zip(range(200), csv.DictReader(f), strict=False)]
    assert [int(r["LineId"]) for r in rows] == list(range(1, len(lines) + 1))
    parsed = parse_all(con, lines)
    checked = [(r["Level"].lower(), p["level"], p["message"]) for r, p in zip(rows, parsed, strict=True)
               if r["Level"] in ("INFO", "WARN", "ERROR")]
    matched = sum(1 for want, got, _ in checked if want == got)
    print(f"{name}: {matched}/{len(checked)} levels match the structured CSV")
    assert checked, "no INFO/WARN/ERROR lines to compare"
    assert matched == len(checked), [c for c in checked if c[0] != c[1]][:5]
    # Every line has a leading timestamp: none falls back to the observed time.
    assert all(p["ts"] != OBSERVED for p in parsed)


def test_shipper_labels_join_the_attrs_and_the_line_wins_a_clash(con: Normaliser) -> None:
    out = con(raw(['{"msg": "m", "env": "from-line"}', "plain text"],
                             labels={"env": "prod", "team": "payments"})).to_pylist()
    assert dict(out[0]["attrs"]) == {"env": "from-line", "team": "payments"} | OBSERVED_FLAG
    # The plain line is in no format: the flags come after the labels.
    assert out[1]["attrs"] == [("env", "prod"), ("team", "payments"), ("ts_parse", "observed"), ("format", "unknown")]


def test_cri_lines_are_unwrapped_joined_and_parsed_again(con: Normaliser) -> None:
    lines = ['2026-11-01T10:00:00.5Z stdout F {"level":"error","msg":"db down"}',
             "2026-11-01T10:00:01Z stderr P first half \n2026-11-01T10:00:01Z stderr F second half",
             "2026-11-01T10:00:02.25Z stdout F plain text, no time"]
    out = con(raw(lines, wrapper="cri")).to_pylist()
    assert (out[0]["message"], out[0]["level"], dict(out[0]["attrs"])) == ("db down", "error", {"stream": "stdout"})
    assert out[1]["message"] == "first half second half"
    assert dict(out[1]["attrs"]) == {"stream": "stderr"}
    assert out[2]["ts"] == datetime(2026, 11, 1, 10, 0, 2, 250000, tzinfo=UTC)   # the runtime's time


def test_docker_json_file_lines_are_unwrapped_and_partials_joined(con: Normaliser) -> None:
    lines = ['{"log":"2026-11-01 10:00:00,000 WARN x - disk\\n","stream":"stdout","time":"2026-11-01T10:00:09Z"}',
             '{"log":"part one ","stream":"stderr","time":"2026-11-01T10:00:10Z"}\n'
             '{"log":"part two\\n","stream":"stderr","time":"2026-11-01T10:00:10Z"}']
    out = con(raw(lines, wrapper="docker")).to_pylist()
    assert out[0]["message"] == "x - disk" and out[0]["level"] == "warn"
    assert original(out[0]) == "2026-11-01 10:00:00,000 WARN x - disk"
    assert out[0]["ts"] == datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    assert out[1]["message"] == "part one part two" and dict(out[1]["attrs"]) == {"stream": "stderr"}
    assert out[1]["ts"] == datetime(2026, 11, 1, 10, 0, 10, tzinfo=UTC)


def test_invalid_utf8_is_replaced_and_the_row_flagged(con: Normaliser) -> None:
    from ingest.batch import RecordRun, raw_table
    from loglake.core.frame import FrameMeta

    records = pa.array([b"fine line\n", b"bad \xff\xfe bytes\n"], pa.binary())
    meta = FrameMeta("sid", "/x.log", "h", "svc", "default", 0, 25, 1_000_000, 2, {"env": "prod"})
    out = con(raw_table([RecordRun(meta, records)])).to_pylist()
    # Neither line has a timestamp or a level word, so both are also flagged format=unknown.
    assert out[0]["message"] == "fine line"
    assert dict(out[0]["attrs"]) == {"env": "prod", "ts_parse": "observed", "format": "unknown"}
    assert out[1]["message"] == "bad \ufffd\ufffd bytes"
    assert dict(out[1]["attrs"]) == {"env": "prod", "invalid_utf8": "true", "ts_parse": "observed", "format": "unknown"}


def test_attrs_cut_at_max_attrs_keep_the_parse_flags() -> None:
    narrow = Normaliser(ParseSettings(max_attrs=3))
    try:
        row = parse(narrow, {"msg": "m"} | {f"k{i}": str(i) for i in range(10)})
    finally:
        narrow.close()
    # The first three of the line's own, how many were dropped, and why its time is the observed one.
    assert attrs(row) == {"k0": "0", "k1": "1", "k2": "2", "attrs_dropped": "7"} | OBSERVED_FLAG
    assert row["ts"] == OBSERVED


def test_a_batch_duckdb_returns_in_several_chunks_gives_the_records_of_one_chunk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.normalise as normalise
    lines = ([orjson.dumps({"time": f"2031-05-06T07:0{i % 10}:00Z", "level": "warn", "msg": f"m{i}", "k": i}).decode()
              for i in range(40)] + [f'10.0.0.{i} - - [06/May/2031:07:08:0{i % 10} +0000] "GET /{i} HTTP/1.1" 200 5'
                                     for i in range(40)] + [f"plain line {i}" for i in range(40)])
    whole = Normaliser()
    expected = whole(raw(lines))
    whole.close()
    # (DuckDB's result in chunks of 7 rows, as a batch past the bytes one chunk takes gets it)
    monkeypatch.setattr(normalise, "_ONE_CHUNK_BYTES", 0)
    monkeypatch.setattr(normalise, "_ARROW_BATCH_ROWS", 7)
    chunked = Normaliser()
    got = chunked(raw(lines))
    chunked.close()
    assert got.num_rows == len(lines)
    assert got.to_pylist() == expected.to_pylist()


# -- routing a batch of JSON objects without the statement -------------------------------------

_OBJECT_LINES = ['{"msg": "a", "level": "info"}', '{}', '{"log": "x"}', '{ "ts": 1 }', '{"a":1}\r']


@pytest.mark.parametrize("formats", [[""], ["json"], ["text"], ["nginx"], ["pattern0"], ["", "json", "syslog", "text"],
                                     ["logfmt", "", "apache", "pattern0", "json"]])
@pytest.mark.parametrize("wrapper", ["", "cri", "docker"])
def test_a_batch_of_json_objects_is_routed_as_the_statement_routes_it(formats: list[str], wrapper: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    n = Normaliser(ParseSettings(patterns=(r"^(?P<message>.*)$",)))
    batch = pa.concat_tables([
        normalising.raw(_OBJECT_LINES, observed=utc(2024, 5, 1), source=f"/var/log/{i}.log", fmt=f, wrapper=wrapper)
        for i, f in enumerate(formats)])
    assert normalise_module._objects_only(batch.column("line"))
    routed, records = n._route(batch), n(batch)
    monkeypatch.setattr(normalise_module, "_objects_only", lambda lines: False)     # the statement, for every line
    assert routed.equals(n._route(batch)), routed.to_pylist()[:3]
    assert records.equals(n(batch))


@pytest.mark.parametrize("lines", [['{"a": 1}', "plain text"],
                                   ['{"log":"hi\\n","stream":"stdout","time":"2024-05-01T00:00:00Z"}'],
                                   ['{"a": 1}', ""], ['2024-05-01T00:00:00Z stdout F {"a": 1}']])
def test_a_batch_with_any_other_line_goes_through_the_statement(lines: list[str]) -> None:
    assert not normalise_module._objects_only(normalising.raw(lines, observed=utc(2024, 5, 1)).column("line"))


# -- attrs made in Arrow for compiled JSON lines -------------------------------------------------

_ARROW_ATTRS = re.compile(r"CAST\(CASE WHEN shape IS NULL OR len\(o_attrs\).*?AS TINYINT\) AS attrs_from", re.S)
_pool_key = st.sampled_from(["msg", "message", "level", "lvl", "ts", "time", "host", "service", "trace_id",
                             "span_id", "agent", "agent.host", "user", "T", "n", "a.b", "stream"])
_pool_value = st.sampled_from(["", "info", "ERROR", "warn2", "30", "2024-05-01T10:00:00Z", "1714557600",
                               "0", "h1", "h2", "agent smith", "x" * 30, "ünï", "1e400"]) | st.integers(-5, 5) \
    | st.none()


@settings(max_examples=examples(60), deadline=None)
@given(objects=st.lists(st.dictionaries(_pool_key, _pool_value, max_size=7), min_size=1, max_size=12),
       texts=st.lists(st.sampled_from(["plain text line", "2024-05-01 10:00:00 ERROR boom", "{broken"]), max_size=3),
       labels=st.none() | st.just({"env": "prod"}), host=st.sampled_from(["h1", ""]))
def test_attrs_made_in_arrow_are_the_statements(objects: list[dict[str, Any]], texts: list[str],
                                                 labels: dict[str, str] | None, host: str) -> None:
    # (the first line's attrs are made in Arrow whenever the batch has no labels)
    lines = ['{"ts": "2024-05-01T10:00:00Z", "msg": "anchor", "k": "v"}', *(orjson.dumps(o).decode() for o in objects),
             *texts]
    made, by_statement, in_arrow = _attrs_both_ways(Normaliser(), normalising.raw(
        lines, observed=utc(2024, 5, 1, 12), labels=labels, host=host))
    target(in_arrow)
    assert in_arrow or labels is not None
    assert made.equals(by_statement), (made.column("attrs").to_pylist(), by_statement.column("attrs").to_pylist())


def test_attrs_at_the_cap_are_the_statements() -> None:
    objects = [{f"k{i}": str(i) for i in range(k)} | {"msg": "m", "ts": "2024-05-01T10:00:00Z", "host": h}
               for k in range(0, 9) for h in ("", "h1", "h2")]
    batch = normalising.raw([orjson.dumps(o).decode() for o in objects], observed=utc(2024, 5, 1, 12), host="h1")
    made, by_statement, in_arrow = _attrs_both_ways(Normaliser(ParseSettings(max_attrs=5)), batch)
    assert made.equals(by_statement) and in_arrow
    # (up to the cap and attrs_dropped after it, made by the statement; below it, in Arrow)
    assert max(len(r) for r in made.column("attrs").to_pylist()) == 6


def _attrs_both_ways(n: Normaliser, batch: pa.Table) -> tuple[pa.Table, pa.Table, int]:
    """``batch``'s records as made (some rows' attrs in Arrow), with every row's made by the statement,
    and how many rows' attrs were made in Arrow."""
    made = n(batch)
    c, compiled = n._pre_pass(n._route(batch), "")
    code = n.con.register("c", c).execute(n._statement(c, False, compiled)).to_arrow_table().column("attrs_from")
    n.con.unregister("c")
    statement = n._statement
    n.json_in_arrow = False     # (the second time every row through the statement, not ingest.json_columns)
    n._statement = lambda *a: _ARROW_ATTRS.sub("CAST(0 AS TINYINT) AS attrs_from", statement(*a))  # type: ignore[method-assign]
    return made, n(batch), int(pc.sum(pc.greater(code, 0)).as_py() or 0)
