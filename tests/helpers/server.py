"""The query service on a real uvicorn server on a loopback port, with an httpx client to it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from loglake.core.config import Config, load_config
from query.api.app import create_app
from query.service import SearchService
from tests.helpers.processes import free_port, uvicorn_thread


def config_for(tmp: Path, data_root: Path, **query: Any) -> Config:
    """A configuration of defaults but ``data_root``, a free port, auth off and ``query`` settings."""
    (tmp / "empty.toml").write_text("")
    env = {"LOGLAKE_CONFIG": str(tmp / "empty.toml"), "LOGLAKE_STORAGE__DATA_ROOT": str(data_root),
           "LOGLAKE_QUERY__PORT": str(free_port()),
           "LOGLAKE_AUTH__ENABLED": "false"}      # keys are tested in test_auth.py
    env.update({f"LOGLAKE_QUERY__{k.upper()}": str(v) for k, v in query.items()})
    return load_config(environ=env)


@dataclass
class Server:
    """A served app and a client to it; ``rng`` and ``limit`` go with every search unless a call overrides them."""

    url: str
    app: FastAPI
    cfg: Config
    client: httpx.Client
    rng: dict[str, str] = field(default_factory=dict)
    limit: int | None = None

    @property
    def service(self) -> SearchService:
        return self.app.state.service

    def call(self, method: str, path: str, key: str | None = None, tenant: str | None = None,
             **kw: Any) -> httpx.Response:
        """A request as ``key`` (a bearer token) for ``tenant`` (``X-Scope-OrgID``); ``kw`` go to httpx."""
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if tenant is not None:
            headers["X-Scope-OrgID"] = tenant
        return self.client.request(method, path, headers=headers, **kw)

    def get(self, path: str, key: str | None = None, tenant: str | None = None, *,
            params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
            **query: Any) -> httpx.Response:
        """GET ``path`` with ``params`` and the other keywords as its query string."""
        return self.call("GET", path, key, tenant, params={**(params or {}), **query}, headers=headers or {})

    def ok(self, path: str, key: str | None = None, tenant: str | None = None, **query: Any) -> Any:
        """The JSON body of a GET that must answer 200."""
        resp = self.get(path, key, tenant, **query)
        assert resp.status_code == 200, f"{resp.status_code}: {resp.text}"
        return resp.json()

    def query(self, q: str, **params: Any) -> httpx.Response:
        """The search endpoint's response to exactly these parameters (no range or limit added)."""
        return self.client.get("/api/v1/search", params={"q": q, **params})

    def search(self, q: str = "", rng: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
        limit = {} if self.limit is None else {"limit": self.limit}
        resp = self.query(q, **{**(rng or self.rng), **limit, **params})
        assert resp.status_code == 200, resp.text
        return resp.json()

    def ids(self, q: str = "", rng: dict[str, str] | None = None, **params: Any) -> list[str]:
        """``attrs.id`` of each row a search returns, in order."""
        return [row["attrs"]["id"] for row in self.search(q, rng, **params)["rows"]]

    def aggregate(self, **params: Any) -> dict[str, Any]:
        resp = self.client.get("/api/v1/aggregate", params={**self.rng, **params})
        assert resp.status_code == 200, resp.text
        return resp.json()


@contextmanager
def serve(cfg: Config, *, port: int | None = None, timeout_s: float = 30, keepalive: bool = True,
          rng: dict[str, str] | None = None, limit: int | None = None) -> Iterator[Server]:
    """``create_app(cfg)`` on a real uvicorn server (on ``port``, else the configured one)."""
    app = create_app(cfg)
    # Without keep-alive a connection uvicorn dropped (after a 500) cannot fail the next request.
    limits = {} if keepalive else {"limits": httpx.Limits(max_keepalive_connections=0)}
    try:
        with uvicorn_thread(app, port or cfg.query.port) as url, \
                httpx.Client(base_url=url, timeout=timeout_s, **limits) as client:
            yield Server(url, app, cfg, client, dict(rng or {}), limit)
    finally:
        app.state.service.catalog.close()
