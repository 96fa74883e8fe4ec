"""`loglake search` as a user runs it: a real subprocess against a real uvicorn server.

The server serves the data sets of tests/helpers/query_data.py; expected
answers come from those records (or, for output formats, from the HTTP API the
CLI is a client of, whose answers test_query_features checks against the data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storage.catalog import Catalog
from tests.helpers.processes import free_port
from tests.helpers.query_data import (
    A_END,
    A_START,
    DATA_A,
    HOUR_US,
    RANGE_A,
    as_us,
    attr,
    build,
    expected_counts,
    newest_first,
    series_map,
)
from tests.helpers.server import Server, config_for, serve

_SCRIPT = Path(sys.executable).parent / "loglake"
LOGLAKE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "loglake"]
RANGE_ARGS = ["--start", A_START, "--end", A_END]


@dataclass
class Cli:
    server: Server
    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*LOGLAKE, "search", "--url", url or self.server.url, *args], check=False,
                              env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=60)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def many(self, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Independent invocations at once (each is a Python start-up: about a second)."""
        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(lambda a: self(*a), calls))


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    tmp = tmp_path_factory.mktemp("query-cli")
    cfg = config_for(tmp, tmp / "data")
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    build(cfg.storage.data_root, catalog)
    catalog.close()
    env = {**os.environ, "LOGLAKE_CONFIG": str(tmp / "empty.toml"), "COLUMNS": "250", "NO_COLOR": "1",
           "TERM": "dumb"}
    env.pop("LOGLAKE_QUERY__PORT", None)
    with serve(cfg) as server:
        yield Cli(server, env, tmp)


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def api(cli: Cli, path: str, **params: Any) -> dict[str, Any]:
    resp = cli.server.client.get(path, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


# -- search ---------------------------------------------------------------------------------


def test_search_output_formats(cli: Cli) -> None:
    q = "service:billing level>=warn"
    expected = [attr(r, "id") for r in sorted(DATA_A, key=lambda r: r["ts"], reverse=True)
                if r["service"] == "billing" and r["level"] in ("warn", "error", "fatal")]
    assert 3 <= len(expected) < 100
    as_json, as_ndjson, as_table = cli.many(
        (q, *RANGE_ARGS, "--output", "json"), (q, *RANGE_ARGS, "--output", "ndjson"), (q, *RANGE_ARGS))
    for proc in (as_json, as_ndjson, as_table):
        assert proc.returncode == 0, proc.stderr

    body = json.loads(as_json.stdout)
    assert [r["attrs"]["id"] for r in body["rows"]] == expected
    assert body["stats"]["returned"] == len(expected)
    assert body["cursor"] is None

    rows = ndjson(as_ndjson.stdout)
    assert rows == body["rows"]
    assert len(as_ndjson.stdout.splitlines()) == len(expected)

    # the table: a header, one line per row with its time, service, level and message, and a summary
    lines = as_table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ts", "service", "level", "message"]
    for row in body["rows"]:
        line = next((ln for ln in lines if row["ts"] in ln), None)
        assert line is not None, row["ts"]
        assert line.split()[1:3] == [row["service"], row["level"]]
        assert row["message"] in line
    assert f"{len(expected)} rows" in as_table.stdout
    assert "\x1b[" not in as_table.stdout


def test_search_fields_limit_and_pages(cli: Cli) -> None:
    q = "_exists_:user"
    expected = [r for r in sorted(DATA_A, key=lambda r: r["ts"], reverse=True) if attr(r, "user")]
    paged, table, first = cli.many(
        (q, *RANGE_ARGS, "--limit", "7", "--pages", "3", "--fields", "user,status", "--output", "ndjson"),
        (q, *RANGE_ARGS, "--limit", "4", "--fields", "user,attrs.status"),
        (q, *RANGE_ARGS, "--limit", "7", "--output", "json"))
    assert paged.returncode == table.returncode == first.returncode == 0, (paged.stderr, table.stderr)

    rows = ndjson(paged.stdout)
    assert [(r["user"], r["status"]) for r in rows] == [(attr(r, "user"), attr(r, "status")) for r in expected[:21]]
    assert all(set(r) == {"ts", "user", "status"} for r in rows)

    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ts", "user", "attrs.status"]
    for r in expected[:4]:
        assert any(attr(r, "user") in ln and (attr(r, "status") or "") in ln for ln in lines[1:5])
    assert "next page: --cursor" in table.stdout

    # the cursor the first page printed continues where it ended
    cursor = json.loads(first.stdout)["cursor"]
    assert cursor
    nxt = cli.ok(q, *RANGE_ARGS, "--limit", "7", "--cursor", cursor, "--output", "ndjson")
    assert [r["attrs"]["id"] for r in ndjson(nxt.stdout)] == [attr(r, "id") for r in expected[7:14]]


def test_search_order_asc(cli: Cli) -> None:
    proc = cli.ok("service:web", *RANGE_ARGS, "--order", "asc", "--limit", "1000", "--output", "ndjson")
    assert [r["attrs"]["id"] for r in ndjson(proc.stdout)] == \
        newest_first([r for r in DATA_A if r["service"] == "web"])[::-1]


def test_rejected_queries_exit_3_with_the_reason_and_a_caret(cli: Cli) -> None:
    syntax, regex, unknown, interval = cli.many(
        ("level:error (timeout", *RANGE_ARGS), ("message:/a(/", *RANGE_ARGS),
        ("", *RANGE_ARGS, "--fields", "a;b"), ("", "--aggregate", "--interval", "1s", "--start", "2024-01-01",
                                                  "--end", "2024-03-01"))
    assert syntax.returncode == 3
    assert "expected ')'" in syntax.stderr
    lines = syntax.stderr.splitlines()
    caret = next(i for i, ln in enumerate(lines) if ln.strip() == "^")
    assert lines[caret - 1].strip() == "level:error (timeout"
    # the caret stands under the position the server reported (end of the query)
    assert lines[caret].index("^") - lines[caret - 1].index("l") == len("level:error (timeout")
    assert syntax.stdout == ""
    assert (regex.returncode, unknown.returncode, interval.returncode) == (3, 3, 3)
    assert "regular expression" in regex.stderr
    assert "interval" in interval.stderr


def test_unreachable_server_exits_4(cli: Cli) -> None:
    proc = cli("level:error", url=f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 4
    assert "cannot reach" in proc.stderr


# -- aggregate ------------------------------------------------------------------------------


def test_aggregate_output_formats(cli: Cli) -> None:
    args = ("", "--aggregate", *RANGE_ARGS, "--interval", "1h", "--by", "service")
    as_json, as_ndjson, as_table = cli.many((*args, "--output", "json"), (*args, "--output", "ndjson"), args)
    for proc in (as_json, as_ndjson, as_table):
        assert proc.returncode == 0, proc.stderr
    body = json.loads(as_json.stdout)
    def by_service(r: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        return (("service", r["service"]),)

    assert series_map(body) == expected_counts(DATA_A, HOUR_US, as_us(A_START), as_us(A_END), by_service)
    reference = api(cli, "/api/v1/aggregate", **RANGE_A, interval="1h", by="service")
    assert body["series"] == reference["series"] and body["buckets"] == reference["buckets"]

    # ndjson: one line per series and bucket
    lines = ndjson(as_ndjson.stdout)
    assert len(lines) == len(body["buckets"]) * len(body["series"])
    totals: Counter[str] = Counter()
    for line in lines:
        assert set(line) == {"t", "service", "other", "value"}
        totals[line["service"]] += line["value"]
    assert totals == Counter(r["service"] for r in DATA_A)
    assert {line["t"] for line in lines} == set(body["buckets"])

    # table: one line per series with its total
    for svc, n in Counter(r["service"] for r in DATA_A).items():
        line = next(ln for ln in as_table.stdout.splitlines() if ln.split()[:1] == [svc])
        assert line.split()[1] == f"{n:g}"
    assert "4 buckets of 1h" in as_table.stdout


def test_aggregate_fn_top_and_query(cli: Cli) -> None:
    proc = cli.ok("level>=warn", "--aggregate", *RANGE_ARGS, "--interval", "2h", "--by", "user", "--top", "2",
                  "--fn", "max(bytes)", "--output", "json")
    body = json.loads(proc.stdout)
    reference = api(cli, "/api/v1/aggregate", q="level>=warn", **RANGE_A, interval="2h", by="user", top=2,
                    fn="max(bytes)")
    assert body["series"] == reference["series"]
    assert body["fn"] == "max(bytes)" and len(body["series"]) == 3 and body["series"][-1]["other"]
    rows = [r for r in DATA_A if r["level"] in ("warn", "error", "fatal") and attr(r, "bytes") is not None]
    assert max(s["total"] for s in body["series"]) == max(float(attr(r, "bytes")) for r in rows)  # type: ignore[arg-type]


# -- saved queries --------------------------------------------------------------------------


def test_saved_queries_from_the_cli(cli: Cli) -> None:
    name = "cli billing errors"
    saved = cli.ok("service:billing level:error", "--save", name, *RANGE_ARGS, "--limit", "3",
                   "--fields", "user,status", "--description", "for the panel", "--owner", "me")
    created = json.loads(saved.stdout)
    assert (created["name"], created["kind"], created["query"], created["description"], created["owner"]) == \
        (name, "search", "service:billing level:error", "for the panel", "me")
    assert created["params"]["limit"] == 3 and created["params"]["fields"] == ["user", "status"]

    listed, shown, run, table = cli.many(
        ("--list-saved", "--output", "json"), ("--show-saved", name), ("--run", name, "--output", "ndjson"),
        ("--list-saved",))
    assert listed.returncode == shown.returncode == run.returncode == table.returncode == 0, run.stderr
    assert name in [q["name"] for q in json.loads(listed.stdout)]
    assert json.loads(shown.stdout) == created
    billing_errors = [r for r in sorted(DATA_A, key=lambda r: r["ts"], reverse=True)
                      if r["service"] == "billing" and r["level"] == "error"]
    assert [(r["user"], r["status"]) for r in ndjson(run.stdout)] == \
        [(attr(r, "user"), attr(r, "status")) for r in billing_errors[:3]]
    assert any(ln.startswith(name) and "service:billing level:error" in ln for ln in table.stdout.splitlines())

    # saving again under the same name replaces it
    again = cli.ok("service:web", "--save", name, *RANGE_ARGS, "--limit", "1000")
    assert json.loads(again.stdout)["query"] == "service:web"
    assert json.loads(again.stdout)["created"] == created["created"]
    rerun = cli.ok("--run", name, "--output", "json", "--start", "2024-03-01T12:00:00Z", "--end", A_END)
    web = [r for r in DATA_A if r["service"] == "web" and r["ts"] >= as_us("2024-03-01T12:00:00Z")]
    assert [r["attrs"]["id"] for r in json.loads(rerun.stdout)["rows"]] == newest_first(web)

    deleted = cli.ok("--delete-saved", name)
    assert "deleted" in deleted.stderr
    gone, gone_show, gone_delete = cli.many(("--run", name), ("--show-saved", name), ("--delete-saved", name))
    for proc in (gone, gone_show, gone_delete):
        assert proc.returncode == 3
        assert name in proc.stderr and "404" in proc.stderr
    assert "renamed or deleted" in gone.stderr


def test_saved_aggregate_from_the_cli(cli: Cli) -> None:
    name = "cli-volume"
    cli.ok("", "--aggregate", "--save", name, *RANGE_ARGS, "--interval", "1h", "--by", "level")
    as_json, as_table = cli.many(("--run", name, "--output", "json"), ("--run", name))
    assert as_json.returncode == as_table.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    def by_level(r: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        return (("level", r["level"]),)

    assert series_map(body) == expected_counts(DATA_A, HOUR_US, as_us(A_START), as_us(A_END), by_level)
    for level, n in Counter(r["level"] for r in DATA_A).items():
        assert any(ln.split()[:2] == [level, f"{n:g}"] for ln in as_table.stdout.splitlines()), level
    cli.ok("--delete-saved", name)


def test_invalid_saved_query_from_the_cli_exits_3(cli: Cli) -> None:
    bad_query, bad_fn = cli.many(("(broken", "--save", "cli-bad"), ("", "--aggregate", "--fn", "median(bytes)",
                                                                    "--save", "cli-bad-fn"))
    assert (bad_query.returncode, bad_fn.returncode) == (3, 3)
    assert "400" in bad_query.stderr and "fn" in bad_fn.stderr
    listed = cli.ok("--list-saved", "--output", "json")
    assert not {"cli-bad", "cli-bad-fn"} & {q["name"] for q in json.loads(listed.stdout)}


def test_saved_queries_per_tenant_from_the_cli(cli: Cli) -> None:
    cli.ok("service:api", "--save", "cli-tenant", "--tenant", "acme")
    mine, theirs = cli.many(("--list-saved", "--output", "json"),
                            ("--list-saved", "--output", "json", "--tenant", "acme"))
    assert "cli-tenant" not in [q["name"] for q in json.loads(mine.stdout)]
    assert "cli-tenant" in [q["name"] for q in json.loads(theirs.stdout)]
