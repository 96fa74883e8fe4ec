"""API keys and who may do what: the HTTP API's front door.

A key reads ``llk_<id>_<secret>``. The id is public (it is what logs and
``loglake keys list`` show); only an scrypt hash of the secret is stored, in
the catalog. Keys arrive as ``Authorization: Bearer <key>``, or as the
password of HTTP basic auth (Grafana's Loki data source). A key has a role and
the tenants it may use; ``X-Scope-OrgID`` picks one of them (the first by
default), and the handlers only ever see a tenant the key allows.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from loglake.core.config import AuthConfig
from query.errors import QueryError
from storage.catalog import ApiKeyRow, Catalog
from storage.errors import StorageError
from storage.segments import check_tenant

log = logging.getLogger("loglake.auth")

ROLES = ("reader", "writer", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}
_PREFIX = "llk"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
#: Paths anyone may call: probes, metrics and the API's own documentation.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
                        "/openapi.json", "/loki/api/v1/status/buildinfo"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class KeyRequestError(QueryError):
    """A key that cannot be created as asked."""


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: str
    tenants: tuple[str, ...]


def hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + \
        f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def secret_matches(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(secret.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def create_key(catalog: Catalog, tenants: list[str], role: str, expires_us: int | None,
               description: str = "") -> str:
    """Store a new key and return it whole: the only time it is ever seen."""
    if role not in ROLES:
        raise KeyRequestError(f"role must be one of {', '.join(ROLES)}")
    if not tenants:
        raise KeyRequestError("a key needs at least one tenant")
    for t in tenants:
        try:
            check_tenant(t)
        except StorageError as e:
            raise KeyRequestError(str(e)) from None
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    catalog.create_api_key(ApiKeyRow(key_id, tuple(tenants), role, hash_secret(secret), description,
                                     time.time_ns() // 1000, expires_us))
    return f"{_PREFIX}_{key_id}_{secret}"


def split_key(key: str) -> tuple[str, str] | None:
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != _PREFIX or len(key_id) != 12 or not secret:
        return None
    return key_id, secret


def required_role(method: str, path: str) -> str | None:
    """The least role a request needs; None for the open paths."""
    if path in OPEN_PATHS:
        return None
    if path.startswith(("/api/v1/retention", "/api/v1/keys", "/api/v1/delete")):
        return "admin"
    if path.startswith("/api/v1/saved-queries") and method not in ("GET", "HEAD"):
        return "writer"       # running one (/run) is a GET
    return "reader"


class Authenticator:
    """Checks keys against the catalog, remembering good ones for ``cache_s``."""

    def __init__(self, catalog: Catalog, cfg: AuthConfig) -> None:
        self.catalog, self.cfg = catalog, cfg
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def verify(self, key: str) -> Principal | None:
        fingerprint = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(fingerprint)
            if hit is not None and hit[0] > now:
                return hit[1]
        parts = split_key(key)
        if parts is None:
            return None
        row = self.catalog.api_key(parts[0])
        now_us = time.time_ns() // 1000
        if row is None or row.revoked_us is not None or (row.expires_us is not None and row.expires_us <= now_us):
            return None
        if not secret_matches(parts[1], row.hash):
            return None
        principal = Principal(row.id, row.role, row.tenants)
        # A revoked or expiring key stops working within cache_s, never later than its expiry.
        until = now + self.cfg.cache_s
        if row.expires_us is not None:
            until = min(until, now + (row.expires_us - now_us) / 1e6)
        with self._lock:
            self._cache[fingerprint] = (until, principal)
        return principal


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class AuthMiddleware:
    """ASGI middleware: authenticate, authorise by route, and pin ``X-Scope-OrgID`` to an allowed tenant."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], auth: Authenticator) -> None:
        self.app, self.auth = app, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        need = required_role(method, scope["path"])
        if need is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = _bearer(headers)
        if key is None:
            await self._deny(scope, send, 401, "an API key is required: Authorization: Bearer <key>")
            return
        principal = await asyncio.to_thread(self.auth.verify, key)
        if principal is None:
            await self._deny(scope, send, 401, "unknown, expired or revoked API key")
            return
        if _RANK[principal.role] < _RANK[need]:
            await self._deny(scope, send, 403, f"this key is a {principal.role}; this needs a {need}")
            return
        asked = headers.get(b"x-scope-orgid", b"").decode("latin-1").strip()
        tenant = asked or principal.tenants[0]
        if tenant not in principal.tenants:
            await self._deny(scope, send, 403, f"this key may not use tenant {tenant!r}")
            return
        # The id in the message too, so plain-text logs show it (JSON logs carry the fields).
        log.info("api key %s used", principal.key_id,
                 extra={"key_id": principal.key_id, "role": principal.role, "tenant": tenant, "method": method,
                        "path": scope["path"]})
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"x-scope-orgid"] + \
            [(b"x-scope-orgid", tenant.encode())]
        scope["state"] = {**scope.get("state", {}), "principal": principal}   # request.state.principal
        await self.app(scope, receive, send)

    @staticmethod
    async def _deny(scope: Scope, send: Send, status: int, message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = orjson.dumps({"error": "Unauthorized" if status == 401 else "Forbidden", "message": message})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="loglake", Basic realm="loglake"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
