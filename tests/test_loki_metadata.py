"""Structured metadata, categorised labels and the original line, as Grafana reads them from the Loki API.

Differential: generated records (seeded random) of a JSON-logged service (``checkout``: attributes with
dotted, dashed, digit-first and non-ASCII keys, nested objects, trace and span ids), a logfmt service
(``billing``), a text service with a header (``auth``), a JSON service of awkward keys (``edge``: keys
that collide once made label-safe, keys named as stream labels, empty values) and text lines of no
service (``service`` empty) go through ingest's real
``Normaliser`` and storage's ``write_segments`` into a real SQLite catalog; a real uvicorn serves the API.
What a response shows, over real HTTP with and without ``X-Loki-Response-Encoding-Flags:
categorize-labels``, is compared with what this module computes in plain Python from the stored
records' columns and attributes (``tests/helpers/loki_records.py``) and from the lines as they were written.

Loki's rules (grafana/loki, pkg/util/marshal/query.go ``encodeStream``, pkg/iter/categorized_labels_iterator.go,
pkg/logql/log/labels.go ``LabelsBuilder``): without the header a stream is every label of its entries
(stream labels, structured metadata, parsed labels) and an entry is ``[ts, line]``; with it the data
carries ``encodingFlags``, a stream is its stream labels only and an entry is ``[ts, line, {...}]`` whose
object always exists and holds ``structuredMetadata`` and ``parsed`` when they are not empty. A parsed
label takes the place of structured metadata of its name; a metric query's series carry structured
metadata like labels (pkg/logql/log/labels.go ``LabelsResult``), and Loki's ingester adds
``detected_level`` as structured metadata (pkg/distributor/field_detection.go). Loki's distributor also
makes ``service_name`` a stream label at ingest (pkg/loghttp/push/push.go with ``discover_service_name``
of pkg/validation/limits.go): the stream's ``service`` here, else ``unknown_service``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.loki.metadata import attribute_labels, label_sql
from tests.helpers.fuzzing import examples
from tests.helpers.loki_records import (
    BULK,
    CATEGORIZE,
    END,
    HOUR_US,
    SERVICES,
    START,
    STREAM,
    T0_US,
    UNNAMED,
    json_parsed,
    logfmt_parsed,
    metadata_of,
    ns,
    of,
    service_name_of,
    stream_of,
    write_records,
)
from tests.helpers.server import Server, config_for, serve


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("loki-metadata")
    return root, write_records(root)


@pytest.fixture(scope="module")
def server(lake: tuple[Path, list[dict[str, Any]]]) -> Iterator[Server]:
    root, _ = lake
    with serve(config_for(root, root / "data")) as s:
        yield s


@pytest.fixture(scope="module")
def rows(lake: tuple[Path, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return lake[1]


def query(server: Server, logql: str, categorize: bool, **params: Any) -> dict[str, Any]:
    resp = server.get("/loki/api/v1/query_range", query=logql, start=START, end=END, limit=5000,
                      headers=CATEGORIZE if categorize else {}, **params)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def entries(data: dict[str, Any]) -> dict[int, tuple[dict[str, str], list[Any]]]:
    """ns -> (stream labels, the entry as sent) of a streams answer; every time once."""
    out: dict[int, tuple[dict[str, str], list[Any]]] = {}
    for s in data["result"]:
        for value in s["values"]:
            assert int(value[0]) not in out, "an entry twice"
            out[int(value[0])] = (s["stream"], value)
    return out


# -- the tests --------------------------------------------------------------------------------------

def test_the_data_exercises_the_naming_rules(rows: list[dict[str, Any]]) -> None:
    """Dotted, dashed, digit-first and non-ASCII keys, collisions, reserved names and empty values are in
    the stored attributes, so the tests below see each rule at work."""
    keys = {k for r in rows for k, _ in r["attrs"] or []}
    assert {"http.status", "http.method", "user-agent", "9lives", "naïve", "k8s.pod.name", "source",
            "a.b", "a_b", "c.d", "c-d", "empty", "9z", "x.y.z", "x_y_z"} <= keys
    assert any(r["trace_id"] for r in rows) and any(r["span_id"] for r in rows)
    assert any(not r["trace_id"] for r in of(rows, "checkout"))
    assert len(of(rows, "")) == UNNAMED, "records of no service are stored with an empty service"


@pytest.mark.parametrize("service", list(SERVICES))
def test_categorized_streams_are_stream_labels_and_each_entry_carries_its_metadata(
        server: Server, rows: list[dict[str, Any]], service: str) -> None:
    data = query(server, f'{{service="{service}"}}', categorize=True)
    assert data["resultType"] == "streams"
    assert data["encodingFlags"] == ["categorize-labels"]
    got = entries(data)
    want = of(rows, service)
    assert sorted(got) == sorted(ns(r) for r in want)
    for r in want:
        stream, value = got[ns(r)]
        assert stream == stream_of(r)
        assert len(value) == 3 and set(value[2]) == {"structuredMetadata"}, value
        assert value[2]["structuredMetadata"] == metadata_of(r)
        assert value[1] == r["line"], "the line as written"


@pytest.mark.parametrize("service", list(SERVICES))
def test_without_the_header_metadata_is_folded_into_the_stream(
        server: Server, rows: list[dict[str, Any]], service: str) -> None:
    data = query(server, f'{{service="{service}"}}', categorize=False)
    assert "encodingFlags" not in data
    got = entries(data)
    for r in of(rows, service):
        stream, value = got[ns(r)]
        assert value == [str(ns(r)), r["line"]]
        assert stream == {**stream_of(r), **metadata_of(r)}
    # streams split by metadata: no two streams share a label set
    keys = [tuple(sorted(s["stream"].items())) for s in data["result"]]
    assert len(keys) == len(set(keys))


def test_json_parses_the_line_a_json_service_wrote(server: Server, rows: list[dict[str, Any]]) -> None:
    """``| json`` reads the original line (not the stored message): no JSONParserErr, every field parsed;
    a parsed label takes the place of structured metadata of its name."""
    data = query(server, '{service="checkout"} | json', categorize=True)
    got = entries(data)
    want = of(rows, "checkout")
    assert sorted(got) == sorted(ns(r) for r in want)
    for r in want:
        stream, value = got[ns(r)]
        parsed = json_parsed(r["line"])
        assert "__error__" not in parsed
        assert stream == stream_of(r)
        assert value[2]["parsed"] == parsed
        meta = {k: v for k, v in metadata_of(r).items() if k not in parsed}
        assert value[2].get("structuredMetadata", {}) == meta
    folded = entries(query(server, '{service="checkout"} | json', categorize=False))
    for r in want:
        stream, _ = folded[ns(r)]
        assert stream == {**stream_of(r), **metadata_of(r), **json_parsed(r["line"])}
    assert entries(query(server, '{service="checkout"} | json | __error__!=""', categorize=True)) == {}


def test_logfmt_parses_the_line_a_logfmt_service_wrote(server: Server, rows: list[dict[str, Any]]) -> None:
    got = entries(query(server, '{service="billing"} | logfmt', categorize=True))
    for r in of(rows, "billing"):
        stream, value = got[ns(r)]
        parsed = logfmt_parsed(r["line"])
        assert value[2]["parsed"] == parsed
        assert value[2].get("structuredMetadata", {}) == {k: v for k, v in metadata_of(r).items() if k not in parsed}
        assert value[1] == r["line"]


def test_pattern_regexp_and_line_format_on_a_text_service(server: Server, rows: list[dict[str, Any]]) -> None:
    """A text line is its header and its message as written; ``| json`` fails on it, as on Loki."""
    want = of(rows, "auth")
    got = entries(query(server, '{service="auth"} | pattern "<date> <time> <lvl> [<thread>] <logger>: <text>"',
                        categorize=True))
    for r in want:
        date, time, lvl, thread, rest = r["line"].split(" ", 4)
        logger, text = rest.split(": ", 1)
        assert got[ns(r)][1][2]["parsed"] == {"date": date, "time": time, "lvl": lvl, "thread": thread.strip("[]"),
                                              "logger": logger, "text": text}
    got = entries(query(server, r'{service="auth"} | regexp "\\[(?P<thread>[^\\]]+)\\] (?P<logger>[^:]+):"',
                        categorize=True))
    for r in want:
        thread = r["line"].split("[", 1)[1].split("]", 1)[0]
        assert got[ns(r)][1][2]["parsed"] == {"thread": thread, "logger": "com.acme.Auth"}
    got = entries(query(server, '{service="auth"} | json', categorize=True))
    assert {v[2]["parsed"]["__error__"] for _, v in got.values()} == {"JSONParserErr"}
    # line_format sees stream labels and structured metadata alike
    got = entries(query(server, '{service="auth"} | line_format "{{.detected_level}} {{.host}} {{.level}}"',
                        categorize=False))
    for r in want:
        assert got[ns(r)][1][1] == f"{r['level']} {r['host']} {r['level']}"


def test_line_format_and_label_filters_see_attributes(server: Server, rows: list[dict[str, Any]]) -> None:
    got = entries(query(server, '{service="checkout"} | http_status="500" | line_format "{{.region}}/{{.user_id}}"',
                        categorize=True))
    want = [r for r in of(rows, "checkout") if metadata_of(r).get("http_status") == "500"]
    assert want and sorted(got) == sorted(ns(r) for r in want)
    for r in want:
        m = metadata_of(r)
        assert got[ns(r)][1][1] == f"{m.get('region', '')}/{m.get('user_id', '')}"


def test_label_format_keep_and_drop_act_on_metadata(server: Server, rows: list[dict[str, Any]]) -> None:
    """A renamed attribute stays structured metadata; a templated label is a parsed one; keep and drop
    reach structured metadata too (pkg/logql/log/fmt.go, keep_labels.go, drop_labels.go)."""
    got = entries(query(server, '{service="checkout"} | label_format where=region, tag="{{.user_id}}!"',
                        categorize=True))
    for r in of(rows, "checkout"):
        meta = metadata_of(r)
        if "region" in meta:
            meta["where"] = meta.pop("region")
        value = got[ns(r)][1]
        assert value[2]["structuredMetadata"] == meta
        assert value[2]["parsed"] == {"tag": f"{metadata_of(r).get('user_id', '')}!"}
    got = entries(query(server, '{service="checkout"} | keep service, region', categorize=False))
    for r in of(rows, "checkout"):
        assert got[ns(r)][0] == {"service": "checkout", **({"region": metadata_of(r)["region"]}
                                                           if "region" in metadata_of(r) else {})}
    got = entries(query(server, '{service="checkout"} | drop trace_id, span_id, detected_level, host',
                        categorize=True))
    for r in of(rows, "checkout"):
        stream, value = got[ns(r)]
        assert stream == {k: v for k, v in stream_of(r).items() if k != "host"}
        assert value[2].get("structuredMetadata", {}) == {
            k: v for k, v in metadata_of(r).items() if k not in ("trace_id", "span_id", "detected_level")}


def _matrix(server: Server, logql: str, step: str = "3600") -> dict[tuple[tuple[str, str], ...], float]:
    """The value at 11:00 of each series (a one-hour window holding every record)."""
    resp = server.get("/loki/api/v1/query_range", query=logql, start=str((T0_US + HOUR_US) * 1000),
                      end=str((T0_US + HOUR_US) * 1000), step=step)
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert data["resultType"] == "matrix" and "encodingFlags" not in data
    out = {}
    for s in data["result"]:
        key = tuple(sorted(s["metric"].items()))
        assert key not in out
        (t, v), = s["values"]
        out[key] = float(v)
    return out


@pytest.mark.parametrize("labels", [("region",), ("http_status",), ("detected_level",), ("region", "user_id"),
                                    ("source_extracted", "a_b"), ("trace_id",), ("level", "detected_level"),
                                    ("service_name",), ("service", "service_name"), ("service_name", "region")])
def test_sum_by_metadata_is_one_series_per_value(server: Server, rows: list[dict[str, Any]],
                                                 labels: tuple[str, ...]) -> None:
    """Every record (``service_name=~".+"`` selects the records of no service too), one series per value."""
    got = _matrix(server, f'sum by ({", ".join(labels)}) (count_over_time({{service_name=~".+"}}[1h]))')
    want = Counter(tuple((n, v) for n in sorted(labels) if (v := {**stream_of(r), **metadata_of(r)}.get(n)))
                   for r in rows)
    assert got == {k: float(n) for k, n in want.items()}
    assert len(want) > 1


def test_the_volume_query_grafana_sends(server: Server, rows: list[dict[str, Any]]) -> None:
    """Explore's logs volume: ``sum by (level, detected_level)`` over a parser and ``drop __error__``
    (the Python path), against the same without a parser (counted in SQL)."""
    want = Counter((("detected_level", r["level"]), ("level", r["level"])) for r in of(rows, "checkout"))
    sql = _matrix(server, 'sum by (level, detected_level) (count_over_time({service="checkout"} [1h]))')
    piped = _matrix(server, 'sum by (level, detected_level) (count_over_time({service="checkout"} | json '
                            '| drop __error__ [1h]))')
    assert sql == piped == {k: float(n) for k, n in want.items()}


def test_ungrouped_series_are_stream_labels_and_metadata(server: Server, rows: list[dict[str, Any]]) -> None:
    for logql in ('count_over_time({service="billing"}[1h])', 'count_over_time({service="billing"} |= "" '
                                                                '| region!="nowhere" [1h])'):
        got = _matrix(server, logql)
        want = Counter(tuple(sorted({**stream_of(r), **metadata_of(r)}.items())) for r in of(rows, "billing"))
        assert got == {k: float(n) for k, n in want.items()}, logql
    got = _matrix(server, 'sum without (host, detected_level) (count_over_time({service="billing"}[1h]))')
    want = Counter(tuple(sorted((k, v) for k, v in {**stream_of(r), **metadata_of(r)}.items()
                                if k not in ("host", "detected_level"))) for r in of(rows, "billing"))
    assert got == {k: float(n) for k, n in want.items()}


#: Selectors on service_name, each with what it says of a record's service name (Loki's matchers: an
#: anchored RE2 regex; the records of no service are ``unknown_service``).
SERVICE_NAME_SELECTORS = [
    ('service_name="checkout"', lambda n, r: n == "checkout"),
    ('service_name="unknown_service"', lambda n, r: n == "unknown_service"),
    ('service_name!="checkout", host=~"web-.+"', lambda n, r: n != "checkout"),
    ('service_name!="unknown_service", host=~"web-.+"', lambda n, r: n != "unknown_service"),
    ('service_name=~"unknown.*"', lambda n, r: n.startswith("unknown")),
    ('service_name=~"auth|unknown_service"', lambda n, r: n in ("auth", "unknown_service")),
    ('service_name=~".+"', lambda n, r: True),
    ('service_name!~"unknown_service|edge", host=~"web-.+"', lambda n, r: n not in ("unknown_service", "edge")),
    ('service_name!~".*t", host=~"web-.+"', lambda n, r: not n.endswith("t")),
    ('service_name=~".*", host="web-1"', lambda n, r: r["host"] == "web-1"),
    ('service_name="", host="web-1"', lambda n, r: False),
    ('service_name!="", host="web-2"', lambda n, r: r["host"] == "web-2"),
    ('service=~".+"', lambda n, r: r["service"] != ""),
    ('service="", service_name=~".+"', lambda n, r: r["service"] == ""),
]


@pytest.mark.parametrize(("selector", "holds"), SERVICE_NAME_SELECTORS, ids=[s for s, _ in SERVICE_NAME_SELECTORS])
def test_service_name_is_a_stream_label(server: Server, rows: list[dict[str, Any]], selector: str,
                                        holds: Any) -> None:
    """A selector on service_name picks the records whose service name it matches, counted in SQL by
    service name and listed by the log query (whose streams carry it), with and without a pipeline."""
    want = Counter(service_name_of(r) for r in rows if holds(service_name_of(r), r))
    got = _matrix(server, f"sum by (service_name) (count_over_time({{{selector}}}[1h]))")
    assert got == {(("service_name", k),): float(n) for k, n in want.items()}
    piped = _matrix(server, f'sum by (service_name) (count_over_time({{{selector}}} | drop nothing [1h]))')
    assert piped == got
    logs = entries(query(server, f"{{{selector}}}", categorize=True))
    assert sorted(logs) == sorted(ns(r) for r in rows if holds(service_name_of(r), r))
    by_ns = {ns(r): r for r in rows}
    assert all(stream == stream_of(by_ns[t]) for t, (stream, _) in logs.items())


def test_a_record_of_no_service_is_unknown_service(server: Server, rows: list[dict[str, Any]]) -> None:
    """Its stream has no ``service`` (an empty label is an absent one) and ``service_name`` is Loki's
    ``unknown_service``, in streams, series and label values alike."""
    got = entries(query(server, '{service_name="unknown_service"}', categorize=True))
    assert sorted(got) == sorted(ns(r) for r in of(rows, ""))
    for r in of(rows, ""):
        stream, value = got[ns(r)]
        assert stream == {"service_name": "unknown_service", "host": r["host"], "level": r["level"],
                          "source": r["source"]}
        assert value[2] == {"structuredMetadata": metadata_of(r)}
    series = server.ok("/loki/api/v1/series", **{"match[]": '{service_name="unknown_service"}'}, start=START, end=END)
    assert sorted(tuple(sorted(s.items())) for s in series["data"]) == sorted(
        {tuple(sorted(stream_of(r).items())) for r in of(rows, "")})
    values = server.ok("/loki/api/v1/label/service_name/values", start=START, end=END)["data"]
    assert values == sorted({service_name_of(r) for r in rows}) and "unknown_service" in values
    assert server.ok("/loki/api/v1/label/service/values", start=START, end=END)["data"] == sorted({*SERVICES, "bulk"})
    assert _matrix(server, 'count_over_time({service_name="unknown_service", host="web-1"} | keep service, '
                           'service_name [1h])') == {(("service_name", "unknown_service"),):
                                                     float(sum(r["host"] == "web-1" for r in of(rows, "")))}


def test_unwrap_an_attribute(server: Server, rows: list[dict[str, Any]]) -> None:
    got = _matrix(server, 'sum by (region) (sum_over_time({service="checkout"} | unwrap latency_ms [1h]))')
    want: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
    for r in of(rows, "checkout"):
        m = metadata_of(r)
        if "latency_ms" in m:
            want[(("region", m["region"]),) if "region" in m else ()] += float(m["latency_ms"])
    assert got == pytest.approx(dict(want))


def test_more_series_than_loki_allows_is_a_bad_request(server: Server, rows: list[dict[str, Any]]) -> None:
    """Each request id is a series of an ungrouped count: past Loki's 500 the query is refused with its
    advice; summed, the same lines are one series."""
    bulk = of(rows, "bulk")
    assert len({tuple(sorted(metadata_of(r).items())) for r in bulk}) == BULK > 500
    resp = server.get("/loki/api/v1/query_range", query='count_over_time({service="bulk"}[1h])',
                      start=str((T0_US + HOUR_US) * 1000), end=str((T0_US + HOUR_US) * 1000), step="3600")
    assert resp.status_code == 400 and "maximum number of series (500)" in resp.text, resp.text
    assert _matrix(server, 'sum(count_over_time({service="bulk"}[1h]))') == {(): float(BULK)}


def test_detected_fields_name_metadata_as_the_streams_do(server: Server, rows: list[dict[str, Any]]) -> None:
    body = server.ok("/loki/api/v1/detected_fields", query='{service="checkout"}', start=START, end=END)
    names = {f["label"] for f in body["fields"]}
    meta_names = {k for r in of(rows, "checkout") for k in metadata_of(r)}
    assert meta_names <= names
    assert not names & set(STREAM), "stream labels are not detected fields"
    by = {f["label"]: f for f in body["fields"]}
    assert by["http_status"]["parsers"] == ["json"] and by["http_status"]["type"] == "int"
    values = server.ok("/loki/api/v1/detected_field/source_extracted/values", query='{service="checkout"}',
                       start=START, end=END)["values"]
    assert values == sorted({metadata_of(r)["source_extracted"] for r in of(rows, "checkout")
                             if "source_extracted" in metadata_of(r)})


# -- the naming rule, in SQL as in Python --------------------------------------------------------------

KEYS = st.sampled_from(["a.b", "a_b", "a-b", "A.b", "9z", "_9z", "source", "source_extracted", "détail",
                        "d_tail", "x", "", "trace_id", "level", "__error__", "k8s.pod", "k8s_pod"])
VALUES = st.sampled_from(["1", "2", "", "x", "é"]) | st.none()


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_sql_names_attributes_as_python_does(attrs: dict[str, str | None]) -> None:
    """``label_sql`` (for grouping in DuckDB) and ``attribute_labels`` (for entries) give every label the
    same value, and both agree with this module's reference."""
    want = attribute_labels(attrs)
    assert want == {k: v for k, v in metadata_of({"attrs": list(attrs.items()), "trace_id": None,
                                                  "span_id": None, "level": "x"}).items()
                    if k != "detected_level"}
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE t AS SELECT MAP(?::VARCHAR[], ?::VARCHAR[]) AS attrs",
                    [list(attrs), list(attrs.values())])
        # Beside the names the attributes take: names only one key can take (a map lookup in SQL), names
        # no key can take ("a.b", "9z"), and names a prefix or a suffix makes.
        for name in {*want, "a_b", "source_extracted", "nothing", "x", "A", "a.b", "9z", "_9z", "k8s_pod",
                     "level_extracted", "__error___extracted", "a%b", "a\\_b"}:
            sql = label_sql(name)
            got = con.execute(f"SELECT {sql.sql} FROM t", sql.params).fetchone()[0]
            assert got == want.get(name), name
    finally:
        con.close()


def test_the_third_element_is_there_when_empty(server: Server, rows: list[dict[str, Any]]) -> None:
    """Loki writes the object of a categorized entry even with nothing in it (Grafana reads three elements)."""
    got = entries(query(server, '{service="auth"} | keep service, host, level, source', categorize=True))
    assert len(got) == len(of(rows, "auth"))
    assert all(len(v) == 3 and v[2] == {} for _, v in got.values())


def test_unknown_flags_are_echoed_and_only_categorize_labels_acts(server: Server) -> None:
    """Loki splits the header on commas, echoes each flag of a streams answer, acts on categorize-labels."""
    resp = server.get("/loki/api/v1/query_range", query='{service="auth"}', start=START, end=END, limit=5,
                      headers={"X-Loki-Response-Encoding-Flags": "some-flag,categorize-labels"})
    data = resp.json()["data"]
    assert data["encodingFlags"] == ["some-flag", "categorize-labels"]
    assert all(len(v) == 3 for s in data["result"] for v in s["values"])
    resp = server.get("/loki/api/v1/query_range", query='{service="auth"}', start=START, end=END, limit=5,
                      headers={"X-Loki-Response-Encoding-Flags": "some-flag"})
    data = resp.json()["data"]
    assert data["encodingFlags"] == ["some-flag"]
    assert all(len(v) == 2 for s in data["result"] for v in s["values"])
    resp = server.client.post("/loki/api/v1/query_range", headers=CATEGORIZE,
                              data={"query": '{service="auth"}', "start": START, "end": END, "limit": "5"})
    assert resp.status_code == 200 and resp.json()["data"]["encodingFlags"] == ["categorize-labels"]


@pytest.mark.timeout(60)
def test_tail_with_the_header_sends_categorized_streams(server: Server, rows: list[dict[str, Any]]) -> None:
    import threading

    import httpx
    from starlette.testclient import TestClient

    from query.api.app import create_app

    app = create_app(server.cfg)        # in-process: uvicorn here has no WebSocket implementation
    got: list[Any] = []
    try:
        with TestClient(app) as client:
            params = httpx.QueryParams({"query": '{service="checkout"}', "start": START, "limit": "1000"})
            with client.websocket_connect(f"ws://localhost/loki/api/v1/tail?{params}", headers=CATEGORIZE) as ws:
                reader = threading.Thread(target=lambda: got.append(ws.receive_json()), daemon=True)
                reader.start()
                reader.join(20)
                assert got, "tail sent nothing within 20 s"
    finally:
        app.state.service.catalog.close()
    msg = got[0]
    assert msg["encodingFlags"] == ["categorize-labels"]
    want = {ns(r): r for r in of(rows, "checkout")}
    sent = 0
    for s in msg["streams"]:
        for value in s["values"]:
            r = want[int(value[0])]
            assert s["stream"] == stream_of(r) and value[1] == r["line"]
            assert value[2] == {"structuredMetadata": metadata_of(r)}
            sent += 1
    assert sent
