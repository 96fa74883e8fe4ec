"""Loki's ``/loki/api/v1/patterns``: what Grafana's Logs Drilldown shows in its Patterns tab.

Parameters as Loki reads them (``pkg/loghttp/patterns.go``): ``query``, a stream selector; ``start``
and ``end`` (nanoseconds, float seconds or RFC 3339; Drilldown sends RFC 3339; default the last
hour); ``step`` (float seconds or a duration; Drilldown sends its interval, e.g. ``15s``; default
about 250 points), refused at or below zero or past 11,000 points, and taken as at least 10 s as
Loki's pattern ingester does (its sample resolution). GET, or POST with a form.

The answer is Loki's (``pkg/util/marshal/marshal.go``, ``WriteQueryPatternsResponseJSON``):
``{"status": "success", "data": [{"pattern", "level", "samples": [[unix seconds, count], ...]}]}``,
one entry per pattern and level (Loki 3 mines each ``detected_level`` apart, and Drilldown merges
an entry's levels per pattern), largest first, at most 300 (Loki's cap). Unlike Loki, no pattern
under 30 lines is dropped, and every selected line counts: samples add up to the lines selected.

A pattern is of the whole line, with ``<_>`` for each variable part, so that Drilldown's
``|> "<pattern>"`` filter finds its lines: the message's template, after a ``<_>`` for the
line's header when it has one (see :func:`query.patterns.miner.line_template`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from query.api.limits import QueryGate
from query.errors import QueryError
from query.logql import LogQuery, parse
from query.loki.api import Tenant, form_params, loki_step, loki_time, required
from query.loki.translate import pushdown
from query.patterns.miner import PatternMiner
from query.service import SearchService
from query.timerange import now_us

#: Loki's pattern ingester keeps one sample per 10 s; no finer step is answered.
MIN_STEP_US = 10_000_000
MAX_PATTERNS = 300
_HOUR_US = 3_600_000_000


def router(service: SearchService, miner: PatternMiner, gate: QueryGate) -> APIRouter:
    r = APIRouter(tags=["loki"])

    def patterns(query: str, start: str | None, end: str | None, step: str | None,
                 tenant: str) -> dict[str, Any]:
        end_us = loki_time(end, now_us())
        start_us = loki_time(start, end_us - _HOUR_US)
        if end_us < start_us:
            raise QueryError("end is before start")
        step_us = loki_step(step, start_us, end_us)
        if (end_us - start_us) // step_us > 11_000:
            raise QueryError("exceeded maximum resolution of 11,000 points per timeseries: increase the step")
        service.check_query_text(query)
        expr = parse(query)
        if not isinstance(expr, LogQuery):
            raise QueryError("patterns take a stream selector such as {service_name=\"api\"}")
        node, rest = pushdown(expr)
        if rest:
            raise QueryError("patterns take a stream selector and line filters, no other pipeline stages")
        mined = miner.mine(node, tenant, start_us, end_us, max(step_us, MIN_STEP_US), lines=True)
        return {"status": "success", "data": [
            {"pattern": p.template, "level": p.level,
             "samples": [[b // 1_000_000, n] for b, n in sorted(p.samples.items())]}
            for p in mined.patterns[:MAX_PATTERNS]]}

    @r.get("/loki/api/v1/patterns")
    @gate.guard
    def patterns_get(query: str | None = None, start: str | None = None, end: str | None = None,
                     step: str | None = None, tenant: Tenant = "default") -> dict[str, Any]:
        """Patterns of the selected lines, each with its line count per step."""
        return patterns(required({"query": query or ""}, "query"), start, end, step, tenant)

    @r.post("/loki/api/v1/patterns")
    async def patterns_post(request: Request, tenant: Tenant = "default") -> dict[str, Any]:
        p = await form_params(request)
        return await gate.run(patterns, required(p, "query"), p.get("start"), p.get("end"), p.get("step"), tenant)

    return r
