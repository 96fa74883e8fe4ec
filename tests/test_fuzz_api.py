"""Hostile input on the query side: the HTTP API fuzzed, over real uvicorn servers on loopback.

Whatever a caller sends — random text in the query languages, any value of any
parameter or header, path-like names, garbage credentials — the answer is a 2xx,
or a 4xx whose JSON body says why; never a 5xx, never slower than the query
timeout (plus a small margin), never content from outside the data root, and
with keys on, never another tenant's rows.

The lake is written straight through the storage package (no broker, no
ingest) into one temporary root, with records in the last hour so that the
default time ranges (and so most fuzzed requests) really read segments:

    root/data/            the data root: tenants default, acme, beta (messages marked DFLTMARK,
                          ACMEMARK, BETAMARK); plain, JSON and logfmt lines; odd attribute keys
    root/data_outside/    a sibling sharing the data root's name as a prefix: a whole lake of
                          tenant default, every row and file saying OUTSIDE_MARK
    root/secret.txt       OUTSIDE_MARK as plain text, next to the data root

Three servers: auth off (the schema fuzz and the query-language fuzz), auth on
(credentials and tenancy), and one over a bigger lake with a tiny
``query.timeout_s`` (what a timeout looks like). Known product bugs are strict
xfails below; the broad fuzzers step over exactly those inputs (``known_bug``)
so that they keep finding new ones.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pyarrow as pa
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loglake.config import Config, load_config
from query.api.app import create_app
from query.auth import create_key
from query.errors import QueryError
from query.timerange import now_us, parse_duration_us, parse_time_us
from storage.catalog import Catalog, PartitionCommit, SavedQueryRow
from storage.schema import RECORD_SCHEMA, SEVERITY
from storage.segments import SegmentInfo, write_segments
from tests.processes import free_port, uvicorn_thread

#: query.timeout_s of the fuzzed servers; every answer must come within it plus MARGIN_S.
FUZZ_TIMEOUT_S = 5.0
MARGIN_S = 2.0
#: Planted only outside the data root: no response may ever contain it.
OUTSIDE_MARK = "OUTSIDEROOT7Q2XK"
#: Strings that would mean a response read a file it must not: the plant, and /etc/passwd's first line.
FOREIGN = (OUTSIDE_MARK.encode(), b"root:x:0:0")
MARKS = {"default": "DFLTMARK", "acme": "ACMEMARK", "beta": "BETAMARK"}
#: Saved queries made in each tenant (names carry the tenant's mark, so a leak shows).
SAVED = {t: f"{m.lower()}-errors" for t, m in MARKS.items()}
MINUTE_US = 60_000_000
#: The range every explicit request uses: it covers every record.
RANGE = {"start": "now-2h", "end": "now"}

# Hypothesis settings shared by the query-language fuzzers: reproducible in CI, no per-example deadline
# (a request over a socket has its own bound, checked explicitly).
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


# == the lake ==========================================================================================


def _records(tenant: str, n: int, base_us: int) -> list[dict[str, Any]]:
    """``n`` records of ``tenant`` one every 30 s from ``base_us``: plain, JSON and logfmt lines."""
    mark = MARKS[tenant]
    services, levels = ("api", "billing", "web"), ("info", "warn", "error", "debug")
    out = []
    for i in range(n):
        ts = base_us + i * MINUTE_US // 2
        level, service = levels[i % 4], services[i % 3]
        kind = i % 3
        if kind == 0:
            message = f"{mark} GET /api/items/{i} {200 + i % 4 * 100} took {i % 97} ms"
        elif kind == 1:
            message = json.dumps({"level": level, "user": f"u{i % 5}", "took_ms": i % 97, "msg": f"{mark} json {i}"})
        else:
            message = f'level={level} user=u{i % 5} took_ms={i % 97} msg="{mark} logfmt {i}"'
        attrs = [("id", f"{tenant}-{i}"), ("user", f"u{i % 5}"), ("http.status", str(200 + i % 4 * 100)),
                 ("took_ms", str(i % 97)), ("ünï.cødé key", "välue ☃"), ("path", "/var/log/../../etc/passwd")]
        out.append({"ts": ts, "observed_ts": ts + 1_000, "service": service, "host": f"{tenant}-host",
                    "source": f"/var/log/{service}.log", "level": level, "severity": SEVERITY[level],
                    "message": message, "attrs": attrs, "trace_id": f"{i:032x}" if i % 2 else None,
                    "span_id": None})
    return out


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pydict({name: [r[name] for r in rows] for name in RECORD_SCHEMA.names},
                                schema=RECORD_SCHEMA)


def _commit(catalog: Catalog, segments: list[SegmentInfo]) -> None:
    catalog.commit([PartitionCommit(topic="fuzz", partition=0, epoch=0, expected_next=0,
                                    new_next=len(segments), segments=segments)])


def _plant_outside(root: Path, base_us: int) -> None:
    """Things just outside the data root that a path trick might reach: a lake and plain files."""
    outside = root / "data_outside"
    rows = _records("default", 20, base_us)
    for r in rows:
        r["message"] = f"{OUTSIDE_MARK} {r['message']}"
        r["attrs"] = [*r["attrs"], (OUTSIDE_MARK, OUTSIDE_MARK)]
    write_segments(outside, "default", _table(rows), "outside.parquet")
    for path in (root / "secret.txt", outside / "secret.txt", outside / "passwd"):
        path.write_text(f"{OUTSIDE_MARK}\n")


def _config(root: Path, data: str, **env: str) -> Config:
    (root / "empty.toml").write_text("")
    return load_config(environ={
        "LOGLAKE_CONFIG": str(root / "empty.toml"),
        "LOGLAKE_STORAGE__DATA_ROOT": str(root / data),
        "LOGLAKE_QUERY__PORT": str(free_port()),
        **env,
    })


@dataclass
class Lake:
    root: Path
    base_us: int


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """The shared lake: three tenants' records over the last hour, saved queries, the outside plants."""
    root = tmp_path_factory.mktemp("fuzz-api")
    base_us = now_us() - 50 * MINUTE_US
    cfg = _config(root, "data")
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    written: list[SegmentInfo] = []
    for tenant in MARKS:
        written += write_segments(cfg.storage.data_root, tenant, _table(_records(tenant, 80, base_us)),
                                  f"{tenant}.parquet")
    _commit(catalog, written)
    now = now_us()
    for tenant, name in SAVED.items():
        catalog.create_saved_query(SavedQueryRow(tenant, name, "search", "level:error", RANGE, "", "", now, now))
    catalog.close()
    _plant_outside(root, base_us)
    return Lake(root, base_us)


@dataclass
class Server:
    url: str
    cfg: Config
    client: httpx.Client


    keys: dict[str, str]         # name -> API key (only with auth on)

    def send(self, method: str, path: str, params: Mapping[str, Any] | None = None,
             headers: list[tuple[str, str]] | None = None, json_body: Any = None,
             form: Mapping[str, str] | None = None) -> httpx.Response:
        """One request; query parameters too long for a URL go in the body (a form for Loki, JSON for ours)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        return self.client.request(method, path, params=query, headers=headers, json=json_body, data=form)


def _client(url: str) -> httpx.Client:
    # No keep-alive: a 500 makes uvicorn drop its connection, which must not fail the next request.
    return httpx.Client(base_url=url, timeout=FUZZ_TIMEOUT_S + 30, limits=httpx.Limits(max_keepalive_connections=0))


@contextlib.contextmanager
def _serve(cfg: Config, keys: dict[str, str] | None = None) -> Iterator[Server]:
    app = create_app(cfg)
    with uvicorn_thread(app, cfg.query.port) as url, _client(url) as client:
        yield Server(url, cfg, client, keys or {})
    app.state.service.catalog.close()


@pytest.fixture(scope="module")
def open_server(lake: Lake) -> Iterator[Server]:
    """Auth off, as `loglake up` runs it: the tenant is whatever X-Scope-OrgID says."""
    cfg = _config(lake.root, "data", LOGLAKE_AUTH__ENABLED="false", LOGLAKE_QUERY__TIMEOUT_S=str(FUZZ_TIMEOUT_S))
    with _serve(cfg) as server:
        yield server


@pytest.fixture(scope="module")
def auth_server(lake: Lake) -> Iterator[Server]:
    """Auth on (the default) over the same lake; keys made through query.auth, as `loglake keys create` does."""
    cfg = _config(lake.root, "data", LOGLAKE_AUTH__ENABLED="true", LOGLAKE_QUERY__TIMEOUT_S=str(FUZZ_TIMEOUT_S))
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    keys = {"acme": create_key(catalog, ["acme"], "reader", None, "fuzz: acme reader"),
            "beta": create_key(catalog, ["beta"], "reader", None, "fuzz: beta reader"),
            "acme-admin": create_key(catalog, ["acme"], "admin", None, "fuzz: acme admin")}
    catalog.close()
    with _serve(cfg, keys) as server:
        yield server


# == the contract ======================================================================================


def message_of(body: bytes) -> str | None:
    """The reason a 4xx body gives: our ``message``, or FastAPI's ``detail`` (text or validation items)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("message"), str) and data["message"].strip():
        return data["message"]
    detail = data.get("detail")
    if isinstance(detail, str) and detail.strip():
        return detail
    if isinstance(detail, list) and detail and all(isinstance(d, dict) and d.get("msg") for d in detail):
        return "; ".join(str(d["msg"]) for d in detail)
    return None


def check_answer(status: int, content_type: str, body: bytes, elapsed_s: float, what: str) -> None:
    """What any request must get: a 2xx, or a 4xx saying why; in time; nothing from outside the data root."""
    shown = f"{what}\n-> HTTP {status} after {elapsed_s:.2f} s: {body[:400]!r}"
    assert status < 500, f"server error: {shown}"
    assert 200 <= status < 300 or 400 <= status < 500, f"neither 2xx nor 4xx: {shown}"
    assert elapsed_s < FUZZ_TIMEOUT_S + MARGIN_S, f"slower than query.timeout_s + {MARGIN_S} s: {shown}"
    for mark in FOREIGN:
        assert mark not in body, f"content from outside the data root ({mark!r}): {shown}"
    if status >= 400:
        assert message_of(body), f"a {status} without a JSON message: {shown}"
    elif "application/json" in content_type:
        json.loads(body)          # a 2xx says JSON: it is JSON
    elif "application/x-ndjson" in content_type:
        for line in body.splitlines():
            json.loads(line)


def check_response(resp: httpx.Response, what: str) -> None:
    check_answer(resp.status_code, resp.headers.get("content-type", ""), resp.content,
                 resp.elapsed.total_seconds(), what)


# -- known bugs -----------------------------------------------------------------------------------------
#
# Each is shown by a strict xfail below. The broad fuzzers skip a 5xx only when its input is one of
# these, so they stay green until the bug is fixed and go on looking for others meanwhile.

#: Python refuses int() of more than 4300 digits with ValueError, which nothing catches.
_DIGIT_RUN = re.compile(r"\d{4301,}")
_WEEK_US = 7 * 86_400 * 1_000_000
#: Times the service can show (Python datetimes, years 1-9999), less a week for its default spans.
_SAFE_MIN_US = parse_time_us("0001-01-01T00:00:00Z") + _WEEK_US
_SAFE_MAX_US = parse_time_us("9999-12-31T00:00:00Z") - _WEEK_US


def _time_out_of_range(text: str) -> bool:
    try:
        us = parse_time_us(text)
    except QueryError:
        return False
    except (ValueError, OverflowError):
        return True
    return not _SAFE_MIN_US <= us <= _SAFE_MAX_US


def _duration_out_of_range(text: str) -> bool:
    try:
        us = parse_duration_us(text)
    except QueryError:
        return False
    except (ValueError, OverflowError):
        return True
    return us > now_us() - _SAFE_MIN_US


def _zero_step(text: str) -> bool:
    """A Loki ``step`` that passes the checks yet rounds to 0 microseconds."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_duration_us(text) == 0
        except (QueryError, ValueError):
            return False
    return math.isfinite(seconds) and 0 < seconds * 1_000_000 < 1


def known_bug(fields: Mapping[str, list[str]], raw: str) -> str | None:
    """Which known bug an input triggers, if any: ``fields`` by parameter name, ``raw`` all text sent."""
    if _DIGIT_RUN.search(raw):
        return "digits"
    if any(_time_out_of_range(v) for name in ("start", "end", "time") for v in fields.get(name, [])):
        return "time range"
    if any(_duration_out_of_range(v) for v in fields.get("since", [])):
        return "time range"
    if any(_zero_step(v) for v in fields.get("step", [])):
        return "zero step"
    return None


def _fields_of(query: str, body: bytes | str | None, content_type: str) -> tuple[dict[str, list[str]], str]:
    """Parameters by name (URL query, form or JSON body) and all the text, from what went on the wire."""
    fields = parse_qs(query, keep_blank_values=True)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    if "json" in content_type and text:
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, dict):
                for k, v in {**data, **(data.get("params") if isinstance(data.get("params"), dict) else {})}.items():
                    if isinstance(v, str):
                        fields.setdefault(k, []).append(v)
    elif "form" in content_type and text:
        for k, v in parse_qs(text, keep_blank_values=True).items():
            fields.setdefault(k, []).extend(v)
    return fields, f"{query} {text}"


def check_httpx(resp: httpx.Response, what: str) -> None:
    """:func:`check_answer` for a response from ``Server.send``, stepping over known bugs' 5xx."""
    if resp.status_code >= 500:
        req = resp.request
        fields, raw = _fields_of(req.url.query.decode(), req.content, req.headers.get("content-type", ""))
        if known_bug(fields, raw):
            return
    check_response(resp, what)


# == schemathesis: every operation of the generated OpenAPI spec, over the real socket =================


@pytest.fixture(scope="module")
def api_schema(open_server: Server) -> schemathesis.BaseSchema:
    """The app's own /openapi.json, fetched over HTTP; requests go to the same server."""
    config = schemathesis.Config.from_dict({
        "seed": 20240301,
        "generation": {"mode": "all", "max-examples": 30},
        # Coverage adds the boundary and wrong-type values of each parameter; stateful needs links we lack.
        "phases": {"coverage": {"enabled": True}, "stateful": {"enabled": False}},
    })
    return schemathesis.openapi.from_url(f"{open_server.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's pytest plugin reads and rewrites ``Node._nodeid`` (to name each operation's
    subtest), an attribute pytest 9 no longer has: give it one to work with."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.mark.usefixtures("_node_id_for_schemathesis")
@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_2xx_or_a_4xx_with_a_message(case: schemathesis.Case) -> None:
    """Any request the spec allows, and many it does not: never a 5xx, always in time, a reason with a 4xx."""
    response = case.call(timeout=FUZZ_TIMEOUT_S + 30)
    req = response.request
    with open("/tmp/fz/stats.txt", "a") as fh:
        fh.write(f"{response.status_code} {req.method} {urlsplit(req.url).path} {response.elapsed:.3f}\n")
    what = f"{req.method} {req.url} body={str(req.body)[:300]!r} headers={dict(req.headers)!r}"
    if response.status_code >= 500:
        fields, raw = _fields_of(urlsplit(req.url or "").query, req.body,
                                 str(req.headers.get("content-type", "")))
        if known_bug(fields, raw):
            return
    check_answer(response.status_code, ", ".join(response.headers.get("content-type", [])), response.content,
                 response.elapsed, what)
