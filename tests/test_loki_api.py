"""Loki's HTTP API over loglake, tested against Loki's documentation and against the data written.

Shapes come from Loki's HTTP API reference (``docs/sources/reference/loki-http-api.md``: query,
query_range, labels, label values, series, index/stats, index/volume and volume_range, tail, ready,
buildinfo) and from Loki's wire types where the reference is silent (``pkg/logproto/logproto.proto``:
detected labels and fields); Grafana's request shapes from its Loki data source
(``pkg/tsdb/loki/healthcheck.go`` and ``api.go``). Expected values are computed here, in plain
Python, from the records this module writes: nothing is taken from loglake's own output.

The data (2024-03-01, 10:00-12:00 UTC) is written with the real storage code (``write_segments``,
one segment per service and hour) into a real SQLite catalog, for two tenants:

- ``default``: ``api`` logs JSON lines, ``billing`` logfmt lines, ``auth`` plain text (a few of them
  broken JSON); every record has the attribute ``region`` (and the api ones ``http.status``);
- ``acme``: a handful of records of its own, so that tenant isolation can be checked.

A record's attributes and level are also its structured metadata (``http.status`` as ``http_status``,
``detected_level``): without ``categorize-labels`` Loki shows them among a stream's labels, and a metric
query's series carry them (``Rec.labels_key``); ``test_loki_metadata.py`` covers the categorised form.

A real uvicorn server answers on a free loopback port. The WebSocket ``tail`` runs in-process
through Starlette's TestClient, and a stdlib RFC 6455 client checks it on the real server too.

Every test states the documented behaviour; the bugs they found when written were fixed.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loglake.core.config import Config
from query.api.app import create_app
from query.timerange import parse_time_us
from storage.catalog import Catalog
from tests.helpers.lake import Segment, record, write_lake
from tests.helpers.server import Server, config_for, serve

DAY = "2024-03-01"
T0_US = parse_time_us(f"{DAY}T10:00:00Z")
SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
HOUR_US = 60 * MINUTE_US
START_US = T0_US - HOUR_US            # 09:00: before every record
END_US = T0_US + 3 * HOUR_US          # 13:00: after every record
#: Loki's label names (Prometheus' data model).
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: A stream's labels: the label columns, and ``service_name``, which Loki's distributor adds to every
#: stream (its ``service`` here; grafana/loki pkg/loghttp/push/push.go, ``discover_service_name``).
STREAM_LABELS = ("service", "service_name", "host", "level", "source")


def ns(us: int) -> str:
    """A time as Loki's nanosecond integer string."""
    return str(us * 1000)


# -- the data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    id: str
    tenant: str
    ts: int                  # epoch microseconds
    service: str
    host: str
    level: str
    message: str
    attrs: tuple[tuple[str, str], ...]

    @property
    def source(self) -> str:
        return f"/var/log/{self.service}.log"

    @property
    def stream(self) -> dict[str, str]:
        return {"service": self.service, "service_name": self.service or "unknown_service", "host": self.host,
                "level": self.level, "source": self.source}

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """Its stream's labels."""
        return tuple(sorted(self.stream.items()))

    @property
    def metadata(self) -> dict[str, str]:
        """Its structured metadata as Loki's API shows it: every attribute (``.`` in a key as ``_``) and
        the detected level (Loki's ingester adds it; loglake answers it from the level)."""
        return {**{k.replace(".", "_"): v for k, v in self.attrs}, "detected_level": self.level}

    @property
    def labels_key(self) -> tuple[tuple[str, str], ...]:
        """Every label Loki gives it without ``categorize-labels``: stream labels and structured metadata,
        which is also the series of an ungrouped metric query."""
        return tuple(sorted({**self.stream, **self.metadata}.items()))

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.labels_key)

    @property
    def attr(self) -> dict[str, str]:
        return dict(self.attrs)

    @property
    def nbytes(self) -> int:
        return len(self.message.encode())


DURATIONS = ["90ms", "250ms", "251ms", "1.5s", "2s", "750us", "1m"]
SIZES = ["512B", "10KB", "10KiB", "9.5KB", "2MB", "20kB"]
USERS = ["alice", "bob", "carol"]
PLAIN = ["Timeout talking to database", "timeout while reading body", "TIMEOUT on upstream",
         "GET /users 200", "connection reset by peer", "user logged in", "cache miss for key=42"]
BROKEN = ['{"status": 500, "duration": ', '{broken json']


def _json_line(rng: random.Random) -> str:
    return json.dumps({"status": rng.choice([200, 200, 201, 404, 500, 503]), "duration": rng.choice(DURATIONS),
                       "size": rng.choice(SIZES), "latency": rng.choice([1.5, 12, 12.5, 40, 99.25, 250]),
                       "user": rng.choice(USERS), "msg": rng.choice(["ok", "timeout upstream", "Timeout db"])})


def _logfmt_line(rng: random.Random) -> str:
    msg = rng.choice(["payment ok", "card declined", "upstream timeout"])
    return (f"status={rng.choice([200, 402, 500])} duration={rng.choice(DURATIONS)} size={rng.choice(SIZES)} "
            f"user={rng.choice(USERS)} msg=\"{msg}\"")


def make_records(tenant: str, n: int, seed: int, services: tuple[str, ...]) -> list[Rec]:
    """``n`` records at distinct times in 10:00-12:00, none on a whole minute (window edges are
    tested with the extra records of BOUNDARY)."""
    rng = random.Random(seed)
    seconds = sorted(rng.sample(range(1, 2 * 3600), n))
    out = []
    for i, s in enumerate(seconds):
        service = rng.choice(services)
        if service == "api":
            message = _json_line(rng)
        elif service == "billing":
            message = _logfmt_line(rng)
        else:
            message = rng.choice(BROKEN) if rng.random() < 0.15 else rng.choice(PLAIN)
        level = rng.choice(["info", "info", "info", "warn", "error", "debug"])
        attrs = [("id", f"{tenant}-{i}"), ("region", rng.choice(["eu", "us"]))]
        if service == "api":
            attrs.append(("http.status", str(rng.choice([200, 500]))))
        ts = T0_US + s * SECOND_US + rng.randrange(1, 1000) * 1000 + rng.randrange(1, 1000)
        if ts % MINUTE_US == 0:
            ts += 1
        out.append(Rec(f"{tenant}-{i}", tenant, ts, service, rng.choice(["web-1", "web-2"]), level, message,
                       tuple(attrs)))
    return out


#: Records exactly on 11:00:00 and 11:30:00: the edges of windows, steps and ranges.
BOUNDARY = [
    Rec("edge-1", "default", T0_US + HOUR_US, "auth", "web-1", "error", "edge of the hour",
        (("id", "edge-1"), ("region", "eu"))),
    Rec("edge-2", "default", T0_US + 90 * MINUTE_US, "auth", "web-2", "warn", "edge of the half hour",
        (("id", "edge-2"), ("region", "us"))),
]
DEFAULT = sorted(make_records("default", 160, 11, ("api", "billing", "auth")) + BOUNDARY, key=lambda r: r.ts)
ACME = make_records("acme", 12, 23, ("auth", "shop"))
TENANTS = {"default": DEFAULT, "acme": ACME}


def write_tenants(data_root: Path, catalog: Catalog, tenants: dict[str, list[Rec]], partition: int = 0) -> None:
    """Each tenant's records, one segment per service (and hour), committed on ``partition`` of topic loki."""
    segments: list[Segment] = []
    for tenant, recs in tenants.items():
        by_service: dict[str, list[Rec]] = defaultdict(list)
        for r in recs:
            by_service[r.service].append(r)
        segments += [Segment(tenant, f"{service}-p{partition}.parquet",
                             [record(r.ts, r.service, r.level, r.message, attrs=r.attrs, host=r.host)
                              for r in rows])
                     for service, rows in sorted(by_service.items())]
    write_lake(data_root, catalog, segments, topic="loki", partition=partition)


# -- the server -----------------------------------------------------------------------------


def logs(server: Server, query: str, tenant: str | None = None, **params: Any) -> list[tuple[int, str]]:
    """(ns, line) of every entry of a log query over the whole data, newest first."""
    params = {"start": ns(START_US), "end": ns(END_US), "limit": 5000, **params}
    body = server.ok("/loki/api/v1/query_range", tenant=tenant, query=query, **params)
    assert body["data"]["resultType"] == "streams"
    entries = [(int(t), line) for s in body["data"]["result"] for t, line in s["values"]]
    return sorted(entries, reverse=params.get("direction", "backward") == "backward")


def matrix(server: Server, query: str, start_us: int, end_us: int, step: str, tenant: str | None = None,
           ) -> dict[tuple[tuple[str, str], ...], dict[float, float]]:
    body = server.ok("/loki/api/v1/query_range", tenant=tenant, query=query, start=ns(start_us), end=ns(end_us),
                     step=step)
    assert body["data"]["resultType"] == "matrix", body
    out: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    for s in body["data"]["result"]:
        key = tuple(sorted(s["metric"].items()))
        assert key not in out, f"series {key} twice"
        out[key] = {float(t): float(v) for t, v in s["values"]}
    return out


class _NoTraceback(logging.Filter):
    """Logs a server-side exception by its repr only.

    Python 3.11's traceback formatting calls ``ast.parse`` (for its ^^^ markers), and the ``_ast`` module's
    recursion counter is shared between threads: uvicorn formatting a 500 in its thread while pytest formats
    an (expected) assertion failure in the main thread fails pytest with "SystemError: AST constructor
    recursion depth mismatch". The tests read the 500 from the response; the traceback is not needed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.msg = f"{record.msg} {record.exc_info[1]!r}"
            record.exc_info = None
        return True


@dataclass
class Lake:
    cfg: Config
    catalog: Catalog


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    """A data root and catalog holding TENANTS."""
    root = tmp_path_factory.mktemp("loki-api")
    cfg = config_for(root, root / "data")
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    write_tenants(cfg.storage.data_root, catalog, TENANTS)
    yield Lake(cfg, catalog)
    catalog.close()


@pytest.fixture(scope="module")
def server(lake: Lake) -> Iterator[Server]:
    quiet = _NoTraceback()
    logging.getLogger("uvicorn.error").addFilter(quiet)
    try:
        # No keep-alive: a 500 makes uvicorn drop its connection, which must not fail the next test.
        with serve(lake.cfg, keepalive=False) as s:
            yield s
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)


# -- reference evaluation in plain Python -------------------------------------------------------

Key = tuple[tuple[str, str], ...]
Series = dict[Key, dict[float, float]]

DURATION_S = {"90ms": 0.09, "250ms": 0.25, "251ms": 0.251, "1.5s": 1.5, "2s": 2.0, "750us": 0.00075, "1m": 60.0}
SIZE_BYTES = {"512B": 512, "10KB": 10_000, "10KiB": 10_240, "9.5KB": 9_500, "2MB": 2_000_000, "20kB": 20_000}


def records(tenant: str = "default", pred: Callable[[Rec], bool] | None = None, lo: int = START_US,
            hi: int = END_US) -> list[Rec]:
    """The tenant's records with lo <= ts < hi that ``pred`` keeps."""
    return [r for r in TENANTS[tenant] if lo <= r.ts < hi and (pred is None or pred(r))]


def entries(rs: list[Rec]) -> list[tuple[int, str]]:
    """What a log query returns for ``rs``: (ns, line), newest first."""
    return sorted(((r.ts * 1000, r.message) for r in rs), reverse=True)


def json_fields(r: Rec) -> dict[str, str]:
    return {k: str(v) for k, v in json.loads(r.message).items()}


def logfmt_fields(r: Rec) -> dict[str, str]:
    return {m[1]: m[2].strip('"') for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', r.message)}


def key_of(labels: dict[str, str]) -> Key:
    return tuple(sorted(labels.items()))


def range_series(rs: list[Rec], start_us: int, end_us: int, step_us: int, range_us: int,
                 value: Callable[[list[Rec]], float] = len, key: Callable[[Rec], Key] = lambda r: r.labels_key,
                 ) -> Series:
    """A range aggregation evaluated at start, start+step, ... <= end over windows (t - range, t]; a step
    whose window holds no sample has no point."""
    groups: dict[Key, list[Rec]] = defaultdict(list)
    for r in rs:
        groups[key(r)].append(r)
    out: Series = {}
    for k, g in groups.items():
        pts = {}
        for t in range(start_us, end_us + 1, step_us):
            window = [r for r in g if t - range_us < r.ts <= t]
            if window:
                pts[t / 1e6] = float(value(window))
        if pts:
            out[k] = pts
    return out


def grouped(key: Key, by: tuple[str, ...] | None = None, without: tuple[str, ...] | None = None) -> Key:
    if by is not None:
        return tuple((n, v) for n, v in key if n in by)
    if without is not None:
        return tuple((n, v) for n, v in key if n not in without)
    return ()


def vector_agg(series: Series, fn: Callable[[list[float]], float], by: tuple[str, ...] | None = None,
               without: tuple[str, ...] | None = None) -> Series:
    acc: dict[Key, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for k, pts in series.items():
        for t, v in pts.items():
            acc[grouped(k, by, without)][t].append(v)
    return {g: {t: fn(vs) for t, vs in pts.items()} for g, pts in acc.items()}


def quantile(q: float, values: list[float]) -> float:
    """Prometheus' quantile: linear interpolation between the closest ranks."""
    vs = sorted(values)
    rank = q * (len(vs) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return vs[lo] + (vs[hi] - vs[lo]) * (rank - lo)


def mean(vs: list[float]) -> float:
    return sum(vs) / len(vs)


def assert_series(got: Series, want: Series) -> None:
    assert want, "the expectation is empty: the test data does not exercise this query"
    assert sorted(got) == sorted(want)
    for k, pts in want.items():
        assert sorted(got[k]) == sorted(pts), f"steps of {dict(k)}"
        for t, v in pts.items():
            assert got[k][t] == pytest.approx(v, rel=1e-9, abs=1e-12), f"{dict(k)} at {t}"


def vector_of(body: dict[str, Any]) -> dict[Key, float]:
    assert body["status"] == "success"
    assert body["data"]["resultType"] == "vector", body
    return {key_of(s["metric"]): float(s["value"][1]) for s in body["data"]["result"]}


# A metric query's own range: 10:00 .. 12:00.
M_START, M_END = T0_US, T0_US + 2 * HOUR_US


# -- contract: the shapes Loki documents ---------------------------------------------------------

SUMMARY_KEYS = {"bytesProcessedPerSecond", "execTime", "linesProcessedPerSecond", "queueTime",
                "totalBytesProcessed", "totalLinesProcessed"}


def check_stats(stats: dict[str, Any]) -> None:
    """The documented statistics block: summary (numbers), ingester and store figures."""
    assert isinstance(stats, dict)
    assert SUMMARY_KEYS <= set(stats["summary"])
    for k in SUMMARY_KEYS:
        assert isinstance(stats["summary"][k], (int, float)) and not isinstance(stats["summary"][k], bool), k
    assert isinstance(stats["ingester"], dict)


def check_stream_result(result: list[dict[str, Any]], direction: str = "backward") -> None:
    for s in result:
        assert set(s) == {"stream", "values"}
        assert s["stream"] and all(isinstance(k, str) and isinstance(v, str) for k, v in s["stream"].items())
        assert s["values"]
        for entry in s["values"]:
            assert isinstance(entry, list) and len(entry) == 2
            ts, line = entry
            assert isinstance(ts, str) and ts.isdigit() and len(ts) == 19, ts     # nanoseconds, as a string
            assert isinstance(line, str)
        times = [int(v[0]) for v in s["values"]]
        assert times == sorted(times, reverse=direction == "backward"), "values out of order"


def check_matrix_result(result: list[dict[str, Any]]) -> None:
    for s in result:
        assert set(s) == {"metric", "values"}
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in s["metric"].items())
        for point in s["values"]:
            assert isinstance(point, list) and len(point) == 2
            t, v = point
            assert isinstance(t, (int, float)) and not isinstance(t, bool)       # seconds, a number
            assert isinstance(v, str)
            float(v)
        times = [p[0] for p in s["values"]]
        assert times == sorted(times) and len(set(times)) == len(times), "oldest first, once each"


def test_query_range_log_query_answers_streams(server: Server) -> None:
    body = server.ok("/loki/api/v1/query_range", query='{service="auth"}', start=ns(START_US), end=ns(END_US),
                     limit=1000)
    assert body["status"] == "success"
    assert set(body["data"]) >= {"resultType", "result", "stats"}
    assert body["data"]["resultType"] == "streams"
    check_stream_result(body["data"]["result"])
    check_stats(body["data"]["stats"])
    want = records(pred=lambda r: r.service == "auth")
    got = {(int(t), line, key_of(s["stream"])) for s in body["data"]["result"] for t, line in s["values"]}
    assert got == {(r.ts * 1000, r.message, r.labels_key) for r in want}
    # one stream per label set
    keys = [key_of(s["stream"]) for s in body["data"]["result"]]
    assert len(keys) == len(set(keys))


def test_query_range_metric_query_answers_a_matrix(server: Server) -> None:
    body = server.ok("/loki/api/v1/query_range", query='count_over_time({service="auth"}[30m])',
                     start=ns(M_START), end=ns(M_END), step="900")
    assert body["status"] == "success"
    assert body["data"]["resultType"] == "matrix"
    check_matrix_result(body["data"]["result"])
    check_stats(body["data"]["stats"])
    for s in body["data"]["result"]:
        # an ungrouped metric query's series are the stream labels and the structured metadata
        assert set(s["metric"]) == {*STREAM_LABELS, "id", "region", "detected_level"}
        for t, _ in s["values"]:
            assert M_START / 1e6 <= t <= M_END / 1e6 and (t * 1e6 - M_START) % (900 * SECOND_US) == 0


def test_instant_query_answers_a_vector_at_the_given_time(server: Server) -> None:
    at = T0_US + 90 * MINUTE_US
    body = server.ok("/loki/api/v1/query", query='sum by (level) (count_over_time({service="auth"}[1h]))',
                     time=ns(at))
    assert body["status"] == "success"
    assert body["data"]["resultType"] == "vector"
    check_stats(body["data"]["stats"])
    for s in body["data"]["result"]:
        assert set(s) == {"metric", "value"}
        t, v = s["value"]
        assert isinstance(t, (int, float)) and t == at / 1e6
        assert isinstance(v, str)
    want = Counter(r.level for r in records(pred=lambda r: r.service == "auth" and at - HOUR_US < r.ts <= at))
    assert vector_of(body) == {(("level", k),): float(n) for k, n in want.items()}


def test_instant_query_of_a_number_is_a_scalar(server: Server) -> None:
    body = server.ok("/loki/api/v1/query", query="2 * 3 + 1", time=ns(M_END))
    assert body["data"]["resultType"] == "scalar"
    t, v = body["data"]["result"]
    assert t == M_END / 1e6 and float(v) == 7.0


def test_instant_query_of_a_log_query_is_a_bad_request(server: Server) -> None:
    resp = server.get("/loki/api/v1/query", query='{service="auth"}', time=ns(M_END))
    assert resp.status_code == 400


def test_labels_is_a_list_of_label_names(server: Server) -> None:
    body = server.ok("/loki/api/v1/labels", start=ns(START_US), end=ns(END_US))
    assert body["status"] == "success"
    assert isinstance(body["data"], list) and all(isinstance(x, str) for x in body["data"])
    assert set(STREAM_LABELS) <= set(body["data"])
    assert all(LABEL_NAME.fullmatch(x) for x in body["data"])


def test_labels_come_from_the_data(server: Server) -> None:
    assert server.ok("/loki/api/v1/labels", tenant="nobody", start=ns(START_US), end=ns(END_US))["data"] in ([], None)
    body = server.ok("/loki/api/v1/labels", query='{service="no-such-service"}', start=ns(START_US), end=ns(END_US))
    assert body["data"] in ([], None)


@pytest.mark.parametrize("tenant", ["default", "acme"])
@pytest.mark.parametrize("label", STREAM_LABELS)
def test_label_values_are_the_values_in_the_data(server: Server, tenant: str, label: str) -> None:
    body = server.ok(f"/loki/api/v1/label/{label}/values", tenant=tenant, start=ns(START_US), end=ns(END_US))
    assert body["status"] == "success"
    assert isinstance(body["data"], list) and all(isinstance(x, str) for x in body["data"])
    assert sorted(body["data"]) == sorted({r.stream[label] for r in records(tenant)})


def test_label_values_narrowed_by_a_selector(server: Server) -> None:
    body = server.ok("/loki/api/v1/label/service/values", query='{service=~"a.*", level="debug"}',
                     start=ns(START_US), end=ns(END_US))
    want = {r.service for r in records(pred=lambda r: r.service.startswith("a") and r.level == "debug")}
    assert want and want < {r.service for r in records()}
    assert sorted(body["data"]) == sorted(want)


def _series_want(tenant: str, pred: Callable[[Rec], bool]) -> list[Key]:
    return sorted({r.key for r in records(tenant, pred)})


def test_series_get_returns_the_label_sets_of_matching_streams(server: Server) -> None:
    resp = server.client.get("/loki/api/v1/series", params=[
        ("match[]", '{service="auth", level="error"}'), ("match[]", '{service="billing", host="web-1"}'),
        ("start", ns(START_US)), ("end", ns(END_US))])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success"
    assert isinstance(body["data"], list)
    for s in body["data"]:
        assert isinstance(s, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in s.items())
    want = _series_want("default", lambda r: (r.service, r.level) == ("auth", "error")
                        or (r.service, r.host) == ("billing", "web-1"))
    assert sorted(key_of(s) for s in body["data"]) == want


def test_series_post_takes_a_form_encoded_body(server: Server) -> None:
    resp = server.client.post("/loki/api/v1/series", data={
        "match[]": ['{service=~"a.*", level!="info"}'], "start": ns(START_US), "end": ns(END_US)},
        headers={"X-Scope-OrgID": "acme"})
    assert resp.status_code == 200, resp.text
    want = _series_want("acme", lambda r: r.service.startswith("a") and r.level != "info")
    assert sorted(key_of(s) for s in resp.json()["data"]) == want


def _index_stats_want(tenant: str, pred: Callable[[Rec], bool]) -> dict[str, int]:
    rs = records(tenant, pred)
    return {"streams": len({r.key for r in rs}), "entries": len(rs), "bytes": sum(r.nbytes for r in rs)}


def test_index_stats_get(server: Server) -> None:
    body = server.ok("/loki/api/v1/index/stats", query='{service="billing", level=~"info|warn"}',
                     start=ns(START_US), end=ns(END_US))
    assert set(body) == {"streams", "chunks", "entries", "bytes"}
    assert all(isinstance(v, int) and v >= 0 for v in body.values())
    assert body["chunks"] >= 1
    want = _index_stats_want("default", lambda r: r.service == "billing" and r.level in ("info", "warn"))
    assert {k: body[k] for k in want} == want


def test_index_stats_post_form(server: Server) -> None:
    resp = server.client.post("/loki/api/v1/index/stats", data={
        "query": '{service="auth"}', "start": ns(START_US), "end": ns(END_US)}, headers={"X-Scope-OrgID": "acme"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"streams", "chunks", "entries", "bytes"}
    want = _index_stats_want("acme", lambda r: r.service == "auth")
    assert {k: body[k] for k in want} == want


def test_index_volume_is_a_vector_of_bytes_per_selector_label(server: Server) -> None:
    body = server.ok("/loki/api/v1/index/volume", query='{service=~".+"}', start=ns(START_US), end=ns(END_US))
    assert body["status"] == "success"
    assert body["data"]["resultType"] == "vector"
    for s in body["data"]["result"]:
        assert set(s) == {"metric", "value"}
        t, v = s["value"]
        assert isinstance(t, (int, float)) and isinstance(v, str)
    want: Counter[str] = Counter()
    for r in records():
        want[r.service] += r.nbytes
    assert vector_of(body) == {(("service", k),): float(n) for k, n in want.items()}


def test_index_volume_target_labels(server: Server) -> None:
    body = server.ok("/loki/api/v1/index/volume", query='{service="billing"}', targetLabels="level",
                     start=ns(START_US), end=ns(END_US))
    want: Counter[str] = Counter()
    for r in records(pred=lambda r: r.service == "billing"):
        want[r.level] += r.nbytes
    assert vector_of(body) == {(("level", k),): float(n) for k, n in want.items()}


def test_index_volume_limit_keeps_the_largest(server: Server) -> None:
    body = server.ok("/loki/api/v1/index/volume", query='{service=~".+"}', limit=1, start=ns(START_US),
                     end=ns(END_US))
    want: Counter[str] = Counter()
    for r in records():
        want[r.service] += r.nbytes
    ((service, n),) = want.most_common(1)
    assert vector_of(body) == {(("service", service),): float(n)}


def test_index_volume_aggregate_by_labels(server: Server) -> None:
    # Loki's volume by labels: one {name: ""} series per label of the matching streams (every record here
    # has all four), with the bytes of the records that carry it; targetLabels narrows the names.
    body = server.ok("/loki/api/v1/index/volume", query='{service=~".+"}', aggregateBy="labels",
                     start=ns(START_US), end=ns(END_US))
    total = float(sum(r.nbytes for r in records()))
    assert vector_of(body) == {((name, ""),): total for name in STREAM_LABELS}
    body = server.ok("/loki/api/v1/index/volume", query='{service=~".+"}', aggregateBy="labels",
                     targetLabels="level", start=ns(START_US), end=ns(END_US))
    assert vector_of(body) == {(("level", ""),): total}


def test_index_volume_range_aggregate_by_labels_is_a_matrix(server: Server) -> None:
    body = server.ok("/loki/api/v1/index/volume_range", query='{service=~"auth|billing"}', aggregateBy="labels",
                     targetLabels="service,host", step="1800", start=ns(M_START), end=ns(M_END))
    assert body["data"]["resultType"] == "matrix"
    check_matrix_result(body["data"]["result"])
    got = {key_of(s["metric"]): sum(float(v) for _, v in s["values"]) for s in body["data"]["result"]}
    total = float(sum(r.nbytes for r in records(lo=M_START, hi=M_END, pred=lambda r: r.service != "api")))
    assert got == {(("service", ""),): total, (("host", ""),): total}
    assert all(len(s["values"]) > 1 for s in body["data"]["result"])


def test_index_volume_refuses_an_unknown_aggregation(server: Server) -> None:
    resp = server.get("/loki/api/v1/index/volume_range", query='{service="auth"}', aggregateBy="streams")
    assert resp.status_code == 400 and "aggregation" in resp.text


@pytest.mark.parametrize("endpoint", ["volume", "volume_range"])
def test_index_volume_post_form(server: Server, endpoint: str) -> None:
    resp = server.client.post(f"/loki/api/v1/index/{endpoint}", data={
        "query": '{service="auth"}', "start": ns(START_US), "end": ns(END_US), "step": "3600"})
    assert resp.status_code == 200, resp.text
    want = float(sum(r.nbytes for r in records(pred=lambda r: r.service == "auth")))
    result = resp.json()["data"]["result"]
    if endpoint == "volume":
        assert vector_of(resp.json()) == {(("service", "auth"),): want}
    else:
        assert [x["metric"] for x in result] == [{"service": "auth"}]
        assert sum(float(v) for _, v in result[0]["values"]) == want


def test_index_volume_range_is_a_matrix_that_adds_up_to_the_volume(server: Server) -> None:
    body = server.ok("/loki/api/v1/index/volume_range", query='{service=~"auth|billing"}', step="1800",
                     start=ns(M_START), end=ns(M_END))
    assert body["status"] == "success"
    assert body["data"]["resultType"] == "matrix"
    check_matrix_result(body["data"]["result"])
    got = {key_of(s["metric"]): s["values"] for s in body["data"]["result"]}
    want: Counter[str] = Counter()
    for r in records(lo=M_START, hi=M_END, pred=lambda r: r.service in ("auth", "billing")):
        want[r.service] += r.nbytes
    assert sorted(got) == sorted((("service", k),) for k in want)
    for (k,), values in got.items():
        assert sum(float(v) for _, v in values) == want[k[1]]
        assert all(M_START / 1e6 <= t <= M_END / 1e6 for t, _ in values)
        assert len(values) > 1      # several steps, not one total


def test_detected_labels_shape_and_cardinality(server: Server) -> None:
    body = server.ok("/loki/api/v1/detected_labels", query='{service=~".+"}', start=ns(START_US),
                     end=ns(END_US))
    assert set(body) == {"detectedLabels"}
    for d in body["detectedLabels"]:
        assert {"label", "cardinality"} <= set(d)
        assert isinstance(d["label"], str) and isinstance(d["cardinality"], int)
        want = len({r.stream[d["label"]] for r in records()})
        assert d["cardinality"] == want, d["label"]
    assert "service" in {d["label"] for d in body["detectedLabels"]}


DETECTED_TYPES = {"string", "int", "float", "boolean", "duration", "bytes"}


def test_detected_fields_shape(server: Server) -> None:
    body = server.ok("/loki/api/v1/detected_fields", query='{service="auth"}', start=ns(START_US),
                     end=ns(END_US))
    assert {"fields", "limit"} <= set(body)
    assert isinstance(body["limit"], int)
    for f in body["fields"]:
        assert {"label", "type", "cardinality", "parsers"} <= set(f)
        assert isinstance(f["label"], str) and f["type"] in DETECTED_TYPES
        assert isinstance(f["cardinality"], int)
        assert f["parsers"] is None or all(isinstance(p, str) for p in f["parsers"])
    region = [f for f in body["fields"] if f["label"] == "region"]
    assert [f["cardinality"] for f in region] == [len({r.attr["region"] for r in records(
        pred=lambda r: r.service == "auth")})]


def test_detected_fields_are_usable_label_names(server: Server) -> None:
    body = server.ok("/loki/api/v1/detected_fields", query='{service="api"}', start=ns(START_US),
                     end=ns(END_US))
    for f in body["fields"]:
        assert LABEL_NAME.fullmatch(f["label"]), f["label"]


def test_detected_fields_include_fields_parsed_from_json_lines(server: Server) -> None:
    body = server.ok("/loki/api/v1/detected_fields", query='{service="api"}', start=ns(START_US),
                     end=ns(END_US))
    fields = {f["label"]: f for f in body["fields"]}
    for name in ("status", "duration", "user"):
        assert name in fields, name
        assert fields[name]["parsers"] == ["json"]
        assert fields[name]["cardinality"] == len({json_fields(r)[name] for r in records(
            pred=lambda r: r.service == "api")})


def test_detected_field_values(server: Server) -> None:
    body = server.ok("/loki/api/v1/detected_field/region/values", query='{service="billing", level="warn"}',
                     start=ns(START_US), end=ns(END_US))
    assert set(body) >= {"values"}
    assert all(isinstance(v, str) for v in body["values"])
    want = {r.attr["region"] for r in records(pred=lambda r: r.service == "billing" and r.level == "warn")}
    assert sorted(body["values"]) == sorted(want)


def test_buildinfo(server: Server) -> None:
    body = server.ok("/loki/api/v1/status/buildinfo")
    keys = {"version", "revision", "branch", "buildDate", "buildUser", "goVersion"}
    assert keys <= set(body)
    assert all(isinstance(body[k], str) for k in keys)
    assert re.match(r"\d+\.\d+\.\d+", body["version"])     # Grafana reads the version to enable features


def test_ready(server: Server) -> None:
    assert server.client.get("/ready").status_code == 200


# -- tail (WebSocket) ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_tail_streams_matching_lines_of_the_tenant(server: Server) -> None:
    from starlette.testclient import TestClient

    start = T0_US + 30 * MINUTE_US
    app = create_app(server.cfg)         # in-process: uvicorn here has no WebSocket implementation
    got: list[Any] = []
    with TestClient(app) as client:
        query = httpx.QueryParams({"query": '{service="auth"}', "start": ns(start), "limit": "1000"})
        # An absolute URL: the Host must name the server (the default, testserver, is refused).
        with client.websocket_connect(f"ws://localhost/loki/api/v1/tail?{query}",
                                      headers={"X-Scope-OrgID": "acme"}) as ws:
            reader = threading.Thread(target=lambda: got.append(ws.receive_json()), daemon=True)
            reader.start()
            reader.join(20)
            assert got, "tail sent nothing within 20 s"
    app.state.service.catalog.close()
    msg = got[0]
    assert "streams" in msg
    assert msg.get("dropped_entries") is None or isinstance(msg["dropped_entries"], list)
    check_stream_result(msg["streams"], direction="forward")
    sent = {(int(t), line) for s in msg["streams"] for t, line in s["values"]}
    want = {(r.ts * 1000, r.message) for r in records("acme", lambda r: r.service == "auth", lo=start)}
    assert sent and sent <= want        # the lookback is best effort, but nothing else may come
    for s in msg["streams"]:
        assert s["stream"]["service"] == "auth"


def _ws_frame(sock: Any) -> tuple[int, bytes]:
    """One (unmasked, server-to-client) WebSocket frame: (opcode, payload)."""

    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed mid-frame")
            buf += chunk
        return buf

    b0, b1 = exactly(2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(exactly(2), "big")
    elif length == 127:
        length = int.from_bytes(exactly(8), "big")
    return b0 & 0x0F, exactly(length)


@pytest.mark.timeout(60)
def test_tail_over_a_real_websocket_on_the_server(server: Server) -> None:
    """A plain RFC 6455 client (stdlib sockets) against the uvicorn server, as Grafana's live tail connects."""
    import base64
    import hashlib
    import os
    import socket

    port = int(server.url.rsplit(":", 1)[1])
    key = base64.b64encode(os.urandom(16)).decode()
    query = httpx.QueryParams({"query": '{service="auth"}', "start": ns(START_US), "limit": "1000"})
    request = (f"GET /loki/api/v1/tail?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               "X-Scope-OrgID: acme\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, f"connection closed during the handshake: {head!r}"
            head += chunk
        status, *lines = head.decode("latin-1").split("\r\n")
        assert status.split(" ")[1] == "101", status
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert any(line.lower() == f"sec-websocket-accept: {accept.decode()}".lower() for line in lines)
        opcode, payload = _ws_frame(sock)
        assert opcode == 1                              # text
        msg = json.loads(payload)
    check_stream_result(msg["streams"], direction="forward")
    sent = {(int(t), line) for s in msg["streams"] for t, line in s["values"]}
    assert sent and sent <= {(r.ts * 1000, r.message) for r in records("acme", lambda r: r.service == "auth")}


# -- parameters: times, step, direction, limit, tenant ----------------------------------------------


def test_times_as_nanoseconds_float_seconds_and_rfc3339_agree(server: Server) -> None:
    lo, hi = T0_US + 20 * MINUTE_US, T0_US + 80 * MINUTE_US
    forms = [(ns(lo), ns(hi)), (f"{lo / 1e6:.3f}", f"{hi / 1e6:.3f}"),
             ("2024-03-01T10:20:00Z", "2024-03-01T11:20:00Z"),
             ("2024-03-01T10:20:00.000000000Z", "2024-03-01T11:20:00.000000000+00:00")]
    want = entries(records(pred=lambda r: r.service == "billing", lo=lo, hi=hi))
    assert want
    for start, end in forms:
        assert logs(server, '{service="billing"}', start=start, end=end) == want, (start, end)
    m_want = None
    for start, end in forms:
        body = server.ok("/loki/api/v1/query_range", query='sum(count_over_time({service="billing"}[10m]))',
                         start=start, end=end, step="600")
        m_want = body["data"]["result"] if m_want is None else m_want
        assert body["data"]["result"] == m_want, (start, end)
    assert_series({key_of(x["metric"]): {float(t): float(v) for t, v in x["values"]} for x in m_want or []},
                  vector_agg(range_series(records(pred=lambda r: r.service == "billing"), lo, hi, 10 * MINUTE_US,
                                          10 * MINUTE_US), sum))
    t = ns(T0_US + HOUR_US)
    values = {server.ok("/loki/api/v1/query", query='sum(count_over_time({service="auth"}[1h]))', time=x)
              ["data"]["result"][0]["value"][1] for x in (t, f"{(T0_US + HOUR_US) / 1e6}", "2024-03-01T11:00:00Z")}
    assert values == {str(len(records(pred=lambda r: r.service == "auth" and T0_US < r.ts <= T0_US + HOUR_US)))}


def test_log_range_includes_its_start(server: Server) -> None:
    edge = BOUNDARY[0]
    end = edge.ts + 20 * MINUTE_US
    got = logs(server, '{service="auth"}', start=ns(edge.ts), end=ns(end))
    assert (edge.ts * 1000, edge.message) in got
    assert got == entries(records(pred=lambda r: r.service == "auth", lo=edge.ts, hi=end))
    assert (edge.ts * 1000, edge.message) not in logs(server, '{service="auth"}', start=ns(edge.ts + 1),
                                                             end=ns(end))


def test_log_range_excludes_its_end(server: Server) -> None:
    edge = BOUNDARY[0]
    got = logs(server, '{service="auth"}', start=ns(edge.ts - 30 * MINUTE_US), end=ns(edge.ts))
    assert (edge.ts * 1000, edge.message) not in got
    assert got == entries(records(pred=lambda r: r.service == "auth", lo=edge.ts - 30 * MINUTE_US, hi=edge.ts))


def test_step_in_seconds_and_as_durations_agree(server: Server) -> None:
    q = 'sum by (level) (count_over_time({service=~".+"}[15m]))'
    results = [matrix(server, q, M_START, M_END, step) for step in ("900", "900.0", "900000ms", "15m")]
    want = vector_agg(range_series(records(), M_START, M_END, 15 * MINUTE_US, 15 * MINUTE_US), sum, by=("level",))
    for got in results:
        assert_series(got, want)


@pytest.mark.parametrize("direction", ["backward", "forward"])
def test_direction_and_limit(server: Server, direction: str) -> None:
    body = server.ok("/loki/api/v1/query_range", query='{service=~"api|billing"}', start=ns(START_US),
                     end=ns(END_US), limit=7, direction=direction)
    check_stream_result(body["data"]["result"], direction)
    got = sorted((int(t), line) for s in body["data"]["result"] for t, line in s["values"])
    want = sorted((r.ts * 1000, r.message) for r in records(pred=lambda r: r.service in ("api", "billing")))
    assert got == (want[-7:] if direction == "backward" else want[:7])


def test_limit_defaults_to_100(server: Server) -> None:
    assert len(records()) > 100
    body = server.ok("/loki/api/v1/query_range", query='{service=~".+"}', start=ns(START_US), end=ns(END_US))
    got = sorted((int(t), line) for s in body["data"]["result"] for t, line in s["values"])
    assert got == sorted(entries(records()))[-100:]


def test_unknown_direction_is_a_bad_request(server: Server) -> None:
    resp = server.get("/loki/api/v1/query_range", query='{service="auth"}', start=ns(START_US), end=ns(END_US),
                      direction="sideways")
    assert resp.status_code == 400


def test_tenants_are_isolated(server: Server) -> None:
    for tenant in ("default", "acme"):
        assert logs(server, '{service="auth"}', tenant) == entries(records(tenant, lambda r: r.service == "auth"))
        body = server.ok("/loki/api/v1/query", tenant=tenant,
                         query='sum by (service) (count_over_time({service=~".+"}[3h]))', time=ns(END_US))
        assert vector_of(body) == {(("service", k),): float(n) for k, n in Counter(
            r.service for r in records(tenant)).items()}
    # no header: the default tenant; an unknown tenant sees nothing
    assert logs(server, '{service="auth"}') == entries(records("default", lambda r: r.service == "auth"))
    assert logs(server, '{service="auth"}', "nobody") == []
    assert server.ok("/loki/api/v1/label/service/values", tenant="nobody", start=ns(START_US),
                     end=ns(END_US))["data"] == []


def test_stats_carry_the_query_figures(server: Server) -> None:
    body = server.ok("/loki/api/v1/query_range", query='{service="billing"} |= "timeout"', start=ns(START_US),
                     end=ns(END_US), limit=1000)
    summary = body["data"]["stats"]["summary"]
    returned = sum(len(s["values"]) for s in body["data"]["result"])
    assert returned == len(records(pred=lambda r: r.service == "billing" and "timeout" in r.message))
    assert summary["totalEntriesReturned"] == returned
    assert summary["totalLinesProcessed"] >= returned > 0
    assert summary["totalBytesProcessed"] > 0
    assert summary["execTime"] > 0
    metric = server.ok("/loki/api/v1/query_range", query='count_over_time({service="auth"}[1h])',
                       start=ns(M_START), end=ns(M_END), step="3600")["data"]["stats"]["summary"]
    assert metric["totalLinesProcessed"] >= len(records(pred=lambda r: r.service == "auth", lo=M_START - HOUR_US))
    empty = server.ok("/loki/api/v1/query_range", query='{service="billing"}', start=ns(START_US - 24 * HOUR_US),
                      end=ns(START_US - 23 * HOUR_US))["data"]
    assert empty["result"] == [] and empty["stats"]["summary"]["totalLinesProcessed"] == 0


# -- Grafana's own request shapes ------------------------------------------------------------------


def test_grafana_health_check(server: Server) -> None:
    """pkg/tsdb/loki/healthcheck.go: an instant query of vector(1)+vector(1) over 1s..4s; one frame of two
    fields (time, value) with one row whose value is 2."""
    resp = server.client.get("/loki/api/v1/query", params={"query": "vector(1)+vector(1)", "direction": "backward",
                                                           "time": str(4 * 10**9)})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert data["resultType"] == "vector"
    (sample,) = data["result"]
    assert sample["metric"] == {}
    assert float(sample["value"][1]) == 2.0


def test_grafana_range_query_with_nanoseconds_step_in_ms_and_query_tags(server: Server) -> None:
    """pkg/tsdb/loki/api.go: start/end as UnixNano, step as `<n>ms`, direction, limit, X-Query-Tags; the log
    volume histogram query of Explore."""
    q = 'sum by (level, detected_level) (count_over_time({service="auth"} | drop __error__[300s]))'
    resp = server.client.get("/loki/api/v1/query_range", params={
        "query": q, "direction": "backward", "limit": "1000", "start": ns(M_START), "end": ns(M_END),
        "step": "300000ms"}, headers={"X-Query-Tags": "Source=logvolhist", "X-Scope-OrgID": "default"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    check_matrix_result(body["data"]["result"])
    got = {key_of(s["metric"]): {float(t): float(v) for t, v in s["values"]} for s in body["data"]["result"]}
    series = range_series(records(pred=lambda r: r.service == "auth"), M_START, M_END, 5 * MINUTE_US,
                          5 * MINUTE_US)
    assert_series(got, vector_agg(series, sum, by=("level", "detected_level")))


def test_grafana_logs_query_with_query_tags(server: Server) -> None:
    resp = server.client.get("/loki/api/v1/query_range", params={
        "query": '{service="auth"} |= "imeout"', "direction": "backward", "limit": "1000", "start": ns(START_US),
        "end": ns(END_US), "step": "14400ms"}, headers={"X-Query-Tags": "Source=logsample"})
    assert resp.status_code == 200, resp.text
    got = sorted(((int(t), line) for s in resp.json()["data"]["result"] for t, line in s["values"]), reverse=True)
    assert got == entries(records(pred=lambda r: r.service == "auth" and "imeout" in r.message))


def test_query_range_post_form(server: Server) -> None:
    resp = server.client.post("/loki/api/v1/query_range", data={
        "query": '{service="billing"}', "start": ns(START_US), "end": ns(END_US), "limit": "1000"})
    assert resp.status_code == 200, resp.text
    got = sorted(((int(t), line) for s in resp.json()["data"]["result"] for t, line in s["values"]), reverse=True)
    assert got == entries(records(pred=lambda r: r.service == "billing"))


# -- errors -------------------------------------------------------------------------------------


def error_message(resp: httpx.Response) -> str:
    """What Grafana shows: the JSON body's `message`, else the whole text (pkg/tsdb/loki/api.go)."""
    try:
        message = resp.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return message or resp.text


@pytest.mark.parametrize("query", [
    '{service="api"',
    "sum(",
    '{service="api"} |= ',
    'count_over_time({service="api"})',
    'rate({service="api"}[5x])',
    "{}",
    '{service=~".*"}',
    '{service="api"} | json | status > "x"',
    'sum by service (count_over_time({service="api"}[1m]))',
])
@pytest.mark.parametrize("endpoint", ["query", "query_range"])
def test_invalid_logql_is_400_with_a_message(server: Server, query: str, endpoint: str) -> None:
    params = {"query": query, "start": ns(M_START), "end": ns(M_END), "step": "60", "time": ns(M_END)}
    resp = server.client.get(f"/loki/api/v1/{endpoint}", params=params)
    assert resp.status_code == 400, resp.text
    assert error_message(resp).strip()


@pytest.mark.parametrize(("query", "reason"), [
    ('{service="api"} |~ ip("10.0.0.0/8")', "ip: invalid operation"),
    ('{service="api"} |= ip("10.0.0.300")', "ip: invalid pattern"),
    ('{service="api"} | json | addr = ip("")', "ip: invalid pattern"),
    ('{service="api"} |> "<status> x"', "only <_> captures"),
    ('{service="api"} |~ "("', "("),
    ('approx_topk(2, count_over_time({service="api"}[1m]))', "instant"),
])
def test_what_loki_refuses_when_it_runs_is_400_saying_why(server: Server, query: str, reason: str) -> None:
    resp = server.client.get("/loki/api/v1/query_range",
                             params={"query": query, "start": ns(M_START), "end": ns(M_END), "step": "60"})
    assert resp.status_code == 400, resp.text
    assert reason in error_message(resp)


@pytest.mark.parametrize(("path", "params"), [
    ("/loki/api/v1/label/service/values", {"query": '{service="api"'}),
    ("/loki/api/v1/series", {"match[]": "count_over_time({service=\"api\"}[1m])"}),
    ("/loki/api/v1/series", {"match[]": "{service="}),
    ("/loki/api/v1/index/stats", {"query": "{}"}),
    ("/loki/api/v1/index/volume", {"query": 'sum(rate({service="api"}[1m]))'}),
    ("/loki/api/v1/detected_fields", {"query": "{service"}),
    ("/loki/api/v1/query_range", {"query": '{service="api"}', "start": "yesterday"}),
    ("/loki/api/v1/query_range", {"query": 'count_over_time({service="api"}[1m])', "step": "0"}),
    ("/loki/api/v1/query_range", {"query": 'count_over_time({service="api"}[1m])', "step": "soon"}),
])
def test_bad_parameters_of_other_endpoints_are_400(server: Server, path: str, params: dict[str, str]) -> None:
    resp = server.client.get(path, params=params)
    assert resp.status_code == 400, resp.text
    assert error_message(resp).strip()


# -- LogQL semantics over the data: log queries -----------------------------------------------------

SELECTORS: list[tuple[str, Callable[[Rec], bool]]] = [
    ('{service="auth"}', lambda r: r.service == "auth"),
    ('{service!="auth", level="error"}', lambda r: r.service != "auth" and r.level == "error"),
    ('{service=~"a.*"}', lambda r: r.service.startswith("a")),
    ('{service=~"ap"}', lambda r: False),                       # regexes are anchored
    ('{service=~"api|billing", host!~"web-[2-9]"}', lambda r: r.service in ("api", "billing") and r.host == "web-1"),
    ('{level!~"info|debug", service="billing"}', lambda r: r.level not in ("info", "debug") and r.service == "billing"),
    ('{host="web-1", source="/var/log/api.log"}', lambda r: r.host == "web-1" and r.service == "api"),
    ('{source=~".*/billing\\\\.log"}', lambda r: r.service == "billing"),
    ('{region="eu", service="api"}', lambda r: r.attr["region"] == "eu" and r.service == "api"),
    ('{region!="eu", service="auth"}', lambda r: r.attr["region"] != "eu" and r.service == "auth"),
    ('{region=~"e.", level="warn"}', lambda r: r.attr["region"] == "eu" and r.level == "warn"),
    ('{region!~"e.*", service=~"api|billing"}', lambda r: r.attr["region"] != "eu" and r.service != "auth"),
]


@pytest.mark.parametrize(("query", "pred"), SELECTORS, ids=[q for q, _ in SELECTORS])
def test_stream_selectors(server: Server, query: str, pred: Callable[[Rec], bool]) -> None:
    assert logs(server, query) == entries(records(pred=pred))


LINE_FILTERS: list[tuple[str, Callable[[Rec], bool]]] = [
    ('{service="auth"} |= "timeout"', lambda r: r.service == "auth" and "timeout" in r.message),
    ('{service="auth"} |= "Timeout"', lambda r: r.service == "auth" and "Timeout" in r.message),
    ('{service="auth"} != "timeout"', lambda r: r.service == "auth" and "timeout" not in r.message),
    ('{service="auth"} |~ "(?i)time(out)?"', lambda r: r.service == "auth" and "time" in r.message.lower()),
    ('{service="auth"} |~ "Time|TIME"', lambda r: r.service == "auth" and re.search("Time|TIME", r.message)),
    ('{service="auth"} !~ "GET|cache"', lambda r: r.service == "auth" and not re.search("GET|cache", r.message)),
    ('{service=~".+"} |= "imeout" != "TIMEOUT" |~ "[dD]atabase|db"',
     lambda r: "imeout" in r.message and "TIMEOUT" not in r.message and re.search("[dD]atabase|db", r.message)),
    ('{service="billing"} |= "status=500" |= "timeout"',
     lambda r: r.service == "billing" and "status=500" in r.message and "timeout" in r.message),
    ('{service="api"} |= "\\"status\\": 5"', lambda r: r.service == "api" and '"status": 5' in r.message),
    ('{service="auth"} |= ""', lambda r: r.service == "auth"),
    ('{service="auth"} |= "{"', lambda r: r.service == "auth" and "{" in r.message),
]


@pytest.mark.parametrize(("query", "pred"), LINE_FILTERS, ids=[q for q, _ in LINE_FILTERS])
def test_line_filters_are_case_sensitive_and_chain(server: Server, query: str, pred: Callable[[Rec], bool]) -> None:
    want = entries(records(pred=pred))
    assert want, "the data does not exercise this filter"
    assert logs(server, query) == want


def test_the_data_tells_line_filter_cases_apart() -> None:
    """The case-sensitivity cases above only mean something if each spelling is in the data."""
    auth = [r.message for r in records(pred=lambda r: r.service == "auth")]
    for spelling in ("timeout", "Timeout", "TIMEOUT"):
        assert any(spelling in m for m in auth), spelling


def _json_pred(cond: Callable[[dict[str, str]], bool]) -> Callable[[Rec], bool]:
    return lambda r: r.service == "api" and cond(json_fields(r))


def _logfmt_pred(cond: Callable[[dict[str, str]], bool]) -> Callable[[Rec], bool]:
    return lambda r: r.service == "billing" and cond(logfmt_fields(r))


PARSED: list[tuple[str, Callable[[Rec], bool]]] = [
    ('{service="api"} | json | status >= 500', _json_pred(lambda f: int(f["status"]) >= 500)),
    ('{service="api"} | json | status == 404', _json_pred(lambda f: f["status"] == "404")),
    ('{service="api"} | json | duration > 250ms', _json_pred(lambda f: DURATION_S[f["duration"]] > 0.25)),
    ('{service="api"} | json | duration <= 250ms', _json_pred(lambda f: DURATION_S[f["duration"]] <= 0.25)),
    ('{service="api"} | json | size >= 10KB', _json_pred(lambda f: SIZE_BYTES[f["size"]] >= 10_000)),
    ('{service="api"} | json | size > 10KB and duration <= 1.5s',
     _json_pred(lambda f: SIZE_BYTES[f["size"]] > 10_000 and DURATION_S[f["duration"]] <= 1.5)),
    ('{service="api"} | json | user="alice" or status == 404',
     _json_pred(lambda f: f["user"] == "alice" or f["status"] == "404")),
    ('{service="api"} | json | latency > 12', _json_pred(lambda f: float(f["latency"]) > 12)),
    ('{service="api"} | json | msg=~"[Tt]imeout.*"', _json_pred(lambda f: f["msg"].lower().startswith("timeout"))),
    ('{service="api"} | json | user!~"a.*|b.*"', _json_pred(lambda f: f["user"] == "carol")),
    ('{service="billing"} | logfmt | status == 500', _logfmt_pred(lambda f: f["status"] == "500")),
    ('{service="billing"} | logfmt | duration >= 1.5s, user!="bob"',
     _logfmt_pred(lambda f: DURATION_S[f["duration"]] >= 1.5 and f["user"] != "bob")),
    ('{service="billing"} | logfmt | msg="upstream timeout"', _logfmt_pred(lambda f: f["msg"] == "upstream timeout")),
    ('{service="billing"} | logfmt | size < 10KiB', _logfmt_pred(lambda f: SIZE_BYTES[f["size"]] < 10_240)),
    ('{service="billing"} |= "declined" | logfmt | status != 402',
     _logfmt_pred(lambda f: f["msg"] == "card declined" and f["status"] != "402")),
]


@pytest.mark.parametrize(("query", "pred"), PARSED, ids=[q for q, _ in PARSED])
def test_parsers_and_label_filters(server: Server, query: str, pred: Callable[[Rec], bool]) -> None:
    want = entries(records(pred=pred))
    assert want, "the data does not exercise this filter"
    assert logs(server, query) == want


def test_pattern_parser(server: Server) -> None:
    got = _stream_labels(server, '{service="billing"} | pattern "status=<status> duration=<_> size=<size> <_>" '
                                 '| status="500" | keep status, size')
    want = {(r.ts * 1000, key_of({"status": "500", "size": logfmt_fields(r)["size"]}))
            for r in records(pred=_logfmt_pred(lambda f: f["status"] == "500"))}
    assert want and got == want


def test_regexp_parser(server: Server) -> None:
    got = logs(server, '{service="auth"} | regexp `^(?P<verb>[A-Z]+) (?P<path>/\\S+)` | verb="GET" | path=~"/u.*"')
    assert got == entries(records(pred=lambda r: r.service == "auth" and r.message.startswith("GET /u")))
    assert got


def test_json_adds_the_fields_to_the_stream_labels(server: Server) -> None:
    body = server.ok("/loki/api/v1/query_range", query='{service="api"} | json', start=ns(START_US),
                     end=ns(END_US), limit=1000)
    got = {(int(t), key_of(s["stream"])) for s in body["data"]["result"] for t, _ in s["values"]}
    want = {(r.ts * 1000, key_of({**r.labels, **json_fields(r)})) for r in records(pred=lambda r: r.service == "api")}
    assert got == want


def test_logfmt_adds_the_fields_to_the_stream_labels(server: Server) -> None:
    body = server.ok("/loki/api/v1/query_range", query='{service="billing"} | logfmt', start=ns(START_US),
                     end=ns(END_US), limit=1000)
    got = {(int(t), key_of(s["stream"])) for s in body["data"]["result"] for t, _ in s["values"]}
    want = {(r.ts * 1000, key_of({**r.labels, **logfmt_fields(r)}))
            for r in records(pred=lambda r: r.service == "billing")}
    assert got == want


def test_error_label_marks_lines_a_parser_cannot_read(server: Server) -> None:
    body = server.ok("/loki/api/v1/query_range", query='{service=~"api|auth"} | json', start=ns(START_US),
                     end=ns(END_US), limit=1000)
    errors = {int(t): s["stream"].get("__error__") for s in body["data"]["result"] for t, _ in s["values"]}
    want = {r.ts * 1000: (None if r.service == "api" else "JSONParserErr")
            for r in records(pred=lambda r: r.service in ("api", "auth"))}
    assert errors == want
    assert logs(server, '{service=~"api|auth"} | json | __error__=""') == entries(
        records(pred=lambda r: r.service == "api"))
    assert logs(server, '{service=~"api|auth"} | json | __error__="JSONParserErr"') == entries(
        records(pred=lambda r: r.service == "auth"))
    assert logs(server, '{service=~"api|auth"} | json | __error__!=""') == entries(
        records(pred=lambda r: r.service == "auth"))


def test_line_format(server: Server) -> None:
    got = logs(server, '{service="api"} | json | line_format "{{.user}} got {{.status}} in {{.duration}}"')
    want = sorted(((r.ts * 1000, "{user} got {status} in {duration}".format(**json_fields(r)))
                   for r in records(pred=lambda r: r.service == "api")), reverse=True)
    assert got == want


def test_line_filter_after_line_format_sees_the_new_line(server: Server) -> None:
    got = logs(server, '{service="api"} | json | line_format "{{.user}}/{{.status}}" |= "alice/5"')
    want = sorted(((r.ts * 1000, f"alice/{json_fields(r)['status']}") for r in records(
        pred=_json_pred(lambda f: f["user"] == "alice" and f["status"].startswith("5")))), reverse=True)
    assert want and got == want


def test_line_filter_after_line_format_is_case_sensitive(server: Server) -> None:
    got = logs(server, '{service="api"} | json | line_format "{{.msg}} ({{.user}})" |= "Timeout" != "(bob)"')
    want = sorted(((r.ts * 1000, "{msg} ({user})".format(**json_fields(r))) for r in records(
        pred=_json_pred(lambda f: "Timeout" in f["msg"] and f["user"] != "bob"))), reverse=True)
    assert want and got == want
    assert any("timeout" in json_fields(r)["msg"] for r in records(pred=lambda r: r.service == "api"))


def _stream_labels(server: Server, query: str) -> set[tuple[int, Key]]:
    body = server.ok("/loki/api/v1/query_range", query=query, start=ns(START_US), end=ns(END_US), limit=1000)
    return {(int(t), key_of(s["stream"])) for s in body["data"]["result"] for t, _ in s["values"]}


def test_label_format_renames_and_templates_then_keep(server: Server) -> None:
    got = _stream_labels(server, '{service="api"} | json | label_format who=user')
    want = set()
    for r in records(pred=lambda r: r.service == "api"):
        labels = {**r.labels, **json_fields(r)}
        labels["who"] = labels.pop("user")
        want.add((r.ts * 1000, key_of(labels)))
    assert got == want
    got = _stream_labels(server, '{service="api"} | json | label_format who=user | keep service, who')
    assert got == {(r.ts * 1000, key_of({"service": "api", "who": json_fields(r)["user"]}))
                   for r in records(pred=lambda r: r.service == "api")}
    got = _stream_labels(server, '{service="api"} | json | label_format code="{{.status}}-{{.user}}" | keep code')
    assert got == {(r.ts * 1000, key_of({"code": "{status}-{user}".format(**json_fields(r))}))
                   for r in records(pred=lambda r: r.service == "api")}


def test_drop(server: Server) -> None:
    got = _stream_labels(server, '{service="billing"} | logfmt | drop msg, size, duration, source')
    want = set()
    for r in records(pred=lambda r: r.service == "billing"):
        labels = {**r.labels, **logfmt_fields(r)}
        for name in ("msg", "size", "duration", "source"):
            del labels[name]
        want.add((r.ts * 1000, key_of(labels)))
    assert got == want


def test_label_filter_regex_with_an_inline_flag(server: Server) -> None:
    assert logs(server, '{service="api"} | json | msg=~"(?i)timeout.*"') == entries(
        records(pred=_json_pred(lambda f: f["msg"].lower().startswith("timeout"))))


def test_label_filter_on_an_attribute(server: Server) -> None:
    assert logs(server, '{service="api"} | region="eu"') == entries(
        records(pred=lambda r: r.service == "api" and r.attr["region"] == "eu"))


# -- LogQL semantics over the data: metric queries -------------------------------------------------

STEP = 10 * MINUTE_US


def _m(server: Server, query: str, step_us: int = STEP) -> Series:
    return matrix(server, query, M_START, M_END, f"{step_us // SECOND_US}")


def test_count_over_time_per_stream_with_windows_open_on_the_left(server: Server) -> None:
    got = _m(server, 'count_over_time({service="auth"}[10m])')
    want = range_series(records(pred=lambda r: r.service == "auth"), M_START, M_END, STEP, 10 * MINUTE_US)
    assert_series(got, want)
    # the record at exactly 11:00 counts at the 11:00 step, not at 11:10
    edge = BOUNDARY[0]
    assert got[edge.labels_key][edge.ts / 1e6] >= 1


def test_rate(server: Server) -> None:
    got = _m(server, 'rate({service="billing"}[30m])', 15 * MINUTE_US)
    want = range_series(records(pred=lambda r: r.service == "billing"), M_START, M_END, 15 * MINUTE_US,
                        30 * MINUTE_US, value=lambda w: len(w) / 1800)
    assert_series(got, want)


def test_bytes_over_time_and_bytes_rate(server: Server) -> None:
    rs = records(pred=lambda r: r.service.startswith("a"))
    assert_series(_m(server, 'bytes_over_time({service=~"a.*"}[1h])', 20 * MINUTE_US),
                  range_series(rs, M_START, M_END, 20 * MINUTE_US, HOUR_US, value=lambda w: sum(r.nbytes for r in w)))
    assert_series(_m(server, 'bytes_rate({service=~"a.*"}[1h])', 20 * MINUTE_US),
                  range_series(rs, M_START, M_END, 20 * MINUTE_US, HOUR_US,
                               value=lambda w: sum(r.nbytes for r in w) / 3600))


def test_count_over_time_with_a_line_filter_and_a_parser(server: Server) -> None:
    got = _m(server, 'sum by (status) (count_over_time({service="api"} |= "imeout" | json | status >= 500 [30m]))')
    rs = records(pred=lambda r: r.service == "api" and "imeout" in r.message and int(json_fields(r)["status"]) >= 500)
    want = range_series(rs, M_START, M_END, STEP, 30 * MINUTE_US, key=lambda r: (("status", json_fields(r)["status"]),))
    assert_series(got, want)


ALL_RS = records()
ALL_30M = range_series(ALL_RS, M_START, M_END, STEP, 30 * MINUTE_US)

VECTOR_AGGS: list[tuple[str, Series]] = [
    ('sum(count_over_time({service=~".+"}[30m]))', vector_agg(ALL_30M, sum)),
    ('sum by (level) (count_over_time({service=~".+"}[30m]))', vector_agg(ALL_30M, sum, by=("level",))),
    ('sum(count_over_time({service=~".+"}[30m])) by (service, host)',
     vector_agg(ALL_30M, sum, by=("service", "host"))),
    ('sum without (host, source) (count_over_time({service=~".+"}[30m]))',
     vector_agg(ALL_30M, sum, without=("host", "source"))),
    ('avg by (service) (count_over_time({service=~".+"}[30m]))', vector_agg(ALL_30M, mean, by=("service",))),
    ('max by (service) (count_over_time({service=~".+"}[30m]))', vector_agg(ALL_30M, max, by=("service",))),
    ('min by (level) (count_over_time({service=~".+"}[30m]))', vector_agg(ALL_30M, min, by=("level",))),
    ('count by (service) (count_over_time({service=~".+"}[30m]))', vector_agg(ALL_30M, len, by=("service",))),
    ('count without (level) (count_over_time({service=~".+"}[30m]))',
     vector_agg(ALL_30M, len, without=("level",))),
]


@pytest.mark.parametrize(("query", "want"), VECTOR_AGGS, ids=[q for q, _ in VECTOR_AGGS])
def test_vector_aggregations(server: Server, query: str, want: Series) -> None:
    assert_series(_m(server, query), want)


@pytest.mark.parametrize(("op", "k"), [("topk", 2), ("bottomk", 1), ("topk", 1)])
def test_topk_and_bottomk_pick_per_step(server: Server, op: str, k: int) -> None:
    got = _m(server, f'{op}({k}, sum by (service, level) (count_over_time({{service=~".+"}}[20m])))')
    base = vector_agg(range_series(ALL_RS, M_START, M_END, STEP, 20 * MINUTE_US), sum, by=("service", "level"))
    steps = sorted({t for pts in base.values() for t in pts})
    assert steps
    for t in steps:
        values = sorted(pts[t] for pts in base.values() if t in pts)
        picked = {key: pts[t] for key, pts in got.items() if t in pts}
        expect = values[-k:] if op == "topk" else values[:k]
        assert sorted(picked.values()) == expect, t           # ties may pick either series
        assert all(base[key][t] == v for key, v in picked.items())


UNWRAP_CASES: list[tuple[str, str, Callable[[Rec], float], Callable[[list[float]], float], tuple[str, ...] | None,
                         Callable[[Rec], dict[str, str]]]] = [
    ('sum by (service) (sum_over_time({service="api"} | json | unwrap latency [30m]))', "api",
     lambda r: float(json_fields(r)["latency"]), sum, ("service",), json_fields),
    ('avg_over_time({service="api"} | json | unwrap latency [30m]) by (level)', "api",
     lambda r: float(json_fields(r)["latency"]), mean, ("level",), json_fields),
    ('max_over_time({service="billing"} | logfmt | unwrap bytes(size) [1h]) by (host)', "billing",
     lambda r: float(SIZE_BYTES[logfmt_fields(r)["size"]]), max, ("host",), logfmt_fields),
    ('min_over_time({service="api"} | json | unwrap duration(duration) [1h]) by (status)', "api",
     lambda r: DURATION_S[json_fields(r)["duration"]], min, ("status",), json_fields),
    ('quantile_over_time(0.9, {service="api"} | json | unwrap latency [1h]) by (service)', "api",
     lambda r: float(json_fields(r)["latency"]), lambda vs: quantile(0.9, vs), ("service",), json_fields),
    ('sum by (user) (sum_over_time({service="billing"} | logfmt | unwrap duration_seconds(duration) [30m]))',
     "billing", lambda r: DURATION_S[logfmt_fields(r)["duration"]], sum, ("user",), logfmt_fields),
]


@pytest.mark.parametrize(("query", "service", "value", "fn", "by", "fields"), UNWRAP_CASES,
                         ids=[c[0] for c in UNWRAP_CASES])
def test_unwrap_range_aggregations(server: Server, query: str, service: str, value: Callable[[Rec], float],
                                   fn: Callable[[list[float]], float], by: tuple[str, ...],
                                   fields: Callable[[Rec], dict[str, str]]) -> None:
    range_us = 30 * MINUTE_US if "[30m]" in query else HOUR_US
    rs = records(pred=lambda r: r.service == service)

    def key(r: Rec) -> Key:
        labels = {**r.stream, **fields(r)}
        return tuple(sorted((n, labels[n]) for n in by))

    want = range_series(rs, M_START, M_END, STEP, range_us, value=lambda w: fn([value(r) for r in w]), key=key)
    assert_series(_m(server, query), want)


def _per(pred: Callable[[Rec], bool], by: str, range_us: int = HOUR_US, step_us: int = HOUR_US) -> Series:
    return vector_agg(range_series(records(pred=pred), M_START, M_END, step_us, range_us), sum, by=(by,))


def test_binary_operators_between_vectors(server: Server) -> None:
    errors = _per(lambda r: r.level == "error", "service")
    totals = _per(lambda r: True, "service")
    want = {k: {t: v / totals[k][t] for t, v in pts.items()} for k, pts in errors.items()}
    got = _m(server, 'sum by (service) (count_over_time({level="error"}[1h])) / '
                     'sum by (service) (count_over_time({service=~".+"}[1h]))', HOUR_US)
    assert_series(got, want)
    # without labels on either side
    e_all = vector_agg(errors, sum)
    t_all = vector_agg(totals, sum)
    got = _m(server, 'sum(count_over_time({level="error"}[1h])) / sum(count_over_time({service=~".+"}[1h]))',
             HOUR_US)
    assert_series(got, {(): {t: v / t_all[()][t] for t, v in e_all[()].items()}})


def test_one_to_one_matching_with_ignoring_and_on(server: Server) -> None:
    errors = vector_agg(range_series(records(pred=lambda r: r.level == "error"), M_START, M_END, HOUR_US, HOUR_US),
                        sum, by=("service", "level"))
    totals = _per(lambda r: True, "service")
    want = {}
    for k, pts in errors.items():
        service = tuple((n, v) for n, v in k if n == "service")
        want[service] = {t: v / totals[service][t] for t, v in pts.items()}
    got = _m(server, 'sum by (service, level) (count_over_time({level="error"}[1h])) / ignoring (level) '
                     'sum by (service) (count_over_time({service=~".+"}[1h]))', HOUR_US)
    assert_series(got, want)
    got = _m(server, 'sum by (service, level) (count_over_time({level="error"}[1h])) / on (service) '
                     'sum by (service) (count_over_time({service=~".+"}[1h]))', HOUR_US)
    assert_series(got, want)


def test_set_operators(server: Server) -> None:
    every = _per(lambda r: True, "service", range_us=20 * MINUTE_US, step_us=STEP)
    warns = _per(lambda r: r.level == "warn" and r.host == "web-1", "service", range_us=20 * MINUTE_US, step_us=STEP)
    q_all = 'sum by (service) (count_over_time({service=~".+"}[20m]))'
    q_warn = 'sum by (service) (count_over_time({level="warn", host="web-1"}[20m]))'
    both = {k: {t: v for t, v in pts.items() if t in warns.get(k, {})} for k, pts in every.items()}
    rest = {k: {t: v for t, v in pts.items() if t not in warns.get(k, {})} for k, pts in every.items()}
    assert any(rest.values()) and any(both.values())
    assert_series(_m(server, f"{q_all} and {q_warn}"), {k: pts for k, pts in both.items() if pts})
    assert_series(_m(server, f"{q_all} unless {q_warn}"), {k: pts for k, pts in rest.items() if pts})


def test_or_is_evaluated_at_each_step(server: Server) -> None:
    every = _per(lambda r: True, "service", range_us=20 * MINUTE_US, step_us=STEP)
    warns = _per(lambda r: r.level == "warn" and r.host == "web-1", "service", range_us=20 * MINUTE_US, step_us=STEP)
    assert any(set(pts) - set(warns.get(k, {})) for k, pts in every.items() if k in warns)
    got = _m(server, 'sum by (service) (count_over_time({level="warn", host="web-1"}[20m])) or '
                     'sum by (service) (count_over_time({service=~".+"}[20m]))')
    assert_series(got, {k: {**pts, **warns.get(k, {})} for k, pts in every.items()})


@pytest.mark.parametrize(("range_m", "step_m"), [(5, 15), (7, 10), (25, 10), (60, 60)])
def test_ranges_and_steps_that_do_not_divide_each_other(server: Server, range_m: int, step_m: int) -> None:
    got = _m(server, f'sum by (service) (count_over_time({{service=~".+"}}[{range_m}m]))', step_m * MINUTE_US)
    want = vector_agg(range_series(ALL_RS, M_START, M_END, step_m * MINUTE_US, range_m * MINUTE_US), sum,
                      by=("service",))
    assert_series(got, want)


def test_offset_moves_the_window_back(server: Server) -> None:
    got = _m(server, 'sum(count_over_time({service="auth"}[10m] offset 5m))')
    rs = records(pred=lambda r: r.service == "auth")
    want = {}
    for t in range(M_START, M_END + 1, STEP):
        n = sum(1 for r in rs if t - 15 * MINUTE_US < r.ts <= t - 5 * MINUTE_US)
        if n:
            want[t / 1e6] = float(n)
    assert_series(got, {(): want})


def test_binary_operators_with_scalars(server: Server) -> None:
    per = _per(lambda r: True, "service")
    assert_series(_m(server, 'sum by (service) (count_over_time({service=~".+"}[1h])) * 2 + 1', HOUR_US),
                  {k: {t: v * 2 + 1 for t, v in pts.items()} for k, pts in per.items()})
    assert_series(_m(server, '100 - sum by (service) (count_over_time({service=~".+"}[1h]))', HOUR_US),
                  {k: {t: 100 - v for t, v in pts.items()} for k, pts in per.items()})
    assert_series(_m(server, 'sum by (service) (count_over_time({service=~".+"}[1h])) / 4 ^ 2', HOUR_US),
                  {k: {t: v / 16 for t, v in pts.items()} for k, pts in per.items()})


def test_comparison_operators_filter_or_return_bool(server: Server) -> None:
    per = _per(lambda r: True, "service", range_us=30 * MINUTE_US, step_us=STEP)
    values = sorted(v for pts in per.values() for v in pts.values())
    cut = values[len(values) // 2]
    assert values[0] <= cut < values[-1]
    filtered = {k: {t: v for t, v in pts.items() if v > cut} for k, pts in per.items()}
    assert_series(_m(server, f'sum by (service) (count_over_time({{service=~".+"}}[30m])) > {cut:g}'),
                  {k: pts for k, pts in filtered.items() if pts})
    assert_series(_m(server, f'sum by (service) (count_over_time({{service=~".+"}}[30m])) > bool {cut:g}'),
                  {k: {t: float(v > cut) for t, v in pts.items()} for k, pts in per.items()})


def test_vector_function_and_scalar_arithmetic_over_a_range(server: Server) -> None:
    got = _m(server, "vector(1) + vector(1)", HOUR_US)
    assert_series(got, {(): {t / 1e6: 2.0 for t in range(M_START, M_END + 1, HOUR_US)}})


def test_instant_metric_queries(server: Server) -> None:
    at = M_END
    body = server.ok("/loki/api/v1/query", query='sum by (service) (count_over_time({service=~".+"}[2h]))',
                     time=ns(at))
    want = Counter(r.service for r in records(lo=at - 2 * HOUR_US + 1, hi=at + 1))
    assert vector_of(body) == {(("service", k),): float(n) for k, n in want.items()}
    body = server.ok("/loki/api/v1/query", query='topk(1, sum by (service) (count_over_time({service=~".+"}[2h])))',
                     time=ns(at))
    ((service, n),) = want.most_common(1)
    assert vector_of(body) == {(("service", service),): float(n)}
    body = server.ok("/loki/api/v1/query",
                     query='sum(rate({service="billing"} | logfmt | status == 500 [1h])) * 3600', time=ns(at))
    n = len(records(pred=_logfmt_pred(lambda f: f["status"] == "500"), lo=at - HOUR_US + 1, hi=at + 1))
    assert vector_of(body) == {(): pytest.approx(float(n))}


# -- differential: LogQL and loglake's own language over the same data ----------------------------


def native_rows(server: Server, q: str, tenant: str = "default", lo: int = START_US,
                hi: int = END_US) -> list[tuple[int, str]]:
    body = server.ok("/api/v1/search", tenant=tenant, q=q, start=ns(lo), end=ns(hi), limit=10_000,
                     fields="message")
    return sorted(((parse_time_us(r["ts"]) * 1000, r["message"]) for r in body["rows"]), reverse=True)


def native_counts(server: Server, q: str, by: str | None, tenant: str = "default") -> dict[tuple[Key, float], float]:
    """Native hourly counts over [10:00, 12:00), keyed like LogQL's points: a bucket [b, b+1h) is LogQL's
    step b+1h; zero buckets left out, as LogQL leaves out steps without samples."""
    params = {"q": q, "start": ns(M_START), "end": ns(M_END), "interval": "1h", "fn": "count"}
    if by:
        params["by"] = by
    body = server.ok("/api/v1/aggregate", tenant=tenant, **params)
    buckets = [parse_time_us(b) for b in body["buckets"]]
    out = {}
    for s in body["series"]:
        assert not s["other"]
        key = key_of({k: v for k, v in s["group"].items() if v is not None})
        for b, v in zip(buckets, s["points"], strict=True):
            if v:
                out[(key, (b + HOUR_US) / 1e6)] = float(v)
    return out


def logql_counts(server: Server, selector: str, by: str | None, tenant: str = "default",
                 ) -> dict[tuple[Key, float], float]:
    grouping = f" by ({by})" if by else ""
    got = matrix(server, f"sum{grouping} (count_over_time({selector}[1h]))", M_START, M_END, "3600", tenant)
    return {(k, t): v for k, pts in got.items() for t, v in pts.items()}


#: (LogQL, native): the same records. LogQL's line filters are case-sensitive, native words are not, so a
#: case-sensitive native equivalent is a `message:/regex/`, and a native word is `|~ "(?i)word"`.
EQUIVALENT = [
    ('{service="auth"} |= "timeout"', "service:auth message:/timeout/"),
    ('{level="error"}', "level:error"),
    ('{service=~"api|auth", host!="web-2"}', "(service:api OR service:auth) -host:web-2"),
    ('{region="eu"} != "timeout"', "region:eu -message:/timeout/"),
    ('{service="billing"} |~ "status=5[0-9]{2}"', "service:billing message:/status=5[0-9]{2}/"),
    ('{service=~".+"} |~ "(?i)timeout"', "timeout"),
    ('{service="api", level=~"warn|error"} |= "alice"', "service:api (level:warn OR level:error) message:/alice/"),
    ('{service=~".+", level!="info"} |= "us" != "1.5s"', '-level:info message:/us/ -message:/1\\.5s/'),
]


@pytest.mark.parametrize(("logql", "native"), EQUIVALENT, ids=[q for q, _ in EQUIVALENT])
def test_logql_and_native_return_the_same_rows(server: Server, logql: str, native: str) -> None:
    rows = native_rows(server, native)
    assert rows, "the data does not exercise this pair"
    assert logs(server, logql) == rows


@pytest.mark.parametrize(("selector", "native", "by"), [
    ('{service="billing"}', "service:billing", None),
    ('{service="billing"}', "service:billing", "level"),
    ('{service="api"} |= "Timeout"', "service:api message:/Timeout/", "host"),
    ('{service=~"api|billing", level="error"}', "(service:api OR service:billing) level:error", "service"),
])
def test_logql_and_native_hourly_counts_agree(server: Server, selector: str, native: str, by: str | None) -> None:
    """count_over_time with step == range == 1h against /api/v1/aggregate?interval=1h (no record of these
    selections is on a whole hour, where the two differ: see the next test)."""
    got = logql_counts(server, selector, by)
    assert got, "the data does not exercise this pair"
    assert got == native_counts(server, native, by)


def test_a_record_on_the_hour_is_the_end_of_a_logql_window_but_the_start_of_a_native_bucket(server: Server) -> None:
    edge = BOUNDARY[0]                                       # auth, error, at exactly 11:00
    logql = logql_counts(server, '{service="auth", level="error"}', None)
    native = native_counts(server, "service:auth level:error", None)
    n = Counter(r.ts > edge.ts for r in records(pred=lambda r: r.service == "auth" and r.level == "error",
                                                lo=M_START, hi=M_END))
    t11, t12 = edge.ts / 1e6, (edge.ts + HOUR_US) / 1e6
    # LogQL: (10:00, 11:00] at 11:00 holds the edge; native: [11:00, 12:00) holds it, reported at 12:00 here.
    assert logql[((), t11)] == n[False] and logql[((), t12)] == n[True]
    assert native[((), t11)] == n[False] - 1 and native[((), t12)] == n[True] + 1


_tenants = iter(range(1, 10_000))
H_WORDS = ["Timeout", "timeout", "TIMEOUT", "db", "reset", "peer", "alice", "Bob", "bob", "ok", "status=500",
           "GET", "took", "250ms"]
FILTER_WORDS = ["timeout", "Timeout", "TIMEOUT", "db", "bob", "Bob", "ok"]

_h_records = st.lists(st.fixed_dictionaries({
    "second": st.integers(0, 2 * 3600 - 1),
    "micro": st.integers(1, 990_000),              # (+ index < 40) never on a whole hour: see the test above
    "service": st.sampled_from(["api", "auth", "web"]),
    "host": st.sampled_from(["web-1", "web-2"]),
    "level": st.sampled_from(["info", "warn", "error", "debug"]),
    "region": st.sampled_from(["eu", "us"]),
    "words": st.lists(st.sampled_from(H_WORDS), min_size=1, max_size=5),
}), min_size=1, max_size=40)

#: (LogQL selector, native query, Python predicate)
H_SELECTORS: list[tuple[str, str, Callable[[Rec], bool]]] = [
    ('{service="api"}', "service:api", lambda r: r.service == "api"),
    ('{service=~"api|auth"}', "(service:api OR service:auth)", lambda r: r.service in ("api", "auth")),
    ('{service=~".+", level!="info"}', "-level:info", lambda r: r.level != "info"),
    ('{region="eu", host="web-1"}', "region:eu host:web-1", lambda r: r.attr["region"] == "eu" and r.host == "web-1"),
    ('{level=~"warn|error", service!="web"}', "(level:warn OR level:error) -service:web",
     lambda r: r.level in ("warn", "error") and r.service != "web"),
]
#: (LogQL line filter, native, Python predicate on the message) for a word w
H_FILTERS: list[Callable[[str], tuple[str, str, Callable[[str], bool]]]] = [
    lambda w: ("", "", lambda m: True),
    lambda w: (f' |= "{w}"', f" message:/{w}/", lambda m: w in m),
    lambda w: (f' != "{w}"', f" -message:/{w}/", lambda m: w not in m),
    lambda w: (f' |~ "(?i){w}"', f" {w}", lambda m: w.lower() in m.lower()),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(raw=_h_records, selector=st.sampled_from(H_SELECTORS), make_filter=st.sampled_from(H_FILTERS),
       word=st.sampled_from(FILTER_WORDS), by=st.sampled_from([None, "level", "service"]))
def test_differential_on_generated_data(server: Server, lake: Lake, raw: list[dict[str, Any]],
                                        selector: tuple[str, str, Callable[[Rec], bool]],
                                        make_filter: Callable[[str], tuple[str, str, Callable[[str], bool]]],
                                        word: str, by: str | None) -> None:
    n = next(_tenants)
    tenant = f"hyp{n}"
    recs = []
    for i, d in enumerate(raw):
        ts = T0_US + d["second"] * SECOND_US + d["micro"] + i      # distinct times
        recs.append(Rec(f"{tenant}-{i}", tenant, ts, d["service"], d["host"], d["level"], " ".join(d["words"]),
                        (("id", f"{tenant}-{i}"), ("region", d["region"]))))
    write_tenants(lake.cfg.storage.data_root, lake.catalog, {tenant: recs}, partition=n)
    TENANTS[tenant] = recs
    try:
        l_sel, n_sel, pred = selector
        l_filter, n_filter, mpred = make_filter(word)
        logql, native = l_sel + l_filter, (n_sel + n_filter).strip()
        want = entries([r for r in recs if pred(r) and mpred(r.message)])
        assert logs(server, logql, tenant) == want
        assert native_rows(server, native, tenant) == want
        counts = logql_counts(server, logql, by, tenant)
        assert counts == native_counts(server, native, by, tenant)
        expect: Counter[tuple[Key, float]] = Counter()
        for r in recs:
            if pred(r) and mpred(r.message):
                hour_end = (r.ts // HOUR_US + 1) * HOUR_US
                expect[(((by, r.stream[by]),) if by else (), hour_end / 1e6)] += 1
        assert counts == {k: float(v) for k, v in expect.items()}
    finally:
        del TENANTS[tenant]


@pytest.mark.parametrize("form", [{"query": '{service="api"}', "limit": "lots"}, {"limit": "3"}],
                         ids=["limit not a number", "no query"])
def test_bad_form_body_is_a_bad_request(server: Server, form: dict[str, str]) -> None:
    resp = server.client.post("/loki/api/v1/query_range", data=form)
    assert resp.status_code == 400, resp.text


def test_pipeline_regexes_are_re2_and_cannot_backtrack() -> None:
    # Python's re takes exponential time on the second; RE2 answers at once (a hang fails by pytest's timeout).
    from query.loki.pipeline import regex

    assert regex(r"(a+)+b").search("a" * 50_000 + "b") is not None
    assert regex(r"^(a+)+$").search("a" * 50_000 + "b") is None


def test_invalid_pipeline_regex_is_a_bad_request(server: Server) -> None:
    resp = server.get("/loki/api/v1/query_range", query='{service="api"} | json | msg=~"a("',
                      start="2024-03-01T00:00:00Z", end="2024-03-02T00:00:00Z")
    assert resp.status_code == 400, resp.text
