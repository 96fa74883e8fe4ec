"""Conformance with Loki's own LogQL tests: the same verdicts, and every accepted query answered.

``tests/data/loki_queries.jsonl`` holds the query strings of Loki's tests (``pkg/logql/syntax``,
``pkg/logql`` and the ``logqltest`` scripts) with Loki's verdict, accepted or rejected by its parser,
extracted by ``tests/data/extract_loki_queries.py`` at the Loki commit each entry names. Nothing in it
comes from loglake.

1. loglake's parser gives Loki's verdict on at least 99% of the corpus (a LogQL construct loglake
   refuses as unsupported counts as a disagreement on an accepted query).
2. Every query Loki accepts, sent over HTTP to a real uvicorn server over a small lake whose services,
   attributes and lines are named like the streams and fields Loki's tests query, answers without a
   5xx (and with data for many). A 4xx is allowed only where Loki itself refuses the query
   when it runs it (an ``ip()`` with ``|~``, a bad ``ip()`` pattern, a named capture in ``|>``, a bad
   line-filter regex, an aggregation of a bare number...), and those are counted and shown.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from query.errors import QueryError
from query.logql import LogQLUnsupported, LogQuery, VectorAggregation, parse, walk
from query.timerange import parse_time_us
from storage.catalog import Catalog
from tests.helpers.lake import per_service, record, write_lake
from tests.helpers.server import Server, config_for, serve

CORPUS = Path(__file__).parent / "data" / "loki_queries.jsonl"
#: Why Loki itself refuses some parsed queries when it runs them; a 4xx must say one of these.
LOKI_RUNTIME_REFUSALS = re.compile(
    r"ip: invalid (operation|pattern)|only <_> captures|consecutive captures|invalid regular expression|"
    r"instant queries|maximum resolution|many-to-many|multiple matches for labels|"
    r"more than [0-9,]+ lines to run through a pipeline|range and step too fine|"
    # approx_topk(3, 1+1): Loki folds 1+1 into a literal, which its evaluator cannot aggregate
    # (EvaluatorUnsupportedType)
    r"needs a vector, not a scalar")


T0_US = parse_time_us("2024-03-01T10:00:00Z")
START_US, END_US = T0_US - 3_600_000_000, T0_US + 3 * 3_600_000_000
#: Services named like the streams Loki's tests select ({app="foo"}, {job="mysql"}: app and job are
#: loglake's service), with attributes named like their other labels ({foo="bar"}, {cluster=...}).
SERVICES = ("foo", "bar", "baz", "mysql", "loki", "myapp", "nginx", "a", "b")
ATTRS = {"foo": ["bar", "baz"], "cluster": ["beep", "ops-tools1"], "namespace": ["boop", "apps", "dev"],
         "region": ["us-east1", "eu"], "container": ["app", "cart"], "instance": ["localhost"],
         "env": ["prod", "myenv"], "pod": ["p1", "p2"]}


def _line(rng: random.Random, i: int) -> str:
    """JSON, logfmt or text lines with the fields Loki's test queries parse, unwrap and filter on."""
    status = rng.choice([200, 200, 404, 500, 503])
    duration = rng.choice(["90ms", "250ms", "1.5s", "2s"])
    ip = rng.choice(["127.0.0.1", "192.168.0.1", "10.0.0.7", "::1", "123.123.123.123"])
    kind = i % 4
    if kind == 0:
        return json.dumps({"status": status, "status_code": status, "duration": duration, "latency": i % 300,
                           "bytes": f"{i % 50}KB", "level": rng.choice(["info", "error"]), "msg": "foo bar baz",
                           "response": {"code": status}, "addr": ip, "counter": i, "user": "me"})
    if kind == 1:
        return (f'level={rng.choice(["debug", "error"])} ts=2024-03-01T10:00:00Z caller=logging.go:66 '
                f'status={status} duration={duration} bytes={i % 40}B latency={i % 500} addr={ip} c={i} '
                f'msg="POST /api/prom/api/v1/query_range ({status}) {duration}"')
    if kind == 2:
        return json.dumps({"_entry": f"packed error {i} from {ip}", "pod": "p1", "app": "foo"})
    return f"GET /foo/{i} {status} error timeout from {ip} bar baz"


def _records() -> list[dict[str, Any]]:
    rng = random.Random(7)
    rows = []
    for i in range(400):
        ts = T0_US + rng.randrange(0, 2 * 3_600_000_000)
        attrs = [(k, rng.choice(v)) for k, v in ATTRS.items()]
        rows.append(record(ts, rng.choice(SERVICES), rng.choice(["info", "warn", "error", "debug"]), _line(rng, i),
                           attrs=attrs, host=rng.choice(["web-1", "web-2"])))
    return rows


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real uvicorn server (the helpers test_loki_api.py serves with) over the records above."""
    root = tmp_path_factory.mktemp("loki-conformance")
    cfg = config_for(root, root / "data")
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    write_lake(cfg.storage.data_root, catalog, per_service(_records()))
    catalog.close()
    with serve(cfg, keepalive=False) as s:
        yield s


def ns(us: int) -> str:
    return str(us * 1000)


def corpus() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def verdict(query: str) -> tuple[bool, str]:
    """(whether loglake's parser takes ``query``, why not)."""
    try:
        parse(query)
    except (QueryError, LogQLUnsupported) as e:
        return False, str(e)
    return True, ""


def test_the_corpus_is_loki_data_of_both_verdicts() -> None:
    entries = corpus()
    assert len(entries) >= 1000
    assert len({e["query"] for e in entries}) == len(entries)
    assert {e["accept"] for e in entries} == {True, False}
    assert all(re.fullmatch(r"[0-9a-f]{40}", e["loki_commit"]) and e["source"].startswith("pkg/logql/")
               for e in entries)


def test_parser_gives_lokis_verdict() -> None:
    entries = corpus()
    disagreements = []
    for e in entries:
        ok, why = verdict(e["query"])
        if ok != e["accept"]:
            disagreements.append(f"  Loki {'accepts' if e['accept'] else 'rejects'} ({e['source']}:{e['line']}): "
                                 f"{e['query'][:160]!r}" + (f"\n    loglake: {why[:200]}" if why else ""))
    agreement = 1 - len(disagreements) / len(entries)
    print(f"\nLoki conformance: loglake's parser agrees with Loki on {agreement:.2%} of {len(entries)} queries "
          f"({len(disagreements)} disagreements)")
    for d in disagreements:
        print(d)
    assert agreement >= 0.99, f"{agreement:.2%} agreement; disagreements:\n" + "\n".join(disagreements)


def _request(server: Server, query: str) -> tuple[str, httpx.Response]:
    """The query as Grafana would send it over the test data: a range query, or an instant one for
    approx_topk (Loki answers it only there)."""
    expr = parse(query)
    if any(isinstance(n, VectorAggregation) and n.op == "approx_topk" for n in walk(expr)):
        return "query", server.client.get("/loki/api/v1/query", params={"query": query, "time": ns(END_US)})
    params = {"query": query, "start": ns(START_US), "end": ns(END_US)}
    params |= {"limit": "100"} if isinstance(expr, LogQuery) else {"step": "300"}
    return "query_range", server.client.get("/loki/api/v1/query_range", params=params)


@pytest.mark.timeout(300)
def test_every_accepted_query_answers_over_http_without_a_server_error(server: Server) -> None:
    queries = [e["query"] for e in corpus() if e["accept"] and verdict(e["query"])[0]]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda q: (q, *_request(server, q)), queries))
    statuses: Counter[int] = Counter()
    server_errors, refused, unexplained = [], [], []
    for query, endpoint, resp in answers:
        statuses[resp.status_code] += 1
        if resp.status_code >= 500:
            server_errors.append(f"  {resp.status_code} {endpoint} {query[:160]!r}: {resp.text[:200]}")
        elif resp.status_code >= 400:
            line = f"  {resp.status_code} {endpoint} {query[:160]!r}: {resp.text[:200]}"
            (refused if LOKI_RUNTIME_REFUSALS.search(resp.text) else unexplained).append(line)
        else:
            body = resp.json()
            assert body["status"] == "success", body
            assert body["data"]["resultType"] in ("streams", "matrix", "vector", "scalar"), body
    answered = statuses[200]
    with_data = sum(1 for _, _, r in answers if r.status_code == 200 and r.json()["data"]["result"])
    print(f"\nLoki conformance over HTTP: {len(queries)} accepted queries, {answered} answered (200), "
          f"{with_data} of them with data, "
          f"{len(refused)} refused as Loki refuses them when run (4xx), {len(unexplained)} other 4xx, "
          f"{len(server_errors)} 5xx; statuses {dict(sorted(statuses.items()))}")
    for line in refused + unexplained:
        print(line)
    assert not server_errors, "5xx answers:\n" + "\n".join(server_errors)
    assert not unexplained, "4xx answers Loki would not give:\n" + "\n".join(unexplained)
