"""FastAPI application: search, health and readiness."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from loglake.config import Config
from query.errors import QueryError, QuerySyntaxError
from query.service import SearchService
from storage.catalog import Catalog

log = logging.getLogger("loglake.query")


class SearchResponse(BaseModel):
    rows: list[dict[str, Any]]
    stats: dict[str, Any]


def create_app(cfg: Config, catalog: Catalog | None = None) -> FastAPI:
    """The query service's app; the catalog is opened from ``cfg`` unless given."""
    catalog = catalog or Catalog(cfg.storage.resolved_catalog_url())
    service = SearchService(cfg, catalog)
    app = FastAPI(title="loglake", version="0.1.0",
                  description="Search logs stored by loglake.")
    app.state.service = service

    @app.exception_handler(QueryError)
    async def _query_error(_: Request, exc: QueryError) -> JSONResponse:
        body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, QuerySyntaxError):
            body.update(position=exc.position, reason=exc.reason, query=exc.query)
        return JSONResponse(body, status_code=exc.status_code)

    @app.get("/api/v1/search", response_model=SearchResponse)
    def search(
        q: Annotated[str, Query(description="query, e.g. `level:error service:api timeout`")] = "",
        start: Annotated[str | None, Query(description="RFC 3339, epoch, or now-15m; default end-1h")] = None,
        end: Annotated[str | None, Query(description="RFC 3339, epoch, or now; default now")] = None,
        limit: Annotated[int | None, Query(description="rows to return (default 100)")] = None,
        order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    ) -> SearchResponse:
        result = service.search(q, start, end, limit, order)
        return SearchResponse(rows=result.rows, stats=result.stats)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        try:
            totals = catalog.totals()
        except Exception as e:  # the catalog is what we need to answer anything
            return JSONResponse({"status": "unavailable", "reason": str(e)}, status_code=503)
        return JSONResponse({"status": "ready", **totals})

    return app
