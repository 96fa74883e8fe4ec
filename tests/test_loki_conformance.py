"""Conformance with Loki's own LogQL tests: the same verdicts, and every accepted query answered.

``tests/data/loki_queries.jsonl`` holds the query strings of Loki's tests (``pkg/logql/syntax``,
``pkg/logql`` and the ``logqltest`` scripts) with Loki's verdict, accepted or rejected by its parser,
extracted by ``tests/data/extract_loki_queries.py`` at the Loki commit each entry names. Nothing in it
comes from loglake.

1. loglake's parser gives Loki's verdict on at least 99% of the corpus (a LogQL construct loglake
   refuses as unsupported counts as a disagreement on an accepted query).
2. Every query Loki accepts, sent over HTTP to a real uvicorn server over the data of
   ``test_loki_api.py``, answers without a 5xx. A 4xx is allowed only where Loki itself refuses the query
   when it runs it (an ``ip()`` with ``|~``, a bad ``ip()`` pattern, a named capture in ``|>``, a bad
   line-filter regex, an aggregation of a bare number...), and those are counted and shown.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from query.errors import QueryError
from query.logql import LogQLUnsupported, LogQuery, VectorAggregation, parse, walk
from tests.helpers.server import Server
from tests.test_loki_api import END_US, START_US, lake, ns, server  # noqa: F401 (fixtures)

CORPUS = Path(__file__).parent / "data" / "loki_queries.jsonl"
#: Why Loki itself refuses some parsed queries when it runs them; a 4xx must say one of these.
LOKI_RUNTIME_REFUSALS = re.compile(
    r"ip: invalid (operation|pattern)|only <_> captures|consecutive captures|invalid regular expression|"
    r"instant queries|maximum resolution|many-to-many|multiple matches for labels|"
    r"more than [0-9,]+ lines to run through a pipeline|range and step too fine|"
    # approx_topk(3, 1+1): Loki folds 1+1 into a literal, which its evaluator cannot aggregate
    # (EvaluatorUnsupportedType)
    r"needs a vector, not a scalar")


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
def test_every_accepted_query_answers_over_http_without_a_server_error(server: Server) -> None:  # noqa: F811
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
    print(f"\nLoki conformance over HTTP: {len(queries)} accepted queries, {answered} answered (200), "
          f"{len(refused)} refused as Loki refuses them when run (4xx), {len(unexplained)} other 4xx, "
          f"{len(server_errors)} 5xx; statuses {dict(sorted(statuses.items()))}")
    for line in refused + unexplained:
        print(line)
    assert not server_errors, "5xx answers:\n" + "\n".join(server_errors)
    assert not unexplained, "4xx answers Loki would not give:\n" + "\n".join(unexplained)
