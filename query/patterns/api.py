"""``GET /api/v1/patterns``: the top message templates of the records a native query selects.

Each template has its level, its line count and its counts per ``interval`` bucket; put one back
into a query with ``pattern:"<template>"`` to see its lines.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from pydantic import BaseModel, Field

from query.aggregate import pick_interval
from query.api.limits import QueryGate
from query.patterns.miner import PatternMiner
from query.service import SearchService
from query.timerange import format_us, parse_range

MAX_LIMIT = 1000


class PatternModel(BaseModel):
    pattern: str = Field(description="the message template, `<_>` for each variable part")
    level: str
    count: int = Field(description="lines of this template and level in the range")
    samples: list[tuple[str, int]] = Field(description="[bucket start, lines] for each bucket with lines")


class PatternsResponse(BaseModel):
    interval: str
    interval_ms: int
    patterns: list[PatternModel]
    #: Lines counted in all (those of the templates past `limit` too).
    total: int
    stats: dict[str, object]


def router(service: SearchService, miner: PatternMiner, gate: QueryGate) -> APIRouter:
    r = APIRouter(tags=["patterns"])

    @r.get("/api/v1/patterns", response_model=PatternsResponse)
    @gate.guard
    def patterns(
        q: Annotated[str, Query(description="query, e.g. `service:api level:error`")] = "",
        start: Annotated[str | None, Query(description="RFC 3339, epoch, or now-15m; default end-1h")] = None,
        end: Annotated[str | None, Query(description="RFC 3339, epoch, or now; default now")] = None,
        interval: Annotated[str | None, Query(description="bucket width like 5m; default about 100 buckets")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="templates returned, largest first")] = 50,
        tenant: Annotated[str, Header(alias="X-Scope-OrgID")] = "default",
    ) -> PatternsResponse:
        """The message templates of the records `q` selects in [start, end), largest first."""
        start_us, end_us = parse_range(start, end)
        iv = pick_interval(start_us, end_us, interval)
        node = service.parse_query(q)
        mined = miner.mine(node, tenant, start_us, end_us, iv)
        seconds = iv // 1_000_000
        label = next((f"{seconds // n}{u}" for n, u in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))
                      if seconds >= n and seconds % n == 0), f"{iv // 1000}ms")
        return PatternsResponse(
            interval=label, interval_ms=iv // 1000, total=sum(p.total for p in mined.patterns), stats=mined.stats,
            patterns=[PatternModel(pattern=p.template, level=p.level, count=p.total,
                                   samples=[(format_us(b), n) for b, n in sorted(p.samples.items())])
                      for p in mined.patterns[:limit]])

    return r
