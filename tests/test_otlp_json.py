"""The OTLP/JSON walker (receive/otlp_json.py) against protobuf's JSON mapping (ParseDict), on
generated requests: the same runs for every body, and the same refusal for every bad one."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from receive import otlp, otlp_json
from receive.errors import BadRequest

_KEYS = st.sampled_from(["service.name", "host.name", "message", "level", "ts", "http.status", "a", "a.b",
                         "otel.scope.name", ""]) | st.text(max_size=6)
_TEXT = st.text(max_size=12)


def _any_value(with_bytes: bool) -> st.SearchStrategy[AnyValue]:
    leaves = [st.builds(lambda s: AnyValue(string_value=s), _TEXT),
              st.builds(lambda b: AnyValue(bool_value=b), st.booleans()),
              st.builds(lambda i: AnyValue(int_value=i), st.integers(-2**63, 2**63 - 1)),
              st.builds(lambda f: AnyValue(double_value=f), st.floats(allow_nan=False, allow_infinity=False)),
              st.just(AnyValue())]
    if with_bytes:
        leaves.append(st.builds(lambda b: AnyValue(bytes_value=b), st.binary(max_size=6)))

    def nest(kids: st.SearchStrategy[AnyValue]) -> st.SearchStrategy[AnyValue]:
        def array(vs: list[AnyValue]) -> AnyValue:
            v = AnyValue()
            v.array_value.values.extend(vs)
            return v

        def kvlist(kvs: list[tuple[str, AnyValue]]) -> AnyValue:
            v = AnyValue()
            v.kvlist_value.values.extend(KeyValue(key=k, value=x) for k, x in kvs)
            return v
        return st.one_of(st.lists(kids, max_size=3).map(array),
                         st.lists(st.tuples(_KEYS, kids), max_size=3).map(kvlist))
    return st.recursive(st.one_of(leaves), nest, max_leaves=4)


#: Built once: a strategy made per draw costs more than the example.
_VALUES = {b: _any_value(b) for b in (False, True)}
_ATTRS = {b: st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), _KEYS, _VALUES[b]), max_size=3)
          for b in (False, True)}


@st.composite
def requests(draw: st.DrawFn, with_bytes: bool = False) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rl = req.resource_logs.add()
        rl.resource.attributes.extend(draw(_ATTRS[with_bytes]))
        rl.schema_url = draw(st.sampled_from(["", "https://opentelemetry.io/schemas/1.24.0"]))
        for _ in range(draw(st.integers(1, 2))):
            sl = rl.scope_logs.add()
            sl.scope.name, sl.scope.version = draw(_TEXT), draw(_TEXT)
            sl.scope.attributes.extend(draw(_ATTRS[with_bytes]))
            for _ in range(draw(st.integers(0, 3))):
                r = sl.log_records.add()
                r.time_unix_nano = draw(st.sampled_from([0, 1, 1_700_000_000_123_456_789, 2**64 - 1]))
                r.observed_time_unix_nano = draw(st.sampled_from([0, 1_700_000_000_000_000_000]))
                r.severity_number = draw(st.integers(0, 30) | st.sampled_from([-(2**31), 2**31 - 1]))
                r.severity_text = draw(st.sampled_from(["", "WARN", "warn2", "Error", "custom"]))
                if draw(st.booleans()):
                    r.body.CopyFrom(draw(_VALUES[with_bytes]))
                r.trace_id = draw(st.sampled_from([b"", bytes(16), bytes(range(16))]))
                r.span_id = draw(st.sampled_from([b"", bytes(8), bytes(range(1, 9))]))
                r.event_name = draw(st.sampled_from(["", "login"]))
                r.flags = draw(st.sampled_from([0, 1, 2**32 - 1]))
                r.dropped_attributes_count = draw(st.sampled_from([0, 3]))
                r.attributes.extend(draw(_ATTRS[with_bytes]))
    return req


def _otlp_json(req: ExportLogsServiceRequest, ints_as_numbers: bool, enum_names: bool) -> dict[str, Any]:
    """The request in OTLP/JSON: the protobuf JSON mapping with ids in hex, 64-bit integers as
    strings (or, as some encoders write them, numbers) and severities as numbers or names."""
    data = json_format.MessageToDict(req, use_integers_for_enums=not enum_names)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k in ("traceId", "spanId"):
                    v = bytes(json_format.Parse(orjson.dumps({"bytesValue": v}), AnyValue()).bytes_value).hex()
                elif ints_as_numbers and k in ("intValue", "timeUnixNano", "observedTimeUnixNano"):
                    v = int(v)
                out[k] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node
    return walk(data)


def _by_protobuf(data: Any) -> tuple[list[Any], int]:
    return otlp.runs_of(otlp.parse_dict(copy.deepcopy(data)))


_SETTINGS = settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(req=requests(), ints_as_numbers=st.booleans(), enum_names=st.booleans())
def test_the_walker_gives_the_protobuf_paths_runs_without_falling_back(
        req: ExportLogsServiceRequest, ints_as_numbers: bool, enum_names: bool) -> None:
    data = _otlp_json(req, ints_as_numbers, enum_names)
    walked = otlp_json.walk(copy.deepcopy(data))        # Unusual here would be a needless fallback
    assert walked == _by_protobuf(data)
    # ... which is also what the protobuf body gives.
    assert walked == otlp.runs_of(req)
    assert otlp_json.runs_of_json(orjson.dumps(data)) == walked


@_SETTINGS
@given(req=requests(with_bytes=True), unknown=st.booleans())
def test_forms_left_to_protobuf_give_the_same_runs(req: ExportLogsServiceRequest, unknown: bool) -> None:
    data = _otlp_json(req, False, False)
    if unknown:
        data["somethingNew"] = {"x": 1}
        for rl in data.get("resourceLogs", []):
            rl["resource_extra"] = [1]
            rl["scope_logs"] = rl.pop("scopeLogs", [])        # snake_case: ParseDict's other spelling
    assert otlp_json.runs_of_json(orjson.dumps(data)) == _by_protobuf(data)


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*at, i))
    return out


# (integers as far as a JSON body written by orjson can carry them: signed or unsigned 64-bit)
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False,
                                                                                 allow_infinity=False),
                  st.sampled_from(["", "12", "-3", "abc", "0x1f", "1_0", "１２", "SEVERITY_NUMBER_WARN", "zz",
                                   "00ff", " 1"]),
                  st.lists(st.none() | st.integers(0, 3) | st.just({}), max_size=2),
                  st.dictionaries(st.sampled_from(["stringValue", "intValue", "values", "key", "value", "x",
                                                   "bytesValue", "name", "[ext]"]),
                                  st.none() | st.integers(0, 3) | st.text(max_size=3) | st.just([]), max_size=2))


@_SETTINGS
@given(req=requests(), data=st.data())
def test_a_damaged_body_is_refused_or_read_exactly_as_protobuf_does(req: ExportLogsServiceRequest,
                                                                   data: st.DataObject) -> None:
    body = _otlp_json(req, data.draw(st.booleans()), data.draw(st.booleans()))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(body)))
        junk = data.draw(_JUNK)
        if not path:
            body = junk
            continue
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = junk
    raw = orjson.dumps(body)
    try:
        expected: Any = _by_protobuf(orjson.loads(raw))
    except BadRequest as e:
        expected = ("refused", e.message)
    try:
        got: Any = otlp_json.runs_of_json(raw)
    except BadRequest as e:
        got = ("refused", e.message)
    assert got == expected


def test_a_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(BadRequest, match="not JSON"):
        otlp_json.runs_of_json(b"{")
