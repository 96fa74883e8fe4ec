"""FastAPI application: search, aggregate, fields, saved queries, retention, keys and deletion, health
and readiness."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import duckdb
import orjson
from fastapi import Body, FastAPI, Header, Query, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from loglake.core.config import Config
from query.aggregate import AggregateResult
from query.alerts.api import router as alerts_router
from query.alerts.evaluator import external_url
from query.api.admin import router as admin_router
from query.api.limits import BodyLimitMiddleware, BodyTooLarge, HostCheckMiddleware, QueryGate, allowed_host_names
from query.auth import Authenticator, AuthMiddleware, KeysNeedAuthMiddleware
from query.errors import QueryError, QuerySyntaxError, ScanTooLarge, TooManyQueries
from query.loki.api import router as loki_router
from query.loki.patterns import router as loki_patterns_router
from query.patterns.api import router as patterns_router
from query.patterns.miner import PatternMiner
from query.search import SearchResult
from query.service import SearchService
from query.sources import list_sources
from query.store import SavedQueryRow, SavedQueryStore
from query.timerange import format_us, now_us
from query.timing import collecting, span
from query.web.routes import web_router
from storage.catalog import Catalog
from storage.errors import StorageError

log = logging.getLogger("loglake.query")


class SearchRequest(BaseModel):
    q: str = Field("", description="query, e.g. `level:error service:api timeout`")
    start: str | None = Field(None, description="RFC 3339, epoch, or now-15m; default end-1h")
    end: str | None = Field(None, description="RFC 3339, epoch, or now-15m; default now")
    limit: int | None = Field(None, description="rows to return (default 100, at most 10,000)")
    order: Literal["asc", "desc"] = "desc"
    fields: list[str] | None = Field(None, description="columns, `line` (the original line; `head` and `raw`, "
                                     "its stored parts) or attribute keys to return (ts always); default: every "
                                     "column and `line`")
    cursor: str | None = Field(None, description="the `cursor` of the previous page")


class SearchResponse(BaseModel):
    rows: list[dict[str, Any]]
    #: Pass as `cursor` for the next page; null when this page was the last.
    cursor: str | None = None
    stats: dict[str, Any]


class AggregateRequest(BaseModel):
    q: str = ""
    start: str | None = None
    end: str | None = None
    interval: str | None = Field(None, description="bucket width like 5m; default about 100 buckets")
    by: list[str] | None = Field(None, description="fields to group by")
    fn: str = Field("count", description="count, or sum/avg/min/max/p50/p95/p99 over a field: p95(duration_ms)")
    top: int | None = Field(None, description="groups kept before folding the rest into `other` (default 10)")


class SeriesModel(BaseModel):
    group: dict[str, str | None]
    other: bool = Field(description="the groups outside the top N, together")
    total: float | None
    points: list[float | None] = Field(description="one value per bucket, in the order of `buckets`")


class AggregateResponse(BaseModel):
    interval: str
    interval_ms: int
    fn: str
    by: list[str]
    buckets: list[str]
    series: list[SeriesModel]
    stats: dict[str, Any]


class FieldModel(BaseModel):
    name: str
    type: Literal["string", "number"]
    count: int
    distinct: int
    top: list[dict[str, Any]]


class FieldsResponse(BaseModel):
    fields: list[FieldModel]
    stats: dict[str, Any]


class ValuesResponse(BaseModel):
    field: str
    values: list[dict[str, Any]]
    stats: dict[str, Any]


class SourceModel(BaseModel):
    service: str
    source: str
    format: str | None = Field(description="json, syslog, clf, logfmt, apache_error, text, pattern<i>; "
                                           "null: ingest has not recorded it yet")
    layout: str | None = Field(description="the learned text layout: time layout, where, header; empty: none")
    zone: str | None = Field(description="zone of zone-less times, or `in the line`; empty: no time is read")
    detail: dict[str, Any]
    updated: str | None = Field(description="when ingest last recorded what it learned")
    rows_last_hour: int = Field(description="rows received in the last hour")
    time_parsed: float | None = Field(description="share of those whose time was read from the line")
    level_parsed: float | None = Field(description="share of those with a known level")
    unknown_format: float | None = Field(description="share of those no format recognised")


class SourcesResponse(BaseModel):
    tenant: str
    sources: list[SourceModel]


class SavedQueryIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["search", "aggregate"] = "search"
    query: str = ""
    #: Defaults used when the query runs: start/end (default range), limit, order and
    #: fields for a search; interval, by, fn and top for an aggregation.
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    owner: str = ""


class SavedQueryOut(SavedQueryIn):
    created: str
    updated: str


def _saved_out(q: SavedQueryRow) -> SavedQueryOut:
    return SavedQueryOut(name=q.name, kind=q.kind, query=q.query, params=q.params,
                         description=q.description, owner=q.owner, created=format_us(q.created_us),
                         updated=format_us(q.updated_us))


def _search_response(r: SearchResult) -> SearchResponse:
    return SearchResponse(rows=r.rows, cursor=r.cursor, stats=r.stats)


def _aggregate_response(r: AggregateResult) -> AggregateResponse:
    seconds = r.interval_us // 1_000_000
    label = next(f"{seconds // n}{u}" for n, u in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))
                 if seconds >= n and seconds % n == 0) if seconds else f"{r.interval_us // 1000}ms"
    return AggregateResponse(
        interval=label, interval_ms=r.interval_us // 1000, fn=r.fn, by=r.by,
        buckets=[format_us(b) for b in r.buckets],
        series=[SeriesModel(group=s.group, other=s.other, total=s.total, points=s.points) for s in r.series],
        stats=r.stats)


def _search_json(r: SearchResult) -> bytes:
    """The search response's JSON (the shape of :class:`SearchResponse`), from the rows' JSON texts
    as DuckDB rendered them: no per-row Python."""
    return b"".join((b'{"rows":[', ",".join(r.json_rows).encode(), b'],"cursor":', orjson.dumps(r.cursor),
                     b',"stats":', orjson.dumps(r.stats), b"}"))


def _ndjson(r: SearchResult) -> Iterator[bytes]:
    if r.json_rows:
        yield ("\n".join(r.json_rows) + "\n").encode()


def _split(values: list[str] | None) -> list[str] | None:
    """``fields=a,b&fields=c`` -> [a, b, c]."""
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v.strip()]


Tenant = Annotated[str, Header(alias="X-Scope-OrgID", description="tenant (default: default)")]


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


def _is_loki_route(request: Request) -> bool:
    """Whether ``request`` went to a route of Loki's query API (``query/loki``)."""
    route = request.scope.get("route")
    return "loki" in (getattr(route, "tags", None) or ())


def create_app(cfg: Config, catalog: Catalog | None = None) -> FastAPI:
    """The query service's app; the catalog is opened from ``cfg`` unless given."""
    catalog = catalog or Catalog(cfg.storage.resolved_catalog_url())
    service = SearchService(cfg, catalog)
    app = FastAPI(title="loglake", version="0.1.0", docs_url=None, redoc_url=None,   # query/web/routes.py: no CDN
                  description="Search logs stored by loglake.")
    app.state.service = service
    # Query routes run on the gate's threads within max_concurrent/queue_timeout_s; cheap ones do not.
    gate = QueryGate(cfg.query)

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> Response:
        if exc.status_code == 400 and _is_loki_route(request):
            # Loki answers a bad query or parameter with its reason as plain text, which Grafana shows as is.
            return PlainTextResponse(str(exc), status_code=400)
        body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        headers = {}
        if isinstance(exc, QuerySyntaxError):
            body.update(position=exc.position, reason=exc.reason, query=exc.query)
        if isinstance(exc, ScanTooLarge):
            body.update(estimated_bytes=exc.estimate, max_scan_bytes=exc.limit)
        if isinstance(exc, TooManyQueries):
            headers["Retry-After"] = str(exc.retry_after_s)
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_loki_route(request):      # a 400 with Loki's plain text, never FastAPI's 422
            reasons = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                                for e in exc.errors())
            return PlainTextResponse(f"invalid request: {reasons}", status_code=400)
        return await request_validation_exception_handler(request, exc)

    def _search(req: SearchRequest, tenant: str, accept: str | None) -> Response:
        with collecting() as spans:
            r = service.search(req.q, req.start, req.end, req.limit, req.order, tenant, _split(req.fields),
                               req.cursor)
            if accept and "application/x-ndjson" in accept:
                headers = {"X-Loglake-Cursor": r.cursor} if r.cursor else {}
                headers["Server-Timing"] = spans.header()
                return StreamingResponse(_ndjson(r), media_type="application/x-ndjson", headers=headers)
            with span("render"):
                body = _search_json(r)
            return Response(body, media_type="application/json", headers={"Server-Timing": spans.header()})

    def _aggregate(q: str, start: str | None, end: str | None, interval: str | None, by: list[str] | None,
                   fn: str, top: int | None, tenant: str) -> Response:
        with collecting() as spans:
            r = service.aggregate(q, start, end, interval, _split(by), fn, top, tenant)
            with span("render"):
                body = orjson.dumps(_aggregate_response(r).model_dump())
            return Response(body, media_type="application/json", headers={"Server-Timing": spans.header()})

    search_doc = ("Records matching `q` in [start, end), newest first by default. "
                  "`Accept: application/x-ndjson` streams one JSON row per line (the next page's cursor "
                  "in the `X-Loglake-Cursor` header).")

    @app.get("/api/v1/search", response_model=SearchResponse, description=search_doc)
    @gate.guard
    def search(
        q: Annotated[str, Query(description="query, e.g. `level:error service:api timeout`")] = "",
        start: Annotated[str | None, Query(description="RFC 3339, epoch, or now-15m; default end-1h")] = None,
        end: Annotated[str | None, Query(description="RFC 3339, epoch, or now; default now")] = None,
        limit: Annotated[int | None, Query(description="rows to return (default 100, at most 10,000)")] = None,
        order: Annotated[Literal["asc", "desc"], Query()] = "desc",
        fields: Annotated[list[str] | None, Query(description="columns, `line`, `head`, `raw` or attribute "
                                                            "keys, comma-separated; default: every column and "
                                                            "`line`")] = None,
        cursor: Annotated[str | None, Query(description="the `cursor` of the previous page")] = None,
        tenant: Tenant = "default",
        accept: Annotated[str | None, Header()] = None,
    ) -> Response:
        return _search(SearchRequest(q=q, start=start, end=end, limit=limit, order=order, fields=fields,
                                     cursor=cursor), tenant, accept)

    @app.post("/api/v1/search", response_model=SearchResponse, description=search_doc)
    @gate.guard
    def search_post(req: SearchRequest, tenant: Tenant = "default",
                    accept: Annotated[str | None, Header()] = None) -> Response:
        return _search(req, tenant, accept)

    aggregate_doc = ("Counts or statistics per time bucket, one series per group of `by` "
                     "(the top groups, the rest as one `other` series): a log-volume histogram or a panel.")

    @app.get("/api/v1/aggregate", response_model=AggregateResponse, description=aggregate_doc)
    @gate.guard
    def aggregate(
        q: str = "", start: str | None = None, end: str | None = None,
        interval: Annotated[str | None, Query(description="bucket width like 5m; default about 100 buckets")] = None,
        by: Annotated[list[str] | None, Query(description="fields to group by, comma-separated")] = None,
        fn: Annotated[str, Query(description="count, or p95(duration_ms), avg(bytes), ...")] = "count",
        top: Annotated[int | None, Query(description="groups kept before `other` (default 10)")] = None,
        tenant: Tenant = "default",
    ) -> Response:
        return _aggregate(q, start, end, interval, by, fn, top, tenant)

    @app.post("/api/v1/aggregate", response_model=AggregateResponse, description=aggregate_doc)
    @gate.guard
    def aggregate_post(req: AggregateRequest, tenant: Tenant = "default") -> Response:
        return _aggregate(req.q, req.start, req.end, req.interval, req.by, req.fn, req.top, tenant)

    @app.get("/api/v1/fields", response_model=FieldsResponse)
    @gate.guard
    def fields(q: str = "", start: str | None = None, end: str | None = None,
               top: Annotated[int, Query(ge=1, le=100)] = 5, tenant: Tenant = "default") -> FieldsResponse:
        """Fields seen in the newest rows of the range: their type and most frequent values."""
        found, stats = service.fields(q, start, end, tenant, top)
        return FieldsResponse(fields=[FieldModel(name=f.name, type=f.type, count=f.count,
                                                 distinct=f.distinct, top=f.top) for f in found], stats=stats)

    @app.get("/api/v1/values/{field}", response_model=ValuesResponse)
    @gate.guard
    def values(field: str, q: str = "", start: str | None = None, end: str | None = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 20, tenant: Tenant = "default") -> ValuesResponse:
        """The most frequent values of one field in the range, with counts."""
        found, stats = service.values(field, q, start, end, limit, tenant)
        return ValuesResponse(field=field, values=found, stats=stats)

    @app.get("/api/v1/sources", response_model=SourcesResponse)
    @gate.guard
    def sources(tenant: Tenant = "default") -> SourcesResponse:
        """Every source of the tenant: detected format, time layout and zone, and the share of its rows
        received in the last hour whose time and level were read from the line."""
        return SourcesResponse(tenant=tenant, sources=[SourceModel(**s.to_dict())
                                                       for s in list_sources(service.runner, tenant)])

    # -- saved queries ---------------------------------------------------------

    @app.get("/api/v1/saved-queries", response_model=list[SavedQueryOut])
    def list_saved(tenant: Tenant = "default") -> list[SavedQueryOut]:
        return [_saved_out(q) for q in SavedQueryStore(catalog).saved_queries(tenant)]

    @app.post("/api/v1/saved-queries", response_model=SavedQueryOut, status_code=201)
    def create_saved(body: SavedQueryIn, tenant: Tenant = "default") -> SavedQueryOut:
        now = now_us()
        row = SavedQueryRow(tenant, body.name, body.kind, body.query, body.params, body.description, body.owner,
                            now, now)
        return _saved_out(service.save(row))

    @app.get("/api/v1/saved-queries/{name}", response_model=SavedQueryOut)
    def get_saved(name: str, tenant: Tenant = "default") -> SavedQueryOut:
        return _saved_out(service.saved(name, tenant))

    @app.put("/api/v1/saved-queries/{name}", response_model=SavedQueryOut)
    def put_saved(name: str, body: Annotated[SavedQueryIn, Body()], tenant: Tenant = "default") -> SavedQueryOut:
        """Replace a saved query; a different `name` in the body renames it."""
        old = service.saved(name, tenant)
        row = SavedQueryRow(tenant, body.name, body.kind, body.query, body.params, body.description, body.owner,
                            old.created_us, now_us())
        return _saved_out(service.save(row, replacing=name))

    @app.delete("/api/v1/saved-queries/{name}", status_code=204)
    def delete_saved(name: str, tenant: Tenant = "default") -> Response:
        service.delete_saved(name, tenant)
        return Response(status_code=204)

    @app.get("/api/v1/saved-queries/{name}/run", response_model=SearchResponse | AggregateResponse)
    @gate.guard
    def run_saved(name: str, start: str | None = None, end: str | None = None,
                  tenant: Tenant = "default") -> SearchResponse | AggregateResponse:
        """Run a saved query over start/end, or its own default range: what a dashboard panel calls."""
        r = service.run_saved(name, start, end, tenant)
        return _search_response(r) if isinstance(r, SearchResult) else _aggregate_response(r)

    @app.get("/api/v1/retention", response_model=RetentionResponse)
    def retention(request: Request,
                  tenant: Annotated[str | None, Query(description="only this tenant")] = None,
                  limit: Annotated[int, Query(ge=1, le=1000, description="recent deletions to show")] = 50,
                  ) -> RetentionResponse | JSONResponse:
        """Policies, holds, what is stored per tenant and service, the last and next runs, recent deletions."""
        principal = getattr(request.state, "principal", None)
        if principal is not None:
            # With keys, one of the key's tenants: the one asked for, else the one the header was pinned to.
            tenant = tenant or request.headers.get("x-scope-orgid")
            if tenant not in principal.tenants:
                return JSONResponse({"error": "Forbidden", "message": f"this key may not use tenant {tenant!r}"},
                                    status_code=403)
        return retention_view(cfg, catalog, tenant, limit)

    app.include_router(alerts_router(service, gate, cfg.alerts.default_interval_s, external_url(cfg)))
    app.include_router(loki_router(service, gate))
    miner = app.state.patterns = PatternMiner(service.runner)       # one per app: its cache outlives requests
    app.include_router(loki_patterns_router(service, miner, gate))
    app.include_router(patterns_router(service, miner, gate))
    app.include_router(admin_router(service))
    app.include_router(web_router(app))      # the search page, its assets, /docs
    if cfg.auth.enabled:
        app.add_middleware(AuthMiddleware, auth=Authenticator(catalog, cfg.auth, service.metrics.registry))
    else:
        app.add_middleware(KeysNeedAuthMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.query.max_body_bytes)   # before auth
    app.add_middleware(HostCheckMiddleware, names=allowed_host_names(cfg.query.host, cfg.query.allowed_hosts))

    @app.exception_handler(StorageError)
    async def _storage_error(_: Request, exc: StorageError) -> JSONResponse:
        # The catalog database or the data root is away: not the caller's fault, and passing.
        log.warning("storage unavailable for a request", extra={"reason": str(exc)[:300]})
        return JSONResponse({"error": "StorageUnavailable", "message": f"storage is unavailable: {exc}"},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(duckdb.OutOfMemoryException)
    async def _out_of_memory(_: Request, exc: duckdb.OutOfMemoryException) -> JSONResponse:
        # The service maps its own queries' (QueryOutOfMemory); this catches any other DuckDB work.
        return JSONResponse({"error": "QueryOutOfMemory", "message": f"out of memory: {str(exc).splitlines()[0]}"},
                            status_code=503)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"error": "PayloadTooLarge", "message": exc.detail}, status_code=413)

    @app.middleware("http")
    async def _timed(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        service.metrics.requests.labels(path, str(response.status_code)).observe(time.perf_counter() - t0)
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Ready when the catalog answers. Open to anyone, so it says nothing of what is stored."""
        try:
            catalog.totals()
        except Exception as e:  # the catalog is what we need to answer anything
            return JSONResponse({"status": "unavailable", "reason": str(e)}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
