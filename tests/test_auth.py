"""API keys, roles and tenancy on the HTTP API, with authentication on.

A real uvicorn server (auth on, as by default) serves a small lake of two
tenants (tests/helpers/tenants.py), written straight through the storage package:

    acme   service shop, host acmehost, attr acme_attr, messages "ACMEMARK ...", ids A1..A4
    beta   service bank, host betahost, attr beta_attr, messages "BETAMARK ...", ids B1..B3

Every key is made by the real CLI (``python -m loglake keys create``) as a
subprocess over the same catalog the server reads. The tenancy checks look for
each tenant's marker strings in whole responses: a call scoped to acme must show
acme's markers (so it did read something) and none of beta's, and the other way round.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from loglake.core.logs import JsonFormatter
from query.auth import secret_matches
from query.store import KeyStore
from query.timerange import parse_time_us
from tests.helpers.processes import free_port, wait_until
from tests.helpers.server import Server
from tests.helpers.tenants import (
    ALL,
    IDS,
    KEY_RE,
    SAVED,
    TENANTS,
    Lake,
    cli,
    cli_args,
    cli_env,
    parse_key,
    search_ids,
    serving,
    tenant_lake,
)

START_NS = str(parse_time_us(ALL["start"]) * 1000)
END_NS = str(parse_time_us(ALL["end"]) * 1000)
LOKI_RANGE = {"start": START_NS, "end": END_NS}
#: Strings only one tenant's data (or saved queries) contains.
MARKS = {"acme": ("ACMEMARK", "acme_attr", "acmehost", "shop"), "beta": ("BETAMARK", "beta_attr", "betahost", "bank")}
OTHER = {"acme": "beta", "beta": "acme"}


# -- the lake and its servers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    with tenant_lake(tmp_path_factory.mktemp("auth")) as lk:
        yield lk


@pytest.fixture(scope="module")
def server(lake: Lake) -> Iterator[Server]:
    """Auth on with the default key cache (auth.cache_s = 60)."""
    with serving(lake) as s:
        assert s.cfg.auth.cache_s > 10
        yield s


@pytest.fixture(scope="module")
def uncached(lake: Lake) -> Iterator[Server]:
    """Auth on with no key cache: a revoked key stops at once."""
    with serving(lake, LOGLAKE_AUTH__CACHE_S="0") as s:
        assert s.cfg.auth.cache_s == 0
        yield s


def marks_in(text: str) -> dict[str, list[str]]:
    return {t: [m for m in marks if m in text] for t, marks in MARKS.items()}


def assert_only(tenant: str, resp: httpx.Response) -> None:
    """``resp`` shows ``tenant``'s data and nothing of the other tenant's."""
    assert resp.status_code == 200, resp.text
    found = marks_in(resp.text)
    assert found[tenant], f"nothing of {tenant} in {resp.request.url}: {resp.text[:400]}"
    assert not found[OTHER[tenant]], f"{OTHER[tenant]} leaked into {resp.request.url}: {resp.text[:400]}"


def assert_401(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert "bearer" in resp.headers.get("www-authenticate", "").lower(), resp.headers
    assert resp.json()["error"] == "Unauthorized"


# -- keys through the CLI ------------------------------------------------------------------


def test_keys_create_prints_the_key_once_on_stdout(lake: Lake) -> None:
    key = lake.keys["reader"]
    assert key.secret not in key.stderr
    assert "only" in key.stderr.lower(), "the note that the key is shown only now"
    assert len({k.id for k in lake.keys.values()}) == len(lake.keys)
    assert len({k.secret for k in lake.keys.values()}) == len(lake.keys)


def test_keys_list_shows_ids_roles_and_tenants_never_secrets(lake: Lake) -> None:
    out = cli(lake.config, "keys", "list", COLUMNS="300")
    assert out.returncode == 0, out.stderr
    for name, key in lake.keys.items():
        assert key.id in out.stdout, f"{name} ({key.id}) missing from keys list"
        assert key.secret not in out.stdout + out.stderr
    assert "scrypt$" not in out.stdout
    line = next(ln for ln in out.stdout.splitlines() if lake.keys["both"].id in ln)
    assert "reader" in line and "acme,beta" in line
    line = next(ln for ln in out.stdout.splitlines() if lake.keys["admin"].id in ln)
    assert "admin" in line


#: Run in a child process: reading the SQLite files (or opening them outside SQLite) here would drop this
#: process's POSIX locks on them (close() releases every lock the process holds on a file) under the open catalogs.
_DUMP_CATALOG = """
import base64, json, sqlite3, sys
from pathlib import Path
db = Path(sys.argv[1])
raw = b"".join(f.read_bytes() for f in sorted(db.parent.glob(db.name + "*")))
conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
cols = [c[1] for c in conn.execute("PRAGMA table_info(api_keys)")]
rows = [dict(zip(cols, r)) for r in conn.execute("SELECT * FROM api_keys")]
conn.close()
print(json.dumps({"raw": base64.b64encode(raw).decode(), "rows": rows}))
"""


def test_catalog_holds_a_scrypt_hash_and_no_plaintext(lake: Lake) -> None:
    out = subprocess.run([sys.executable, "-c", _DUMP_CATALOG, str(lake.catalog_file)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    dump = json.loads(out.stdout)
    raw = base64.b64decode(dump["raw"])
    rows = {r["id"]: r for r in dump["rows"]}
    assert {k.id for k in lake.keys.values()} <= set(rows)
    for key in lake.keys.values():
        # The scan reads the rows: the (public) ids are in the files ...
        assert key.id.encode() in raw
        # ... the secrets, the whole keys and base64 of them are not, in any column or byte.
        for needle in (key.secret, key.whole, base64.b64encode(key.secret.encode()).decode()):
            assert needle.encode() not in raw
            assert needle not in json.dumps(rows[key.id])
        stored = rows[key.id]["hash"]
        assert stored.startswith("scrypt$")
        assert secret_matches(key.secret, stored)
        assert not secret_matches(key.secret + "x", stored)
    assert len({r["hash"] for r in rows.values()}) == len(rows), "salted: no two hashes alike"


@pytest.mark.parametrize(("args", "exit_nonzero_message"), [
    (["--tenant", "acme", "--role", "root"], "invalid choice"),
    (["--tenant", "acme", "--role", ""], "invalid choice"),
    (["--tenant", "../etc", "--role", "reader"], "tenant"),
    (["--tenant", "acme,bad/name", "--role", "reader"], "tenant"),
    (["--tenant", "", "--role", "reader"], "tenant"),
    (["--tenant", "acme", "--role", "reader", "--expires", "soon"], "duration"),
], ids=["bad-role", "empty-role", "dotdot-tenant", "slash-tenant", "no-tenant", "bad-expiry"])
def test_keys_create_refuses_bad_requests(lake: Lake, args: list[str], exit_nonzero_message: str) -> None:
    before = {k.id for k in KeyStore(lake.catalog).api_keys()}
    out = cli(lake.config, "keys", "create", *args)
    assert out.returncode != 0, out.stdout
    assert exit_nonzero_message in out.stderr.lower(), out.stderr
    assert not KEY_RE.search(out.stdout), "a key was printed"
    assert {k.id for k in KeyStore(lake.catalog).api_keys()} == before, "a key was stored"


# -- authentication --------------------------------------------------------------------------


def test_no_key_is_401_with_www_authenticate(server: Server) -> None:
    for path in ("/api/v1/search", "/api/v1/fields", "/api/v1/saved-queries", "/api/v1/retention",
                 "/loki/api/v1/labels", "/loki/api/v1/query_range"):
        assert_401(server.get(path))
    assert_401(server.call("POST", "/api/v1/saved-queries", json={"name": "x", "query": ""}))


@pytest.mark.parametrize("authorization", [
    "Bearer garbage",
    "Bearer",
    "Bearer llk_short_secret",
    "Bearer llk_000000000000_" + "a" * 43,          # well formed, no such id
    "Token {reader}",                                # unknown scheme
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"grafana:").decode(),     # no password
    "{reader}",                                      # no scheme at all
], ids=["garbage", "empty", "short", "unknown-id", "token-scheme", "bad-basic", "basic-no-password", "bare"])
def test_garbage_credentials_are_401(server: Server, lake: Lake, authorization: str) -> None:
    resp = server.get("/api/v1/search", headers={"Authorization": authorization.format(
        reader=lake.keys["reader"].whole)}, params=ALL)
    assert_401(resp)


def test_right_id_wrong_secret_is_401(server: Server, lake: Lake) -> None:
    key = lake.keys["reader"]
    assert server.get("/api/v1/search", key.whole, params=ALL).status_code == 200   # the id is good
    for secret in (secrets.token_urlsafe(32), key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B"),
                   key.secret[:-1], key.secret + "x"):
        assert_401(server.get("/api/v1/search", f"llk_{key.id}_{secret}", params=ALL))
        # Not even right after the real key was cached.
    assert server.get("/api/v1/search", key.whole, params=ALL).status_code == 200


def test_bearer_lowercase_bearer_and_basic_auth_all_work(server: Server, lake: Lake) -> None:
    key = lake.keys["both"].whole
    ways: dict[str, dict[str, Any]] = {
        "Bearer": {"headers": {"Authorization": f"Bearer {key}"}},
        "bearer": {"headers": {"Authorization": f"bearer {key}"}},
        "BEARER": {"headers": {"Authorization": f"BEARER {key}"}},
        "basic grafana": {"auth": ("grafana", key)},
        "basic empty user": {"auth": ("", key)},
        "basic other user": {"auth": ("someone@example.com", key)},
    }
    for way, kw in ways.items():
        resp = server.client.get("/api/v1/search", params=ALL, **kw)
        assert resp.status_code == 200, f"{way}: {resp.text}"
        assert sorted(r["attrs"]["id"] for r in resp.json()["rows"]) == sorted(IDS["acme"]), way
    # Grafana's Loki data source: basic auth plus X-Scope-OrgID.
    resp = server.client.get("/loki/api/v1/query_range", auth=("grafana", key), headers={"X-Scope-OrgID": "beta"},
                             params={"query": '{host=~".+"}', **LOKI_RANGE})
    assert_only("beta", resp)
    # Basic auth with a wrong password is no better than none.
    assert_401(server.client.get("/api/v1/search", auth=("grafana", key + "x"), params=ALL))


def test_expired_key_is_401(lake: Lake, server: Server, uncached: Server) -> None:
    key = parse_key(cli(lake.config, "keys", "create", "--tenant", "acme", "--role", "reader", "--expires", "2s"))
    row = KeyStore(lake.catalog).api_key(key.id)
    assert row is not None and row.expires_us is not None
    assert 1_000_000 <= row.expires_us - row.created_us <= 3_000_000
    if row.expires_us - time.time_ns() // 1000 > 500_000:    # still time to see it work (and be cached)
        assert server.get("/api/v1/search", key.whole, params=ALL).status_code == 200
    time.sleep(max(0.0, (row.expires_us - time.time_ns() // 1000) / 1e6) + 0.2)
    # The cached server too: a key is never remembered past its expiry.
    assert_401(server.get("/api/v1/search", key.whole, params=ALL))
    assert_401(uncached.get("/api/v1/search", key.whole, params=ALL))


def test_revoked_key_is_401(lake: Lake, uncached: Server, server: Server) -> None:
    key = lake.keys["revokee"]
    assert uncached.get("/api/v1/search", key.whole, params=ALL).status_code == 200
    out = cli(lake.config, "keys", "revoke", key.id)
    assert out.returncode == 0, out.stderr
    assert key.secret not in out.stdout + out.stderr
    assert_401(uncached.get("/api/v1/search", key.whole, params=ALL))
    assert_401(uncached.get("/loki/api/v1/labels", key.whole, params=LOKI_RANGE))
    row = KeyStore(lake.catalog).api_key(key.id)
    assert row is not None and row.revoked_us is not None
    # Twice is an error: there is no live key of that id any more; nor is an unknown id.
    for key_id in (key.id, "000000000000"):
        again = cli(lake.config, "keys", "revoke", key_id)
        assert again.returncode != 0 and key_id in again.stderr, again.stderr
    # Other keys are untouched.
    assert uncached.get("/api/v1/search", lake.keys["reader"].whole, params=ALL).status_code == 200


# -- roles --------------------------------------------------------------------------------------

READS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/search", {"params": ALL}),
    ("POST", "/api/v1/search", {"json": {"q": "", **ALL}}),
    ("GET", "/api/v1/aggregate", {"params": {**ALL, "interval": "10m", "by": "service"}}),
    ("POST", "/api/v1/aggregate", {"json": {**ALL, "interval": "10m", "by": ["service"]}}),
    ("GET", "/api/v1/fields", {"params": ALL}),
    ("GET", "/api/v1/values/service", {"params": ALL}),
    ("GET", "/api/v1/saved-queries", {}),
    ("GET", f"/api/v1/saved-queries/{SAVED['acme']}", {}),
    ("GET", f"/api/v1/saved-queries/{SAVED['acme']}/run", {}),
    ("GET", "/loki/api/v1/query_range", {"params": {"query": '{host=~".+"}', **LOKI_RANGE}}),
    ("POST", "/loki/api/v1/query_range", {"data": {"query": '{host=~".+"}', **LOKI_RANGE}}),
    ("GET", "/loki/api/v1/labels", {"params": LOKI_RANGE}),
    ("GET", "/loki/api/v1/label/host/values", {"params": LOKI_RANGE}),
    ("GET", "/loki/api/v1/series", {"params": {"match[]": '{host=~".+"}', **LOKI_RANGE}}),
]


@pytest.mark.parametrize("role", ["reader", "writer", "admin"])
def test_every_role_can_read(server: Server, lake: Lake, role: str) -> None:
    for method, path, kw in READS:
        resp = server.call(method, path, lake.keys[role].whole, **kw)
        assert resp.status_code == 200, f"{role} {method} {path}: {resp.status_code} {resp.text}"


def test_an_ingest_key_reads_nothing(server: Server, lake: Lake) -> None:
    """It may push (tests/test_push.py) and nothing else: every read, saved-query change and admin
    route answers 403 naming the role."""
    key = lake.keys["ingest"].whole
    for method, path, kw in [*READS, ("POST", "/api/v1/saved-queries", {"json": {"name": "x", "query": "a"}}),
                             ("GET", "/api/v1/retention", {})]:
        resp = server.call(method, path, key, **kw)
        assert resp.status_code == 403, f"{method} {path}: {resp.status_code} {resp.text}"
        assert "ingest" in resp.json()["message"]
    assert server.get("/api/v1/search", lake.keys["reader"].whole, params=ALL).status_code == 200


def test_reader_cannot_change_saved_queries(server: Server, lake: Lake) -> None:
    reader = lake.keys["reader"].whole
    name = SAVED["acme"]
    body = {"name": "reader-made", "query": "level:info"}
    for method, path, kw in [("POST", "/api/v1/saved-queries", {"json": body}),
                             ("PUT", f"/api/v1/saved-queries/{name}", {"json": {**body, "name": name}}),
                             ("DELETE", f"/api/v1/saved-queries/{name}", {})]:
        resp = server.call(method, path, reader, **kw)
        assert resp.status_code == 403, f"{method} {path}: {resp.status_code} {resp.text}"
        assert resp.json()["error"] == "Forbidden"
    assert server.get("/api/v1/saved-queries/reader-made", reader).status_code == 404
    kept = server.get(f"/api/v1/saved-queries/{name}", reader)
    assert kept.status_code == 200 and kept.json()["query"] == "level:error"


def test_writer_manages_saved_queries(server: Server, lake: Lake) -> None:
    writer, reader = lake.keys["writer"].whole, lake.keys["reader"].whole
    made = server.call("POST", "/api/v1/saved-queries", writer,
                       json={"name": "writer-made", "query": "level:info", "params": ALL})
    assert made.status_code == 201, made.text
    ran = server.get("/api/v1/saved-queries/writer-made/run", reader)
    assert ran.status_code == 200
    assert sorted(r["attrs"]["id"] for r in ran.json()["rows"]) == \
        sorted(r["attrs"][0][1] for r in TENANTS["acme"] if r["level"] == "info")
    put = server.call("PUT", "/api/v1/saved-queries/writer-made", writer,
                      json={"name": "writer-made", "query": "level:error", "params": ALL})
    assert put.status_code == 200 and put.json()["query"] == "level:error", put.text
    assert server.call("DELETE", "/api/v1/saved-queries/writer-made", writer).status_code == 204
    assert server.get("/api/v1/saved-queries/writer-made", reader).status_code == 404


def test_reader_cannot_change_a_saved_query_named_run(server: Server, lake: Lake) -> None:
    writer, reader = lake.keys["writer"].whole, lake.keys["reader"].whole
    made = server.call("POST", "/api/v1/saved-queries", writer, json={"name": "run", "query": "level:info"})
    assert made.status_code == 201, made.text
    try:
        put = server.call("PUT", "/api/v1/saved-queries/run", reader, json={"name": "run", "query": "level:error"})
        delete = server.call("DELETE", "/api/v1/saved-queries/run", reader)
        assert (put.status_code, delete.status_code) == (403, 403)
        assert server.get("/api/v1/saved-queries/run", reader).json()["query"] == "level:info"
    finally:
        server.call("DELETE", "/api/v1/saved-queries/run", writer)


def test_retention_needs_an_admin(server: Server, lake: Lake) -> None:
    for role in ("reader", "writer"):
        resp = server.get("/api/v1/retention", lake.keys[role].whole)
        assert resp.status_code == 403, f"{role}: {resp.text}"
        assert role in resp.json()["message"]
    resp = server.get("/api/v1/retention", lake.keys["admin"].whole)
    assert resp.status_code == 200, resp.text
    assert any(s["tenant"] == "acme" for s in resp.json()["stored"])


def test_retention_view_is_scoped_to_the_keys_tenants(server: Server, lake: Lake) -> None:
    admin = lake.keys["admin"].whole
    plain = server.get("/api/v1/retention", admin)
    assert plain.status_code == 200, plain.text
    assert {s["tenant"] for s in plain.json()["stored"]} == {"acme"}
    other = server.get("/api/v1/retention", admin, params={"tenant": "beta"})
    assert other.status_code == 403 or not other.json()["stored"], other.text


# -- tenancy ----------------------------------------------------------------------------------

SCOPED: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/search", {"params": ALL}),
    ("POST", "/api/v1/search", {"json": {"q": "", **ALL}}),
    ("GET", "/api/v1/aggregate", {"params": {**ALL, "interval": "10m", "by": "service,host"}}),
    ("GET", "/api/v1/fields", {"params": ALL}),
    ("GET", "/api/v1/values/service", {"params": ALL}),
    ("GET", "/api/v1/values/host", {"params": ALL}),
    ("GET", "/api/v1/saved-queries", {}),
    ("GET", "/loki/api/v1/query_range", {"params": {"query": '{host=~".+"}', **LOKI_RANGE}}),
    ("GET", "/loki/api/v1/query_range", {"params": {"query": 'sum by (service) (count_over_time({host=~".+"}[1h]))',
                                                    **LOKI_RANGE, "step": "600"}}),
    ("GET", "/loki/api/v1/label/service/values", {"params": LOKI_RANGE}),
    ("GET", "/loki/api/v1/label/host/values", {"params": LOKI_RANGE}),
    ("GET", "/loki/api/v1/series", {"params": {"match[]": '{host=~".+"}', **LOKI_RANGE}}),
    ("GET", "/loki/api/v1/detected_fields", {"params": {"query": '{host=~".+"}', **LOKI_RANGE}}),
]
SCOPED_IDS = [f"{m} {p}" + (" metric" if "count_over_time" in str(kw) else "") for m, p, kw in SCOPED]


def test_default_tenant_is_the_keys_first(server: Server, lake: Lake) -> None:
    assert search_ids(server, lake.keys["reader"].whole) == sorted(IDS["acme"])
    assert search_ids(server, lake.keys["both"].whole) == sorted(IDS["acme"])
    assert search_ids(server, lake.keys["beta_first"].whole) == sorted(IDS["beta"])
    assert search_ids(server, lake.keys["beta_writer"].whole) == sorted(IDS["beta"])


def test_multi_tenant_key_reads_each_tenant_by_header(server: Server, lake: Lake) -> None:
    for name in ("both", "beta_first"):
        for tenant in ("acme", "beta"):
            assert search_ids(server, lake.keys[name].whole, tenant) == sorted(IDS[tenant]), (name, tenant)


@pytest.mark.parametrize(("method", "path", "kw"), SCOPED, ids=SCOPED_IDS)
def test_calls_see_only_the_keys_tenant(server: Server, lake: Lake, method: str, path: str,
                                        kw: dict[str, Any]) -> None:
    assert_only("acme", server.call(method, path, lake.keys["reader"].whole, **kw))
    assert_only("beta", server.call(method, path, lake.keys["beta_writer"].whole, **kw))
    assert_only("acme", server.call(method, path, lake.keys["both"].whole, **kw))
    assert_only("beta", server.call(method, path, lake.keys["both"].whole, "beta", **kw))
    assert_only("beta", server.call(method, path, lake.keys["beta_first"].whole, **kw))


@pytest.mark.parametrize(("method", "path", "kw"), SCOPED, ids=SCOPED_IDS)
def test_header_for_a_tenant_the_key_lacks_is_403(server: Server, lake: Lake, method: str, path: str,
                                                  kw: dict[str, Any]) -> None:
    for key, tenant in (("reader", "beta"), ("beta_writer", "acme"), ("both", "gamma"), ("admin", "beta")):
        resp = server.call(method, path, lake.keys[key].whole, tenant, **kw)
        assert resp.status_code == 403, f"{key} as {tenant}: {resp.status_code} {resp.text}"
        assert not any(marks_in(resp.text).values()), resp.text


def test_loki_selectors_for_the_other_tenant_find_nothing(server: Server, lake: Lake) -> None:
    acme, both = lake.keys["reader"].whole, lake.keys["both"].whole
    bank = '{service="bank"}'
    calls = [("/loki/api/v1/labels", {"query": bank, **LOKI_RANGE}),
             ("/loki/api/v1/series", {"match[]": bank, **LOKI_RANGE}),
             ("/loki/api/v1/query_range", {"query": bank, **LOKI_RANGE}),
             ("/loki/api/v1/label/level/values", {"query": bank, **LOKI_RANGE})]
    for path, params in calls:
        mine = server.get(path, acme, params=params)
        assert mine.status_code == 200, mine.text
        data = mine.json()["data"]
        assert not (data["result"] if isinstance(data, dict) else data), f"{path}: {mine.text}"
        theirs = server.get(path, both, "beta", params=params)       # the same call where bank lives
        assert theirs.status_code == 200, theirs.text
        data = theirs.json()["data"]
        assert data["result"] if isinstance(data, dict) else data, f"{path}: {theirs.text}"


def test_saved_queries_of_another_tenant_cannot_be_read_or_run(server: Server, lake: Lake) -> None:
    acme = lake.keys["reader"].whole
    assert [q["name"] for q in server.get("/api/v1/saved-queries", acme).json()] == [SAVED["acme"]]
    assert server.get(f"/api/v1/saved-queries/{SAVED['beta']}", acme).status_code == 404
    assert server.get(f"/api/v1/saved-queries/{SAVED['beta']}/run", acme).status_code == 404
    assert server.get(f"/api/v1/saved-queries/{SAVED['beta']}", acme, "beta").status_code == 403
    ran = server.get(f"/api/v1/saved-queries/{SAVED['acme']}/run", acme)
    assert_only("acme", ran)
    assert sorted(r["attrs"]["id"] for r in ran.json()["rows"]) == \
        sorted(r["attrs"][0][1] for r in TENANTS["acme"] if r["level"] == "error")
    ran = server.get(f"/api/v1/saved-queries/{SAVED['beta']}/run", lake.keys["both"].whole, "beta")
    assert_only("beta", ran)


def test_a_writer_saves_into_its_own_tenant_only(server: Server, lake: Lake) -> None:
    writer = lake.keys["writer"].whole
    assert server.call("POST", "/api/v1/saved-queries", writer, "beta",
                       json={"name": "sneaky", "query": ""}).status_code == 403
    made = server.call("POST", "/api/v1/saved-queries", writer, json={"name": "acme-only", "query": ""})
    assert made.status_code == 201, made.text
    try:
        both = lake.keys["both"].whole
        assert "acme-only" in [q["name"] for q in server.get("/api/v1/saved-queries", both, "acme").json()]
        assert "acme-only" not in [q["name"] for q in server.get("/api/v1/saved-queries", both, "beta").json()]
        assert "sneaky" not in [q["name"] for q in server.get("/api/v1/saved-queries", both, "beta").json()]
        # A beta writer cannot delete acme's query (it does not exist in beta).
        assert server.call("DELETE", "/api/v1/saved-queries/acme-only", lake.keys["beta_writer"].whole
                           ).status_code == 404
        assert server.call("DELETE", "/api/v1/saved-queries/acme-only", lake.keys["beta_writer"].whole, "acme"
                           ).status_code == 403
    finally:
        assert server.call("DELETE", "/api/v1/saved-queries/acme-only", writer).status_code == 204


# -- open paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/ready", "/metrics", "/docs", "/openapi.json"])
def test_open_paths_need_no_key(server: Server, path: str) -> None:
    resp = server.get(path)
    assert resp.status_code == 200, resp.text
    assert "www-authenticate" not in resp.headers


def test_near_misses_of_open_paths_still_need_a_key(server: Server) -> None:
    for path in ("/healthz/", "/docs/../api/v1/search", "/openapi.json/../api/v1/search", "/metrics/x"):
        resp = server.client.send(server.client.build_request("GET", httpx.URL(server.url + "/").copy_with(
            raw_path=path.encode())))
        assert resp.status_code == 401, f"{path}: {resp.status_code} {resp.text}"


# -- logging --------------------------------------------------------------------------------------


def test_key_use_is_logged_by_id_never_the_secret(server: Server, lake: Lake, caplog: pytest.LogCaptureFixture
                                                  ) -> None:
    key, other = lake.keys["reader"], lake.keys["writer"]
    with caplog.at_level(logging.DEBUG):
        assert server.get("/api/v1/search", key.whole, params=ALL).status_code == 200
        assert server.client.get("/api/v1/fields", auth=("grafana", key.whole), params=ALL).status_code == 200
        assert server.get("/api/v1/search", f"llk_{key.id}_{other.secret}", params=ALL).status_code == 401
        assert server.get("/api/v1/retention", other.whole).status_code == 403
    used = [r for r in caplog.records if r.name == "loglake.auth" and getattr(r, "key_id", None) == key.id]
    assert {getattr(r, "path", None) for r in used} >= {"/api/v1/search", "/api/v1/fields"}, \
        [(r.name, r.getMessage(), r.__dict__) for r in caplog.records if r.name == "loglake.auth"]
    assert all(getattr(r, "tenant", None) == "acme" for r in used)
    formatter = JsonFormatter("serve")
    lines = [formatter.format(r) for r in used]
    assert all(key.id in line for line in lines)
    everything = "\n".join([formatter.format(r) for r in caplog.records] + [repr(r.__dict__) for r in caplog.records])
    for secret in (key.secret, other.secret):
        assert secret not in everything


# -- loki tail over a WebSocket ----------------------------------------------------------------------


def ws_handshake(url: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """A raw WebSocket upgrade request; returns the status code and the response head."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Version: 13",
             *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    text = head.decode("latin-1")
    m = re.match(r"HTTP/1\.1 (\d{3})", text)
    assert m, f"no HTTP status in {text!r}"
    return int(m[1]), text


TAIL = "/loki/api/v1/tail?" + urlencode({"query": '{host=~".+"}', "start": START_NS})


def test_tail_without_a_key_is_refused(server: Server, lake: Lake) -> None:
    status, head = ws_handshake(server.url, TAIL, {})
    assert status != 101, head
    status, head = ws_handshake(server.url, TAIL, {"Authorization": "Bearer garbage"})
    assert status != 101, head
    status, head = ws_handshake(server.url, TAIL, {"Authorization": f"Bearer {lake.keys['reader'].whole}",
                                                   "X-Scope-OrgID": "beta"})
    assert status != 101, head
    # The same handshake with a key is accepted: the refusals above are the key's doing.
    status, head = ws_handshake(server.url, TAIL, {"Authorization": f"Bearer {lake.keys['reader'].whole}"})
    assert status == 101, head


@pytest.mark.timeout(15)
def test_tail_without_a_key_is_refused_in_process(server: Server) -> None:
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    # An absolute URL: the Host must name the server (the default, testserver, is refused).
    client = TestClient(server.app)
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("ws://localhost" + TAIL):
        pytest.fail("the tail WebSocket was accepted without a key")
    assert refused.value.code == 1008


@pytest.mark.parametrize(("key", "tenant", "expect"), [("reader", None, "acme"), ("both", "beta", "beta")])
def test_tail_streams_only_the_keys_tenant(server: Server, lake: Lake, key: str, tenant: str | None,
                                           expect: str) -> None:
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {lake.keys[key].whole}"}
    if tenant:
        headers["X-Scope-OrgID"] = tenant
    with connect(server.url.replace("http", "ws", 1) + TAIL, additional_headers=headers, open_timeout=10) as ws:
        message = str(ws.recv(timeout=15))
    found = marks_in(message)
    assert found[expect] and not found[OTHER[expect]], message


# -- `loglake serve` and the network it listens on ------------------------------------------------------


@contextlib.contextmanager
def serve_process(lake: Lake, port: int, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    log = lake.root / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cli_args(lake.config, "serve", "--port", str(port), *args), env=cli_env(**env),
                                cwd=lake.root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    def healthy() -> bool:
        assert proc.poll() is None, f"serve exited {proc.returncode}: {log.read_text(errors='replace')}"
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    wait_until(healthy, 30, 0.1, "loglake serve to answer /healthz")


def test_serve_refuses_a_public_address_with_auth_off(lake: Lake) -> None:
    port = free_port()
    t0 = time.monotonic()
    try:
        out = cli(lake.config, "serve", "--host", "0.0.0.0", "--port", str(port), timeout=20,
                  LOGLAKE_AUTH__ENABLED="false")
    except subprocess.TimeoutExpired:
        pytest.fail("loglake serve kept running (serving?) instead of refusing 0.0.0.0 with auth off")
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "--insecure" in out.stderr and "0.0.0.0" in out.stderr, out.stderr
    assert time.monotonic() - t0 < 15
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_serve_insecure_starts_on_a_public_address_with_auth_off(lake: Lake) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve_process(lake, port, "--host", "0.0.0.0", "--insecure", LOGLAKE_AUTH__ENABLED="false") as proc:
        wait_healthy(proc, url, lake.root / f"serve-{port}.log")
        resp = httpx.get(url + "/api/v1/search", params=ALL, headers={"X-Scope-OrgID": "beta"}, timeout=10)
        assert resp.status_code == 200, resp.text     # auth really is off: no key needed
        assert sorted(r["attrs"]["id"] for r in resp.json()["rows"]) == sorted(IDS["beta"])


def test_serve_with_auth_on_starts_on_a_public_address(lake: Lake) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve_process(lake, port, "--host", "0.0.0.0") as proc:
        wait_healthy(proc, url, lake.root / f"serve-{port}.log")
        assert_401(httpx.get(url + "/api/v1/search", params=ALL, timeout=10))
        resp = httpx.get(url + "/api/v1/search", params=ALL, timeout=10,
                         headers={"Authorization": f"Bearer {lake.keys['beta_first'].whole}"})
        assert resp.status_code == 200, resp.text
        assert sorted(r["attrs"]["id"] for r in resp.json()["rows"]) == sorted(IDS["beta"])
