"""ingest/json_columns.py: a batch of compiled JSON lines' columns made in Arrow are the parsing statement's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

from ingest import json_columns
from ingest.normalise import Normaliser, ParseSettings
from tests.helpers import normalising
from tests.helpers.fuzzing import examples

OBSERVED = datetime(2024, 5, 1, 12, tzinfo=UTC)
PLAIN = {"ts": "2024-05-01T10:00:00.250Z", "level": "info", "service": "api", "host": "web-1",
         "msg": "user 42 signed in", "trace_id": "ab" * 16, "request_id": "r1", "duration_ms": 12}


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[Normaliser, Normaliser]]:
    arrow, statement = Normaliser(), Normaliser(json_in_arrow=False)
    yield arrow, statement
    arrow.close()
    statement.close()


def _batch(objects: list[dict[str, Any]], **kw: Any) -> pa.Table:
    return normalising.raw([orjson.dumps(o).decode() for o in objects], observed=kw.pop("observed", OBSERVED), **kw)


def _in_arrow(n: Normaliser, batch: pa.Table) -> pa.Table | None:
    """What :func:`json_columns.columns` makes of ``batch`` (None: it leaves it to the statement)."""
    c, compiled = n._pre_pass(n._route(batch), "")
    assert "json" in compiled or c.num_rows == 0 or not all(
        line.startswith("{") for line in batch.column("line").to_pylist())
    return json_columns.columns(c, n.settings.max_attrs, n.settings.max_ahead_s, n._level_words)


def _same(both: tuple[Normaliser, Normaliser], batch: pa.Table) -> pa.Table:
    arrow, statement = both
    made, expected = arrow(batch), statement(batch)
    assert made.schema == expected.schema
    for name in expected.column_names:
        assert made.column(name).equals(expected.column(name)), (name, made.column(name).to_pylist()[:5],
                                                                 expected.column(name).to_pylist()[:5])
    return made


def test_a_plain_batch_is_made_in_arrow_as_the_statement_makes_it(both: tuple[Normaliser, Normaliser]) -> None:
    objects = [PLAIN, {**PLAIN, "level": "ERROR", "host": "db-2", "user": {"id": 7, "tags": ["a", "b"]}},
               {**PLAIN, "level": 50, "msg": "", "span_id": "cd" * 8},
               {**PLAIN, "level": "D3", "msg": None, "service": None},
               {**PLAIN, "level": None, "host": ""},
               {**PLAIN, "ts": "2024-05-01T12:00:00.123456+02:00", "level": "notice"}]
    batch = _batch(objects, host="web-1")
    assert _in_arrow(both[0], batch) is not None
    rows = _same(both, batch).to_pylist()
    assert [r["level"] for r in rows] == ["info", "error", "error", "debug", "unknown", "info"]
    assert rows[1]["host"] == "db-2" and dict(rows[1]["attrs"])["agent.host"] == "web-1"
    assert rows[3]["message"] == "null" and rows[3]["service"] == "file-svc"
    # (a JSON null is a null value; the level key stays in attrs unless its word is a level's name)
    assert ("level", None) in rows[4]["attrs"] and "level" not in dict(rows[0]["attrs"])


def test_a_message_that_ends_the_line_is_stored_as_its_head(both: tuple[Normaliser, Normaliser]) -> None:
    # A line always ends with "}": a message "}" is its tail, and the line is stored as head || message.
    objects = [{**PLAIN, "msg": "}"}, {**PLAIN, "msg": "a}"}, {**PLAIN, "msg": ""},
               {"ts": PLAIN["ts"], "level": "info", "note": "no message key"}]
    batch = _batch(objects)
    assert _in_arrow(both[0], batch) is not None
    rows = _same(both, batch).to_pylist()
    lines = batch.column("line").to_pylist()
    assert rows[0]["head"] == lines[0][:-1] and rows[2]["head"] == lines[2]
    assert rows[1]["head"] is None and rows[3]["message"] == lines[3]
    assert all(normalising.original(r) == line for r, line in zip(rows, lines, strict=True))


@pytest.mark.parametrize(("change", "kw"), [
    pytest.param({"ts": 1714557600}, {}, id="epoch-time"),
    pytest.param({"ts": "2024-05-01 10:00:00"}, {}, id="time-without-zone"),
    pytest.param({"ts": "2099-01-01T00:00:00Z"}, {}, id="time-too-far-ahead"),
    pytest.param({"ts": "1850-01-01T00:00:00Z"}, {}, id="time-before-1900"),
    pytest.param({"ts": None}, {}, id="no-time-key"),
    pytest.param({"host": "db-9", "agent": "smith"}, {}, id="agent-word-with-another-host"),
    pytest.param({}, {"labels": {"env": "prod"}}, id="labels"),
    pytest.param({f"k{i}": i for i in range(20)}, {}, id="at-the-attribute-cap"),
])
def test_other_batches_are_left_to_the_statement(both: tuple[Normaliser, Normaliser], change: dict[str, Any],
                                                  kw: dict[str, Any]) -> None:
    # (a None in the change takes the key out)
    obj = {k: v for k, v in {**PLAIN, **change}.items() if v is not None}
    batch = _batch([PLAIN, obj], host="web-1", **kw)
    capped = (Normaliser(ParseSettings(max_attrs=10)), Normaliser(ParseSettings(max_attrs=10), json_in_arrow=False))
    pair = capped if "k0" in change else both
    assert _in_arrow(pair[0], batch) is None
    _same(pair, batch)


def test_a_line_without_a_level_key_gets_the_deeper_searchs_level(both: tuple[Normaliser, Normaliser]) -> None:
    # No listed level key: the first key whose last part is a level word, at any depth and case.
    plain = {k: v for k, v in PLAIN.items() if k != "level"}
    objects = [plain, {**plain, "log": {"Level": "WARN"}}, {**plain, "a": {"severity": 30}, "z": {"level": "debug"}},
               {**plain, "levels": "info"}, {**plain, "LogLevel": "error"}]
    batch = _batch(objects)
    assert _in_arrow(both[0], batch) is not None
    rows = _same(both, batch).to_pylist()
    assert [r["level"] for r in rows] == ["unknown", "warn", "info", "unknown", "error"]
    assert "log.Level" not in dict(rows[1]["attrs"]) and dict(rows[2]["attrs"])["a.severity"] == "30"


def test_many_messages_that_may_end_the_line_are_left_to_the_statement(both: tuple[Normaliser, Normaliser]) -> None:
    batch = _batch([{**PLAIN, "msg": f"x{i}}}"} for i in range(200)])
    assert _in_arrow(both[0], batch) is None
    _same(both, batch)


def test_a_non_json_line_leaves_the_batch_to_the_statement(both: tuple[Normaliser, Normaliser]) -> None:
    batch = normalising.raw([orjson.dumps(PLAIN).decode(), "2024-05-01 10:00:00 ERROR boom"], observed=OBSERVED)
    assert _in_arrow(both[0], batch) is None
    _same(both, batch)


_key = st.sampled_from(["msg", "message", "level", "lvl", "severity", "host", "hostname", "service", "trace_id",
                        "span_id", "user", "agent.host", "a.b", "n", "stream", "error"])
_value = st.sampled_from(["", "info", "ERROR", "Warn", "warn2", "30", "D3", "h1", "h2", "}", "x}", "a\"b}",
                          "ünï", "null", " spaced ", "agent smith", "x" * 40]) | st.integers(-5, 60) | st.none() \
    | st.just({"inner": {"deep": 1}}) | st.just([1, "two"])
#: Keys only the deeper search reads as a level (a line without a listed one).
_deep_key = st.sampled_from(["log.level", "Severity_Text", "x.LEVEL", "levels", "a.b.loglevel.$date"])
_NO_LEVEL = object()
_time = st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01T11:59:59.999999+00:00", "2024-04-30T23:00:00.5-05:00",
                         "2024-05-01 10:00:00Z"])


@settings(max_examples=examples(80), deadline=None)
@given(objects=st.lists(st.tuples(_time, _value | st.just(_NO_LEVEL), st.dictionaries(_key | _deep_key, _value,
                                                                                      max_size=6)),
                        min_size=1, max_size=10),
       host=st.sampled_from(["h1", "", "web-1"]))
def test_any_batch_is_normalised_alike_either_way(both: tuple[Normaliser, Normaliser],
                                                  objects: list[tuple[str, Any, dict[str, Any]]], host: str) -> None:
    batch = _batch([{"ts": ts, **({} if level is _NO_LEVEL else {"level": level}), **rest}
                    for ts, level, rest in objects], host=host)
    target(float(_in_arrow(both[0], batch) is not None))
    _same(both, batch)
