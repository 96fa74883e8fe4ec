"""Grafana's requests to the Loki API, sent as Grafana sends them, and the answers read as Grafana reads them.

Each test sends one request shape of Grafana's Loki data source or of the Logs Drilldown app, with its
parameters and headers, and reads the JSON back with the rules Grafana parses it by; the values are
checked against the records (``tests/helpers/loki_records.py``: generated lines through ingest's real
normaliser and storage, a real catalog, a real uvicorn on loopback).

Where the shapes come from (read with the search tool; versions as stored there):

- data queries: grafana/grafana ``pkg/tsdb/loki/api.go`` ``makeDataRequest`` (query_range: ``query``,
  ``direction``, ``limit``, ``start``/``end`` in Unix nanoseconds, ``step`` as ``<n>ms``; instant query:
  ``time``; headers ``X-Query-Tags: Source=<logvolhist|logsample|datasample|infinitescroll>`` and
  ``X-Loki-Response-Encoding-Flags: categorize-labels``), ``pkg/tsdb/loki/healthcheck.go``
  (``vector(1)+vector(1)``);
- how the answer is read: grafana/grafana ``pkg/promlib/converter/prom.go`` (``readPrometheusData``:
  ``encodingFlags`` read before ``result``; ``readCategorizedStream``: every entry ``[ts, line, {parsed,
  structuredMetadata}]``, labels typed I, S, P; ``readStream``: every entry exactly ``[ts, line]``;
  ``timeFromLokiString``; matrix and vector points ``[seconds, "value"]``);
- supplementary queries: ``public/app/plugins/datasource/loki/datasource.ts`` ``getSupplementaryQuery``
  (logs volume ``sum by (level, detected_level) (count_over_time(<expr> | drop __error__[$__auto]))``,
  logs sample = the metric query's log query with ``maxLines`` 100);
- log context: ``LogContextProvider.ts`` (a selector of the row's labels that ``/labels`` lists, the
  original query's parser if it has exactly one, 2 h before the row backwards or after it forwards);
- label browser and hints: ``LanguageProvider.ts`` (``labels``, ``label/<name>/values``, ``series`` with
  ``match[]``, ``detected_fields`` and ``detected_field/<name>/values`` with ``limit`` 1000, times in ns)
  and ``datasource.ts`` ``getQueryStats`` (``index/stats``);
- Logs Drilldown: grafana/logs-drilldown ``src/services/datasource.ts`` (``detected_labels``,
  ``detected_fields``, ``patterns``, ``index/volume`` with ``limit`` 5000 and no ``targetLabels``, read as
  ``metric[primaryLabel]``, times as ISO 8601, ``X-Query-Tags``) and the queries of
  ``src/services/expressions.ts`` (``getTimeSeriesExpr``), ``variables.ts`` (``LOG_STREAM_SELECTOR_EXPR``,
  ``DETECTED_FIELD_VALUES_EXPR``: the selector, then ``| json | logfmt | drop __error__, __error_details__``),
  ``labels.ts`` (``buildLabelsQuery``: ``{<filters> ,<label> != ""}`` by the label), ``fields.ts``,
  ``ServiceSelectionScene.tsx`` (the service list: ``{service_name=~".+"}``, a search as
  ``(?i).*<text>.*``, per service ``sum by (detected_level) (count_over_time({ service_name="x" } ...))``
  and ``{service_name=`x` }`` with 100 lines), ``ServiceSelectionTabsScene.tsx`` (``detected_labels``
  with an empty query) and ``ServiceScene.tsx`` (a service's page: ``{service_name="x"}``), at
  logs-drilldown commit 4418b4d6 (2026-08);
- Loki's own: grafana/loki ``pkg/util/marshal`` (``encodingFlags`` in a streams answer only, as the query
  frontend writes them), ``docs/sources/reference/loki-http-api.md`` (volume_range).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loglake.core.config import load_config
from query.logql.lexer import parse_bytes, parse_duration
from tests.helpers.loki_records import (
    HOUR_US,
    T0_US,
    metadata_of,
    ns,
    of,
    service_name_of,
    stream_of,
    write_records,
)
from tests.helpers.server import Server, config_for, free_port, serve

START_NS, END_NS = (T0_US - HOUR_US) * 1000, (T0_US + HOUR_US + 60_000_000) * 1000
ISO_START, ISO_END = "2024-03-01T09:00:00.000Z", "2024-03-01T11:01:00.000Z"
CATEGORIZE = {"X-Loki-Response-Encoding-Flags": "categorize-labels"}
DRILLDOWN = {"X-Query-Tags": "Source=grafana-lokiexplore-app"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("grafana-contract")
    return root, write_records(root, seed=7)


@pytest.fixture(scope="module")
def server(rows: tuple[Path, list[dict[str, Any]]]) -> Any:
    root, _ = rows
    with serve(config_for(root, root / "data")) as s:
        yield s


@pytest.fixture(scope="module")
def records(rows: tuple[Path, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rows[1]


# -- reading an answer as Grafana's backend does ------------------------------------------------------

def _time_from_loki(ts: str) -> int:
    """timeFromLokiString: a string of at most 19 digits of nanoseconds."""
    assert isinstance(ts, str) and ts.isdigit() and len(ts) <= 19, ts
    return int(ts)


def _labels(value: Any) -> dict[str, str]:
    assert isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()), value
    return value


def grafana_read(body: Any) -> dict[str, Any]:
    """A data query's answer read by Grafana's converter: the frames it makes.

    Streams become rows of (labels, label types, ns, line); matrices and vectors series of points.
    Anything the converter would reject (a missing resultType, an entry of the wrong length, a label
    that is not a string, a time that is not Loki's) fails here."""
    assert body["status"] == "success", body
    data = body["data"]
    flags: list[str] = []
    result_type = None
    out: dict[str, Any] = {"flags": None}
    for key, value in data.items():            # in the order they were sent, as the converter reads them
        if key == "encodingFlags":
            assert isinstance(value, list) and all(isinstance(f, str) for f in value)
            flags = value
            out["flags"] = value
        elif key == "resultType":
            result_type = value
        elif key == "result":
            assert result_type is not None, "the converter needs resultType before result"
            out["resultType"] = result_type
            out["result"] = _read_result(result_type, value, "categorize-labels" in flags)
        elif key == "stats":
            assert isinstance(value, dict)
    assert "result" in out, "no result"
    return out


def _read_result(result_type: str, result: Any, categorized: bool) -> Any:
    if result_type == "streams":
        rows = []
        for stream in result:
            indexed = _labels(stream["stream"])
            for entry in stream["values"]:
                assert isinstance(entry, list)
                if categorized:
                    assert len(entry) == 3, f"readCategorizedStream reads three elements: {entry}"
                    ts, line, extra = entry
                    assert isinstance(extra, dict) and set(extra) <= {"parsed", "structuredMetadata"}, extra
                    meta, parsed = _labels(extra.get("structuredMetadata", {})), _labels(extra.get("parsed", {}))
                    labels = {**indexed, **meta, **parsed}
                    types = {**{k: "I" for k in indexed}, **{k: "S" for k in meta}, **{k: "P" for k in parsed}}
                else:
                    assert len(entry) == 2, f"readStream reads two elements: {entry}"
                    ts, line = entry
                    labels, types = dict(indexed), {}
                assert isinstance(line, str)
                rows.append({"labels": labels, "types": types, "ns": _time_from_loki(ts), "line": line})
        return rows
    if result_type in ("matrix", "vector"):
        series = {}
        for s in result:
            metric = _labels(s["metric"])
            points = s["values"] if result_type == "matrix" else [s["value"]]
            parsed = []
            for t, v in points:
                assert isinstance(t, (int, float)) and not isinstance(t, bool) and isinstance(v, str)
                parsed.append((float(t), float(v)))
            key = tuple(sorted(metric.items()))
            assert key not in series, f"series {metric} twice"
            series[key] = dict(parsed)
        return series
    if result_type == "scalar":
        t, v = result
        return (float(t), float(v))
    raise AssertionError(f"unknown result type {result_type}")


def data_query(server: Server, path: str, headers: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    resp = server.client.get(path, params=params, headers=headers or {})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    return grafana_read(resp.json())


def explore_range(server: Server, expr: str, *, limit: int = 1000, direction: str = "backward",
                  start: int = START_NS, end: int = END_NS, step_ms: int = 2000, source: str | None = None,
                  structured_metadata: bool = True) -> dict[str, Any]:
    """makeDataRequest for a range query, as the data source's backend sends it."""
    headers = dict(CATEGORIZE) if structured_metadata else {}
    if source:
        headers["X-Query-Tags"] = f"Source={source}"
    return data_query(server, "/loki/api/v1/query_range", headers, query=expr, direction=direction,
                      limit=str(limit), start=str(start), end=str(end), step=f"{step_ms}ms")


# -- data source: health, Explore, supplementary queries, context --------------------------------------

def test_save_and_test(server: Server) -> None:
    """healthcheck.go: an instant query of vector(1)+vector(1), its one value 2."""
    got = data_query(server, "/loki/api/v1/query", query="vector(1)+vector(1)", direction="backward",
                     time=str(END_NS))
    assert got["resultType"] == "vector" and got["result"] == {(): {END_NS / 1e9: 2.0}}


@pytest.mark.parametrize("service", ["checkout", "auth"])
def test_explore_logs_query(server: Server, records: list[dict[str, Any]], service: str) -> None:
    """Explore's log query: the newest 1000 lines, labels typed so that log details, derived fields and
    trace links see each record's attributes and ids as structured metadata."""
    got = explore_range(server, f'{{service="{service}"}}')
    assert got["resultType"] == "streams" and got["flags"] == ["categorize-labels"]
    want = {ns(r): r for r in of(records, service)}
    assert len(got["result"]) == len(want) <= 1000
    for row in got["result"]:
        r = want[row["ns"]]
        assert row["line"] == r["line"]
        assert row["labels"] == {**stream_of(r), **metadata_of(r)}
        assert row["types"] == {**{k: "I" for k in stream_of(r)}, **{k: "S" for k in metadata_of(r)}}
    traced = [row for row in got["result"] if "trace_id" in row["labels"]]
    assert (service == "checkout") == bool(traced)
    for row in traced:       # what a derived field on trace_id (a trace link) reads
        assert row["types"]["trace_id"] == "S" and row["labels"]["trace_id"] == want[row["ns"]]["trace_id"]


def test_explore_with_a_parser_types_parsed_labels(server: Server, records: list[dict[str, Any]]) -> None:
    got = explore_range(server, '{service="billing"} | logfmt | user="u-2"', limit=50)
    want = {ns(r): r for r in of(records, "billing") if "user=u-2 " in r["line"]}
    assert want and {row["ns"] for row in got["result"]} == set(list(sorted(want, reverse=True))[:50])
    for row in got["result"]:
        assert row["types"]["user"] == "P" and row["types"]["msg"] == "P" and row["types"]["service"] == "I"
        assert row["types"]["detected_level"] == "S"


def test_explore_without_structured_metadata_support(server: Server, records: list[dict[str, Any]]) -> None:
    """A data source with structured metadata off sends no header: two-element entries, all labels on
    the stream (readStream)."""
    got = explore_range(server, '{service="auth"}', structured_metadata=False)
    assert got["flags"] is None
    want = {ns(r): r for r in of(records, "auth")}
    for row in got["result"]:
        assert row["labels"] == {**stream_of(want[row["ns"]]), **metadata_of(want[row["ns"]])}


@pytest.mark.parametrize("direction", ["backward", "forward"])
def test_explore_direction_and_limit(server: Server, records: list[dict[str, Any]], direction: str) -> None:
    got = explore_range(server, '{service=~"checkout|billing"}', limit=25, direction=direction)
    times = sorted((ns(r) for r in records if r["service"] in ("checkout", "billing")),
                   reverse=direction == "backward")[:25]
    assert sorted(row["ns"] for row in got["result"]) == sorted(times)


def _volume_want(rs: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], dict[float, float]]:
    """sum by (level, detected_level) of count_over_time over 1-minute steps, windows (t - 1m, t]."""
    out: dict[tuple[tuple[str, str], ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for r in rs:
        t = math.ceil(r["ts_us"] / 60_000_000) * 60_000_000
        out[(("detected_level", r["level"]), ("level", r["level"]))][t / 1e6] += 1
    return {k: dict(v) for k, v in out.items()}


@pytest.mark.parametrize("expr", ['{service="checkout"}', '{service="checkout"} |= "bank"',
                                  '{service="checkout"} | json | region="eu-west-1"'])
def test_logs_volume(server: Server, records: list[dict[str, Any]], expr: str) -> None:
    """Explore's log volume histogram: the supplementary query with ``drop __error__`` and ``$__auto``
    resolved (1m here), tagged logvolhist; the header goes with it and a matrix comes back without flags."""
    got = explore_range(server, f"sum by (level, detected_level) (count_over_time({expr} | drop __error__[1m]))",
                        start=T0_US * 1000, end=(T0_US + HOUR_US) * 1000, step_ms=60_000, source="logvolhist")
    assert got["resultType"] == "matrix" and got["flags"] is None
    rs = of(records, "checkout")
    if "bank" in expr:
        rs = [r for r in rs if "bank" in r["line"]]
    if "region" in expr:
        rs = [r for r in rs if metadata_of(r).get("region") == "eu-west-1"]
    assert got["result"] == _volume_want(rs)


def test_logs_sample(server: Server, records: list[dict[str, Any]]) -> None:
    """Below a metric query Explore shows its log query's newest 100 lines (tagged logsample)."""
    metric = data_query(server, "/loki/api/v1/query_range", CATEGORIZE,
                        query='sum(count_over_time({service="billing"} |= "declined" [5m]))',
                        start=str(T0_US * 1000), end=str((T0_US + HOUR_US) * 1000), step="300000ms")
    assert metric["resultType"] == "matrix"
    assert sum(metric["result"][()].values()) == sum("declined" in r["line"] for r in of(records, "billing"))
    got = explore_range(server, '{service="billing"} |= "declined"', limit=100, source="logsample")
    want = sorted((ns(r) for r in of(records, "billing") if "declined" in r["line"]), reverse=True)[:100]
    assert sorted((row["ns"] for row in got["result"]), reverse=True) == want


def _labels_api(server: Server) -> list[str]:
    body = server.ok("/loki/api/v1/labels", start=str(START_NS), end=str(END_NS))
    assert body["status"] == "success" and all(isinstance(x, str) for x in body["data"])
    return body["data"]


@pytest.mark.parametrize("direction", ["BACKWARD", "FORWARD"])
def test_log_context(server: Server, records: list[dict[str, Any]], direction: str) -> None:
    """LogContextProvider: the row's labels that /labels lists (its stream labels, not its metadata) as
    the selector, the original query's single parser, 2 h before (backward, up to the row) or after (forward,
    from the row) the row, 10 lines."""
    label_keys = _labels_api(server)
    assert set(label_keys) == {"service", "service_name", "host", "level", "source"}
    shown = explore_range(server, '{service="checkout"} | json', limit=1000)["result"]
    row = sorted(shown, key=lambda x: x["ns"])[len(shown) // 2]
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(row["labels"].items()) if k in label_keys)
    expr = "{" + selector + "} | json"
    t_ms = row["ns"] // 1_000_000
    if direction == "BACKWARD":
        start, end = (t_ms - 2 * 3_600_000) * 1_000_000, row["ns"]
    else:
        start, end = row["ns"], (t_ms + 2 * 3_600_000) * 1_000_000
    got = explore_range(server, expr, limit=10, direction=direction.lower(), start=start, end=end)
    same = sorted(ns(r) for r in records if stream_of(r) == {k: row["labels"][k] for k in label_keys})
    if direction == "BACKWARD":
        want = [t for t in same if start <= t < end][-10:]
    else:
        want = [t for t in same if start <= t < end][:10]
    assert want and sorted(x["ns"] for x in got["result"]) == want
    assert all(x["types"]["msg"] == "P" for x in got["result"])


# -- data source: label browser, query hints, detected fields ---------------------------------------------

def test_label_names_values_and_series(server: Server, records: list[dict[str, Any]]) -> None:
    assert _labels_api(server) == sorted({"service", "service_name", "host", "level", "source"})
    by_query = server.ok("/loki/api/v1/labels", start=str(START_NS), end=str(END_NS), query='{service="auth"}')
    assert by_query["data"] == sorted({"service", "service_name", "host", "level", "source"})
    unnamed = server.ok("/loki/api/v1/labels", start=str(START_NS), end=str(END_NS),
                        query='{service_name="unknown_service"}')
    assert unnamed["data"] == sorted({"service_name", "host", "level", "source"})
    values = server.ok("/loki/api/v1/label/level/values", start=str(START_NS), end=str(END_NS),
                       query='{service="billing"}')
    assert values["data"] == sorted({r["level"] for r in of(records, "billing")})
    series = server.ok("/loki/api/v1/series", **{"match[]": '{service="auth"}'}, start=str(START_NS), end=str(END_NS))
    assert sorted(tuple(sorted(s.items())) for s in series["data"]) == sorted(
        {tuple(sorted(stream_of(r).items())) for r in of(records, "auth")})


def test_query_stats(server: Server, records: list[dict[str, Any]]) -> None:
    """getQueryStats: index/stats per selector, four numbers the editor adds up."""
    body = server.ok("/loki/api/v1/index/stats", query='{service="checkout"}', start=str(START_NS), end=str(END_NS))
    assert set(body) == {"streams", "chunks", "bytes", "entries"}
    assert all(isinstance(v, int) for v in body.values())
    rs = of(records, "checkout")
    assert body["entries"] == len(rs)
    assert body["bytes"] == sum(len(r["line"].encode()) for r in rs)
    assert body["streams"] == len({tuple(stream_of(r).items()) for r in rs})


def test_detected_fields_and_values_for_the_query_editor(server: Server, records: list[dict[str, Any]]) -> None:
    """LanguageProvider.fetchDetectedFields / fetchDetectedLabelValues: ``fields`` and ``values`` are read."""
    body = server.ok("/loki/api/v1/detected_fields", start=str(START_NS), end=str(END_NS), limit="1000",
                     query='{service="checkout"}')
    assert isinstance(body["fields"], list) and body["limit"] == 1000
    for f in body["fields"]:
        assert set(f) >= {"label", "type", "cardinality", "parsers"}
        assert f["type"] in ("string", "int", "float", "boolean", "duration", "bytes")
        assert isinstance(f["cardinality"], int) and f["cardinality"] >= 1
        assert f["parsers"] is None or (isinstance(f["parsers"], list) and f["parsers"])
    by = {f["label"]: f for f in body["fields"]}
    rs = of(records, "checkout")
    assert {k for r in rs for k in metadata_of(r)} <= set(by)
    assert by["trace_id"]["parsers"] == ["json"]      # in the metadata and in the line
    assert by["detected_level"]["parsers"] is None     # metadata only
    values = server.ok("/loki/api/v1/detected_field/region/values", start=str(START_NS), end=str(END_NS),
                       limit="1000", query='{service="checkout"}')
    assert values["values"] == sorted({metadata_of(r)["region"] for r in rs if "region" in metadata_of(r)})


# -- Logs Drilldown ----------------------------------------------------------------------------------------

def test_drilldown_service_selection(server: Server, records: list[dict[str, Any]]) -> None:
    """The services page: index/volume by service_name (ISO times, limit 5000), bytes per service."""
    body = server.ok("/loki/api/v1/index/volume", start=ISO_START, end=ISO_END, limit="5000",
                     query='{service_name=~".+"}')
    assert body["status"] == "success" and body["data"]["resultType"] == "vector"
    got = {s["metric"]["service_name"]: int(s["value"][1]) for s in body["data"]["result"]}
    for s in body["data"]["result"]:
        assert isinstance(s["value"][0], (int, float)) and isinstance(s["value"][1], str)
    want: Counter[str] = Counter()
    for r in records:
        want[service_name_of(r)] += len(r["line"].encode())
    assert got == dict(want) and "unknown_service" in got


def test_drilldown_detected_labels_and_fields(server: Server, records: list[dict[str, Any]]) -> None:
    labels = server.get("/loki/api/v1/detected_labels", headers=DRILLDOWN, start=ISO_START, end=ISO_END, query="")
    assert labels.status_code == 200, labels.text
    got = {d["label"]: d["cardinality"] for d in labels.json()["detectedLabels"]}
    assert got["host"] == 2 and got["service"] == len({r["service"] for r in records if r["service"]})
    assert got["service_name"] == len({service_name_of(r) for r in records}) == got["service"] + 1
    fields = server.get("/loki/api/v1/detected_fields", headers=DRILLDOWN, start=ISO_START, end=ISO_END,
                        query='{service_name="edge"}')
    assert fields.status_code == 200, fields.text
    names = {f["label"]: f for f in fields.json()["fields"]}
    # awkward keys arrive under the names the streams give them
    assert {"a_b", "c_d", "source_extracted", "d_tail", "_9z", "x_y_z"} <= set(names)
    assert names["a_b"]["parsers"] == ["json"]


@pytest.mark.parametrize("expr", [
    'sum by (detected_level) (count_over_time({ service_name="checkout" } [1m]))',
    'sum(count_over_time({service_name="checkout"} | detected_level != "" [1m])) by (detected_level)',
])
def test_drilldown_level_volume(server: Server, records: list[dict[str, Any]], expr: str) -> None:
    got = explore_range(server, expr, start=T0_US * 1000, end=(T0_US + HOUR_US) * 1000, step_ms=60_000,
                        source="grafana-lokiexplore-app")
    want: dict[tuple[tuple[str, str], ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for r in of(records, "checkout"):
        want[(("detected_level", r["level"]),)][math.ceil(r["ts_us"] / 60_000_000) * 60.0] += 1
    assert got["result"] == {k: dict(v) for k, v in want.items()}


@pytest.mark.parametrize("field", ["region", "http_method", "user_agent"])
def test_drilldown_field_breakdown(server: Server, records: list[dict[str, Any]], field: str) -> None:
    """A field's values over the range (``| keep`` inside, $__range resolved) and over time (``!= ""``)."""
    rs = [r for r in of(records, "checkout") if field in metadata_of(r)]
    dist = explore_range(server, f'sum by ({field}) (count_over_time({{service_name="checkout"}} | keep {field} '
                                 f"[1h]))", start=(T0_US + HOUR_US) * 1000, end=(T0_US + HOUR_US) * 1000,
                         step_ms=3_600_000)
    want = Counter(metadata_of(r)[field] for r in rs)
    got = {dict(k).get(field): v[(T0_US + HOUR_US) / 1e6] for k, v in dist["result"].items()}
    missing = len(of(records, "checkout")) - len(rs)
    assert got == {**{k: float(n) for k, n in want.items()}, **({None: float(missing)} if missing else {})}
    over_time = explore_range(server, f'sum(count_over_time({{service_name="checkout"}} | {field} != "" [5m])) '
                                      f"by ({field})", start=T0_US * 1000, end=(T0_US + HOUR_US) * 1000,
                              step_ms=300_000)
    totals = {dict(k)[field]: sum(v.values()) for k, v in over_time["result"].items()}
    assert totals == {k: float(n) for k, n in want.items()}


def _drilldown_range(server: Server, expr: str, *, limit: int = 1000, step_ms: int = 60_000) -> dict[str, Any]:
    """A Drilldown panel's data query: through the data source (nanoseconds, the categorize header),
    tagged with the app's source, over 10:00-11:00 with ``$__auto`` resolved to 1m."""
    return explore_range(server, expr.replace("$__auto", "1m"), limit=limit, start=T0_US * 1000,
                         end=(T0_US + HOUR_US) * 1000, step_ms=step_ms, source="grafana-lokiexplore-app")


def _per_level_minute(rs: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], dict[float, float]]:
    want: dict[tuple[tuple[str, str], ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for r in rs:
        want[(("detected_level", r["level"]),)][math.ceil(r["ts_us"] / 60_000_000) * 60.0] += 1
    return {k: dict(v) for k, v in want.items()}


def _drilldown_volume(server: Server, query: str) -> list[tuple[str, int]]:
    """datasource.ts getVolume: index/volume (no targetLabels), sorted by volume, ``metric[primaryLabel]``."""
    body = server.ok("/loki/api/v1/index/volume", headers=DRILLDOWN, end=ISO_END, limit="5000", query=query,
                     start=ISO_START)
    result = sorted(body["data"]["result"], key=lambda r: -float(r["value"][1]))
    assert all(set(r["metric"]) == {"service_name"} for r in result), result
    return [(r["metric"]["service_name"], int(r["value"][1])) for r in result]


def test_drilldown_service_list(server: Server, records: list[dict[str, Any]]) -> None:
    """The services page, as Logs Drilldown builds it: its tabs from detected_labels (service_name, its
    default, among them), the services by volume of ``{service_name=~".+"}`` (every record has one;
    those of no service are ``unknown_service``), a search, and each listed service's two panels."""
    tabs = server.get("/loki/api/v1/detected_labels", headers=DRILLDOWN, end=ISO_END, query="", start=ISO_START)
    assert tabs.status_code == 200, tabs.text
    cardinality = {d["label"]: d["cardinality"] for d in tabs.json()["detectedLabels"]}
    names = {service_name_of(r) for r in records}
    assert cardinality["service_name"] == len(names) and "unknown_service" in names

    listed = _drilldown_volume(server, '{service_name=~".+"}')
    want: Counter[str] = Counter()
    for r in records:
        want[service_name_of(r)] += len(r["line"].encode())
    assert dict(listed) == dict(want)
    assert _drilldown_volume(server, '{service_name=~"(?i).*CHECK.*"}') == [("checkout", want["checkout"])]
    assert _drilldown_volume(server, '{service_name=~"(?i).*unknown.*"}') == [
        ("unknown_service", want["unknown_service"])]

    for name, _ in listed[:20]:          # the first page of services
        rs = [r for r in records if service_name_of(r) == name]
        levels = _drilldown_range(server, f'sum by (detected_level) (count_over_time({{ service_name="{name}" }} '
                                          "[$__auto]))")
        assert levels["result"] == _per_level_minute(rs), name
        logs = _drilldown_range(server, f"{{service_name=`{name}` }}", limit=100)
        newest = sorted((r for r in rs if r["ts_us"] < T0_US + HOUR_US), key=ns, reverse=True)[:100]
        assert sorted(row["ns"] for row in logs["result"]) == sorted(ns(r) for r in newest), name
        by_ns = {ns(r): r for r in rs}
        for row in logs["result"]:
            assert row["labels"]["service_name"] == name and row["types"]["service_name"] == "I"
            assert {k for k, t in row["types"].items() if t == "I"} == set(stream_of(by_ns[row["ns"]]))


@pytest.mark.parametrize("name", ["checkout", "billing", "unknown_service"])
def test_drilldown_service_page(server: Server, records: list[dict[str, Any]], name: str) -> None:
    """A service's page (ServiceScene), every request filtered by ``{service_name="<name>"}``: the logs
    with the mixed parsers, the level volume, the total, detected labels and fields, patterns, the
    breakdown of each detected label, and a label's values."""
    rs = [r for r in records if service_name_of(r) == name]
    assert rs
    selector = f'{{service_name="{name}"}}'
    parsers = "| json  | logfmt | drop __error__, __error_details__"
    logs = _drilldown_range(server, f"{selector}      {parsers} ")
    assert sorted(row["ns"] for row in logs["result"]) == sorted(ns(r) for r in rs)
    by_ns = {ns(r): r for r in rs}
    for row in logs["result"]:
        r = by_ns[row["ns"]]
        indexed = {k: v for k, v in row["labels"].items() if row["types"][k] == "I"}
        assert indexed == stream_of(r)
        assert ("service" in indexed) == (name != "unknown_service")

    volume = _drilldown_range(server, f"sum(count_over_time({selector}      [$__auto])) by (detected_level)")
    assert volume["result"] == _per_level_minute(rs)
    total = _drilldown_range(server, f"sum(count_over_time({selector}      {parsers}  [$__auto]))")
    assert sum(total["result"][()].values()) == len(rs)

    detected = server.get("/loki/api/v1/detected_labels", headers=DRILLDOWN, end=ISO_END, query=selector,
                          start=ISO_START)
    assert detected.status_code == 200, detected.text
    labels = {d["label"]: d["cardinality"] for d in detected.json()["detectedLabels"]}
    want_labels = {k: len({stream_of(r)[k] for r in rs}) for k in {k for r in rs for k in stream_of(r)}}
    assert labels == want_labels and labels["service_name"] == 1

    fields = server.get("/loki/api/v1/detected_fields", headers=DRILLDOWN, end=ISO_END,
                        query=f"{selector}      {parsers} ", start=ISO_START)
    assert fields.status_code == 200, fields.text
    field_names = {f["label"] for f in fields.json()["fields"]}
    assert {k for r in rs for k in metadata_of(r)} <= field_names
    assert not field_names & {"service", "service_name", "host"}, "stream labels are not fields"

    patterns = server.get("/loki/api/v1/patterns", headers=DRILLDOWN, end=ISO_END, query=selector,
                          start=ISO_START, step="60s")
    assert patterns.status_code == 200, patterns.text
    assert sum(n for p in patterns.json()["data"] for _, n in p["samples"]) == len(rs)

    for label in labels:
        if label == "service_name":
            continue        # the page's own filter
        breakdown = _drilldown_range(server, f'sum(count_over_time({{service_name="{name}" ,{label} != ""}}       '
                                             f"[$__auto])) by ({label})")
        got = {dict(k)[label]: sum(v.values()) for k, v in breakdown["result"].items()}
        assert got == {k: float(n) for k, n in Counter(stream_of(r)[label] for r in rs).items()}, label
    values = server.ok("/loki/api/v1/label/service_name/values", headers=DRILLDOWN, start=ISO_START, end=ISO_END,
                       query=selector)
    assert values["data"] == [name]


def test_volume_range(server: Server, records: list[dict[str, Any]]) -> None:
    """index/volume_range: a matrix of bytes per target label and step that adds up to index/volume."""
    body = server.ok("/loki/api/v1/index/volume_range", query='{service=~".+"}', start=str(T0_US * 1000),
                     end=str((T0_US + HOUR_US) * 1000), step="600", targetLabels="level", aggregateBy="series")
    assert body["data"]["resultType"] == "matrix"
    got: Counter[str] = Counter()
    for s in body["data"]["result"]:
        for t, v in s["values"]:
            assert isinstance(t, (int, float)) and isinstance(v, str)
            got[s["metric"]["level"]] += int(v)
    want: Counter[str] = Counter()
    for r in records:
        if r["service"]:        # {service=~".+"}: the records of no service have no service label
            want[r["level"]] += len(r["line"].encode())
    assert dict(got) == dict(want)


def test_times_grafana_writes_agree(server: Server) -> None:
    """Nanoseconds (the data source) and ISO 8601 with milliseconds (Drilldown) name the same range."""
    a = server.ok("/loki/api/v1/index/stats", query='{service="auth"}', start=str(START_NS), end=str(END_NS))
    b = server.ok("/loki/api/v1/index/stats", query='{service="auth"}', start=ISO_START, end=ISO_END)
    assert a == b and datetime.fromisoformat(ISO_START.replace("Z", "+00:00")).astimezone(UTC).timestamp() * 1e9 \
        == START_NS


# -- Drilldown's limits probe and the query editor's formatting ---------------------------------------

def test_drilldown_limits_say_what_this_service_enforces(server: Server) -> None:
    """Logs Drilldown reads drilldown-limits on every service page and shows its patterns tab only with
    pattern_ingester_enabled; the limits are this service's own."""
    got = server.client.get("/loki/api/v1/drilldown-limits", headers=DRILLDOWN)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["pattern_ingester_enabled"] is True
    assert body["version"] == server.client.get("/loki/api/v1/status/buildinfo").json()["version"]
    limits = body["limits"]
    q = server.cfg.query
    assert limits["max_entries_limit_per_query"] == q.max_limit
    assert parse_duration(limits["query_timeout"]) == int(q.timeout_s * 1e9)
    assert parse_bytes(limits["max_query_bytes_read"]) == q.max_scan_bytes
    assert limits["volume_enabled"] is True and limits["retention_period"] == "0s"   # no policy: kept for ever
    # What it says of series is what a query meets: one series more than max_query_series is refused.
    assert isinstance(limits["max_query_series"], int) and limits["max_query_series"] > 0
    # ...and the tab it opens has patterns to show.
    patterns = server.client.get("/loki/api/v1/patterns", headers=DRILLDOWN,
                                 params={"query": '{service_name="checkout"}', "start": str(START_NS),
                                         "end": str(END_NS), "step": "60s"})
    assert patterns.status_code == 200 and patterns.json()["data"], patterns.text


def test_drilldown_limits_give_the_tenants_retention(tmp_path: Path) -> None:
    (tmp_path / "loglake.toml").write_text(
        '[[retention.policies]]\ntenant = "*"\nmax_age = "90d"\n\n'
        '[[retention.policies]]\ntenant = "team-a"\nmax_age = "36h"\n\n'
        '[[retention.policies]]\ntenant = "team-a"\nservice = "api"\nmax_age = "1d"\n')
    cfg = load_config(environ={"LOGLAKE_CONFIG": str(tmp_path / "loglake.toml"),
                               "LOGLAKE_STORAGE__DATA_ROOT": str(tmp_path / "data"),
                               "LOGLAKE_QUERY__PORT": str(free_port()), "LOGLAKE_AUTH__ENABLED": "false"})
    with serve(cfg) as s:
        def retention(tenant: str) -> str:
            return s.client.get("/loki/api/v1/drilldown-limits",
                                headers={"X-Scope-OrgID": tenant}).json()["limits"]["retention_period"]

        # The tenant-wide policy (a service's own does not speak for the tenant), else the default one.
        assert parse_duration(retention("team-a")) == 36 * 3600 * 10**9
        assert parse_duration(retention("team-b")) == 90 * 86400 * 10**9


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_format_query_prints_the_query_as_it_parses(server: Server, method: str) -> None:
    """The query editor's "Format query": the query printed from what it parses to, on one line."""
    text = 'sum   by(region)(count_over_time({service="api"}|="error"|json|level="error"[5m]))'
    if method == "GET":
        got = server.client.get("/loki/api/v1/format_query", params={"query": text})
    else:
        got = server.client.post("/loki/api/v1/format_query", data={"query": text})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["status"] == "success"
    assert body["data"] == 'sum by (region) (count_over_time({service="api"} |= "error" | json | level="error" [5m]))'
    again = server.client.get("/loki/api/v1/format_query", params={"query": body["data"]}).json()["data"]
    assert again == body["data"]


@pytest.mark.parametrize("params", [{}, {"query": '{service="api"'}, {"query": "sum(rate())"}])
def test_format_query_refuses_what_does_not_parse(server: Server, params: dict[str, str]) -> None:
    got = server.client.get("/loki/api/v1/format_query", params=params)
    assert got.status_code == 400 and got.text.strip(), got.text
