"""End to end through real processes: files -> shipper -> broker -> ingest -> segments -> HTTP search."""

from __future__ import annotations

import collections
import random
import time
from datetime import UTC, datetime, timedelta

import httpx

from tests.helpers.corpus import access_status, append, make_lines, now_utc, uids_in
from tests.helpers.processes import Stack, wait_until

N = 10_000


def _all_rows(stack: Stack, start: str, end: str) -> list[dict]:
    return stack.search("", start=start, end=end, limit=10_000, order="asc")["rows"]


def test_every_line_searchable_exactly_once_within_30s(stack: Stack) -> None:
    base = now_utc() - timedelta(minutes=30)
    lines = make_lines(N, base, timedelta(milliseconds=150))      # spans 25 minutes
    stack.start("ingest")
    stack.start("serve")
    stack.start("ship")
    stack.wait_ready()

    # Lines arrive in ten bursts, the way a busy host writes them.
    for i in range(0, N, N // 10):
        append(stack.input_dir, lines[i:i + N // 10])
        time.sleep(0.1)
    written_at = time.monotonic()

    start, end = (base - timedelta(minutes=1)).isoformat(), (now_utc() + timedelta(minutes=1)).isoformat()
    wait_until(lambda: len(_all_rows(stack, start, end)) >= N, 30, interval_s=0.5,
               what=f"{N} lines searchable")
    assert time.monotonic() - written_at < 30

    counts = collections.Counter(uids_in(_all_rows(stack, start, end)))
    assert sorted(counts) == list(range(N)), "every line stored"
    assert max(counts.values()) == 1, f"duplicates: {[u for u, c in counts.items() if c > 1][:10]}"

    # A unique token finds exactly its line, with the fields parsed from it.
    for line in random.Random(7).sample(lines, 12):
        rows = stack.search(line.token, start=start, end=end)["rows"]
        assert len(rows) == 1, (line.token, rows)
        assert rows[0]["ts"] == line.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert rows[0]["source"].endswith(line.file)

    # A time range returns exactly the lines whose timestamps fall in it.
    lo, hi = base + timedelta(minutes=7, seconds=3), base + timedelta(minutes=11, milliseconds=450)
    expected = {line.uid for line in lines if lo <= line.ts < hi}
    got = uids_in(stack.search("", start=lo.isoformat(), end=hi.isoformat(), limit=10_000)["rows"])
    assert len(got) == len(set(got))
    assert set(got) == expected

    # Field searches go through the parsed columns and attributes.
    errors = stack.search("level:error service:app", start=start, end=end, limit=10_000)["rows"]
    assert {r["service"] for r in errors} == {"app"} and {r["level"] for r in errors} == {"error"}
    assert len(errors) == sum(1 for ln in lines if ln.uid % 3 == 0 and ln.uid % 5 % 3 == 2)
    access = [ln for ln in lines if ln.uid % 3 == 2]
    not_found = stack.search("http.status:404", start=start, end=end, limit=10_000)["rows"]
    assert sorted(uids_in(not_found)) == [ln.uid for ln in access if access_status(ln.uid) == 404]
    assert {r["level"] for r in not_found} == {"warn"}
    server_errors = stack.search("http.status:5*", start=start, end=end, limit=10_000)["rows"]
    assert sorted(uids_in(server_errors)) == [ln.uid for ln in access if access_status(ln.uid) >= 500]
    assert {r["level"] for r in server_errors} == {"error"}

    # The same data through the Loki-compatible API, as Grafana asks for it.
    def loki(path: str, **params: object) -> dict:
        resp = httpx.get(f"{stack.url}/loki/api/v1/{path}", params=params, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()

    ns = {"start": str(int((base - timedelta(minutes=1)).timestamp() * 1e9)),
          "end": str(int((now_utc() + timedelta(minutes=1)).timestamp() * 1e9))}
    assert loki("query", query="vector(1)+vector(1)")["data"]["result"][0]["value"][1] == "2"
    streams = loki("query_range", query='{service="app", level="error"}', limit=5000, **ns)["data"]["result"]
    assert sum(len(s["values"]) for s in streams) == len(errors)
    assert all(s["stream"]["service"] == "app" and s["stream"]["level"] == "error" for s in streams)
    token_line = random.Random(8).choice(lines)
    found = loki("query_range", query=f'{{service=~".+"}} |= "{token_line.token}"', **ns)["data"]["result"]
    exact_us = (token_line.ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert [v[0] for s in found for v in s["values"]] == [str(exact_us * 1000)]
    total = loki("query", query='sum(count_over_time({service=~".+"}[2h]))', time=ns["end"])["data"]["result"]
    assert total[0]["value"][1] == str(N)
    assert "service" in loki("labels", **ns)["data"]
    assert "app" in loki("label/service/values", **ns)["data"]
