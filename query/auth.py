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
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from loglake.core.config import AuthConfig
from query.errors import QueryError
from query.roles import GRANTS, ROLES
from query.store import ApiKeyRow, KeyStore
from storage.catalog import Catalog
from storage.errors import StorageError
from storage.segments import check_tenant

log = logging.getLogger("loglake.auth")

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
    KeyStore(catalog).create_api_key(ApiKeyRow(key_id, tuple(tenants), role, hash_secret(secret), description,
                                               time.time_ns() // 1000, expires_us))
    return f"{_PREFIX}_{key_id}_{secret}"


def split_key(key: str) -> tuple[str, str] | None:
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    # Ids are always hex (token_hex), so any other is refused unchecked and never reaches a log line.
    if prefix != _PREFIX or len(key_id) != 12 or not secret or any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


#: The search page's assets (query/web/): one file name under the prefix, no dot first, no slashes
#: but the API docs' folder. Only GET and HEAD of them and of the page itself are open.
_PAGE_ASSET = re.compile(r"/static/(?:docs/)?[A-Za-z0-9_-][A-Za-z0-9_.-]{0,100}")


def required_role(method: str, path: str) -> str | None:
    """The least role a request needs; None for the open paths."""
    if path in OPEN_PATHS:
        return None
    if method in ("GET", "HEAD") and (path == "/" or _PAGE_ASSET.fullmatch(path)):
        return None       # the page, which then asks for a key
    if path.startswith(("/api/v1/retention", "/api/v1/keys", "/api/v1/delete")):
        return "admin"
    if path.startswith("/api/v1/saved-queries") and method not in ("GET", "HEAD"):
        return "writer"       # running one (/run) is a GET
    if path.startswith(("/api/v1/alerts/groups", "/loki/api/v1/rules")) and method not in ("GET", "HEAD"):
        return "writer"       # a backtest (POST /api/v1/alerts/backtest) only reads
    return "reader"


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AuthDenied(Exception):
    """A request the middleware refuses: the status, why, and (429) when to come back."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s


@dataclass(slots=True)
class _Strikes:
    failures: int
    last: float
    until: float


class _BackOff:
    """Failed checks per subject (a client address or a key id): ``free`` of them cost nothing more;
    after that each failure doubles the wait before the next try, up to ``max_s``. A subject quiet
    for ``forget_s`` is forgotten. Touched only on the event loop."""

    _MAX_SUBJECTS = 50_000

    def __init__(self, free: int, max_s: float, forget_s: float) -> None:
        self.free, self.max_s, self.forget_s = free, max_s, forget_s
        self._subjects: dict[str, _Strikes] = {}

    def _get(self, subject: str, now: float) -> _Strikes | None:
        s = self._subjects.get(subject)
        if s is not None and now - s.last > self.forget_s and now >= s.until:
            del self._subjects[subject]
            return None
        return s

    def failures(self, subject: str, now: float) -> int:
        s = self._get(subject, now)
        return 0 if s is None else s.failures

    def wait_s(self, subject: str, now: float) -> float:
        """Seconds until ``subject`` may try again; 0 when it may now."""
        s = self._get(subject, now)
        return 0.0 if s is None else max(0.0, s.until - now)

    def fail(self, subject: str, now: float) -> None:
        s = self._get(subject, now)
        if s is None:
            if len(self._subjects) >= self._MAX_SUBJECTS:
                self._prune(now)
            s = self._subjects[subject] = _Strikes(0, now, now)
        s.failures += 1
        s.last = now
        over = s.failures - self.free
        if over >= 0:
            s.until = now + min(self.max_s, 2.0 ** min(over, 30))

    def forgive(self, subject: str) -> None:
        self._subjects.pop(subject, None)

    def _prune(self, now: float) -> None:
        for k in [k for k, s in self._subjects.items() if now - s.last > self.forget_s and now >= s.until]:
            del self._subjects[k]
        if len(self._subjects) >= self._MAX_SUBJECTS:
            # Still full (a flood of distinct subjects): drop the half seen longest ago.
            keep = sorted(self._subjects.items(), key=lambda kv: kv[1].last)[len(self._subjects) // 2:]
            self._subjects = dict(keep)


class _FailureLog:
    """One warning per ``interval_s`` at most, saying how many failures it stands for."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self._held = 0

    def __call__(self, reason: str, key_id: str | None, client: str) -> None:
        now = time.monotonic()
        self._held += 1
        if now < self._next:
            return
        count, self._held, self._next = self._held, 0, now + self.interval_s
        log.warning("failed API key check (%s; key id %s, client %s); %d failed since the last such line",
                    reason, key_id or "-", client or "-", count,
                    # Not key_id: that field marks a key's use.
                    extra={"reason": reason, "failed_key_id": key_id, "client": client, "failures": count})


class Authenticator:
    """Checks keys against the catalog, remembering good ones for ``cache_s``.

    A remembered key is answered on the event loop at once. Any other check runs on a small pool of
    its own (scrypt is slow on purpose), behind per-client and per-key-id back-off and a bounded
    queue, and costs the same whether the key id exists or not, so timing tells nothing.
    """

    def __init__(self, catalog: Catalog, cfg: AuthConfig, registry: CollectorRegistry | None = None) -> None:
        self.keys, self.cfg = KeyStore(catalog), cfg
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        workers = max(1, min(4, (os.cpu_count() or 2) // 2))     # leave cores to the queries
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="loglake-scrypt")
        self._pool_room = 8 * workers        # checks waiting or running; more are turned away
        self._pending = 0
        forget_s = max(900.0, 2 * cfg.backoff_max_s)
        self._clients = _BackOff(cfg.failures_per_client, cfg.backoff_max_s, forget_s)
        self._keys = _BackOff(cfg.failures_per_key, cfg.backoff_max_s, forget_s)
        self._dummy_hash: str | None = None
        self._log_failure = _FailureLog()
        self.failures = Counter("loglake_auth_failures", "Refused API keys: rejected (unknown, wrong, revoked, "
                                "expired or malformed, told apart only in the log), backoff, busy",
                                ["outcome"], registry=registry if registry is not None else CollectorRegistry())

    def _cached(self, key: str) -> Principal | None:
        with self._lock:
            hit = self._cache.get(_fingerprint(key))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def _check(self, key_id: str, secret: str) -> tuple[Principal | None, str]:
        """The slow check: (principal, "") or (None, why). One scrypt whatever the outcome."""
        row = self.keys.api_key(key_id)
        if row is None:
            if self._dummy_hash is None:
                self._dummy_hash = hash_secret(secrets.token_urlsafe(32))
            secret_matches(secret, self._dummy_hash)       # as long as a real check, so ids do not show
            return None, "unknown key id"
        good = secret_matches(secret, row.hash)
        now_us = time.time_ns() // 1000
        if row.revoked_us is not None:
            return None, "revoked key"
        if row.expires_us is not None and row.expires_us <= now_us:
            return None, "expired key"
        if not good:
            return None, "wrong secret"
        principal = Principal(row.id, row.role, row.tenants)
        # A revoked or expiring key stops working within cache_s, never later than its expiry.
        now = time.monotonic()
        until = now + self.cfg.cache_s
        if row.expires_us is not None:
            until = min(until, now + (row.expires_us - now_us) / 1e6)
        with self._lock:
            self._cache[_fingerprint(f"{_PREFIX}_{key_id}_{secret}")] = (until, principal)
            if len(self._cache) > 10_000:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        return principal, ""

    def verify(self, key: str) -> Principal | None:
        """The key's principal, or None: blocking, without back-off (for callers off the event loop)."""
        hit = self._cached(key)
        if hit is not None:
            return hit
        parts = split_key(key)
        return None if parts is None else self._check(*parts)[0]

    async def authenticate(self, key: str, client: str) -> Principal:
        """The key's principal, or :class:`AuthDenied` (401, or 429 while backing off or busy)."""
        hit = self._cached(key)
        if hit is not None:
            return hit
        parts = split_key(key)
        if parts is None:
            self._refuse("rejected", "malformed key", None, client)
            raise AuthDenied(401, "unknown, expired or revoked API key")
        key_id, secret = parts
        now = time.monotonic()
        wait = self._clients.wait_s(client, now)
        if self._clients.failures(client, now):
            # Only clients that have failed before wait for the key id: its owner is never locked out.
            wait = max(wait, self._keys.wait_s(key_id, now))
        if wait > 0:
            self._refuse("backoff", "backing off", key_id, client)
            raise AuthDenied(429, "too many failed key checks: backing off; retry later", math.ceil(wait))
        if self._pending >= self._pool_room:
            self._refuse("busy", "key checks queue full", key_id, client)
            raise AuthDenied(429, "too many key checks at once; retry shortly", 1)
        self._pending += 1
        try:
            principal, why = await asyncio.get_running_loop().run_in_executor(self._pool, self._check, key_id,
                                                                               secret)
        finally:
            self._pending -= 1
        now = time.monotonic()
        if principal is None:
            self._clients.fail(client, now)
            self._keys.fail(key_id, now)
            self._refuse("rejected", why, key_id, client)
            raise AuthDenied(401, "unknown, expired or revoked API key")
        self._keys.forgive(key_id)
        return principal

    def _refuse(self, outcome: str, reason: str, key_id: str | None, client: str) -> None:
        self.failures.labels(outcome).inc()
        self._log_failure(reason, key_id, client)


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

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], auth: Authenticator,
                 role_of: Callable[[str, str], str | None] = required_role) -> None:
        # role_of: the least role of a (method, path), for an app whose routes are not the query
        # server's (the push receiver's all write).
        self.app, self.auth, self.role_of = app, auth, role_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        need = self.role_of(method, scope["path"])
        if need is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = _bearer(headers)
        if key is None:
            await self._deny(scope, send, 401, "an API key is required: Authorization: Bearer <key>")
            return
        client = scope.get("client") or ("", 0)
        try:
            principal = await self.auth.authenticate(key, str(client[0]))
        except AuthDenied as e:
            await self._deny(scope, send, e.status, e.message, e.retry_after_s)
            return
        if need not in GRANTS.get(principal.role, ()):
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
        if scope["type"] == "websocket":
            # A live tail outlives this check: it checks the key again as it streams (query/loki/api.py).
            scope["state"]["reauthenticate"] = lambda: self.auth.authenticate(key, str(client[0]))
        await self.app(scope, receive, send)

    @staticmethod
    async def _deny(scope: Scope, send: Send, status: int, message: str, retry_after_s: int | None = None
                    ) -> None:
        if scope["type"] == "websocket":
            # 1013: try again later (back-off); 1008: policy.
            await send({"type": "websocket.close", "code": 1013 if status == 429 else 1008, "reason": message[:120]})
            return
        error = {401: "Unauthorized", 403: "Forbidden", 429: "TooManyRequests"}.get(status, "Forbidden")
        body = orjson.dumps({"error": error, "message": message})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="loglake", Basic realm="loglake"'))
        if retry_after_s is not None:
            headers.append((b"retry-after", str(retry_after_s).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


#: Routes that make, list or revoke keys.
KEY_PATHS = "/api/v1/keys"


class KeysNeedAuthMiddleware:
    """With authentication off, key management is refused (403): anyone who can reach the server
    could otherwise mint an admin key that keeps working once authentication is turned on."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and (path == KEY_PATHS or path.startswith(KEY_PATHS + "/")):
            await AuthMiddleware._deny(scope, send, 403, "key management needs authentication on "
                                       "(auth.enabled = true); use `loglake keys` on the server meanwhile")
            return
        await self.app(scope, receive, send)
