"""The rest of LogQL over a real server: ip(), pattern line filters, unpack, approx_topk, group_left and
group_right, rate_counter; Loki's parameter rules on every route; the live tail's errors.

Expected values are worked out here by hand from the records this module writes (Loki's own
definitions: ``pkg/logql/log/ip.go``, ``pkg/logql/log/pattern``, ``UnpackParser``, ``vectorBinop``,
``extrapolatedRate``; and the scenarios of its ``logqltest`` scripts), never from loglake's output.
Each construct is also parsed, printed and parsed again (``query/logql/printer.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from query.logql import (
    Ip,
    IpFilter,
    LabelFilter,
    LineFilter,
    UnpackParser,
    VectorAggregation,
    parse,
    to_string,
)
from query.timerange import parse_time_us
from storage.catalog import Catalog
from tests.helpers.lake import per_service, record, write_lake
from tests.helpers.server import Server, config_for, serve

T0 = parse_time_us("2024-05-01T10:00:00Z")
S = 1_000_000
START, END = T0 - 60 * S, T0 + 3600 * S


def ns(us: int) -> str:
    return str(us * 1000)


# -- the data -------------------------------------------------------------------------------------------

#: service "edge": (second, host, line). Which of them hold an address in 192.168.0.0/16 is spelled out
#: where it is tested.
EDGE = [
    (10, "web-1", "GET / from 192.168.1.7 ok"),
    (20, "web-1", "GET / from 10.1.2.3 ok"),
    (30, "web-2", "client=192.168.0.5,port=80"),
    (40, "web-2", "no address here"),
    (50, "web-1", "ping ::1 from 2001:db8::7"),
    (60, "web-2", "bad 300.168.1.1 and 1.2.3.4.5"),
    (70, "web-1", "addr=192.168.0.10 msg=range-edge"),
    (80, "web-2", "addr=192.168.0.11 msg=past-the-range"),
]
#: service "packed": Promtail's packed entries (and two that are not packed).
PACKED = [
    (10, '{"_entry": "real line one", "pod": "p1", "n": 5}'),
    (20, '{"_entry": "real line two", "pod": "p2", "service": "inner"}'),
    (30, '{"pod": "p3", "msg": "no entry"}'),
    (40, "plain text"),
]
#: service "counter": a counter c, logfmt, that resets between 90 s and 120 s (Loki's rate_counter scenario).
COUNTER = [(30, 30), (60, 60), (90, 90), (120, 30), (150, 60)]
#: service "pat": lines for pattern filters, level by line.
PAT = [
    (10, "info", "GET /a 200"),
    (20, "info", "GET /b 200"),
    (30, "error", "POST /c 500"),
    (40, "error", "GET /d 500"),
    (50, "warn", "GET /e 404 slow"),
]


def _rows() -> list[dict[str, Any]]:
    rows = [record(T0 + s * S, "edge", "info", line, host=host) for s, host, line in EDGE]
    rows += [record(T0 + s * S, "packed", "info", line) for s, line in PACKED]
    rows += [record(T0 + s * S, "counter", "info", f"c={c}") for s, c in COUNTER]
    rows += [record(T0 + s * S, "pat", level, line, host="web-1" if s < 35 else "web-2") for s, level, line in PAT]
    return rows


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("loki-logql")
    cfg = config_for(root, root / "data", max_query_chars=5000)
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    write_lake(cfg.storage.data_root, catalog, per_service(_rows()))
    catalog.close()
    with serve(cfg, keepalive=False) as s:
        yield s


def lines(server: Server, query: str) -> list[str]:
    """The lines of a log query over the whole data, oldest first."""
    body = server.ok("/loki/api/v1/query_range", query=query, start=ns(START), end=ns(END), limit=1000,
                     direction="forward")
    assert body["data"]["resultType"] == "streams"
    return [line for _, line in sorted((int(t), line) for s in body["data"]["result"] for t, line in s["values"])]


def streams(server: Server, query: str) -> list[tuple[dict[str, str], str]]:
    body = server.ok("/loki/api/v1/query_range", query=query, start=ns(START), end=ns(END), limit=1000,
                     direction="forward")
    return sorted(((s["stream"], line) for s in body["data"]["result"] for _, line in s["values"]),
                  key=lambda x: x[1])


def instant(server: Server, query: str, at_us: int) -> dict[tuple[tuple[str, str], ...], float]:
    body = server.ok("/loki/api/v1/query", query=query, time=ns(at_us))
    assert body["data"]["resultType"] == "vector", body
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in body["data"]["result"]}


def matrix(server: Server, query: str, start_us: int, end_us: int, step_s: int) -> dict[Any, list[float | None]]:
    body = server.ok("/loki/api/v1/query_range", query=query, start=ns(start_us), end=ns(end_us), step=str(step_s))
    assert body["data"]["resultType"] == "matrix", body
    steps = [(start_us + i * step_s * S) / 1e6 for i in range((end_us - start_us) // (step_s * S) + 1)]
    out = {}
    for s in body["data"]["result"]:
        got = {float(t): float(v) for t, v in s["values"]}
        out[tuple(sorted(s["metric"].items()))] = [got.get(t) for t in steps]
    return out


def roundtrips(query: str) -> None:
    expr = parse(query)
    assert parse(to_string(expr)) == expr, to_string(expr)


# -- ip() ---------------------------------------------------------------------------------------------


def test_ip_line_filter_keeps_exactly_the_lines_with_an_address_in_the_prefix(server: Server) -> None:
    query = '{service="edge"} |= ip("192.168.0.0/16")'
    roundtrips(query)
    # 300.168.1.1 is no address; 192.168.0.5 is found after "client=", 192.168.0.10/11 after "addr=".
    assert lines(server, query) == ["GET / from 192.168.1.7 ok", "client=192.168.0.5,port=80",
                                    "addr=192.168.0.10 msg=range-edge", "addr=192.168.0.11 msg=past-the-range"]


def test_negated_ip_line_filter_keeps_the_others(server: Server) -> None:
    assert lines(server, '{service="edge"} != ip("192.168.0.0/16")') == [
        "GET / from 10.1.2.3 ok", "no address here", "ping ::1 from 2001:db8::7", "bad 300.168.1.1 and 1.2.3.4.5"]


@pytest.mark.parametrize(("pattern", "want"), [
    ("192.168.0.1-192.168.0.10", ["client=192.168.0.5,port=80", "addr=192.168.0.10 msg=range-edge"]),
    ("10.1.2.3", ["GET / from 10.1.2.3 ok"]),
    ("::1", ["ping ::1 from 2001:db8::7"]),
    ("2001:db8::/32", ["ping ::1 from 2001:db8::7"]),
    ("1.2.3.4", []),      # "1.2.3.4.5" is one run of address characters, and no address
])
def test_ip_patterns_address_cidr_and_range(server: Server, pattern: str, want: list[str]) -> None:
    assert lines(server, f'{{service="edge"}} |= ip("{pattern}")') == want


def test_ip_in_an_or_chain_with_strings(server: Server) -> None:
    query = '{service="edge"} |= "no address" or ip("10.0.0.0/8")'
    assert parse(query).pipeline == (LineFilter("|=", ("no address", Ip("10.0.0.0/8"))),)  # type: ignore[union-attr]
    roundtrips(query)
    assert lines(server, query) == ["GET / from 10.1.2.3 ok", "no address here"]


def test_ip_label_filter(server: Server) -> None:
    query = '{service="edge"} | logfmt | addr = ip("192.168.0.1-192.168.0.10")'
    assert parse(query).pipeline[1] == LabelFilter(IpFilter("addr", "=", "192.168.0.1-192.168.0.10"))  # type: ignore
    roundtrips(query)
    assert lines(server, query) == ["addr=192.168.0.10 msg=range-edge"]
    # != keeps the lines whose addr is outside; lines without the label are dropped, as in Loki.
    assert lines(server, '{service="edge"} | logfmt | addr != ip("192.168.0.1-192.168.0.10")') == [
        "addr=192.168.0.11 msg=past-the-range"]


@pytest.mark.parametrize(("query", "reason"), [
    ('{service="edge"} |~ ip("10.0.0.0/8")', "ip: invalid operation"),
    ('{service="edge"} |= ip("10.0.0.0/33")', "ip: invalid pattern"),
    ('{service="edge"} | logfmt | addr = ip("192.168.0.10-192.168.0.1")', "ip: invalid pattern"),
])
def test_ip_refusals_are_400_when_run_as_in_loki(server: Server, query: str, reason: str) -> None:
    parse(query)                     # Loki's parser takes them; building the pipeline refuses them
    resp = server.get("/loki/api/v1/query_range", query=query, start=ns(START), end=ns(END))
    assert resp.status_code == 400 and reason in resp.text, resp.text


# -- pattern line filters -----------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "want"), [
    ('{service="pat"} |> "GET <_> 200"', ["GET /a 200", "GET /b 200"]),
    ('{service="pat"} !> "GET <_> 200"', ["POST /c 500", "GET /d 500", "GET /e 404 slow"]),
    ('{service="pat"} |> "<_> 500"', ["POST /c 500", "GET /d 500"]),
    ('{service="pat"} |> "GET <_>"', ["GET /a 200", "GET /b 200", "GET /d 500", "GET /e 404 slow"]),
    ('{service="pat"} |> "GET <_> 404"', []),      # " slow" is left over after the last literal
    ('{service="pat"} |> "<_> 200" or "<_> slow"', ["GET /a 200", "GET /b 200", "GET /e 404 slow"]),
])
def test_pattern_line_filters(server: Server, query: str, want: list[str]) -> None:
    roundtrips(query)
    assert lines(server, query) == want


def test_a_named_capture_in_a_pattern_filter_is_400_as_in_loki(server: Server) -> None:
    resp = server.get("/loki/api/v1/query_range", query='{service="pat"} |> "<method> /a 200"',
                      start=ns(START), end=ns(END))
    assert resp.status_code == 400 and "<method>" in resp.text, resp.text


def test_pattern_filters_in_a_metric_query(server: Server) -> None:
    got = instant(server, 'sum(count_over_time({service="pat"} |> "<_> 500" [5m]))', T0 + 120 * S)
    assert got == {(): 2.0}


# -- unpack --------------------------------------------------------------------------------------------


def test_unpack_makes_the_packed_entry_the_line_and_its_strings_labels(server: Server) -> None:
    query = '{service="packed"} | unpack'
    assert parse(query).pipeline == (UnpackParser(),)  # type: ignore[union-attr]
    roundtrips(query)
    got = streams(server, query)
    # (the level column is also Loki's detected_level structured metadata)
    base = {"service": "packed", "service_name": "packed", "host": "web-1", "level": "info",
            "source": "/var/log/packed.log", "detected_level": "info"}
    labels = {line: stream for stream, line in got}
    assert sorted(labels) == sorted(['{"pod": "p3", "msg": "no entry"}', "plain text", "real line one",
                                     "real line two"])
    assert labels["real line one"] == base | {"pod": "p1"}        # n is a number: not a label
    # A packed label named like a stream label is renamed, as a parser's always is.
    assert labels["real line two"] == base | {"pod": "p2", "service_extracted": "inner"}
    assert labels['{"pod": "p3", "msg": "no entry"}'] == base      # no _entry: nothing unpacked
    assert labels["plain text"]["__error__"] == "JSONParserErr"    # not JSON: the line stays, marked


def test_line_filters_after_unpack_see_the_unpacked_line(server: Server) -> None:
    assert lines(server, '{service="packed"} | unpack |= "line two"') == ["real line two"]
    assert lines(server, '{service="packed"} |= "line two" | unpack') == ["real line two"]
    assert lines(server, '{service="packed"} | unpack | pod="p1"') == ["real line one"]


# -- approx_topk ---------------------------------------------------------------------------------------


def test_approx_topk_is_topk_on_instant_queries(server: Server) -> None:
    query = 'approx_topk(1, sum by (host) (count_over_time({service="pat"}[5m])))'
    assert isinstance(parse(query), VectorAggregation)
    roundtrips(query)
    at = T0 + 120 * S
    assert instant(server, query, at) == {(("host", "web-1"),): 3.0}
    assert instant(server, query.replace("approx_topk(1", "approx_topk(5"), at) == {
        (("host", "web-1"),): 3.0, (("host", "web-2"),): 2.0}


def test_approx_topk_over_a_range_is_400_as_in_loki(server: Server) -> None:
    resp = server.get("/loki/api/v1/query_range", query='approx_topk(1, count_over_time({service="pat"}[5m]))',
                      start=ns(START), end=ns(END), step="60")
    assert resp.status_code == 400 and "instant" in resp.text, resp.text


# -- group_left / group_right -----------------------------------------------------------------------------

PER_LEVEL = 'sum by (service, level) (count_over_time({service="pat"}[5m]))'
PER_SERVICE = 'sum by (service) (count_over_time({service="pat"}[5m]))'


def test_group_left_divides_each_level_by_its_service_total(server: Server) -> None:
    query = f"{PER_LEVEL} / on (service) group_left {PER_SERVICE}"
    roundtrips(query)
    assert instant(server, query, T0 + 120 * S) == {
        (("level", "info"), ("service", "pat")): 2 / 5, (("level", "error"), ("service", "pat")): 2 / 5,
        (("level", "warn"), ("service", "pat")): 1 / 5}


def test_group_right_keeps_the_right_hand_labels_and_the_left_values(server: Server) -> None:
    query = f"{PER_SERVICE} - on (service) group_right {PER_LEVEL}"
    roundtrips(query)
    assert instant(server, query, T0 + 120 * S) == {
        (("level", "info"), ("service", "pat")): 3.0, (("level", "error"), ("service", "pat")): 3.0,
        (("level", "warn"), ("service", "pat")): 4.0}


def test_group_left_copies_the_listed_labels_from_the_one_side(server: Server) -> None:
    # The one side: the hosts of service pat (web-1 for 10-30 s, web-2 after): one series per level is
    # not unique per service, so group by level instead.
    one = 'sum by (level, host) (count_over_time({service="pat", level=~"info|warn"}[5m]))'
    query = f"{PER_LEVEL} * on (level) group_left (host) {one}"
    roundtrips(query)
    assert instant(server, query, T0 + 120 * S) == {
        (("host", "web-1"), ("level", "info"), ("service", "pat")): 4.0,
        (("host", "web-2"), ("level", "warn"), ("service", "pat")): 1.0}


def test_many_to_many_is_refused_as_in_loki(server: Server) -> None:
    resp = server.get("/loki/api/v1/query", query=f"{PER_SERVICE} / on (service) group_left {PER_LEVEL}",
                      time=ns(T0 + 120 * S))
    assert resp.status_code == 400 and "many-to-many" in resp.text, resp.text
    resp = server.get("/loki/api/v1/query", query=f"{PER_LEVEL} / on (service) {PER_SERVICE}",
                      time=ns(T0 + 120 * S))
    assert resp.status_code == 400 and "group_left" in resp.text, resp.text


def test_comparison_with_group_left_filters_by_the_left_value(server: Server) -> None:
    query = f"{PER_LEVEL} >= on (service) group_left {PER_SERVICE} / 3"
    assert instant(server, query, T0 + 120 * S) == {(("level", "info"), ("service", "pat")): 2.0,
                                                    (("level", "error"), ("service", "pat")): 2.0}


# -- rate_counter --------------------------------------------------------------------------------------

RATE_COUNTER = 'rate_counter({service="counter"} | logfmt | unwrap c [2m])'


def test_rate_counter_adds_back_the_reset(server: Server) -> None:
    roundtrips(RATE_COUNTER)
    # (30 s, 150 s]: 60, 90, 30 (a reset: +90 carried), 60 -> increase 90 over 90 s, extrapolated to
    # 120 s (the first sample, 30 s after the window's start, is within 1.1 x the 30 s spacing) -> 1/s.
    key = (("detected_level", "info"), ("host", "web-1"), ("level", "info"), ("service", "counter"),
           ("service_name", "counter"), ("source", "/var/log/counter.log"))
    assert instant(server, RATE_COUNTER, T0 + 150 * S) == {key: 1.0}
    # (60 s, 120 s]: 90 then 30: increase 30 over 30 s, extrapolated to 60 s, per 60 s -> 1/s.
    assert instant(server, 'rate_counter({service="counter"} | logfmt | unwrap c [1m])', T0 + 120 * S) == {key: 1.0}


def test_rate_counter_over_steps_and_its_edges(server: Server) -> None:
    got = matrix(server, 'rate_counter({service="counter"} | logfmt | unwrap c [30s])', T0, T0 + 180 * S, 30)
    ((_, values),) = got.items()
    # One sample per 30 s window: 0 (a rate needs two points); none before 30 s or after 150 s.
    assert values == [None, 0.0, 0.0, 0.0, 0.0, 0.0, None]
    # (-60 s, 60 s]: 30 then 60. The first sample is 90 s from the window's start, past 1.1 x the 30 s
    # spacing: extrapolated back by half a spacing only (15 s): 30 x (45 / 30) / 120 s.
    assert instant(server, 'rate_counter({service="counter"} | logfmt | unwrap c [2m])', T0 + 60 * S)[
        (("detected_level", "info"), ("host", "web-1"), ("level", "info"), ("service", "counter"),
         ("service_name", "counter"), ("source", "/var/log/counter.log"))
    ] == pytest.approx(30 * (45 / 30) / 120)


@pytest.mark.parametrize(("samples", "end_s", "range_s", "want"), [
    # Loki's logqltest scenarios (range_aggregations.logqltest): the zero point caps the extrapolation
    # back, a far first sample extrapolates half a spacing, a reset adds the value before it.
    ([(75, 30), (105, 90)], 105, 60, 1.5),
    ([(105, 90), (135, 150)], 135, 60, 2.0),
    ([(150, 600), (180, 660)], 180, 90, 1.0),
    ([(150, 600), (180, 660)], 210, 90, 2.0),
    ([(60, 60), (90, 90), (120, 30), (150, 60)], 150, 120, 1.0),
    ([(90, 7)], 90, 10, 0.0),
])
def test_counter_rate_is_lokis_extrapolated_rate(samples: list[tuple[int, float]], end_s: int, range_s: int,
                                                 want: float) -> None:
    import numpy as np

    from query.loki.engine import counter_rate

    t = np.array([s * S for s, _ in samples], dtype=np.int64)
    v = np.array([x for _, x in samples], dtype=float)
    assert counter_rate(v, t, range_s * S, end_s * S) == pytest.approx(want)


# -- rejections Loki makes --------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    'sort(sum by (level) (count_over_time({service="pat"}[5m]))) by (level)',
    'sort_desc(sum by (level) (count_over_time({service="pat"}[5m]))) by (level)',
    'topk(100000000000000000000, count_over_time({service="pat"}[5m]))',
    'approx_topk(1, count_over_time({service="pat"}[5m])) by (level)',
    '{service="pat"} | logfmt | size < 0B',
    '{service=~"("}',
])
def test_what_loki_refuses_to_parse_is_400(server: Server, query: str) -> None:
    resp = server.get("/loki/api/v1/query_range", query=query, start=ns(START), end=ns(END), step="60")
    assert resp.status_code == 400 and resp.text.strip(), resp.text


def test_logfmt_expressions_loki_accepts(server: Server) -> None:
    for query in ('{service="edge"} | logfmt addr, msg="msg"', '{service="edge"} | logfmt --strict addr="addr"'):
        roundtrips(query)
        assert lines(server, query)


# -- parameters -----------------------------------------------------------------------------------------

ROUTES = ["/loki/api/v1/query_range", "/loki/api/v1/query", "/loki/api/v1/index/stats",
          "/loki/api/v1/index/volume", "/loki/api/v1/index/volume_range"]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", ROUTES)
def test_a_missing_query_is_a_plain_400(server: Server, path: str, method: str) -> None:
    resp = server.client.request(method, path, params={"start": ns(START)} if method == "GET" else None,
                                 data={"start": ns(START)} if method == "POST" else None)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("text/plain") and "query" in resp.text, resp.text


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(("path", "name", "value"), [
    ("/loki/api/v1/query_range", "limit", "abc"), ("/loki/api/v1/query_range", "limit", "1.5"),
    ("/loki/api/v1/query_range", "step", "abc"), ("/loki/api/v1/query_range", "start", "yesterday"),
    ("/loki/api/v1/query_range", "end", "x"), ("/loki/api/v1/query_range", "direction", "sideways"),
    ("/loki/api/v1/query", "limit", "ten"), ("/loki/api/v1/query", "time", "noon"),
    ("/loki/api/v1/index/volume", "limit", "many"), ("/loki/api/v1/index/volume", "aggregateBy", "streams"),
    ("/loki/api/v1/index/volume_range", "step", "often"),
])
def test_a_bad_parameter_is_a_plain_400_naming_it(server: Server, path: str, name: str, value: str,
                                                  method: str) -> None:
    query = 'sum(count_over_time({service="pat"}[5m]))' if path.endswith(("query", "query_range")) \
        else '{service="pat"}'
    params = {"query": query, "start": ns(START), "end": ns(END), name: value}
    resp = server.client.request(method, path, params=params if method == "GET" else None,
                                 data=params if method == "POST" else None)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("text/plain"), resp.headers
    assert resp.text.strip()


@pytest.mark.parametrize("path", ["/loki/api/v1/label/service/values", "/loki/api/v1/detected_fields",
                                  "/loki/api/v1/detected_field/addr/values"])
def test_other_routes_refuse_a_bad_limit_with_400_not_422(server: Server, path: str) -> None:
    resp = server.get(path, limit="lots", start=ns(START), end=ns(END))
    assert resp.status_code == 400 and "limit" in resp.text, resp.text


@pytest.mark.parametrize("direction", ["BACKWARD", "Forward", "forward", "backward"])
def test_direction_is_case_insensitive(server: Server, direction: str) -> None:
    body = server.ok("/loki/api/v1/query_range", query='{service="pat"}', start=ns(START), end=ns(END),
                     direction=direction, limit=2)
    got = sorted(line for s in body["data"]["result"] for _, line in s["values"])
    want = ["GET /a 200", "GET /b 200"] if direction.lower() == "forward" else ["GET /d 500", "GET /e 404 slow"]
    assert got == want


# -- the live tail's errors ---------------------------------------------------------------------------------


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log() -> Iterator[_Captured]:
    """Everything the server logs meanwhile (uvicorn, FastAPI, loglake), tracebacks included."""
    handler = _Captured()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def _close_of(server: Server, **params: str) -> tuple[int | None, str]:
    """Open a tail with ``params`` and read until the server closes it: (close code, reason)."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://", 1) + "/loki/api/v1/tail?" + urlencode(params)
    try:
        with connect(url, open_timeout=10) as ws:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    ws.recv(timeout=deadline - time.monotonic())
                except TimeoutError:
                    break
                except ConnectionClosed as e:
                    return (e.rcvd.code if e.rcvd else None), (e.rcvd.reason if e.rcvd else "")
    except InvalidStatus as e:      # refused before the upgrade: an HTTP 4xx is as good
        status = e.response.status_code
        assert 400 <= status < 500, status
        return status, e.response.body.decode(errors="replace") if e.response.body else ""
    pytest.fail("the tail stayed open")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("params", "reason"), [
    ({"query": '{service="pat"}', "limit": "abc"}, "limit"),
    ({"query": '{service="pat"}', "limit": "-1"}, "limit"),
    ({"query": '{service="pat"'}, "expected"),
    ({"query": ""}, "query"),
    ({}, "query"),
    ({"query": 'sum(count_over_time({service="pat"}[1m]))'}, "log query"),
    ({"query": '{service="pat"}', "start": "yesterday"}, "time"),
    ({"query": '{service="pat"}', "delay_for": "6"}, "delay_for"),
    ({"query": '{service="pat"}', "delay_for": "soon"}, "delay_for"),
    ({"query": '{service="pat"} |= "' + "x" * 6000 + '"'}, "max_query_chars"),
    ({"query": '{service="pat"} |= "' + "x" * 70_000 + '"'}, ""),      # past the server's URL limit: a 4xx
    ({"query": '{service="pat"} |~ ip("1.2.3.4")'}, "ip"),
])
def test_a_bad_tail_closes_with_a_reason_and_no_traceback(server: Server, server_log: _Captured,
                                                          params: dict[str, str], reason: str) -> None:
    code, text = _close_of(server, **params)
    assert code == 1008 or (code is not None and 400 <= code < 500), (code, text)
    assert reason in text, (code, text)
    time.sleep(0.2)      # the server's side of the close is logged, if at all, right after
    # What a server log shows at uvicorn's default level, info (the websockets library notes a refused
    # handshake, with its exception, at debug level only).
    tracebacks = [r for r in server_log.records if r.levelno >= logging.INFO
                  and (r.exc_info or "Traceback" in r.getMessage())]
    assert not tracebacks, [(r.name, r.getMessage()[:200]) for r in tracebacks]
    errors = [r for r in server_log.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage()[:200]) for r in errors]


@pytest.mark.timeout(60)
def test_a_good_tail_with_delay_for_streams(server: Server) -> None:
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://", 1) + "/loki/api/v1/tail?" + urlencode(
        {"query": '{service="pat"} |> "<_> 500"', "start": ns(START), "delay_for": "2", "limit": "10"})
    with connect(url, open_timeout=10) as ws:
        msg = json.loads(ws.recv(timeout=15))
    got = sorted(line for s in msg["streams"] for _, line in s["values"])
    assert got == ["GET /d 500", "POST /c 500"]


def test_the_data_is_what_the_module_says(server: Server) -> None:
    assert len(lines(server, '{service=~"edge|packed|counter|pat"}')) == len(EDGE) + len(PACKED) + len(COUNTER) \
        + len(PAT)


def test_sort_and_sort_desc_order_an_instant_vector_by_value(server: Server) -> None:
    inner = 'sum by (host) (count_over_time({service="edge"} |~ "ok|range" [2m]))'
    for op, want in (("sort", [("web-2", "1"), ("web-1", "3")]), ("sort_desc", [("web-1", "3"), ("web-2", "1")])):
        body = server.ok("/loki/api/v1/query", query=f"{op}({inner})", time=ns(T0 + 90 * S))
        assert [(r["metric"]["host"], r["value"][1]) for r in body["data"]["result"]] == want, op
