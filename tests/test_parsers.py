"""ingest/parsers/*: one section per format, then timestamps, levels, and properties of the whole statement.

Every line here is written for these tests (none is copied from a corpus). Each
test parses through :class:`ingest.normalise.Normaliser`, so what is checked is
the record a line becomes, not the SQL pieces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.levels import NUMERIC_LEVEL, SEVERITY_OF, SYSLOG_SEVERITY, TEXT_LEVEL_WORDS, level_of
from ingest.normalise import Normaliser, ParseSettings, normalise_safely
from ingest.parsers.json import MAX_DEPTH
from ingest.parsers.pattern import PatternError
from ingest.sources import SourceBook
from ingest.worker import IngestWorker
from loglake.core.config import Config
from storage.catalog import Catalog
from storage.schema import LEVELS, RECORD_SCHEMA
from tests.helpers import normalising

#: When the shipper read the lines: after every dated line below, so no time is "in the future".
OBSERVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

#: User patterns for the ``patterned`` normaliser (formats "pattern0", "pattern1").
PATTERN0 = (r"^(?P<ts>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}) \[(?P<level>[A-Za-z]+)\] "
            r"(?P<service>[\w-]+)@(?P<host>[\w.-]+) trace=(?P<trace_id>[0-9a-f]*) span=(?P<span_id>[0-9a-f]*) "
            r"user=(?P<user>\w*) took=(?P<took_ms>\d+)ms (?P<message>.*)$")
PATTERN1 = r"^(?P<level>[A-Z]+)\|(?P<ts>[^|]+)\|(?P<code>\d*)\|(?P<message>.*)$"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def _normaliser(settings: ParseSettings | None = None) -> Iterator[Normaliser]:
    n = Normaliser(settings)
    yield n
    n.close()


@pytest.fixture(scope="module")
def con() -> Iterator[Normaliser]:
    yield from _normaliser()


@pytest.fixture(scope="module")
def berlin() -> Iterator[Normaliser]:
    yield from _normaliser(ParseSettings(default_timezone="Europe/Berlin"))


@pytest.fixture(scope="module")
def strict() -> Iterator[Normaliser]:
    yield from _normaliser(ParseSettings(max_ahead_s=60))


@pytest.fixture(scope="module")
def patterned() -> Iterator[Normaliser]:
    yield from _normaliser(ParseSettings(patterns=(PATTERN0, PATTERN1)))


@pytest.fixture(autouse=True)
def _sources_of_their_own(request: pytest.FixtureRequest) -> None:
    # The normalisers are shared by the module and every line comes from the same source: each
    # test starts its sources afresh, so a layout it checks is learned from its own lines, not
    # from the shapes of the tests run before it.
    for name in ("con", "berlin", "strict", "patterned"):
        if name in request.fixturenames:
            request.getfixturevalue(name).sources = SourceBook()


raw = partial(normalising.raw, observed=OBSERVED)
parse_all = partial(normalising.parse_all, observed=OBSERVED)
parse = partial(normalising.parse, observed=OBSERVED)
attrs = normalising.attrs
original = normalising.original
OBSERVED_FLAG = normalising.OBSERVED_FLAG


# == JSON ===========================================================================


def test_json_pino_record(con: Normaliser) -> None:
    line = ('{"level":30,"time":1709528767123,"pid":4242,"hostname":"web-1","reqId":"req-9",'
            '"req":{"method":"GET","url":"/api/cart","headers":{"accept":"application/json"}},'
            '"responseTime":12.5,"msg":"request completed"}')
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 123000)
    assert (row["level"], row["severity"]) == ("info", 9)
    assert row["message"] == "request completed"
    assert original(row) == line
    assert row["host"] == "web-1"                    # the line's host wins; the shipper's goes to agent.host
    assert attrs(row) == {"agent.host": "host-1", "level": "30", "pid": "4242", "reqId": "req-9",
                          "req.method": "GET", "req.url": "/api/cart", "req.headers.accept": "application/json",
                          "responseTime": "12.5"}


def test_json_zap_record(con: Normaliser) -> None:
    line = ('{"level":"warn","ts":1709528767.25,"caller":"cache/evict.go:88","msg":"cache nearly full",'
            '"service":"catalog","fill":0.93,"shards":[1,4],"traceId":"0af7651916cd43dd8448eb211c80319c",'
            '"spanId":"b7ad6b7169203331"}')
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 250000)
    assert (row["level"], row["severity"]) == ("warn", 13)
    assert row["message"] == "cache nearly full"
    assert row["service"] == "catalog"
    assert (row["trace_id"], row["span_id"]) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert attrs(row) == {"caller": "cache/evict.go:88", "fill": "0.93", "shards": "[1,4]"}


def test_json_gelf_record(con: Normaliser) -> None:
    line = ('{"version":"1.1","host":"mail-2.example.net","short_message":"queue stalled","timestamp":1709528767.5,'
            '"level":3,"_queue":"outbound","_depth":812}')
    row = parse(con, line, host="")
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 500000)
    assert (row["level"], row["severity"]) == ("error", 17)     # GELF 3 = syslog err
    assert row["host"] == "mail-2.example.net"                  # record host empty: taken from the line
    assert row["message"] == "queue stalled"                     # short_message is GELF's message key
    assert original(row) == line
    assert attrs(row) == {"version": "1.1", "level": "3", "_queue": "outbound", "_depth": "812"}


@pytest.mark.parametrize(("obj", "ts", "left"), [
    ({"t": "2020-01-01T00:00:00Z", "ts": "2021-01-01T00:00:00Z", "time": "2022-01-01T00:00:00Z",
      "timestamp": "2023-01-01T00:00:00Z", "@timestamp": "2024-03-04T05:06:07Z"},
     utc(2024, 3, 4, 5, 6, 7), {"t", "ts", "time", "timestamp"}),
    ({"t": "2020-01-01T00:00:00Z", "ts": "2021-01-01T00:00:00Z", "time": "2022-01-01T00:00:00Z",
      "timestamp": "2024-03-04T05:06:07Z"}, utc(2024, 3, 4, 5, 6, 7), {"t", "ts", "time"}),
    ({"t": "2020-01-01T00:00:00Z", "ts": "2021-01-01T00:00:00Z", "time": "2024-03-04T05:06:07Z"},
     utc(2024, 3, 4, 5, 6, 7), {"t", "ts"}),
    ({"t": "2020-01-01T00:00:00Z", "ts": "2024-03-04T05:06:07Z"}, utc(2024, 3, 4, 5, 6, 7), {"t"}),
    ({"t": "2024-03-04T05:06:07Z"}, utc(2024, 3, 4, 5, 6, 7), set()),
])
def test_json_time_keys_in_precedence_order(con: Normaliser, obj: dict[str, str], ts: datetime,
                                            left: set[str]) -> None:
    row = parse(con, {**obj, "msg": "m"})
    assert row["ts"] == ts
    assert set(attrs(row)) == left


def test_json_time_key_that_does_not_parse_stays_and_no_other_key_is_tried(con: Normaliser) -> None:
    row = parse(con, {"@timestamp": "yesterday", "time": "2024-03-04T05:06:07Z", "msg": "m"})
    assert row["ts"] == OBSERVED
    assert attrs(row) == {"@timestamp": "yesterday", "time": "2024-03-04T05:06:07Z", **OBSERVED_FLAG}


@pytest.mark.parametrize(("obj", "level", "left"), [
    ({"loglevel": "trace", "lvl": "debug", "severity": "warn", "level": "error"}, "error",
     {"loglevel", "lvl", "severity"}),
    ({"loglevel": "trace", "lvl": "debug", "severity": "warn"}, "warn", {"loglevel", "lvl"}),
    ({"loglevel": "trace", "lvl": "debug"}, "debug", {"loglevel"}),
    ({"loglevel": "trace"}, "trace", set()),
])
def test_json_level_keys_in_precedence_order(con: Normaliser, obj: dict[str, str], level: str,
                                             left: set[str]) -> None:
    row = parse(con, {**obj, "msg": "m"})
    assert row["level"] == level
    a = attrs(row)
    assert a.pop("ts_parse") == "observed"                 # no time in the line
    assert set(a) == left


@pytest.mark.parametrize(("number", "level", "severity"), [
    (10, "trace", 1), (20, "debug", 5), (30, "info", 9), (40, "warn", 13), (50, "error", 17), (60, "fatal", 21),
])
def test_json_pino_numeric_levels(con: Normaliser, number: int, level: str, severity: int) -> None:
    for value in (number, str(number)):
        row = parse(con, {"level": value, "msg": "m"})
        assert (row["level"], row["severity"]) == (level, severity), value
        # a number is not a normalised name: it stays
        assert attrs(row) == {"level": str(number), **OBSERVED_FLAG}


@pytest.mark.parametrize(("number", "level", "severity"), [
    (0, "fatal", 23), (1, "fatal", 22), (2, "fatal", 21), (3, "error", 17), (4, "warn", 13), (5, "info", 10),
    (6, "info", 9), (7, "debug", 5),
])
def test_json_gelf_numeric_levels(con: Normaliser, number: int, level: str, severity: int) -> None:
    row = parse(con, {"level": number, "short_message": "m"})
    assert (row["level"], row["severity"]) == (level, severity)
    assert attrs(row)["level"] == str(number)


@pytest.mark.parametrize("value", [8, 25, 70, 100, -1, 3.5, True])
def test_json_other_numeric_levels_are_unknown(con: Normaliser, value: Any) -> None:
    row = parse(con, {"level": value, "msg": "m"})
    assert (row["level"], row["severity"]) == ("unknown", 0)
    assert "level" in attrs(row)


@pytest.mark.parametrize(("obj", "message", "left"), [
    ({"log": "from log", "msg": "from msg", "message": "from message"}, "from message", {"log", "msg"}),
    ({"log": "from log", "msg": "from msg"}, "from msg", {"log"}),
    ({"x": 1, "log": "from log"}, "from log", {"x"}),     # "log" not first: a line starting {"log": is Docker's
])
def test_json_message_keys_in_precedence_order(con: Normaliser, obj: dict[str, str], message: str,
                                               left: set[str]) -> None:
    row = parse(con, {"level": "info", **obj})
    assert row["message"] == message
    assert original(row) == orjson.dumps({"level": "info", **obj}).decode()
    a = attrs(row)
    assert a.pop("ts_parse") == "observed"
    assert set(a) == left


@pytest.mark.parametrize(("obj", "service", "left"), [
    ({"app": "a", "service.name": "b", "service": "c"}, "c", {"app", "service.name"}),
    ({"app": "a", "service.name": "b"}, "b", {"app"}),
    ({"app": "a"}, "a", set()),
    ({"service": {"name": "billing", "version": "2.3.1"}}, "billing", {"service.version"}),   # flattened first
    ({"resource": {"service.name": "x"}}, "file-svc", {"resource.service.name"}),
])
def test_json_service_keys_in_precedence_order(con: Normaliser, obj: dict[str, Any], service: str,
                                               left: set[str]) -> None:
    row = parse(con, {**obj, "msg": "m"})
    assert row["service"] == service
    assert original(row) == orjson.dumps({**obj, "msg": "m"}).decode()
    a = attrs(row)
    assert a.pop("ts_parse") == "observed"
    assert set(a) == left


@pytest.mark.parametrize(("obj", "trace", "span", "left"), [
    ({"traceId": "aa", "trace_id": "bb", "spanId": "cc", "span_id": "dd"}, "bb", "dd", {"traceId", "spanId"}),
    ({"traceId": "aa", "spanId": "cc"}, "aa", "cc", set()),
    ({"trace_id": "bb"}, "bb", None, set()),
    ({"span_id": "dd"}, None, "dd", set()),
])
def test_json_trace_and_span_keys(con: Normaliser, obj: dict[str, str], trace: str | None, span: str | None,
                                  left: set[str]) -> None:
    row = parse(con, {**obj, "msg": "m"})
    assert (row["trace_id"], row["span_id"]) == (trace, span)
    assert original(row) == orjson.dumps({**obj, "msg": "m"}).decode()
    a = attrs(row)
    assert a.pop("ts_parse") == "observed"
    assert set(a) == left


@pytest.mark.parametrize(("obj", "record_host", "host", "left"), [
    ({"host": "h1", "hostname": "h2"}, "", "h1", {"hostname": "h2"}),
    ({"hostname": "h2"}, "", "h2", {}),
    # The line's host wins; the shipper's, when it differs and is not empty, goes to agent.host.
    ({"host": "h1", "hostname": "h2"}, "node-7", "h1", {"agent.host": "node-7", "hostname": "h2"}),
    ({"hostname": "h2"}, "node-7", "h2", {"agent.host": "node-7"}),
    ({"host": "node-7"}, "node-7", "node-7", {}),
    ({}, "", "", {}),
    ({}, "node-7", "node-7", {}),
    ({"host": ""}, "node-7", "node-7", {"host": ""}),          # an empty host value names no host: it stays
])
def test_json_host_keys_win_over_the_shippers_host(con: Normaliser, obj: dict[str, str], record_host: str,
                                                   host: str, left: dict[str, str]) -> None:
    row = parse(con, {**obj, "msg": "m"}, host=record_host)
    assert row["host"] == host
    assert original(row) == orjson.dumps({**obj, "msg": "m"}).decode()
    a = attrs(row)
    assert a.pop("ts_parse") == "observed"
    assert a == left


def test_json_flattening_details(con: Normaliser) -> None:
    row = parse(con, {"msg": "m", "http": {"request": {"method": "POST", "headers": {}}, "status": 502},
                      "retry": None, "tags": ["a", {"b": 1}], "user": {"id": 7, "admin": False, "name": None}})
    assert row["attrs"] == [("http.request.method", "POST"), ("http.request.headers", "{}"),
                            ("http.status", "502"), ("retry", None), ("tags", '["a",{"b":1}]'),
                            ("user.id", "7"), ("user.admin", "false"), ("user.name", None),
                            ("ts_parse", "observed")]


def test_json_nesting_deeper_than_the_limit_stays_json_text(con: Normaliser) -> None:
    obj: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_DEPTH + 2):
        obj = {"k": obj}
    row = parse(con, {"msg": "m", **obj})
    key = ".".join(["k"] * MAX_DEPTH)
    rest: Any = obj
    for _ in range(MAX_DEPTH):
        rest = rest["k"]
    assert attrs(row) == {key: orjson.dumps(rest).decode(), **OBSERVED_FLAG}


@pytest.mark.parametrize(("line", "expected"), [
    ('{"msg":"m","id":1,"id":2,"id":3}', [("id", "1"), ("id#3", "2"), ("id#4", "3")]),
    ('{"k.v":"flat","k":{"v":"nested"},"msg":"m"}', [("k.v", "flat"), ("k.v#2", "nested")]),
])
def test_json_repeated_keys_are_renamed_with_their_position(con: Normaliser, line: str,
                                                            expected: list[tuple[str, str]]) -> None:
    row = parse(con, line)
    assert row["attrs"] == [*expected, ("ts_parse", "observed")]
    assert original(row) == line


@pytest.mark.parametrize("labels", [None, {"env": "prod"}])
def test_json_renamed_key_does_not_collide_with_a_key_of_that_name(con: Normaliser,
                                                                   labels: dict[str, str] | None) -> None:
    # The renamed second "a" must not collide with the line's own "a#2" (with labels, a collision
    # would make ll_last_wins drop a value).
    row = parse(con, '{"a":1,"a":2,"a#2":3,"msg":"m"}', labels=labels)
    keys = [k for k, _ in row["attrs"]]
    assert len(keys) == len(set(keys)), row["attrs"]
    assert attrs(row)["ts_parse"] == "observed"
    assert sorted(v for k, v in row["attrs"] if k not in ("env", "ts_parse")) == ["1", "2", "3"]


def test_json_string_values_with_braces_and_escapes_are_unquoted(con: Normaliser) -> None:
    # A '{' inside a string sends the line down the slow (flattening) path: same result.
    for extra in ("plain", "has {braces} and \"quotes\"\\ \u00e9\t\n\u0001"):
        row = parse(con, {"msg": "m", "k": extra, "n": 1})
        assert attrs(row) == {"k": extra, "n": "1", **OBSERVED_FLAG}
        assert original(row) == orjson.dumps({"msg": "m", "k": extra, "n": 1}).decode()


@pytest.mark.parametrize(("line", "ts", "level"), [
    ('{"event":{"meta":{"timestamp":"2024-03-04T05:06:07Z"}},"log":{"severity":"warn"},"msg":"m"}',
     utc(2024, 3, 4, 5, 6, 7), "warn"),
    ('{"a":{"b":{"c":{"d":{"e":{"time":"2024-03-04T05:06:07.5+01:00","lvl":"debug"}}}}},"msg":"m"}',
     utc(2024, 3, 4, 4, 6, 7, 500000), "debug"),
    # Serilog's JSON formatter: the names in another case.
    ('{"Timestamp":"2024-03-04T05:06:07Z","Level":"Error","msg":"m"}', utc(2024, 3, 4, 5, 6, 7), "error"),
    ('{"ctx":{"eventTime":1709528767},"meta":{"Log_Level":"INFO"},"msg":"m"}', utc(2024, 3, 4, 5, 6, 7), "info"),
    # A repeated key: the SQL steps flatten this line, not the compiled pass.
    ('{"x":1,"x":2,"event":{"ts":"2024-03-04T05:06:07Z","level":"error"},"msg":"m"}',
     utc(2024, 3, 4, 5, 6, 7), "error"),
])
def test_json_time_and_level_under_well_known_names_at_any_depth(con: Normaliser, line: str, ts: datetime,
                                                                 level: str) -> None:
    row = parse(con, line)
    assert (row["ts"], row["level"], row["message"]) == (ts, level, "m")
    assert "ts_parse" not in attrs(row)


def test_json_listed_keys_win_over_deeper_ones(con: Normaliser) -> None:
    row = parse(con, {"meta": {"timestamp": "2020-01-01T00:00:00Z", "level": "error"},
                      "time": "2024-03-04T05:06:07Z", "level": "info", "msg": "m"})
    assert (row["ts"], row["level"]) == (utc(2024, 3, 4, 5, 6, 7), "info")
    assert attrs(row) == {"meta.timestamp": "2020-01-01T00:00:00Z", "meta.level": "error"}
    # Each of the two is looked for on its own: a listed time, a level found deeper.
    row = parse(con, {"meta": {"timestamp": "2020-01-01T00:00:00Z", "level": "error"},
                      "time": "2024-03-04T05:06:07Z", "msg": "m"})
    assert (row["ts"], row["level"]) == (utc(2024, 3, 4, 5, 6, 7), "error")
    assert attrs(row) == {"meta.timestamp": "2020-01-01T00:00:00Z"}


def test_json_names_that_only_end_like_a_time_key_or_are_single_letters_deeper_down_are_not_taken(
        con: Normaliser) -> None:
    row = parse(con, {"run": {"t": "2020-01-01T00:00:00Z", "s": "E", "runtime": "2020-01-01T00:00:00Z",
                              "max_level": "error"}, "msg": "m"})
    assert (row["ts"], row["level"]) == (OBSERVED, "unknown")
    assert attrs(row)["ts_parse"] == "observed"


@pytest.mark.parametrize(("s", "level"), [("F", "fatal"), ("E", "error"), ("W", "warn"), ("I", "info"),
                                          ("D1", "debug"), ("D2", "debug"), ("D5", "debug")])
def test_json_mongodb_log_record(con: Normaliser, s: str, level: str) -> None:
    line = ('{"t":{"$date":"2020-05-01T12:00:00.123+00:00"},"s":"' + s + '","c":"NETWORK","id":22943,'
            '"ctx":"listener","msg":"Connection accepted","attr":{"remote":"127.0.0.1:50000"}}')
    row = parse(con, line)
    assert (row["ts"], row["level"], row["message"]) == (utc(2020, 5, 1, 12, 0, 0, 123000), level,
                                                         "Connection accepted")
    assert attrs(row) == {"s": s, "c": "NETWORK", "id": "22943", "ctx": "listener", "attr.remote": "127.0.0.1:50000"}


def test_json_mongodb_date_as_canonical_extended_json(con: Normaliser) -> None:
    row = parse(con, {"t": {"$date": {"$numberLong": "1588334400123"}}, "s": "W", "msg": "m"})
    assert (row["ts"], row["level"]) == (utc(2020, 5, 1, 12, 0, 0, 123000), "warn")


@pytest.mark.parametrize("line", ['{"msg": "unterminated', '{"a":1}{"b":2}', "{'single': 'quotes'}",
                                  "{"])
def test_broken_json_falls_back_to_plain_text(con: Normaliser, line: str) -> None:
    row = parse(con, line)
    assert row["message"] == line                   # no header: the whole line
    assert original(row) == line
    assert row["ts"] == OBSERVED
    assert attrs(row) == {**OBSERVED_FLAG, "format": "unknown"}


# == logfmt =========================================================================


def test_logfmt_record_with_well_known_keys(con: Normaliser) -> None:
    line = ('time=2024-03-04T05:06:07.123Z level=warn msg="slow query on \\"orders\\" table" db=pg-main '
            'duration=1.42s rows=10233 trace_id=4bf92f3577b34da6 span_id=00f067aa service=orders-api')
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 123000)
    assert (row["level"], row["severity"]) == ("warn", 13)
    assert row["message"] == 'slow query on "orders" table'
    assert row["service"] == "orders-api"
    assert (row["trace_id"], row["span_id"]) == ("4bf92f3577b34da6", "00f067aa")
    assert attrs(row) == {"db": "pg-main", "duration": "1.42s", "rows": "10233"}


def test_logfmt_grafana_style_record(con: Normaliser) -> None:
    line = 'logger=sqlstore t=2024-03-04T05:06:07.5+01:00 level=info msg="Connecting to DB" dbtype=sqlite3'
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 4, 6, 7, 500000)
    assert row["level"] == "info"
    assert row["message"] == "Connecting to DB"
    assert attrs(row) == {"logger": "sqlstore", "dbtype": "sqlite3"}


@pytest.mark.parametrize(("quoted", "value"), [
    (r'"two words"', "two words"),
    (r'"say \"hi\""', 'say "hi"'),
    (r'"back\\slash"', "back\\slash"),
    (r'"tab\there\nnewline"', "tab\there\nnewline"),
    (r'"caf\u00e9"', "caf\u00e9"),
    ('"caf\u00e9 \u2713"', "caf\u00e9 \u2713"),
    ('""', ""),
    ("", ""),
    ("bare/path-1.2@x", "bare/path-1.2@x"),
])
def test_logfmt_values_quoted_and_escaped(con: Normaliser, quoted: str, value: str) -> None:
    row = parse(con, f"level=info k={quoted} other=1")
    assert attrs(row) == {"k": value, "other": "1", **OBSERVED_FLAG}
    assert row["message"] == f"level=info k={quoted} other=1"       # no message key: the whole line
    assert original(row) == f"level=info k={quoted} other=1"


def test_logfmt_level_that_is_not_a_normalised_name_stays_in_attrs(con: Normaliser) -> None:
    row = parse(con, "lvl=WARNING msg=retrying attempt=3")
    assert (row["level"], row["severity"]) == ("warn", 13)
    assert attrs(row) == {"lvl": "WARNING", "attempt": "3", **OBSERVED_FLAG}


def test_logfmt_time_that_does_not_parse_stays_in_attrs(con: Normaliser) -> None:
    row = parse(con, "ts=soon level=info msg=m")
    assert row["ts"] == OBSERVED
    assert attrs(row) == {"ts": "soon", **OBSERVED_FLAG}


def test_logfmt_repeated_key_is_renamed(con: Normaliser) -> None:
    row = parse(con, "msg=m tag=a tag=b")
    assert row["attrs"] == [("tag", "a"), ("tag#3", "b"), ("ts_parse", "observed")]
    assert original(row) == "msg=m tag=a tag=b"


def test_a_single_pair_is_not_logfmt(con: Normaliser) -> None:
    row = parse(con, "status=ok")
    assert row["message"] == "status=ok"
    assert original(row) == "status=ok"
    assert attrs(row) == {**OBSERVED_FLAG, "format": "unknown"}


# == access logs (nginx, Apache httpd) ==============================================


def test_common_log_format_line(con: Normaliser) -> None:
    line = '203.0.113.9 - carol [04/Mar/2024:05:06:07 +0100] "GET /reports/q1.pdf HTTP/1.1" 200 48213'
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 4, 6, 7)
    assert (row["level"], row["severity"]) == ("info", 9)
    assert row["message"] == line
    assert attrs(row) == {"client.ip": "203.0.113.9", "http.user": "carol", "http.method": "GET",
                          "http.path": "/reports/q1.pdf", "http.status": "200", "http.bytes": "48213"}


def test_combined_log_format_line(con: Normaliser) -> None:
    line = ('198.51.100.23 - - [04/Mar/2024:05:06:07 -0500] "POST /checkout/confirm?step=2 HTTP/2.0" 302 0 '
            '"https://shop.example.org/cart" "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) Firefox/123.0"')
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 10, 6, 7)
    assert row["level"] == "info"
    assert attrs(row) == {"client.ip": "198.51.100.23", "http.method": "POST",
                          "http.path": "/checkout/confirm?step=2", "http.status": "302", "http.bytes": "0",
                          "http.referer": "https://shop.example.org/cart",
                          "http.user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) Firefox/123.0"}


def test_access_log_ipv6_client_and_dashes(con: Normaliser) -> None:
    row = parse(con, '2001:db8::7 - - [04/Mar/2024:05:06:07 +0000] "DELETE /api/items/7 HTTP/1.1" 204 - "-" "-"')
    assert attrs(row) == {"client.ip": "2001:db8::7", "http.method": "DELETE", "http.path": "/api/items/7",
                          "http.status": "204"}


def test_access_log_request_that_is_not_a_request_line(con: Normaliser) -> None:
    row = parse(con, '192.0.2.44 - - [04/Mar/2024:05:06:07 +0000] "\\x16\\x03\\x01\\x02\\x00" 400 157 "-" "-"')
    assert (row["level"], row["ts"]) == ("warn", utc(2024, 3, 4, 5, 6, 7))
    assert attrs(row) == {"client.ip": "192.0.2.44", "http.status": "400", "http.bytes": "157"}


@pytest.mark.parametrize(("status", "level", "severity"), [
    (101, "info", 9), (200, "info", 9), (206, "info", 9), (301, "info", 9), (304, "info", 9),
    (400, "warn", 13), (401, "warn", 13), (429, "warn", 13), (499, "warn", 13),
    (500, "error", 17), (502, "error", 17), (504, "error", 17),
])
def test_access_log_level_from_the_status_class(con: Normaliser, status: int, level: str, severity: int) -> None:
    for line in (f'10.0.0.1 - - [04/Mar/2024:05:06:07 +0000] "GET /x HTTP/1.1" {status} 12',
                 f'10.0.0.1 - - [04/Mar/2024:05:06:07 +0000] "GET /x HTTP/1.1" {status} 12 "-" "curl/8.5.0"'):
        row = parse(con, line)
        assert (row["level"], row["severity"]) == (level, severity)
        assert attrs(row)["http.status"] == str(status)


ACCESS_REST = '[10/Oct/2000:13:55:36 -0700] "GET /a?b=1 HTTP/1.1" 200 2326 "-" "curl/8"'
ACCESS_TS = utc(2000, 10, 10, 20, 55, 36)


@pytest.mark.parametrize(("client", "first"), [
    ("10.0.0.2, 10.0.0.1, 127.0.0.1", "10.0.0.2"),      # nginx behind proxies, real_ip off
    ("10.0.0.2,10.0.0.1", "10.0.0.2"),
    ("unknown, 2001:db8::1", "unknown"),
    ("2001:db8::5, 10.0.0.1", "2001:db8::5"),
])
def test_access_log_client_that_is_an_x_forwarded_for_list(con: Normaliser, client: str, first: str) -> None:
    row = parse(con, f"{client} - - {ACCESS_REST}")
    assert (row["ts"], row["level"]) == (ACCESS_TS, "info")
    assert attrs(row) == {"client.ip": first, "http.forwarded_for": client, "http.method": "GET",
                          "http.path": "/a?b=1", "http.status": "200", "http.bytes": "2326",
                          "http.user_agent": "curl/8"}


@pytest.mark.parametrize(("vhost", "client", "address", "port"), [
    ("example.com:443", "192.0.2.7", "example.com", "443"),          # Apache's vhost_combined: "%v:%p %h ..."
    ("example.com", "192.0.2.7", "example.com", None),
    ("[2001:db8::1]:8443", "192.0.2.7", "[2001:db8::1]", "8443"),
    ("shop.example.org:80", "10.0.0.2, 10.0.0.1", "shop.example.org", "80"),
])
def test_access_log_with_a_leading_virtual_host(con: Normaliser, vhost: str, client: str, address: str,
                                                port: str | None) -> None:
    row = parse(con, f"{vhost} {client} - - {ACCESS_REST}")
    assert (row["ts"], row["level"]) == (ACCESS_TS, "info")
    a = attrs(row)
    assert (a["server.address"], a.get("server.port")) == (address, port)
    assert (a["client.ip"], a["http.status"], a["http.path"]) == (client.split(",")[0], "200", "/a?b=1")
    assert a.get("http.forwarded_for") == (client if "," in client else None)


@pytest.mark.parametrize(("tail", "forwarded"), [
    (' "10.0.0.9, 10.0.0.8"', "10.0.0.9, 10.0.0.8"),      # nginx's default "main": "$http_x_forwarded_for"
    (' "-"', None),
    (' "198.51.100.4"', "198.51.100.4"),
    (' "a3f0c1d2e4b5a6978899aabbccddeeff"', None),          # a request id, not an address
    (" 0.004 0.003", None),                                 # request and upstream times
    (" 345 0.004 [default-web-80] [] 10.0.1.5:80 2326 0.004 200 abcd1234", None),     # ingress-nginx
    (' 17 "web@docker" "http://172.17.0.3:80" 3ms', None),                           # Traefik
])
def test_access_log_fields_after_the_user_agent(con: Normaliser, tail: str, forwarded: str | None) -> None:
    line = f"192.0.2.7 - - {ACCESS_REST}{tail}"
    row = parse(con, line)
    assert (row["ts"], row["level"], row["message"]) == (ACCESS_TS, "info", line)
    a = attrs(row)
    assert (a["client.ip"], a["http.status"], a["http.user_agent"]) == ("192.0.2.7", "200", "curl/8")
    assert a.get("http.forwarded_for") == forwarded


def test_access_log_time_with_a_fraction(con: Normaliser) -> None:
    row = parse(con, '192.0.2.7 - - [10/Oct/2000:13:55:36.125 -0700] "GET / HTTP/1.1" 200 1')
    assert row["ts"] == utc(2000, 10, 10, 20, 55, 36, 125000)


def test_truncated_access_log_line_falls_back_to_text(con: Normaliser) -> None:
    line = '10.0.0.1 - - [04/Mar/2024:05:06:07 +0000] "GET / HTTP/1.1"'
    row = parse(con, line)
    assert row["message"] == line                   # no header: the whole line
    assert original(row) == line
    assert row["ts"] == OBSERVED
    assert attrs(row) == {**OBSERVED_FLAG, "format": "unknown"}


# == Apache httpd error log =========================================================


def test_apache_22_error_line(con: Normaliser) -> None:
    line = "[Mon Mar 04 05:06:07 2024] [error] [client 192.0.2.10] File does not exist: /var/www/favicon.ico"
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7)
    assert (row["level"], row["severity"]) == ("error", 17)
    assert row["message"] == "[client 192.0.2.10] File does not exist: /var/www/favicon.ico"
    assert original(row) == line
    assert attrs(row) == {"client.address": "192.0.2.10"}


def test_apache_24_error_line(con: Normaliser) -> None:
    line = ("[Mon Mar 04 05:06:07.123456 2024] [core:error] [pid 2841:tid 139872] [client 192.0.2.10:51234] "
            "AH00037: Symbolic link not allowed or link target not accessible: /srv/www/current")
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 123456)
    assert row["level"] == "error"
    assert row["message"] == ("[client 192.0.2.10:51234] AH00037: Symbolic link not allowed or link target "
                              "not accessible: /srv/www/current")
    assert original(row) == line
    assert attrs(row) == {"apache.module": "core", "process.pid": "2841", "thread.id": "139872",
                          "client.address": "192.0.2.10:51234"}


@pytest.mark.parametrize(("tag", "level", "severity"), [
    ("mpm_event:notice", "info", 10), ("ssl:warn", "warn", 13), ("proxy_fcgi:error", "error", 17),
    ("core:crit", "fatal", 21), ("core:alert", "fatal", 22), ("core:emerg", "fatal", 23),
    ("authz_core:debug", "debug", 5), ("ssl:trace5", "trace", 1), ("info", "info", 9),
])
def test_apache_error_levels(con: Normaliser, tag: str, level: str, severity: int) -> None:
    row = parse(con, f"[Mon Mar 04 05:06:07.5 2024] [{tag}] [pid 7] something happened")
    assert (row["level"], row["severity"]) == (level, severity)
    assert attrs(row)["process.pid"] == "7"


def test_apache_error_single_digit_day(con: Normaliser) -> None:
    row = parse(con, "[Mon Apr  1 09:00:00 2024] [warn] [pid 12] child process still did not exit")
    assert row["ts"] == utc(2024, 4, 1, 9)
    assert row["level"] == "warn"


def test_apache_24_error_line_with_an_empty_module(con: Normaliser) -> None:
    # mod_php and other modules without an AP_MODULE name log "[:error]".
    line = "[Mon Mar 04 05:06:07.123456 2024] [:error] [pid 2841] [client 192.0.2.10:51234] PHP Warning:  oops"
    row = parse(con, line)
    assert row["level"] == "error"
    assert attrs(row) == {"process.pid": "2841", "client.address": "192.0.2.10:51234"}


# == syslog =========================================================================


def test_rfc3164_with_priority(con: Normaliser) -> None:
    line = "<34>Mar  4 05:06:07 bastion-1 su[812]: 'su root' failed for alice on /dev/pts/3"
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7)
    assert (row["level"], row["severity"]) == ("fatal", 21)        # 34 = auth (4) * 8 + crit (2)
    assert row["message"] == "'su root' failed for alice on /dev/pts/3"
    assert original(row) == line
    assert row["host"] == "bastion-1"                             # the line's host wins
    assert attrs(row) == {"agent.host": "host-1", "syslog.facility": "4", "syslog.hostname": "bastion-1",
                          "syslog.appname": "su", "syslog.procid": "812"}


def test_rfc3164_without_priority(con: Normaliser) -> None:
    line = "Mar 14 05:06:07 web01 sshd[4242]: Accepted publickey for deploy from 10.1.2.3 port 52144 ssh2"
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 14, 5, 6, 7)
    assert (row["level"], row["severity"]) == ("unknown", 0)
    assert row["message"] == "Accepted publickey for deploy from 10.1.2.3 port 52144 ssh2"
    assert original(row) == line
    assert row["host"] == "web01"
    assert attrs(row) == {"agent.host": "host-1", "syslog.hostname": "web01", "syslog.appname": "sshd",
                          "syslog.procid": "4242"}


@pytest.mark.parametrize(("line", "level"), [
    ("Mar  4 05:06:07 web01 backup: WARNING disk /srv is 91% full", "warn"),
    ("Mar  4 05:06:07 web01 backup[9]: ERROR: upload failed", "error"),
    ("Mar  4 05:06:07 web01 backup[9]: upload done", "unknown"),
])
def test_rfc3164_without_priority_takes_a_level_word_from_the_message(con: Normaliser, line: str,
                                                                      level: str) -> None:
    assert parse(con, line)["level"] == level


def test_rfc3164_without_priority_takes_a_bracketed_lower_case_level_word(con: Normaliser) -> None:
    # As in plain text, a bracketed lower-case level word counts.
    assert parse(con, "Mar  4 05:06:07 web01 backup[9]: [error] upload failed")["level"] == "error"


def test_rfc3164_without_a_tag(con: Normaliser) -> None:
    line = "<13>Mar  4 05:06:07 printer-3 paper jam in tray 2"
    row = parse(con, line)
    assert row["level"] == "info"          # 13 = user (1) * 8 + notice (5)
    assert row["message"] == "paper jam in tray 2"
    assert original(row) == line
    assert row["host"] == "printer-3"
    assert attrs(row) == {"agent.host": "host-1", "syslog.facility": "1", "syslog.hostname": "printer-3"}


def test_rsyslog_rfc3339_time_in_the_bsd_layout(con: Normaliser) -> None:
    line = "<30>2024-03-04T05:06:07.123456+01:00 web01 systemd[1]: Started Daily apt upgrade and clean."
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 4, 6, 7, 123456)
    assert row["level"] == "info"
    assert row["message"] == "Started Daily apt upgrade and clean."
    assert original(row) == line
    assert row["host"] == "web01"
    assert attrs(row) == {"agent.host": "host-1", "syslog.facility": "3", "syslog.hostname": "web01",
                          "syslog.appname": "systemd", "syslog.procid": "1"}


def test_rfc5424_line(con: Normaliser) -> None:
    line = ('<165>1 2024-03-04T05:06:07.003+02:00 app-7.example.com billing 4711 INV42 '
            '[meta@32473 region="eu-1" note="a \\] b"][origin ip="10.0.0.1"] invoice 42 sent')
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 3, 6, 7, 3000)
    assert (row["level"], row["severity"]) == ("info", 10)        # 165 = local4 (20) * 8 + notice (5)
    assert row["message"] == "invoice 42 sent"
    assert original(row) == line
    assert row["host"] == "app-7.example.com"
    assert attrs(row) == {"agent.host": "host-1", "syslog.facility": "20", "syslog.hostname": "app-7.example.com",
                          "syslog.appname": "billing", "syslog.procid": "4711", "syslog.msgid": "INV42"}


def test_rfc5424_nil_values(con: Normaliser) -> None:
    row = parse(con, "<14>1 2024-03-04T05:06:07Z - - - - - just a message", host="")
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7)
    assert row["host"] == ""
    assert attrs(row) == {"syslog.facility": "1"}


@pytest.mark.parametrize("severity_code", range(8))
@pytest.mark.parametrize("facility", [0, 3, 16, 23])
def test_syslog_level_from_the_priority(con: Normaliser, facility: int, severity_code: int) -> None:
    pri = facility * 8 + severity_code
    word = SYSLOG_SEVERITY[severity_code]
    for line in (f"<{pri}>Mar  4 05:06:07 h app: m", f"<{pri}>1 2024-03-04T05:06:07Z h app - - - m"):
        row = parse(con, line)
        assert row["severity"] == SEVERITY_OF[word], line
        assert row["level"] == level_of(SEVERITY_OF[word])
        assert attrs(row)["syslog.facility"] == str(facility)


@pytest.mark.parametrize(("line", "record_host", "host", "hostname", "agent"), [
    ("<13>Mar  4 05:06:07 web01 app: m", "", "web01", "web01", None),
    ("<13>1 2024-03-04T05:06:07Z db-2.internal app - - - m", "", "db-2.internal", "db-2.internal", None),
    ("Mar  4 05:06:07 web01 app: m", "", "web01", "web01", None),
    # The line's host wins; the shipper's goes to agent.host when it differs.
    ("<13>Mar  4 05:06:07 web01 app: m", "collector-1", "web01", "web01", "collector-1"),
    ("<13>1 2024-03-04T05:06:07Z db-2.internal app - - - m", "collector-1", "db-2.internal", "db-2.internal",
     "collector-1"),
    ("<13>Mar  4 05:06:07 web01 app: m", "web01", "web01", "web01", None),
])
def test_syslog_hostname_wins_over_the_shippers_host(con: Normaliser, line: str, record_host: str, host: str,
                                                     hostname: str, agent: str | None) -> None:
    row = parse(con, line, host=record_host)
    assert row["host"] == host
    assert (row["message"], original(row)) == ("m", line)
    assert attrs(row)["syslog.hostname"] == hostname
    assert attrs(row).get("agent.host") == agent


@pytest.mark.parametrize(("line", "message", "app", "procid"), [
    # macOS names an app by its name, spaces and all, before its [pid].
    ("Jul  4 23:22:09 mac-1 Text Editor[4242]: scripting error for '0x00aa0011'",
     "scripting error for '0x00aa0011'", "Text Editor", "4242"),
    ("Jul  5 00:21:07 mac-1 Web Browser Helper[5151] ([777]): deprecated call", "deprecated call",
     "Web Browser Helper", "5151"),
    # Without a [pid], words before a colon are the message's own.
    ("Jul  4 23:22:09 mac-1 two words: not a tag", "two words: not a tag", None, None),
    # The blanks after the tag (and at the end) are not the message's.
    ("Jul  1 10:13:39 mac-1 keyd[276]:  device sync failure  ", "device sync failure", "keyd", "276"),
])
def test_syslog_tag_of_several_words_and_blanks_around_the_message(con: Normaliser, line: str, message: str,
                                                                   app: str | None, procid: str | None) -> None:
    row = parse(con, line, host="")
    assert row["message"] == message
    assert row["host"] == "mac-1"
    assert attrs(row).get("syslog.appname") == app and attrs(row).get("syslog.procid") == procid
    assert original(row) == line            # the blanks stay in the stored line


def test_a_learned_header_leaves_the_blanks_around_the_message_out(con: Normaliser) -> None:
    lines = [f"[10.30 17:{i:02d}:12] Dict.exe - img{i}.example.com:80 error : A request was canceled. "
             for i in range(30)]
    rows = parse_all(con, lines, host="")
    for line, row in zip(lines, rows, strict=True):
        # The message is the line's tail after its header (wherever the layout puts that), without
        # the blank that ends the line; the stored line keeps it.
        assert row["message"] and row["message"] == row["message"].strip()
        assert line.rstrip().endswith(row["message"]) and len(row["message"]) < len(line.rstrip())
        assert original(row) == line


# == container runtimes =============================================================


def test_docker_json_file_wrapper(con: Normaliser) -> None:
    lines = ['{"log":"2024-03-04 05:06:07,250 ERROR [main] c.e.Pay - card declined\\n","stream":"stderr",'
             '"time":"2024-03-04T05:06:09.1Z"}',
             '{"log":"no time in here\\n","stream":"stdout","time":"2024-03-04T05:06:09.5Z"}',
             '{"log":"{\\"level\\":\\"warn\\",\\"msg\\":\\"inner json\\",\\"k\\":1}\\n","stream":"stdout",'
             '"time":"2024-03-04T05:06:10Z"}']
    rows = parse_all(con, lines, wrapper="docker")
    assert [r["message"] for r in rows] == ["c.e.Pay - card declined", "no time in here", "inner json"]
    # The line the application wrote (the runtime's wrapper and its newline taken off) comes back.
    assert [original(r) for r in rows] == ["2024-03-04 05:06:07,250 ERROR [main] c.e.Pay - card declined",
                                           "no time in here", '{"level":"warn","msg":"inner json","k":1}']
    assert [r["level"] for r in rows] == ["error", "unknown", "warn"]
    assert [r["ts"] for r in rows] == [utc(2024, 3, 4, 5, 6, 7, 250000),      # the line's own time wins
                                       utc(2024, 3, 4, 5, 6, 9, 500000),      # else the runtime's
                                       utc(2024, 3, 4, 5, 6, 10)]
    assert [attrs(r) for r in rows] == [{"stream": "stderr"}, {"stream": "stdout"}, {"stream": "stdout", "k": "1"}]


def test_cri_wrapper(con: Normaliser) -> None:
    lines = ["2024-03-04T05:06:09.123456789Z stdout F 2024-03-04T05:06:07Z INFO server listening on :8080",
             "2024-03-04T05:06:09.5+01:00 stderr F panic: runtime error",
             "2024-03-04T05:06:10Z stdout P first part, \n2024-03-04T05:06:10Z stdout F second part",
             "2024-03-04T05:06:11Z stdout F "]
    rows = parse_all(con, lines, wrapper="cri")
    assert [r["message"] for r in rows] == ["2024-03-04T05:06:07Z INFO server listening on :8080",
                                            "panic: runtime error", "first part, second part", ""]
    assert [r["ts"] for r in rows] == [utc(2024, 3, 4, 5, 6, 7), utc(2024, 3, 4, 4, 6, 9, 500000),
                                       utc(2024, 3, 4, 5, 6, 10), utc(2024, 3, 4, 5, 6, 11)]
    assert [attrs(r) for r in rows] == [{"stream": "stdout"}, {"stream": "stderr"}, {"stream": "stdout"},
                                        {"stream": "stdout"}]


def test_container_lines_are_recognised_without_a_configured_wrapper(con: Normaliser) -> None:
    lines = ['{"log":"2024-03-04 05:06:07 WARN low memory\\n","stream":"stderr","time":"2024-03-04T05:06:08Z"}',
             "2024-01-01T00:00:00.000000000Z stdout F text from a pod",
             '2024-01-01T00:00:00.000000000Z stderr F {"level":"error","msg":"json in a pod"}']
    rows = parse_all(con, lines, wrapper="")
    assert [(r["message"], r["level"]) for r in rows] == [("low memory", "warn"),
                                                          ("text from a pod", "unknown"),
                                                          ("json in a pod", "error")]
    assert [original(r) for r in rows] == ["2024-03-04 05:06:07 WARN low memory", "text from a pod",
                                           '{"level":"error","msg":"json in a pod"}']
    assert [r["ts"] for r in rows] == [utc(2024, 3, 4, 5, 6, 7), utc(2024, 1, 1), utc(2024, 1, 1)]
    assert [attrs(r) for r in rows] == [{"stream": "stderr"}, {"stream": "stdout"}, {"stream": "stderr"}]


def test_container_recognition_is_off_when_a_format_is_configured(con: Normaliser) -> None:
    line = "2024-01-01T00:00:00.000000000Z stdout F text from a pod"
    row = parse(con, line, fmt="text")
    # The time is not content; the rest stays (one line proves no header position), and "F" is no level.
    assert row["message"] == "stdout F text from a pod" and row["level"] == "unknown"
    assert original(row) == line                         # ...and the whole line, wrapper included, is kept
    assert row["ts"] == utc(2024, 1, 1)
    assert attrs(row) == {}


def test_wrapper_stream_and_labels_are_attrs_and_the_line_wins_a_clash(con: Normaliser) -> None:
    row = parse(con, '2024-03-04T05:06:09Z stdout F {"msg":"m","stream":"custom","team":"core"}',
                wrapper="cri", labels={"stream": "label", "env": "prod"})
    assert attrs(row) == {"stream": "custom", "env": "prod", "team": "core"}


# == plain text =====================================================================

TEXT_CASES: list[tuple[str, str, datetime, str, str]] = [
    # (name, line, ts, level, message); observed is OBSERVED (2024-06-01T12:00Z), the default zone UTC;
    # the message is the line's content after its header.
    ("python", "2024-03-04 05:06:07,123 - billing.worker - WARNING - retrying charge 42",
     # (one line alone proves no header position: the logger name stays in the message)
     utc(2024, 3, 4, 5, 6, 7, 123000), "warn", "billing.worker - WARNING - retrying charge 42"),
    ("python-critical", "2024-03-04 05:06:07,123 CRITICAL root: out of file descriptors",
     utc(2024, 3, 4, 5, 6, 7, 123000), "fatal", "root: out of file descriptors"),
    ("log4j", "2024-03-04 05:06:07,123 ERROR [http-nio-8080-exec-3] c.e.shop.OrderController - order 991 failed",
     utc(2024, 3, 4, 5, 6, 7, 123000), "error", "c.e.shop.OrderController - order 991 failed"),
    ("logback", "2024-03-04 05:06:07.123 [scheduler-1] DEBUG c.e.Jobs - tick", utc(2024, 3, 4, 5, 6, 7, 123000),
     "debug", "c.e.Jobs - tick"),
    ("iso-offset", "2024-03-04T05:06:07+02:00 INFO started", utc(2024, 3, 4, 3, 6, 7), "info", "started"),
    ("iso-offset-compact", "2024-03-04T05:06:07.5-0530 WARN late", utc(2024, 3, 4, 10, 36, 7, 500000), "warn", "late"),
    ("iso-z", "2024-03-04T05:06:07.123456789Z TRACE enter", utc(2024, 3, 4, 5, 6, 7, 123456), "trace", "enter"),
    ("iso-utc-word", "2024-03-04 05:06:07 UTC [info] ready", utc(2024, 3, 4, 5, 6, 7), "info", "ready"),
    ("iso-bracketed", "[2024-03-04T05:06:07Z] [error] boom", utc(2024, 3, 4, 5, 6, 7), "error", "boom"),
    ("hdfs", "240304 050607 2231 WARN dfs.FSNamesystem: BLOCK* replication of blk_-42 delayed",
     utc(2024, 3, 4, 5, 6, 7), "warn", "dfs.FSNamesystem: BLOCK* replication of blk_-42 delayed"),
    ("spark", "24/03/04 05:06:07 INFO storage.BlockManager: Found block rdd_2_1 locally",
     utc(2024, 3, 4, 5, 6, 7), "info", "storage.BlockManager: Found block rdd_2_1 locally"),
    ("klog", "I0304 05:06:07.123456    4242 controller.go:118] Synced deployments",
     utc(2024, 3, 4, 5, 6, 7, 123456), "info", "4242 controller.go:118] Synced deployments"),
    ("healthapp", "20240304-05:06:07:123|Step_StandReportReceiver|30002312|onReceive action: screen_on",
     utc(2024, 3, 4, 5, 6, 7, 123000), "unknown", "Step_StandReportReceiver|30002312|onReceive action: screen_on"),
    ("go", "2024/03/04 05:06:07 http: TLS handshake error from 10.0.0.9:51234: EOF", utc(2024, 3, 4, 5, 6, 7),
     "unknown", "http: TLS handshake error from 10.0.0.9:51234: EOF"),
    ("go-micro", "2024/03/04 05:06:07.123456 ERROR dial tcp 10.0.0.5:5432: connect: connection refused",
     utc(2024, 3, 4, 5, 6, 7, 123456), "error", "dial tcp 10.0.0.5:5432: connect: connection refused"),
    ("nginx-error", '2024/03/04 05:06:07 [error] 31#31: *7 open() "/srv/www/x.png" failed (2: No such file)',
     utc(2024, 3, 4, 5, 6, 7), "error", '31#31: *7 open() "/srv/www/x.png" failed (2: No such file)'),
    ("name-then-iso", "api.log.3 2024-03-04 05:06:07.008 31337 INFO api.wsgi [req-5] GET /v2/servers 200",
     utc(2024, 3, 4, 5, 6, 7, 8000), "info", "api.wsgi [req-5] GET /v2/servers 200"),
    ("ctime", "Mon Mar 04 05:06:07 2024 ERROR cron job failed", utc(2024, 3, 4, 5, 6, 7), "error", "cron job failed"),
    ("tomcat", "04-Mar-2024 05:06:07.123 SEVERE [main] org.apache.catalina.startup.Catalina.start failed",
     utc(2024, 3, 4, 5, 6, 7, 123000), "error", "org.apache.catalina.startup.Catalina.start failed"),
    ("zap-console", "2024-03-04T05:06:07.123Z\tDPANIC\tserver/main.go:88\tinvariant broken",
     utc(2024, 3, 4, 5, 6, 7, 123000), "error", "server/main.go:88\tinvariant broken"),
]


@pytest.mark.parametrize(("line", "ts", "level", "message"), [c[1:] for c in TEXT_CASES],
                         ids=[c[0] for c in TEXT_CASES])
def test_text_family(con: Normaliser, line: str, ts: datetime, level: str, message: str) -> None:
    row = parse(con, line)
    assert row["ts"] == ts
    assert row["level"] == level
    assert row["message"] == message
    assert original(row) == line
    assert not {"ts_parse", "format"} & set(attrs(row))   # a timestamp was found: not flagged


@pytest.mark.parametrize(("letter", "level", "severity"), [
    ("V", "trace", 1), ("D", "debug", 5), ("I", "info", 9), ("W", "warn", 13), ("E", "error", 17),
    ("F", "fatal", 21), ("A", "fatal", 21),
])
def test_android_logcat_letters(con: Normaliser, letter: str, level: str, severity: int) -> None:
    line = f"03-04 05:06:07.811  1702  2395 {letter} WifiStateMachine: supplicant state COMPLETED"
    row = parse(con, line)
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 811000)
    assert (row["level"], row["severity"]) == (level, severity)
    assert row["message"] == "WifiStateMachine: supplicant state COMPLETED"
    assert original(row) == line


@pytest.mark.parametrize(("letter", "level"), [("I", "info"), ("W", "warn"), ("E", "error"), ("F", "fatal")])
def test_klog_letters(con: Normaliser, letter: str, level: str) -> None:
    row = parse(con, f"{letter}0304 05:06:07.000001       1 reflector.go:424] watch closed")
    assert row["level"] == level
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 1)


@pytest.mark.parametrize("line", ["2024-03-04 05:06:07 Information: done", "2024-03-04 05:06:07 errors: 0",
                                  "2024-03-04 05:06:07 the info you asked for", "2024-03-04 05:06:07 xERROR"])
def test_text_level_word_must_be_upper_case_and_whole(con: Normaliser, line: str) -> None:
    row = parse(con, line)
    assert row["level"] == "unknown"
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7)
    assert attrs(row) == {}                      # has a timestamp, so not format=unknown


def test_text_without_timestamp_or_level_is_flagged_unknown(con: Normaliser) -> None:
    rows = parse_all(con, ["connection reset by peer", "WARN low disk", "see 2024-03-04T05:06:07Z below"])
    assert [attrs(r) for r in rows] == [{**OBSERVED_FLAG, "format": "unknown"}, OBSERVED_FLAG, {}]
    assert [original(r) for r in rows] == ["connection reset by peer", "WARN low disk",
                                           "see 2024-03-04T05:06:07Z below"]
    assert [r["ts"] for r in rows] == [OBSERVED, OBSERVED, utc(2024, 3, 4, 5, 6, 7)]   # embedded ISO time
    assert [r["level"] for r in rows] == ["unknown", "warn", "unknown"]


# == user-defined patterns ===========================================================


def test_pattern_fills_the_named_fields_and_other_groups_become_attrs(patterned: Normaliser) -> None:
    line = ("2024-03-04 05:06:07.250 [WARN] billing-api@node-7.dc2 trace=4bf92f35 span=00f067aa user=ann "
            "took=812ms charge retried for order 991")
    row = parse(patterned, line, fmt="pattern0", host="")
    assert row["ts"] == utc(2024, 3, 4, 5, 6, 7, 250000)
    assert (row["level"], row["severity"]) == ("warn", 13)
    assert row["service"] == "billing-api"
    assert row["host"] == "node-7.dc2"
    assert (row["trace_id"], row["span_id"]) == ("4bf92f35", "00f067aa")
    assert row["message"] == "charge retried for order 991"
    assert attrs(row) == {"user": "ann", "took_ms": "812"}


def test_pattern_empty_groups_are_absent(patterned: Normaliser) -> None:
    line = "2024-03-04 05:06:07.250 [info] svc@h trace= span= user= took=3ms done"
    row = parse(patterned, line, fmt="pattern0")
    assert (row["trace_id"], row["span_id"]) == (None, None)
    assert row["host"] == "h"                       # the pattern's host group wins over the shipper's...
    assert (row["message"], original(row)) == ("done", line)
    assert attrs(row) == {"agent.host": "host-1", "took_ms": "3"}    # ...which goes to agent.host


@pytest.mark.parametrize(("line", "ts", "level", "message", "extra"), [
    ("ERROR|2024-03-04T05:06:07+01:00|503|upstream timed out", utc(2024, 3, 4, 4, 6, 7), "error",
     "upstream timed out", {"code": "503"}),
    ("INFO|1709528767|200|ok", utc(2024, 3, 4, 5, 6, 7), "info", "ok", {"code": "200"}),
    ("DEBUG|Mar  4 05:06:07||no year", utc(2024, 3, 4, 5, 6, 7), "debug", "no year", {}),
    ("NOTICE|2024-03-04 05:06:07||local", utc(2024, 3, 4, 5, 6, 7), "info", "local", {}),
])
def test_pattern_times_of_every_kind(patterned: Normaliser, line: str, ts: datetime, level: str, message: str,
                                     extra: dict[str, str]) -> None:
    row = parse(patterned, line, fmt="pattern1")
    assert (row["ts"], row["level"], row["message"]) == (ts, level, message)
    assert attrs(row) == extra


def test_line_the_pattern_does_not_match_falls_back_to_text(patterned: Normaliser) -> None:
    rows = parse_all(patterned, ["2024-03-04 05:06:07,000 ERROR not in the pattern's shape", "free text"],
                     fmt="pattern0")
    assert [(r["message"], r["level"], r["ts"]) for r in rows] == [
        ("2024-03-04 05:06:07,000 ERROR not in the pattern's shape", "error", utc(2024, 3, 4, 5, 6, 7)),
        ("free text", "unknown", OBSERVED)]
    # A line that misses its configured pattern is flagged, not silently stored as plain text.
    assert [attrs(r) for r in rows] == [{"format": "unmatched"}, {**OBSERVED_FLAG, "format": "unmatched"}]
    assert [original(r) for r in rows] == ["2024-03-04 05:06:07,000 ERROR not in the pattern's shape", "free text"]


def test_pattern_is_used_only_where_configured(patterned: Normaliser) -> None:
    line = "ERROR|2024-03-04T05:06:07Z|500|boom"
    row = parse(patterned, line)                     # detection: plain text
    assert row["message"] == line
    assert "code" not in attrs(row)


def test_pattern_of_another_normaliser_is_plain_text(con: Normaliser) -> None:
    line = "ERROR|2024-03-04T05:06:07Z|500|boom"
    row = parse(con, line, fmt="pattern0")           # no patterns configured
    assert row["message"] == line
    assert original(row) == line
    assert attrs(row) == OBSERVED_FLAG               # the time between '|' is not read, as before


@pytest.mark.parametrize("bad", [r"(\d+) (?P<level>\w+)", r"no groups at all", r"(?P<level>\w+", r"(?P<x>a)(?=b)"])
def test_unusable_patterns_are_refused(bad: str) -> None:
    with pytest.raises(PatternError):
        Normaliser(ParseSettings(patterns=(bad,)))


# == configured formats ==============================================================

JSON_LINE = '{"level":"error","msg":"from json","k":"v"}'
LOGFMT_LINE = "level=error msg=from-logfmt k=v"
CLF_LINE = '10.0.0.1 - - [04/Mar/2024:05:06:07 +0000] "GET /x HTTP/1.1" 500 12'
SYSLOG_LINE = "<11>Mar  4 05:06:07 web01 app[3]: from syslog"
SYSLOG5424_LINE = "<11>1 2024-03-04T05:06:07Z web01 app 3 - - from syslog"
APACHE_ERROR_LINE = "[Mon Mar 04 05:06:07 2024] [error] [pid 4] from apache"


@pytest.mark.parametrize(("fmt", "line", "message", "some_attr"), [
    ("json", JSON_LINE, "from json", ("k", "v")),
    ("logfmt", LOGFMT_LINE, "from-logfmt", ("k", "v")),
    ("clf", CLF_LINE, CLF_LINE, ("http.status", "500")),
    ("nginx", CLF_LINE, CLF_LINE, ("http.status", "500")),
    ("apache", CLF_LINE, CLF_LINE, ("http.status", "500")),
    ("apache_error", APACHE_ERROR_LINE, "from apache", ("process.pid", "4")),
    ("syslog", SYSLOG_LINE, "from syslog", ("syslog.appname", "app")),
    ("syslog3164", SYSLOG_LINE, "from syslog", ("syslog.appname", "app")),
    ("syslog5424", SYSLOG5424_LINE, "from syslog", ("syslog.appname", "app")),
])
def test_configured_format_parses_its_lines(con: Normaliser, fmt: str, line: str, message: str,
                                            some_attr: tuple[str, str]) -> None:
    row = parse(con, line, fmt=fmt)
    assert row["message"] == message
    assert original(row) == line
    assert row["level"] == "error"
    assert attrs(row)[some_attr[0]] == some_attr[1]


@pytest.mark.parametrize("fmt", ["json", "logfmt", "clf", "syslog", "apache_error", "text", "no-such-format"])
def test_configured_format_turns_detection_off(con: Normaliser, fmt: str) -> None:
    lines = [JSON_LINE, LOGFMT_LINE, CLF_LINE, SYSLOG_LINE, APACHE_ERROR_LINE]
    rows = parse_all(con, lines, fmt=fmt)
    own = {"json": 0, "logfmt": 1, "clf": 2, "syslog": 3, "apache_error": 4}.get(fmt)
    for i, (line, row) in enumerate(zip(lines, rows, strict=True)):
        assert original(row) == line
        if i == own:
            assert attrs(row) and "format" not in attrs(row), line
        else:
            # Another format's line goes to plain text: the whole line, and no parsed fields. It is
            # flagged "unmatched" when a known format was configured, and ts_parse=observed when
            # its time was not read.
            assert row["message"] == line
            a = attrs(row)
            assert not set(a) - {"format", "ts_parse"}, (fmt, line, a)
            assert a.get("ts_parse") == ("observed" if row["ts"] == OBSERVED else None), (fmt, line, a)
            if own is not None:
                assert a.get("format") == "unmatched", (fmt, line, a)
            else:
                assert a.get("format") in (None, "unknown"), (fmt, line, a)


def test_syslog_configured_reads_rsyslog_file_lines_without_priority(con: Normaliser) -> None:
    line = "2024-03-04T05:06:07.123+01:00 web01 sshd[42]: Connection closed by 10.1.2.3 port 51514"
    row = parse(con, line, fmt="syslog", host="")
    assert row["ts"] == utc(2024, 3, 4, 4, 6, 7, 123000)
    assert row["host"] == "web01"
    assert attrs(row) == {"syslog.hostname": "web01", "syslog.appname": "sshd", "syslog.procid": "42"}


# == timestamps ======================================================================


@pytest.mark.parametrize(("line", "ts"), [
    ("2024-03-04T05:06:07+02:00 INFO x", utc(2024, 3, 4, 3, 6, 7)),
    ("2024-03-04T05:06:07-08:00 INFO x", utc(2024, 3, 4, 13, 6, 7)),
    ("2024-03-04T05:06:07+0545 INFO x", utc(2024, 3, 3, 23, 21, 7)),
    ("2024-03-04T05:06:07Z INFO x", utc(2024, 3, 4, 5, 6, 7)),
    ("2024-03-04 05:06:07 GMT INFO x", utc(2024, 3, 4, 5, 6, 7)),
    ('{"time":"2024-03-04T05:06:07.5+09:00"}', utc(2024, 3, 3, 20, 6, 7, 500000)),
    ("time=2024-03-04T05:06:07-03:00 level=info", utc(2024, 3, 4, 8, 6, 7)),
    ('10.0.0.1 - - [04/Mar/2024:05:06:07 -0700] "GET / HTTP/1.1" 200 1', utc(2024, 3, 4, 12, 6, 7)),
    ("<13>1 2024-03-04T05:06:07+01:00 h a - - - m", utc(2024, 3, 4, 4, 6, 7)),
])
def test_zones_are_honoured(con: Normaliser, line: str, ts: datetime) -> None:
    assert parse(con, line)["ts"] == ts


@pytest.mark.parametrize("line", [
    "2024-03-04 05:06:07 +0200 INFO restart requested",
    "2024-03-04 05:06:07.123 +02:00 ERROR payment gateway unreachable",
    '{"time":"2024-03-04 05:06:07 +0200","msg":"m"}',
])
def test_zone_after_a_space_is_honoured(con: Normaliser, line: str) -> None:
    # DuckDB's cast rejects "05:06:07 +0200"; the parser must close the gap first.
    row = parse(con, line)
    assert row["ts"].replace(microsecond=0) == utc(2024, 3, 4, 3, 6, 7)


@pytest.mark.parametrize(("line", "ts"), [
    # zone-less: read in Europe/Berlin (CET +01:00 in March, CEST +02:00 in May)
    ("2024-03-04 05:06:07,123 INFO x", utc(2024, 3, 4, 4, 6, 7, 123000)),
    ("2024-05-04 05:06:07 INFO x", utc(2024, 5, 4, 3, 6, 7)),
    ("24/03/04 05:06:07 INFO x", utc(2024, 3, 4, 4, 6, 7)),
    ("240304 050607 12 INFO x", utc(2024, 3, 4, 4, 6, 7)),
    ("2024/03/04 05:06:07 x", utc(2024, 3, 4, 4, 6, 7)),
    ("03-04 05:06:07.000  1 2 I Tag: x", utc(2024, 3, 4, 4, 6, 7)),
    ("Mar  4 05:06:07 web01 app: x", utc(2024, 3, 4, 4, 6, 7)),
    ("[Mon Mar 04 05:06:07 2024] [error] x", utc(2024, 3, 4, 4, 6, 7)),
    ('{"time":"2024-03-04 05:06:07","msg":"m"}', utc(2024, 3, 4, 4, 6, 7)),
    ("time=2024-05-04T05:06:07 level=info", utc(2024, 5, 4, 3, 6, 7)),
    # zoned or epoch: the default zone does not apply
    ("2024-03-04T05:06:07Z INFO x", utc(2024, 3, 4, 5, 6, 7)),
    ("2024-03-04T05:06:07+00:00 INFO x", utc(2024, 3, 4, 5, 6, 7)),
    ('{"ts":1709528767,"msg":"m"}', utc(2024, 3, 4, 5, 6, 7)),
    ('{"ts":"1709528767000","msg":"m"}', utc(2024, 3, 4, 5, 6, 7)),
    ('10.0.0.1 - - [04/Mar/2024:05:06:07 +0000] "GET / HTTP/1.1" 200 1', utc(2024, 3, 4, 5, 6, 7)),
    ("<13>1 2024-03-04T05:06:07Z h a - - - m", utc(2024, 3, 4, 5, 6, 7)),
])
def test_default_timezone_applies_to_zone_less_times_only(berlin: Normaliser, line: str, ts: datetime) -> None:
    assert parse(berlin, line)["ts"] == ts


@pytest.mark.parametrize(("value", "ts"), [
    (1709528767, utc(2024, 3, 4, 5, 6, 7)),
    (1709528767.123, utc(2024, 3, 4, 5, 6, 7, 123000)),
    (1709528767123, utc(2024, 3, 4, 5, 6, 7, 123000)),
    (1709528767123456, utc(2024, 3, 4, 5, 6, 7, 123456)),
    (1709528767123456000, utc(2024, 3, 4, 5, 6, 7, 123456)),
    ("1709528767", utc(2024, 3, 4, 5, 6, 7)),
    ("1709528767123", utc(2024, 3, 4, 5, 6, 7, 123000)),
    ("1709528767123456", utc(2024, 3, 4, 5, 6, 7, 123456)),
    ("1709528767123456000", utc(2024, 3, 4, 5, 6, 7, 123456)),
    (0, utc(1970, 1, 1)), ("0", utc(1970, 1, 1)), (86400, utc(1970, 1, 2)),
])
def test_epochs_by_magnitude(con: Normaliser, value: int | float | str, ts: datetime) -> None:
    for line in (orjson.dumps({"ts": value, "msg": "m"}).decode(), f"ts={value} level=info msg=m"):
        row = parse(con, line)
        assert row["ts"] == ts, line
        assert "ts" not in attrs(row)


@pytest.mark.parametrize(("observed", "line", "ts"), [
    # The observed year when the time is at most a day ahead of the observed time...
    (utc(2031, 1, 1, 0, 0, 1), "Jan  1 23:59:59 h app: m", utc(2031, 1, 1, 23, 59, 59)),
    (utc(2031, 1, 1, 0, 0, 1), "Jan  2 00:00:00 h app: m", utc(2031, 1, 2, 0, 0, 0)),
    # ...else the year before.
    (utc(2031, 1, 1, 0, 0, 1), "Jan  2 00:00:02 h app: m", utc(2030, 1, 2, 0, 0, 2)),
    (utc(2031, 1, 1, 0, 0, 1), "Dec 31 23:59:59 h app: m", utc(2030, 12, 31, 23, 59, 59)),
    (utc(2031, 1, 1, 0, 0, 1), "12-31 23:59:59.000  1 2 I T: m", utc(2030, 12, 31, 23, 59, 59)),
    (utc(2031, 1, 1, 0, 0, 1), "I1231 23:59:59.000000 1 x.go:1] m", utc(2030, 12, 31, 23, 59, 59)),
    (utc(2031, 6, 15), "Jun 15 12:00:00 h app: m", utc(2031, 6, 15, 12)),
    (utc(2031, 6, 15), "Jul 15 12:00:00 h app: m", utc(2030, 7, 15, 12)),
    # 29 February: kept in a leap year, whether that is the observed year or the year before.
    (utc(2028, 3, 1), "Feb 29 10:00:00 h app: m", utc(2028, 2, 29, 10)),
    (utc(2028, 2, 28, 12), "Feb 29 10:00:00 h app: m", utc(2028, 2, 29, 10)),
    (utc(2029, 1, 15), "Feb 29 10:00:00 h app: m", utc(2028, 2, 29, 10)),
    (utc(2028, 3, 1), "02-29 10:00:00.000  1 2 W T: m", utc(2028, 2, 29, 10)),
])
def test_missing_year(con: Normaliser, observed: datetime, line: str, ts: datetime) -> None:
    row = parse(con, line, observed=observed)
    assert row["ts"] == ts
    assert "ts_parse" not in attrs(row)


def test_missing_year_is_decided_in_the_default_zone(berlin: Normaliser) -> None:
    # 2031-01-01T00:30Z is already 01:30 on 1 January in Berlin: "Jan 1 02:00" local is not a year ago.
    row = parse(berlin, "Jan  1 02:00:00 h app: m", observed=utc(2031, 1, 1, 0, 30))
    assert row["ts"] == utc(2031, 1, 1, 1, 0)


@pytest.mark.parametrize(("line", "ts"), [
    ("2024-06-08 11:59:59 INFO x", utc(2024, 6, 8, 11, 59, 59)),            # 7 days ahead, less a second: kept
    ("2024-06-08 12:00:00 INFO x", utc(2024, 6, 8, 12)),                    # exactly 7 days: kept
])
def test_times_up_to_max_ahead_are_believed(con: Normaliser, line: str, ts: datetime) -> None:
    row = parse(con, line)
    assert row["ts"] == ts
    assert attrs(row) == {}


@pytest.mark.parametrize("line", [
    "2024-06-08 12:00:01 INFO x",
    "2099-01-01T00:00:00Z ERROR x",
    '{"ts":4102444800,"msg":"m"}',
    "<13>1 2030-01-01T00:00:00Z h a - - - m",
    '10.0.0.1 - - [04/Mar/2034:05:06:07 +0000] "GET / HTTP/1.1" 200 1',
])
def test_a_time_too_far_ahead_falls_back_to_the_observed_time(con: Normaliser, line: str) -> None:
    row = parse(con, line)
    assert row["ts"] == OBSERVED
    assert attrs(row)["ts_parse"] == "fallback"


def test_max_ahead_is_configurable(strict: Normaliser) -> None:
    rows = parse_all(strict, ["2024-06-01 12:00:59 INFO x", "2024-06-01 12:01:01 INFO x"],
                     labels={"env": "prod"})
    assert [r["ts"] for r in rows] == [utc(2024, 6, 1, 12, 0, 59), OBSERVED]
    assert [r["attrs"] for r in rows] == [[("env", "prod")], [("env", "prod"), ("ts_parse", "fallback"),
                                                              ("ts_original", "2024-06-01 12:01:01+00")]]


@pytest.mark.parametrize("line", ['{"ts":"2099-01-01T00:00:00Z","msg":"m"}',
                                  "ts=2099-01-01T00:00:00Z level=info msg=m"])
def test_a_disbelieved_time_is_not_lost(con: Normaliser, line: str) -> None:
    # The time key leaves attrs because it parsed; the disbelieved instant is kept as ts_original.
    row = parse(con, line)
    assert row["ts"] == OBSERVED and attrs(row)["ts_parse"] == "fallback"
    assert attrs(row)["ts_original"] == "2099-01-01 00:00:00+00"


@pytest.mark.parametrize("line", ['{"ts":-99999999999,"msg":"m"}', '{"time":"0000-06-01T00:00:00Z","msg":"m"}',
                                  "0000-06-01T00:00:00Z INFO x"])
def test_a_time_before_year_1_is_not_stored(con: Normaliser, line: str) -> None:
    # Records dated in year 0 or -1199 would make storage.segments.hour_dir raise for the whole batch.
    out = con(raw([line]))
    ts_us = out.column("ts").cast(pa.int64())[0].as_py()
    assert ts_us >= int((datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6)


# == levels ==========================================================================


@pytest.mark.parametrize(("severity", "level"), [
    (-3, "unknown"), (0, "unknown"), (1, "trace"), (4, "trace"), (5, "debug"), (8, "debug"), (9, "info"),
    (12, "info"), (13, "warn"), (16, "warn"), (17, "error"), (20, "error"), (21, "fatal"), (24, "fatal"),
    (30, "fatal"),
])
def test_level_of_otel_ranges(severity: int, level: str) -> None:
    assert level_of(severity) == level


FAMILIES: dict[str, dict[str, str]] = {
    "syslog": {"emerg": "fatal", "alert": "fatal", "crit": "fatal", "err": "error", "warning": "warn",
               "notice": "info", "info": "info", "debug": "debug"},
    "log4j": {"trace": "trace", "debug": "debug", "info": "info", "warn": "warn", "error": "error", "fatal": "fatal"},
    "python": {"debug": "debug", "info": "info", "warning": "warn", "error": "error", "critical": "fatal"},
    "go/zap": {"debug": "debug", "info": "info", "warn": "warn", "error": "error", "dpanic": "error",
               "panic": "fatal", "fatal": "fatal"},
    "java.util.logging": {"finest": "trace", "finer": "trace", "fine": "debug", "config": "debug",
                          "info": "info", "warning": "warn", "severe": "error"},
    "android": {"v": "trace", "d": "debug", "i": "info", "w": "warn", "e": "error", "f": "fatal", "a": "fatal"},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_level_words_by_family(con: Normaliser, family: str) -> None:
    words = FAMILIES[family]
    for word, level in words.items():
        assert level_of(SEVERITY_OF[word]) == level, word
    # The SQL agrees with the Python table, in any case.
    variants = [v for w in words for v in (w, w.upper(), w.capitalize())]
    rows = parse_all(con, [orjson.dumps({"level": v, "msg": "m"}).decode() for v in variants])
    for v, row in zip(variants, rows, strict=True):
        assert (row["level"], row["severity"]) == (words[v.lower()], SEVERITY_OF[v.lower()]), v


def test_every_level_word_gets_its_severity_in_sql(con: Normaliser) -> None:
    words = sorted(SEVERITY_OF)
    rows = parse_all(con, [orjson.dumps({"severity": w}).decode() for w in words])
    assert {w: (r["severity"], r["level"]) for w, r in zip(words, rows, strict=True)} == {
        w: (SEVERITY_OF[w], level_of(SEVERITY_OF[w])) for w in words}


def test_every_text_level_word_counts_in_plain_text(con: Normaliser) -> None:
    lines = [f"2024-03-04 05:06:07 {w} something" for w in TEXT_LEVEL_WORDS]
    lines += [f"2024-03-04 05:06:07 [{w.lower()}] something" for w in TEXT_LEVEL_WORDS]
    rows = parse_all(con, lines)
    words = [*TEXT_LEVEL_WORDS, *TEXT_LEVEL_WORDS]
    assert [r["severity"] for r in rows] == [SEVERITY_OF[w.lower()] for w in words]


def test_numeric_levels_table() -> None:
    assert NUMERIC_LEVEL[30] == "info" and NUMERIC_LEVEL[60] == "fatal" and NUMERIC_LEVEL[0] == "emerg"
    assert {level_of(SEVERITY_OF[w]) for w in NUMERIC_LEVEL.values()} <= set(LEVELS)


# == properties ======================================================================

#: Keys that can spell no well-known key, no dotted key and no '#'.
_KEY = st.text(alphabet="abcdexyz_", min_size=1, max_size=3)
_SCALAR = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(st.characters(blacklist_categories=("Cs",)), max_size=8))
_JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEY, inner, max_size=3),
                     max_leaves=16)


def _leaves(obj: dict[str, Any], prefix: str = "", depth: int = 1) -> Iterator[tuple[str, Any]]:
    for k, v in obj.items():
        if isinstance(v, dict) and v and depth < MAX_DEPTH:
            yield from _leaves(v, f"{prefix}{k}.", depth + 1)
        else:
            yield prefix + k, v


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=st.dictionaries(_KEY, _JSON, max_size=6))
def test_flattening_keeps_every_leaf(con: Normaliser, obj: dict[str, Any]) -> None:
    line = orjson.dumps(obj).decode()
    row = parse(con, line)
    got = row["attrs"]
    assert got[-1] == ("ts_parse", "observed")           # no time key in the line
    got = got[:-1]
    want = dict(_leaves(obj))
    assert [k for k, _ in got] == list(want)              # one attr per leaf, in order, none renamed
    for key, value in got:
        expected = want[key]
        if isinstance(expected, str):
            assert value == expected, key
        elif expected is None:
            assert value is None, key
        else:
            loaded = json.loads(value)
            assert loaded == expected and type(loaded) is type(expected), (key, value, expected)
    assert row["message"] == line
    assert original(row) == line
    assert row["ts"] == OBSERVED and row["level"] == "unknown"


_CRI = re.compile(r"^\d{4}-\d{2}-\d{2}T\S+ (?:stdout|stderr) [PF] ", re.ASCII)
_PREFIXES = ["", "2024-03-04 05:06:07,123 ", "<13>", "<13>1 ", "Mar  4 05:06:07 ", "[Mon Mar 04 05:06:07 2024] ",
             '1.2.3.4 - - [04/Mar/2024:05:06:07 +0000] "', "I0304 05:06:07.000001 ", "03-04 05:06:07.000  1 2 ",
             "20240304-05:06:07:123|", "{", '{"a":', "ERROR ", "[error] "]
_LINE = st.text() | st.builds(lambda p, s: p + s, st.sampled_from(_PREFIXES), st.text())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINE, min_size=1, max_size=12))
def test_any_text_normalises_one_row_per_line(con: Normaliser, lines: list[str]) -> None:
    out = con(raw(lines))
    assert out.schema == RECORD_SCHEMA
    assert out.num_rows == len(lines)
    for line, row in zip(lines, out.to_pylist(), strict=True):
        assert row["level"] in LEVELS
        assert row["observed_ts"] == OBSERVED
        assert row["ts"] <= OBSERVED + timedelta(days=7)
        if not _CRI.match(line) and not line.startswith('{"log"'):     # no container wrapper to take off
            assert original(row) == line


# No input was found that makes the statement itself fail (every risky step is wrapped in try()/try_cast,
# and a fuzz of several thousand batches of random and format-shaped lines raised nothing), so the
# failure is injected: a batch fails when it holds a marked line, as a data-dependent DuckDB error would.
MARK = "\u2620 poison"


def _poisoned(raw: pa.Table) -> bool:
    return any(MARK in line for line in raw.column("line").to_pylist())


class _Exploding(Normaliser):
    """The real normaliser, failing with a DuckDB error on any batch that holds a marked line."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __call__(self, raw: pa.Table, tenant: str = "") -> pa.Table:
        self.calls += 1
        if _poisoned(raw):
            raise duckdb.InvalidInputException("poisoned batch")
        return super().__call__(raw, tenant)


def test_a_flush_of_several_partitions_gives_each_its_own_rows_and_failed_lines(tmp_path: Path) -> None:
    """One statement normalises every partition's rows (its planning is the most of a small flush);
    they are split back by position, so a failed line in one must not shift the rows of the next."""
    cfg = Config.model_validate({"kafka": {"topic": "t"}, "storage": {"data_root": str(tmp_path / "data")}})
    worker = IngestWorker(cfg, Catalog(cfg.storage.resolved_catalog_url()))
    worker.flusher.normaliser.close()
    worker.flusher.normaliser = exploding = _Exploding()
    try:
        keys = [("t", p) for p in range(3)]
        worker.partitions.open(keys)
        lines = {0: [f"p0 line {i}" for i in range(5)],
                 1: ["p1 line 0", f"{MARK} in p1", "p1 line 2", f"{MARK} again in p1"],
                 2: [f"p2 line {i}" for i in range(3)]}
        for (topic, p), mine in zip(keys, lines.values(), strict=True):
            for offset, line in enumerate(mine):
                worker.router.take(topic, p, offset, line.encode(), [], 1_700_000_000_000 + offset)
        written = worker.flusher.write_all({k: worker.buffers[k] for k in keys})
        for (commit, dead), p in zip(written, range(3), strict=True):
            assert (commit.topic, commit.partition, commit.new_next) == ("t", p, len(lines[p]))
            paths = [str(tmp_path / "data" / s.path) for s in commit.segments]
            stored = duckdb.sql(f"SELECT message FROM read_parquet({paths!r})").fetchall()
            assert sorted(m for (m,) in stored) == sorted(line for line in lines[p] if MARK not in line)
            assert [(d.partition, d.value.decode()) for d in dead] == [(p, line) for line in lines[p] if MARK in line]
        assert exploding.calls > 1, "the poisoned batch was halved"
    finally:
        exploding.close()


class _FakeExploding(Normaliser):
    """The same failure without DuckDB: one record per line, the line as its message."""

    def __init__(self) -> None:  # no connection: pure logic, so the property can run many batches
        self.calls = 0

    def __call__(self, raw: pa.Table, tenant: str = "") -> pa.Table:
        self.calls += 1
        if _poisoned(raw):
            raise duckdb.InvalidInputException("poisoned batch")
        n = raw.num_rows
        return pa.table({"ts": raw["observed_ts"], "observed_ts": raw["observed_ts"], "service": raw["service"],
                         "host": raw["host"], "source": raw["source"], "level": ["unknown"] * n, "severity": [0] * n,
                         "message": raw["line"], "attrs": pa.nulls(n, RECORD_SCHEMA.field("attrs").type),
                         "trace_id": pa.nulls(n, pa.string()), "span_id": pa.nulls(n, pa.string()),
                         "head": pa.nulls(n, pa.string()), "raw": pa.nulls(n, pa.string())}
                        ).cast(RECORD_SCHEMA)


@settings(max_examples=200, deadline=None)
@given(marks=st.lists(st.booleans(), min_size=1, max_size=64))
def test_normalise_safely_sets_aside_exactly_the_failing_rows(marks: list[bool]) -> None:
    fake = _FakeExploding()
    lines = [f"{MARK} {i}" if bad else f"line {i}" for i, bad in enumerate(marks)]
    records, failed = normalise_safely(fake, raw(lines))
    assert [i for i, _ in failed] == [i for i, bad in enumerate(marks) if bad]
    assert all(err == "InvalidInputException: poisoned batch" for _, err in failed)
    assert records.schema == RECORD_SCHEMA
    assert records.column("message").to_pylist() == [line for line, bad in zip(lines, marks, strict=True) if not bad]
    if not any(marks):
        assert fake.calls == 1


def test_normalise_safely_with_the_real_statement() -> None:
    n = _Exploding()
    try:
        lines = ['{"level":"error","msg":"one"}', f"{MARK} two", "2024-03-04 05:06:07 INFO three",
                 "<13>Mar  4 05:06:07 h app: four", f"{MARK} five", "six"]
        records, failed = normalise_safely(n, raw(lines))
        assert failed == [(1, "InvalidInputException: poisoned batch"), (4, "InvalidInputException: poisoned batch")]
        rows = records.to_pylist()
        assert [r["message"] for r in rows] == ["one", "three", "four", "six"]
        assert [original(r) for r in rows] == [lines[0], lines[2], lines[3], lines[5]]
        assert [r["level"] for r in rows] == ["error", "info", "info", "unknown"]
        # A clean batch is one call.
        n.calls = 0
        assert normalise_safely(n, raw(["fine"]))[1] == [] and n.calls == 1
    finally:
        n.close()
