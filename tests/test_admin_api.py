"""Admin routes over a real server with keys on: API keys and deletion on demand, each within the
admin's own tenants. The lake and keys are tests/helpers/tenants.py's, built afresh for this module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.server import Server
from tests.helpers.tenants import ALL, IDS, KEY_RE, Lake, search_ids, serving, tenant_lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    with tenant_lake(tmp_path_factory.mktemp("admin")) as lk:
        yield lk


@pytest.fixture(scope="module")
def server(lake: Lake) -> Iterator[Server]:
    """No key cache, so a revoked key stops at once."""
    with serving(lake, LOGLAKE_AUTH__CACHE_S="0") as s:
        yield s


ADMIN_ROUTES = [("GET", "/api/v1/keys", {}), ("POST", "/api/v1/keys", {"json": {"role": "reader"}}),
                ("DELETE", "/api/v1/keys/000000000000", {}),
                ("POST", "/api/v1/delete", {"json": {"q": "order", **ALL}})]


@pytest.mark.parametrize(("method", "path", "kw"), ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_routes_need_an_admin(server: Server, lake: Lake, method: str, path: str, kw: dict) -> None:
    assert server.call(method, path, **kw).status_code == 401
    for role in ("reader", "writer"):
        resp = server.call(method, path, lake.keys[role].whole, **kw)
        assert resp.status_code == 403 and role in resp.json()["message"], resp.text


def test_an_admin_makes_lists_and_revokes_keys_of_its_own_tenant(server: Server, lake: Lake) -> None:
    admin = lake.keys["admin"].whole
    made = server.call("POST", "/api/v1/keys", admin, json={"role": "reader", "expires": "7d",
                                                             "description": "made over http"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert KEY_RE.fullmatch(body["key"]) and body["tenants"] == ["acme"] and body["role"] == "reader"
    assert body["expires"] is not None
    new_key = body["key"]
    assert search_ids(server, new_key) == sorted(IDS["acme"])          # it works, on its tenant

    listed = server.get("/api/v1/keys", admin)
    assert listed.status_code == 200
    ids = {k["id"]: k for k in listed.json()}
    assert body["id"] in ids and ids[body["id"]]["description"] == "made over http"
    assert lake.keys["beta_writer"].id not in ids, "a key of another tenant only is not shown"
    assert lake.keys["both"].id in ids                                   # it reaches acme too
    assert new_key not in listed.text and "scrypt" not in listed.text

    assert server.call("DELETE", f"/api/v1/keys/{body['id']}", admin).status_code == 204
    assert server.get("/api/v1/search", new_key, params=ALL).status_code == 401
    assert server.call("DELETE", f"/api/v1/keys/{body['id']}", admin).status_code == 404    # already revoked


def test_an_admin_cannot_reach_beyond_its_tenants(server: Server, lake: Lake) -> None:
    admin = lake.keys["admin"].whole
    resp = server.call("POST", "/api/v1/keys", admin, json={"tenants": ["beta"], "role": "admin"})
    assert resp.status_code == 403 and "beta" in resp.json()["message"], resp.text
    resp = server.call("POST", "/api/v1/keys", admin, json={"tenants": ["acme", "beta"]})
    assert resp.status_code == 403, resp.text
    # Revoking a key that also reaches beta would cut beta's access: not this admin's to do.
    for name in ("beta_writer", "both"):
        resp = server.call("DELETE", f"/api/v1/keys/{lake.keys[name].id}", admin)
        assert resp.status_code == 404, resp.text
    assert search_ids(server, lake.keys["beta_writer"].whole) == sorted(IDS["beta"])
    assert server.call("POST", "/api/v1/keys", admin, json={"role": "owner"}).status_code == 422


def test_deletion_over_http_is_dry_by_default_scoped_and_audited(server: Server, lake: Lake) -> None:
    admin = lake.keys["admin"].whole
    dry = server.call("POST", "/api/v1/delete", admin, json={"q": "order", **ALL})
    assert dry.status_code == 200, dry.text
    assert (dry.json()["dry_run"], dry.json()["rows"], dry.json()["tenant"]) == (True, 2, "acme")
    assert search_ids(server, admin) == sorted(IDS["acme"]), "a dry run removes nothing"

    # The header names beta; the middleware pins it to the admin's own tenant.
    done = server.call("POST", "/api/v1/delete", admin, "beta", json={"q": "order", **ALL, "dry_run": False})
    assert done.status_code == 403, done.text
    done = server.call("POST", "/api/v1/delete", admin, json={"q": "order", **ALL, "dry_run": False})
    assert done.status_code == 200, done.text
    assert done.json()["rows"] == 2 and done.json()["segments_changed"] == 1
    assert search_ids(server, admin) == ["A2", "A4"]
    assert search_ids(server, lake.keys["beta_writer"].whole) == sorted(IDS["beta"])

    audit = server.get("/api/v1/retention", admin).json()["deletions"]
    mine = [d for d in audit if d["action"] == "delete" and d["tenant"] == "acme"]
    assert mine and mine[0]["actor"] == f"api key {lake.keys['admin'].id}" and mine[0]["rows"] == 2, audit

    bad = server.call("POST", "/api/v1/delete", admin, json={"q": "order AND (", **ALL})
    assert bad.status_code == 400 and "position" in bad.json(), bad.text
