"""Timing spans of one request: where its time went (catalog lookup, planning, DuckDB, rendering).

The HTTP API collects them per search and aggregation and sends them as a ``Server-Timing`` header
(browsers' developer tools show it); outside a collecting request, :func:`span` costs one context
variable lookup.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Spans:
    """Milliseconds per span name, summed over the spans of that name (a page may run two statements)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def add(self, name: str, ms: float) -> None:
        self.ms[name] = self.ms.get(name, 0.0) + ms

    def header(self) -> str:
        """The ``Server-Timing`` value: each span, then ``app``, the whole handler so far."""
        spans = {**self.ms, "app": (time.perf_counter() - self._t0) * 1000}
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in spans.items())


_current: ContextVar[Spans | None] = ContextVar("loglake_spans", default=None)


@contextmanager
def collecting() -> Iterator[Spans]:
    """Collect the spans of the work done inside (on this thread, or in a copy of this context)."""
    spans = Spans()
    token = _current.set(spans)
    try:
        yield spans
    finally:
        _current.reset(token)


@contextmanager
def span(name: str) -> Iterator[None]:
    """Time the work inside as ``name``, when a request is collecting."""
    spans = _current.get()
    if spans is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        spans.add(name, (time.perf_counter() - t0) * 1000)
