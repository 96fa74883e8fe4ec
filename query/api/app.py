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
from query.timerange import format_us
from storage.catalog import Catalog

log = logging.getLogger("loglake.query")


class SearchResponse(BaseModel):
    rows: list[dict[str, Any]]
    stats: dict[str, Any]


class RetentionResponse(BaseModel):
    policies: list[dict[str, Any]]
    holds: list[dict[str, Any]]
    enabled: bool
    interval_s: float
    grace_s: float
    #: Per tenant and service: live segments, rows, bytes (split by row share), oldest and newest time.
    stored: list[dict[str, Any]]
    last_run: dict[str, Any] | None
    next_run: str | None
    deletions: list[dict[str, Any]]


def retention_view(cfg: Config, catalog: Catalog, tenant: str | None, limit: int) -> RetentionResponse:
    stored: dict[tuple[str, str], dict[str, Any]] = {}
    for seg in catalog.live_segments(tenant):
        for svc, rows in seg.services.items():
            v = stored.setdefault((seg.tenant, svc), {"tenant": seg.tenant, "service": svc, "segments": 0,
                                                      "rows": 0, "bytes": 0, "min_ts_us": seg.min_ts_us,
                                                      "max_ts_us": seg.max_ts_us})
            v["segments"] += 1
            v["rows"] += rows
            v["bytes"] += seg.bytes * rows // max(1, seg.rows)
            v["min_ts_us"] = min(v["min_ts_us"], seg.min_ts_us)
            v["max_ts_us"] = max(v["max_ts_us"], seg.max_ts_us)
    for v in stored.values():
        v["oldest"], v["newest"] = format_us(v.pop("min_ts_us")), format_us(v.pop("max_ts_us"))
    last = catalog.jobs().get("retention")
    next_run = None
    if last is not None:
        last = {"started": format_us(last["started_us"]), "ended": format_us(last["ended_us"]), **last["result"]}
        if cfg.retention.enabled and cfg.retention.policies:
            next_run = format_us(catalog.jobs()["retention"]["started_us"] + int(cfg.retention.interval_s * 1e6))
    deletions = [{"at": format_us(a.at_us), "actor": a.actor, "action": a.action, "tenant": a.tenant,
                  "service": a.service, "from": format_us(a.start_us) if a.start_us is not None else None,
                  "to": format_us(a.end_us) if a.end_us is not None else None, "segments": a.segments,
                  "rows": a.rows, "bytes": a.bytes, "detail": a.detail}
                 for a in catalog.audit_log(limit, tenant)]
    return RetentionResponse(
        policies=[p.model_dump() for p in cfg.retention.policies if tenant is None or p.tenant in ("*", tenant)],
        holds=[h.model_dump() for h in cfg.retention.holds if tenant is None or h.tenant in ("*", tenant)],
        enabled=cfg.retention.enabled, interval_s=cfg.retention.interval_s, grace_s=cfg.storage.grace_s,
        stored=sorted(stored.values(), key=lambda v: (v["tenant"], v["service"])),
        last_run=last, next_run=next_run, deletions=deletions)


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

    @app.get("/api/v1/retention", response_model=RetentionResponse)
    def retention(tenant: Annotated[str | None, Query(description="only this tenant")] = None,
                  limit: Annotated[int, Query(ge=1, le=1000, description="recent deletions to show")] = 50,
                  ) -> RetentionResponse:
        """Policies, holds, what is stored per tenant and service, the last and next runs, recent deletions."""
        return retention_view(cfg, catalog, tenant, limit)

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
