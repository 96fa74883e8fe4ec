"""The search page (``GET /``), its assets under ``/static/``, Swagger UI's and ReDoc's files from the
installed ``fastapi-offline`` package (so ``/docs`` and ``/redoc`` need no CDN), and ``/api/v1/whoami``
(the tenant the page reads).

(``swagger-ui-bundle``, the other such package, ships Swagger UI 4, which cannot read the OpenAPI 3.1
that FastAPI writes.)

Assets are read once, gzipped once, and answered with an ETag (``If-None-Match`` -> 304).
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

STATIC_DIR = Path(__file__).parent / "static"
#: The prefix the page's assets are served under (query/auth.py leaves GETs of it open).
STATIC_PREFIX = "/static/"
#: The files /docs and /redoc use, from the fastapi-offline package (Swagger UI 5, ReDoc).
_DOCS_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    etag: str
    media_type: str

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        media = _TYPES.get(Path(name).suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        packed = gzip.compress(body, 9, mtime=0) if not media.startswith("image/png") else None
        return cls(body, packed if packed is not None and len(packed) < len(body) else None,
                   hashlib.sha256(body).hexdigest()[:20], media)

    def response(self, request: Request) -> Response:
        use_gzip = self.gzipped is not None and "gzip" in request.headers.get("accept-encoding", "")
        etag = f'"{self.etag}{"-gz" if use_gzip else ""}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding",
                   "X-Content-Type-Options": "nosniff"}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        if use_gzip:
            assert self.gzipped is not None
            headers["Content-Encoding"] = "gzip"
            return Response(self.gzipped, media_type=self.media_type, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def _page_assets() -> dict[str, Asset]:
    return {p.name: Asset.of(p.name, p.read_bytes()) for p in sorted(STATIC_DIR.iterdir())
            if p.is_file() and not p.name.startswith(".")}


class _DocsAssets:
    """Swagger UI's and ReDoc's files, read (and gzipped: each is over 1 MB) on first use."""

    def __init__(self) -> None:
        self._assets: dict[str, Asset] = {}

    def get(self, name: str) -> Asset | None:
        if name not in _DOCS_FILES:
            return None
        if name not in self._assets:
            import fastapi_offline
            self._assets[name] = Asset.of(name, (Path(fastapi_offline.__file__).parent / "static" / name).read_bytes())
        return self._assets[name]


class WhoAmI(BaseModel):
    #: False when the server runs without keys.
    auth: bool
    tenant: str
    tenants: list[str]
    role: str | None = None
    key_id: str | None = None


def web_router(app: FastAPI) -> APIRouter:
    """The page, its assets, the self-hosted /docs and /redoc, and /api/v1/whoami."""
    router = APIRouter()
    assets = _page_assets()
    docs_assets = _DocsAssets()

    @router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page(request: Request) -> Response:
        return assets["index.html"].response(request)

    @router.api_route(STATIC_PREFIX + "docs/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    def docs_asset(name: str, request: Request) -> Response:
        asset = docs_assets.get(name)
        if asset is None:
            raise HTTPException(404, "no such file")
        return asset.response(request)

    @router.api_route(STATIC_PREFIX + "{name}", methods=["GET", "HEAD"], include_in_schema=False)
    def static(name: str, request: Request) -> Response:
        asset = assets.get(name)
        if asset is None or name == "index.html":
            raise HTTPException(404, "no such file")
        return asset.response(request)

    @router.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=STATIC_PREFIX + "docs/swagger-ui-bundle.js",
            swagger_css_url=STATIC_PREFIX + "docs/swagger-ui.css",
            swagger_favicon_url=STATIC_PREFIX + "docs/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})      # no badge from validator.swagger.io

    @router.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url=STATIC_PREFIX + "docs/redoc.standalone.js",
                              redoc_favicon_url=STATIC_PREFIX + "docs/favicon.png", with_google_fonts=False)

    @router.get("/docs/oauth2-redirect", include_in_schema=False)
    def docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/api/v1/whoami", response_model=WhoAmI)
    def whoami(request: Request) -> WhoAmI:
        """The tenant this request reads (the key's, or the one X-Scope-OrgID picked) and the key's role."""
        principal: Any = getattr(request.state, "principal", None)
        tenant = request.headers.get("x-scope-orgid") or "default"
        if principal is None:
            return WhoAmI(auth=False, tenant=tenant, tenants=[tenant])
        return WhoAmI(auth=True, tenant=tenant, tenants=list(principal.tenants), role=principal.role,
                      key_id=principal.key_id)

    return router
