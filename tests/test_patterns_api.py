"""Log patterns over HTTP: Loki's ``/loki/api/v1/patterns`` as Grafana's Logs Drilldown calls it, and
the native ``/api/v1/patterns`` with the ``pattern:"..."`` filter.

Request and response shapes are Loki's (``pkg/loghttp/patterns.go`` reads query, start, end and step;
``pkg/util/marshal/marshal.go`` writes ``{"status", "data": [{"pattern", "level", "samples": [[unix
seconds, count]]}]}``) and Drilldown's (``src/services/datasource.ts``, ``getPatterns``: RFC 3339
start and end, ``step`` its interval such as ``15s``).

The data is written with the real storage code into a real SQLite catalog and served by a real
uvicorn server. Every record comes from a known generator (a template with its variable parts drawn
at random), and the expected patterns, per-bucket counts and totals are computed here from the
records, in plain Python: each generator must come back as exactly one pattern per level, its
samples the generator's lines per bucket, and every line must match its pattern the way Loki's
``|>`` filter matches (literal pieces found leftmost, each ``<_>`` non-empty).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from query.language import Term
from query.patterns.miner import PatternMiner
from query.timerange import format_us, parse_time_us
from storage.catalog import Catalog
from tests.helpers.lake import Segment, record, write_lake
from tests.helpers.server import Server, config_for, serve

T0_US = parse_time_us("2024-03-01T10:00:00Z")
SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
HOUR_US = 60 * MINUTE_US
END_US = T0_US + 2 * HOUR_US
USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]


@dataclass(frozen=True)
class Generator:
    service: str
    level: str
    template: str            # {name} for each variable part
    #: The pattern Loki's API must answer for these lines (whole lines: "<_>" for a header).
    loki: str
    #: The message template the native route must answer.
    native: str
    shape: str = "head"      # head: a syslog header before the message; raw: a JSON line; plain: none


GENERATORS = [
    Generator("sshd", "warn", "Failed password for invalid user {user} from {ip} port {port} ssh2",
              "<_>Failed password for invalid user <_> from <_> port <_> <_>",
              "Failed password for invalid user <_> from <_> port <_> <_>"),
    Generator("sshd", "info", "Accepted publickey for {user} from {ip} port {port} ssh2",
              "<_>Accepted publickey for <_> from <_> port <_> <_>",
              "Accepted publickey for <_> from <_> port <_> <_>"),
    Generator("sshd", "info", "Connection closed by {ip} port {port} [preauth]",
              "<_>Connection closed by <_> port <_> [preauth]", "Connection closed by <_> port <_> [preauth]"),
    Generator("sshd", "info", "pam_unix(sshd:session): session opened for user {user} by (uid={uid})",
              "<_>pam_unix(sshd:session): session opened for user <_> by (uid=<_>)",
              "pam_unix(sshd:session): session opened for user <_> by (uid=<_>)"),
    Generator("sshd", "error", "error: maximum authentication attempts exceeded for {user} from {ip} port {port}",
              "<_>error: maximum authentication attempts exceeded for <_> from <_> port <_>",
              "error: maximum authentication attempts exceeded for <_> from <_> port <_>"),
    Generator("api", "info", "GET /api/orders/{id} returned {status} in {ms}ms",
              "<_>GET /api/orders/<_> returned <_> in <_>", "GET /api/orders/<_> returned <_> in <_>", "raw"),
    Generator("api", "warn", "order {id} not found for {user}",
              "<_>order <_> not found for <_>", "order <_> not found for <_>", "raw"),
    Generator("worker", "info", "worker {n} picked job {uuid} from queue {queue}",
              "worker <_> picked job <_> from queue <_>", "worker <_> picked job <_> from queue <_>", "plain"),
    Generator("worker", "debug", "heartbeat sent", "heartbeat sent", "heartbeat sent", "plain"),
]
ACME = Generator("sshd", "info", "acme only: tenant {n} says hello", "<_>acme only: tenant <_> says hello",
                 "acme only: tenant <_> says hello")


@dataclass(frozen=True)
class Line:
    tenant: str
    gen: Generator
    ts: int
    message: str
    line: str


def _fill(rng: random.Random, template: str) -> str:
    def one(name: str) -> str:
        match name:
            case "user":
                return rng.choice(USERS)
            case "ip":
                return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
            case "port" | "uid" | "n" | "id":
                return str(rng.randrange(1, 65535))
            case "status":
                return rng.choice(["200", "201", "404", "500"])
            case "ms":
                return str(rng.randrange(1, 900))
            case "uuid":
                return "-".join(f"{rng.getrandbits(b):0{b // 4}x}" for b in (32, 16, 16, 16, 48))
            case "queue":
                return rng.choice(["q1", "q22", "mail-7"])
        raise AssertionError(name)

    out = template
    while "{" in out:
        start = out.index("{")
        end = out.index("}", start)
        out = out[:start] + one(out[start + 1:end]) + out[end + 1:]
    return out


def make_lines() -> list[Line]:
    rng = random.Random(22)
    out: list[Line] = []
    for tenant, gens in (("default", GENERATORS), ("acme", [ACME])):
        for i in range(900 if tenant == "default" else 60):
            gen = gens[rng.randrange(len(gens))] if i >= len(gens) else gens[i]
            ts = T0_US + rng.randrange(0, 2 * HOUR_US)
            message = _fill(rng, gen.template)
            if gen.shape == "head":
                line = f"Mar  1 10:00:00 host-1 sshd[{rng.randrange(100, 99999)}]: {message}"
            elif gen.shape == "raw":
                line = json.dumps({"level": gen.level, "msg": message, "user": rng.choice(USERS)})
            else:
                line = message
            out.append(Line(tenant, gen, ts, message, line))
    return out


LINES = make_lines()


def _row(ln: Line) -> dict[str, Any]:
    head = ln.line[:-len(ln.message)] if ln.gen.shape == "head" else None
    raw = ln.line if ln.gen.shape == "raw" else None
    return record(ln.ts, ln.gen.service, ln.gen.level, ln.message, head=head, raw=raw)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root: Path = tmp_path_factory.mktemp("patterns")
    cfg = config_for(root, root / "data")
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    segments = []
    for tenant in ("default", "acme"):
        for service in sorted({ln.gen.service for ln in LINES if ln.tenant == tenant}):
            rows = sorted((_row(ln) for ln in LINES if ln.tenant == tenant and ln.gen.service == service),
                          key=lambda r: r["ts"])
            segments.append(Segment(tenant, f"{service}.parquet", rows))
    write_lake(cfg.storage.data_root, catalog, segments, topic="patterns")
    catalog.close()
    with serve(cfg, keepalive=False) as s:
        yield s


# -- Loki's |> semantics and the expected answers ------------------------------------------------


def loki_matches(pattern: str, line: str) -> bool:
    """Whether Loki's pattern line filter (``|> pattern``) keeps ``line``: each literal piece found
    leftmost after the previous one, every ``<_>`` matching at least one character, the whole line
    consumed."""
    pieces = pattern.split("<_>")
    if not line.startswith(pieces[0]):
        return False
    off = len(pieces[0])
    for lit in pieces[1:]:
        if lit == "":           # the pattern ends with <_>: something must be left for it
            return off < len(line)
        j = line.find(lit, off)
        if j <= off:            # not found, or the capture before it would be empty
            return False
        off = j + len(lit)
    return off == len(line)


def expected(tenant: str, keep: Any, start_us: int, end_us: int, step_us: int,
             native: bool = False) -> dict[tuple[str, str], dict[int, int]]:
    """{(pattern, level): {bucket start in seconds: lines}} for the lines ``keep`` selects in [start, end)."""
    out: dict[tuple[str, str], Counter[int]] = {}
    for ln in LINES:
        if ln.tenant == tenant and start_us <= ln.ts < end_us and keep(ln):
            key = (ln.gen.native if native else ln.gen.loki, ln.gen.level)
            out.setdefault(key, Counter())[ln.ts // step_us * step_us // SECOND_US] += 1
    return {k: dict(v) for k, v in out.items()}


def answered(body: dict[str, Any]) -> dict[tuple[str, str], dict[int, int]]:
    assert body["status"] == "success"
    out: dict[tuple[str, str], dict[int, int]] = {}
    for entry in body["data"]:
        assert set(entry) == {"pattern", "level", "samples"}
        key = (entry["pattern"], entry["level"])
        assert key not in out, f"{key} twice"
        samples = {}
        for t, n in entry["samples"]:
            assert isinstance(t, int) and isinstance(n, int) and n > 0
            samples[t] = n
        assert [t for t, _ in entry["samples"]] == sorted(samples), "samples out of time order"
        out[key] = samples
    return out


def patterns(server: Server, tenant: str | None = None, **params: Any) -> dict[tuple[str, str], dict[int, int]]:
    return answered(server.ok("/loki/api/v1/patterns", tenant=tenant, **params))


def ns(us: int) -> str:
    return str(us * 1000)


# -- Loki's route ----------------------------------------------------------------------------------


def test_each_generator_is_one_pattern_with_its_counts_per_bucket(server: Server) -> None:
    got = patterns(server, query='{service_name="sshd"}', start=ns(T0_US), end=ns(END_US), step="60s")
    want = expected("default", lambda ln: ln.gen.service == "sshd", T0_US, END_US, MINUTE_US)
    assert got == want
    assert sum(sum(s.values()) for s in got.values()) == \
        sum(1 for ln in LINES if ln.tenant == "default" and ln.gen.service == "sshd")
    for ln in LINES:
        if ln.tenant == "default" and ln.gen.service == "sshd":
            assert loki_matches(ln.gen.loki, ln.line), (ln.gen.loki, ln.line)


def test_json_and_plain_lines_have_line_patterns_drilldown_can_filter_by(server: Server) -> None:
    got = patterns(server, query='{service_name=~"api|worker"}', start=format_us(T0_US), end=format_us(END_US),
                   step="1h")
    assert got == expected("default", lambda ln: ln.gen.service in ("api", "worker"), T0_US, END_US, HOUR_US)
    for ln in LINES:
        if ln.tenant == "default" and ln.gen.service in ("api", "worker"):
            assert loki_matches(ln.gen.loki, ln.line), (ln.gen.loki, ln.line)
    # and no pattern matches the lines of another one
    for ln in LINES[:300]:
        if ln.tenant == "default" and ln.gen.service in ("api", "worker"):
            assert [g.loki for g in GENERATORS if loki_matches(g.loki, ln.line)] == [ln.gen.loki]


def test_a_range_over_whole_and_partial_segments_is_exact_and_cached(server: Server) -> None:
    """10:30-12:00: the 11:00 segments lie inside (mined once, then reused), the 10:00 ones are cut."""
    start, end = T0_US + 30 * MINUTE_US + 7 * SECOND_US, END_US
    want = expected("default", lambda ln: True, start, end, 5 * MINUTE_US)
    cache = server.app.state.patterns.cache
    first = patterns(server, query='{service_name=~".+"}', start=ns(start), end=ns(end), step="5m")
    hits = cache.hits
    again = patterns(server, query='{service_name=~".+"}', start=ns(start), end=ns(end), step="300")
    assert first == want and again == want
    assert cache.hits > hits, "the segments inside the range were mined again"
    assert sum(sum(s.values()) for s in first.values()) == \
        sum(1 for ln in LINES if ln.tenant == "default" and start <= ln.ts < end)


def test_the_selector_and_line_filters_choose_the_lines(server: Server) -> None:
    warn = patterns(server, query='{service_name="sshd", detected_level="warn"}', start=ns(T0_US),
                    end=ns(END_US), step="10m")
    assert warn == expected("default", lambda ln: ln.gen.service == "sshd" and ln.gen.level == "warn",
                            T0_US, END_US, 10 * MINUTE_US)
    alice = patterns(server, query='{service_name="sshd"} |= "user alice"', start=ns(T0_US), end=ns(END_US),
                     step="10m")
    want = expected("default", lambda ln: ln.gen.service == "sshd" and "user alice" in ln.line,
                    T0_US, END_US, 10 * MINUTE_US)
    # The template is mined from the selected lines only: alice is all there is in its user position.
    assert sum(sum(s.values()) for s in alice.values()) == sum(sum(s.values()) for s in want.values()) > 0
    for (pattern, _), _samples in alice.items():
        assert any(loki_matches(pattern, ln.line) for ln in LINES if "user alice" in ln.line)


def test_drilldown_request_shape_and_step_floor(server: Server) -> None:
    """Drilldown sends RFC 3339 times and its interval; steps under 10 s are answered per 10 s."""
    start, end = T0_US + 20 * MINUTE_US, T0_US + 35 * MINUTE_US
    got = patterns(server, query='{service_name="sshd"}', start=format_us(start), end=format_us(end), step="1s")
    assert got == expected("default", lambda ln: ln.gen.service == "sshd", start, end, 10 * SECOND_US)
    got15 = patterns(server, query='{service_name="sshd"}', start=format_us(start), end=format_us(end), step="15s")
    assert got15 == expected("default", lambda ln: ln.gen.service == "sshd", start, end, 15 * SECOND_US)


def test_post_form_and_tenants(server: Server) -> None:
    resp = server.call("POST", "/loki/api/v1/patterns", tenant="acme",
                       data={"query": '{service_name="sshd"}', "start": ns(T0_US), "end": ns(END_US), "step": "1h"})
    assert resp.status_code == 200, resp.text
    assert answered(resp.json()) == expected("acme", lambda ln: True, T0_US, END_US, HOUR_US)
    assert {p for p, _ in patterns(server, query='{service_name="sshd"}', start=ns(T0_US), end=ns(END_US))} \
        .isdisjoint({ACME.loki})


def test_past_max_distinct_the_rarest_masked_messages_count_as_their_own_templates(server: Server) -> None:
    """Drain reads the most frequent masked messages of a level; the rest still count, each its own."""
    miner = PatternMiner(server.service.runner, max_distinct=2)
    node = Term("service", "api", "phrase")
    mined = miner.mine(node, "default", T0_US, END_US, HOUR_US)
    api = [ln for ln in LINES if ln.tenant == "default" and ln.gen.service == "api"]
    assert sum(p.total for p in mined.patterns) == len(api)
    assert {p.level for p in mined.patterns} == {"info", "warn"}
    # warn: "order <_> not found for <user>": six users, six masked messages; two go through Drain and merge
    # into one template (the user position differs), the four rarer ones stay themselves.
    warn = [p.template for p in mined.patterns if p.level == "warn"]
    assert "order <_> not found for <_>" in warn and len(warn) == 5
    assert all(t.startswith("order <_> not found for ") for t in warn)


def test_nothing_selected_is_an_empty_list(server: Server) -> None:
    assert server.ok("/loki/api/v1/patterns", query='{service_name="nope"}', start=ns(T0_US),
                     end=ns(END_US)) == {"status": "success", "data": []}
    assert server.ok("/loki/api/v1/patterns", query='{service_name="sshd"}', start=ns(END_US + HOUR_US),
                     end=ns(END_US + 2 * HOUR_US)) == {"status": "success", "data": []}


@pytest.mark.parametrize(("params", "reason"), [
    ({}, "missing required parameter 'query'"),
    ({"query": ""}, "missing required parameter 'query'"),
    ({"query": "sshd"}, ""),
    ({"query": 'rate({service_name="sshd"}[1m])'}, "stream selector"),
    ({"query": '{service_name="sshd"} | json'}, "pipeline"),
    ({"query": '{service_name="sshd"}', "step": "0"}, "step"),
    ({"query": '{service_name="sshd"}', "step": "-5"}, "step"),
    ({"query": '{service_name="sshd"}', "step": "soon"}, ""),
    ({"query": '{service_name="sshd"}', "start": ns(T0_US), "end": ns(T0_US + 24 * HOUR_US), "step": "1s"},
     "11,000"),
    ({"query": '{service_name="sshd"}', "start": ns(END_US), "end": ns(T0_US)}, "before"),
    ({"query": '{service_name="sshd"}', "start": "yesterday-ish"}, ""),
])
def test_bad_parameters_are_400_with_a_reason(server: Server, params: dict[str, str], reason: str) -> None:
    for resp in (server.get("/loki/api/v1/patterns", **params),
                 server.call("POST", "/loki/api/v1/patterns", data=params)):
        assert resp.status_code == 400, resp.text
        # Loki's routes answer a 400 with its reason as plain text, as Loki does.
        assert resp.headers["content-type"].startswith("text/plain")
        assert resp.text.strip() and reason in resp.text


# -- the native route and pattern: ---------------------------------------------------------------


def test_native_route_lists_message_templates_and_pattern_filter_finds_their_lines(server: Server) -> None:
    rng = {"start": format_us(T0_US), "end": format_us(END_US)}
    body = server.ok("/api/v1/patterns", q="service:sshd OR service:api", interval="30m", limit=3, **rng)
    lines = [ln for ln in LINES if ln.tenant == "default" and ln.gen.service in ("sshd", "api")]
    assert body["total"] == len(lines)
    assert body["interval"] == "30m"
    want = Counter((ln.gen.native, ln.gen.level) for ln in lines)
    top = [((p["pattern"], p["level"]), p["count"]) for p in body["patterns"]]
    assert top == sorted(want.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1]))[:3]
    every = server.ok("/api/v1/patterns", q="service:sshd OR service:api", interval="30m", limit=1000, **rng)
    for p in every["patterns"]:
        assert sum(n for _, n in p["samples"]) == p["count"]
        found = server.search(f'pattern:"{p["pattern"]}" level:{p["level"]}', rng=rng, limit=10_000)["rows"]
        assert len(found) == p["count"] == want[(p["pattern"], p["level"])], p["pattern"]


def test_native_route_with_a_query_on_the_original_line(server: Server) -> None:
    rng = {"start": format_us(T0_US), "end": format_us(END_US)}
    body = server.ok("/api/v1/patterns", q='line:"sshd[" level:info', limit=1000, **rng)
    want = Counter(ln.gen.native for ln in LINES
                   if ln.tenant == "default" and "sshd[" in ln.line and ln.gen.level == "info")
    assert {p["pattern"]: p["count"] for p in body["patterns"]} == dict(want)


def test_pattern_term_errors_are_400(server: Server) -> None:
    rng = {"start": format_us(T0_US), "end": format_us(END_US)}
    for q in ("pattern:/user .*/", "pattern:<_>foo", "pattern:[a TO b]", "pattern:heart*"):
        resp = server.query(q, **rng)
        assert resp.status_code == 400, (q, resp.text)
    resp = server.get("/api/v1/patterns", q="service:(", **rng)
    assert resp.status_code == 400
