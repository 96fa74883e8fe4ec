"""Limits in front of the handlers: request bodies, which queries run when (and on which threads),
and which ``Host`` names the server answers to."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ipaddress
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import orjson
from starlette.exceptions import HTTPException

from loglake.core.addresses import is_loopback
from loglake.core.config import QueryConfig
from query.errors import TooManyQueries
from query.runner import queue_deadline

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """Raised from inside a body read; an HTTPException so FastAPI's body parsing lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes (query.max_body_bytes)")


class BodyLimitMiddleware:
    """ASGI middleware: a body over ``max_bytes`` is answered 413, whether it declares its
    length or streams chunks without one."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps({"error": "PayloadTooLarge", "message": BodyTooLarge(self.max_bytes).detail})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


P = ParamSpec("P")
T = TypeVar("T")


class QueryGate:
    """Admission for query work, GET or POST, native or Loki: at most ``max_concurrent`` run at once,
    on threads of their own, and a request waits at most ``queue_timeout_s`` for its turn (then 429).

    Waiting happens on the event loop, never in a thread pool, so the wait is bounded and cheap
    routes (saved queries, probes, key checks) never queue behind queries.
    """

    def __init__(self, cfg: QueryConfig) -> None:
        self.max_concurrent, self.queue_timeout_s = cfg.max_concurrent, cfg.queue_timeout_s
        self._pool = ThreadPoolExecutor(cfg.max_concurrent, thread_name_prefix="loglake-query")
        # One semaphore per event loop (an app served by one uvicorn has one).
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
            weakref.WeakKeyDictionary()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a query thread once a turn is free; TooManyQueries after the wait."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.queue_timeout_s
        turns = self._turns.get(loop)
        if turns is None:
            turns = self._turns[loop] = asyncio.Semaphore(self.max_concurrent)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await turns.acquire()
        except TimeoutError:
            raise TooManyQueries(f"all {self.max_concurrent} query slots stayed busy for "
                                 f"{self.queue_timeout_s:g} s (query.queue_timeout_s); retry shortly") from None
        context = contextvars.copy_context()
        context.run(queue_deadline.set, deadline)       # the service's own slot waits no longer than that
        call = functools.partial(context.run, fn, *args, **kwargs)
        try:
            future = loop.run_in_executor(self._pool, call)
        except BaseException:
            turns.release()
            raise
        # The turn is given back when the work ends, not when a caller gives up waiting for it, so
        # the pool never holds more than max_concurrent.
        future.add_done_callback(lambda _: turns.release())
        return await asyncio.shield(future)

    def guard(self, fn: Callable[P, T]) -> Callable[P, Awaitable[T]]:
        """``fn`` as an async route handler that runs through :meth:`run` (FastAPI reads the
        signature of ``fn``, so parameters and the response model are unchanged)."""
        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.run(fn, *args, **kwargs)
        return guarded


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(value: str) -> str | None:
    """The name in a ``Host`` header (no port, lower case, no trailing dot); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
        return name
    name, sep, port = value.partition(":")
    if sep and not port.isdigit():
        return None
    name = name.removesuffix(".")
    if not name or any(not (c.isalnum() or c in "-._") for c in name):
        return None
    return name


def allowed_host_names(bind: str, allowed: Iterable[str]) -> frozenset[str] | None:
    """The names a server bound to ``bind`` answers to; None: any. A loopback bind answers to
    loopback names only (a rebinding DNS name must not reach it); another bind checks nothing
    until ``allowed`` names some, as its public names are not known here."""
    extra = {host_name(a) or a.strip().lower() for a in allowed}
    if "*" in extra or (not extra and not is_loopback(bind.strip("[]"))):
        return None
    names = set(_LOOPBACK_NAMES) | extra
    if bind.strip("[]") not in ("0.0.0.0", "::", ""):
        names.add(bind.strip("[]").lower())
    return frozenset(names)


class HostCheckMiddleware:
    """ASGI middleware: a request whose ``Host`` is not one of this server's names gets 421 (400
    without a usable Host), before anything else looks at it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], names: frozenset[str] | None) -> None:
        self.app, self.names = app, names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.names is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = [v for k, v in scope["headers"] if k == b"host"]
        name = host_name(hosts[0].decode("latin-1")) if len(hosts) == 1 else None
        if name is None:
            await self._refuse(scope, send, 400, "a request needs one valid Host header")
            return
        if name not in self.names:
            await self._refuse(scope, send, 421, f"this server does not answer to host {name[:100]!r} "
                                                 "(see query.allowed_hosts)")
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = orjson.dumps({"error": "BadRequest" if status == 400 else "MisdirectedRequest", "message": message})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
