"""Admin routes: API keys and deletion on demand, over HTTP as `loglake keys` and `loglake delete` do.

Every route here needs an admin key (see ``query.auth.required_role``), and an
admin acts only within its own tenants: it cannot list, make or revoke a key
reaching another tenant, nor delete there.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from query.auth import create_key
from query.deletion import delete_matching
from query.service import SearchService
from query.store import KeyStore
from query.timerange import format_us, now_us, parse_duration_us, parse_range

log = logging.getLogger("loglake.query")

Tenant = Annotated[str, Header(alias="X-Scope-OrgID", description="tenant (default: default)")]


class KeyIn(BaseModel):
    tenants: list[str] | None = Field(None, description="tenants the key may use (default: the caller's)")
    role: Literal["reader", "writer", "admin", "ingest"] = "reader"
    expires: str | None = Field(None, description="a duration such as 90d; none: never")
    description: str = Field("", max_length=500)


class KeyOut(BaseModel):
    id: str
    role: str
    tenants: list[str]
    description: str
    created: str
    expires: str | None
    revoked: str | None


class KeyCreated(KeyOut):
    key: str = Field(description="the whole key: shown only in this response")


class DeleteIn(BaseModel):
    q: str = Field(description="rows to remove, in the search language")
    start: str | None = None
    end: str | None = None
    dry_run: bool = Field(True, description="report what would go; false to delete")


class DeleteOut(BaseModel):
    dry_run: bool
    tenant: str
    segments_checked: int
    segments_changed: int
    rows: int
    bytes: int
    conflicts: int


def _allowed(request: Request, tenant: str) -> tuple[str, ...]:
    """The tenants the caller may act on: its key's, or (authentication off) the header's."""
    principal = getattr(request.state, "principal", None)
    return principal.tenants if principal is not None else (tenant,)


def _actor(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    return f"api key {principal.key_id}" if principal is not None else "api (authentication off)"


def _forbidden(message: str) -> JSONResponse:
    return JSONResponse({"error": "Forbidden", "message": message}, status_code=403)


def router(service: SearchService) -> APIRouter:
    """The admin routes over ``service``'s catalog and data root."""
    api = APIRouter()
    catalog = service.catalog
    keys = KeyStore(catalog)

    @api.get("/api/v1/keys", response_model=list[KeyOut])
    def list_keys(request: Request, tenant: Tenant = "default") -> list[KeyOut]:
        """Keys reaching any of the caller's tenants (never their secrets), each showing only those of its
        tenants the caller has: which other tenants exist is not the caller's to learn."""
        mine = set(_allowed(request, tenant))
        return [KeyOut(id=k.id, role=k.role, tenants=[t for t in k.tenants if t in mine], description=k.description,
                       created=format_us(k.created_us), expires=format_us(k.expires_us) if k.expires_us else None,
                       revoked=format_us(k.revoked_us) if k.revoked_us else None)
                for k in keys.api_keys() if mine & set(k.tenants)]

    @api.post("/api/v1/keys", response_model=KeyCreated, status_code=201)
    def create(body: KeyIn, request: Request, tenant: Tenant = "default") -> KeyCreated | JSONResponse:
        """A new key; the response is the only time the whole key is seen."""
        tenants = body.tenants or [tenant]
        outside = sorted(set(tenants) - set(_allowed(request, tenant)))
        if outside:
            return _forbidden(f"this key may not make keys for tenant {outside[0]!r}")
        expires = now_us() + parse_duration_us(body.expires) if body.expires else None
        key = create_key(catalog, tenants, body.role, expires, body.description)
        row = keys.api_key(key.split("_")[1])
        assert row is not None
        log.info("api key %s created", row.id, extra={"key_id": row.id, "role": row.role, "tenants": tenants,
                                                      "by": _actor(request)})
        return KeyCreated(id=row.id, role=row.role, tenants=list(row.tenants), description=row.description,
                          created=format_us(row.created_us), expires=format_us(expires) if expires else None,
                          revoked=None, key=key)

    @api.delete("/api/v1/keys/{key_id}", status_code=204)
    def revoke(key_id: str, request: Request, tenant: Tenant = "default") -> Response:
        """Revoke a key; one that reaches a tenant the caller may not act on is not found."""
        row = keys.api_key(key_id)
        if row is None or not set(row.tenants) <= set(_allowed(request, tenant)) or not keys.revoke_api_key(key_id):
            return JSONResponse({"error": "NotFound", "message": f"no live key {key_id!r} you may revoke"},
                                status_code=404)
        log.info("api key %s revoked", key_id, extra={"key_id": key_id, "by": _actor(request)})
        return Response(status_code=204)

    @api.post("/api/v1/delete", response_model=DeleteOut)
    def delete(body: DeleteIn, request: Request, tenant: Tenant = "default") -> DeleteOut:
        """Remove every row of the tenant matching ``q`` in the range from storage (rewriting
        segments; audited). A dry run (the default) only counts."""
        service.check_query_text(body.q)
        start_us, end_us = parse_range(body.start, body.end)
        report = delete_matching(service.root, catalog, tenant=tenant, query=body.q, start_us=start_us,
                                 end_us=end_us, actor=_actor(request), dry_run=body.dry_run,
                                 zstd_level=service.cfg.compaction.zstd_level)
        return DeleteOut(dry_run=body.dry_run, tenant=tenant, segments_checked=report.segments_checked,
                         segments_changed=len(report.removed), rows=report.rows, bytes=report.bytes,
                         conflicts=report.conflicts)

    return api
