"""Loki's HTTP API over loglake, so Grafana's Loki data source works unchanged.

Paths, parameters and JSON shapes follow Loki's HTTP API documentation;
the tenant is ``X-Scope-OrgID``. Every ``stats`` figure is the query's own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from query.api.limits import QueryGate
from query.auth import AuthDenied
from query.errors import QueryError
from query.language.ast import Node
from query.logql import Expr, JsonParser, LogfmtParser, LogQuery, VectorAggregation, is_scalar, parse, to_string, walk
from query.logql.lexer import format_bytes, format_duration, parse_bytes, parse_go_duration
from query.loki.engine import MAX_SERIES, Engine, Matrix, Scalar, series_limit
from query.loki.labels import LabelQueries
from query.loki.metadata import label_name, label_sql, stream_label_sql, stream_labels
from query.loki.pipeline import ERROR, Entry, apply
from query.loki.translate import STREAM_COLUMNS, STREAM_LABELS, column_of, selector_node
from query.planner import FIELD_COLUMNS, is_decimal
from query.service import SearchService
from query.timerange import now_us, parse_duration_us, parse_time_us
from storage.retention import Rules

log = logging.getLogger("loglake.query")
VERSION = "3.4.0"        # the Loki API level this answers, as Grafana checks features by version
_HOUR_US = 3_600_000_000
DETECT_SAMPLE = 500         # newest lines detected_fields parses
MAX_DELAY_FOR_S = 5         # Loki's cap on the tail's delay_for

Tenant = Annotated[str, Header(alias="X-Scope-OrgID")]
Flags = Annotated[str | None, Header(alias="X-Loki-Response-Encoding-Flags")]


def loki_time(text: str | None, default_us: int) -> int:
    """Loki's times: nanosecond integers, float seconds, or RFC 3339."""
    if text is None or text == "":
        return default_us
    return parse_time_us(text)


def loki_step(text: str | None, start_us: int, end_us: int) -> int:
    """``step``: float seconds or a duration like 15000ms; default about 250 points, at least 1 s."""
    if not text:
        return max(1_000_000, math.floor((end_us - start_us) / 250 / 1e6) * 1_000_000)
    try:
        seconds = float(text)
    except ValueError:
        step = parse_duration_us(text)
    else:
        if not math.isfinite(seconds) or seconds <= 0:
            raise QueryError("step must be positive")
        step = int(seconds * 1_000_000)
    if step < 1:
        raise QueryError("step must be at least 1µs")
    return step


def _parse(service: SearchService, text: str) -> Expr:
    """A LogQL expression, after the service's limit on query length."""
    service.check_query_text(text)
    return parse(text)


def _ns(us: int) -> str:
    return str(us * 1000)


def _sample(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    # Go's strconv.FormatFloat(v, 'f', -1, 64), as Loki prints samples: shortest exact, no exponent.
    return np.format_float_positional(v, trim="-")


def _stats(lines: int, bytes_: int, returned: int, t0: float) -> dict[str, Any]:
    took = max(time.perf_counter() - t0, 1e-9)
    summary = {"bytesProcessedPerSecond": int(bytes_ / took), "linesProcessedPerSecond": int(lines / took),
               "totalBytesProcessed": bytes_, "totalLinesProcessed": lines, "execTime": took, "queueTime": 0,
               "subqueries": 0, "totalEntriesReturned": returned, "splits": 0, "shards": 0,
               "totalPostFilterLines": returned, "totalStructuredMetadataBytesProcessed": 0}
    return {"summary": summary, "querier": {"store": {"totalChunksRef": 0, "totalChunksDownloaded": 0}},
            "ingester": {"totalReached": 0, "totalChunksMatched": 0, "totalBatches": 0, "totalLinesSent": 0}}


#: The request header a client names Loki's response encodings in (comma-separated), and the one
#: that sets structured metadata and parsed labels apart from the stream's.
ENCODING_FLAGS = "X-Loki-Response-Encoding-Flags"
CATEGORIZE = "categorize-labels"


def encoding_flags(header: str | None) -> list[str]:
    """The flags of ``X-Loki-Response-Encoding-Flags``, each once, as given (Loki neither trims nor
    lower-cases them, and echoes every one back in a streams answer)."""
    return list(dict.fromkeys(header.split(","))) if header else []


def _streams(entries: list[Entry], categorize: bool = False) -> list[dict[str, Any]]:
    """Entries as Loki's streams. By default a stream is every label of its entries (stream labels,
    structured metadata, parsed labels) and an entry is ``[ts, line]``; with ``categorize`` a stream
    is its stream labels only and each entry ``[ts, line, {structuredMetadata, parsed}]``, the
    object always there and each member only when it has labels (as Loki writes them)."""
    streams: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
    for e in entries:
        if categorize:
            extra: dict[str, dict[str, str]] = {}
            if e.meta:
                extra["structuredMetadata"] = dict(sorted(e.meta.items()))
            parsed = e.parsed_labels()
            if parsed:
                extra["parsed"] = dict(sorted(parsed.items()))
            streams.setdefault(tuple(sorted(e.stream().items())), []).append([_ns(e.ts_us), e.line, extra])
        else:
            streams.setdefault(tuple(sorted(e.all_labels().items())), []).append([_ns(e.ts_us), e.line])
    return [{"stream": dict(k), "values": v} for k, v in streams.items()]


def _matrix_json(m: Matrix, steps: np.ndarray) -> list[dict[str, Any]]:
    secs = [s / 1e6 for s in steps.tolist()]
    out = []
    for key, arr in sorted(m.items()):
        values = [[secs[i], _sample(float(v))] for i, v in enumerate(arr.tolist()) if not math.isnan(v)]
        if values:
            out.append({"metric": dict(key), "values": values})
    return out


def _ok(data: Any) -> dict[str, Any]:
    return {"status": "success", "data": data}


async def form_params(request: Request) -> dict[str, str | None]:
    """A POST's parameters: the URL's, overridden by a form-encoded body's (Loki takes both)."""
    params: dict[str, str | None] = {k: v for k, v in request.query_params.items()}
    if request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded",
                                                           "multipart/form-data")):
        form = await request.form()
        params.update({k: str(v) for k, v in form.items()})
    return params


Params = dict[str, str | None]


def whole(params: Params, name: str, default: int) -> int:
    """A whole-number parameter (Loki's strconv.ParseInt: digits, an optional sign); ``default`` when absent."""
    text = params.get(name)
    if text is None or text == "":
        return default
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise QueryError(f"invalid {name}: {text[:40]!r} is not a whole number")
    return int(text)


def required(params: Params, name: str) -> str:
    value = params.get(name)
    if not value:
        raise QueryError(f"missing required parameter {name!r}")
    return value


def direction_of(params: Params) -> str:
    """``forward`` or ``backward`` in any letter case (Loki upper-cases it); backward when absent."""
    text = params.get("direction") or "backward"
    direction = text.lower()
    if direction not in ("forward", "backward"):
        raise QueryError(f"invalid direction {text[:40]!r}: expected forward or backward")
    return direction


def _args(**params: str | None) -> Params:
    return params


def _is_int(text: str) -> bool:
    digits = text[1:] if text[:1] in ("-", "+") else text
    return digits.isascii() and digits.isdigit()


def field_type(values: set[str]) -> str:
    """Loki's detected field type of some values: int, float, duration, bytes, boolean or string."""
    def every(test: Any) -> bool:
        return bool(values) and all(test(v) for v in values)

    # Plain scans, not regexes: values come from logs and may be 100,000 characters long.
    if every(_is_int):
        return "int"
    if every(lambda v: is_decimal(v, bare_point=True)):
        return "float"
    if every(lambda v: v in ("true", "false")):
        return "boolean"
    if every(lambda v: parse_go_duration(v) is not None):
        return "duration"
    if every(lambda v: parse_bytes(v) is not None):
        return "bytes"
    return "string"


def router(service: SearchService, gate: QueryGate | None = None) -> APIRouter:
    """The Loki-compatible routes over ``service``; query work runs through ``gate`` (one of its own
    if none is given), GET or POST."""
    engine = Engine(service)
    label_queries = LabelQueries(service.runner)
    gate = gate or QueryGate(service.cfg.query)
    r = APIRouter(tags=["loki"])

    def selector_of(query: str | None) -> Node | None:
        if not query:
            return None
        expr = _parse(service, query)
        if not isinstance(expr, LogQuery):
            raise QueryError("expected a stream selector such as {service=\"api\"}")
        return selector_node(expr.selector)

    def run_logs(expr: LogQuery, start_us: int, end_us: int, limit: int, direction: str, tenant: str,
                 t0: float, flags: list[str]) -> dict[str, Any]:
        entries, stats = engine.logs(expr, start_us, end_us, limit, direction, tenant)
        data: dict[str, Any] = {"resultType": "streams"}
        if flags:
            data["encodingFlags"] = flags
        data["result"] = _streams(entries, CATEGORIZE in flags)
        data["stats"] = _stats(stats.get("rows_scanned", 0), stats.get("bytes_scanned", 0), len(entries), t0)
        return _ok(data)

    def query_range_impl(p: Params, tenant: str, flags: list[str] | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        query = required(p, "query")
        direction = direction_of(p)
        limit = whole(p, "limit", 100)
        end_us = loki_time(p.get("end"), now_us())
        start_us = loki_time(p.get("start"), end_us - _HOUR_US)
        if end_us < start_us:
            raise QueryError("end is before start")
        expr = _parse(service, query)
        if isinstance(expr, LogQuery):
            if not 1 <= limit <= service.cfg.query.max_limit:
                raise QueryError(f"limit must be between 1 and {service.cfg.query.max_limit}")
            return run_logs(expr, start_us, end_us, limit, direction, tenant, t0, flags or [])  # end is exclusive
        if any(isinstance(n, VectorAggregation) and n.op == "approx_topk" for n in walk(expr)):
            raise QueryError("approx_topk is only supported on instant queries (/loki/api/v1/query)")
        step_us = loki_step(p.get("step"), start_us, end_us)
        if (end_us - start_us) // step_us + 1 > 11_000:
            raise QueryError("exceeded maximum resolution of 11,000 points per series: increase the step")
        steps = np.arange(start_us, end_us + 1, step_us, dtype=np.int64)
        engine.figures()
        value = engine.evaluate(expr, steps, tenant)
        series_limit(value)
        if isinstance(value, Scalar):
            value = {(): value.values}
        result = _matrix_json(value, steps)
        f = engine.figures()
        return _ok({"resultType": "matrix", "result": result,
                    "stats": _stats(f.get("lines", 0), f.get("bytes", 0), len(result), t0)})

    @r.get("/loki/api/v1/query_range")
    @gate.guard
    def query_range(query: str | None = None, start: str | None = None, end: str | None = None,
                    limit: str | None = None, step: str | None = None, direction: str | None = None,
                    interval: str | None = None, tenant: Tenant = "default",
                    flags: Flags = None) -> dict[str, Any]:
        """Streams for a log query, a matrix for a metric query."""
        return query_range_impl(_args(query=query, start=start, end=end, limit=limit, step=step,
                                      direction=direction), tenant,
                                encoding_flags(flags))

    @r.post("/loki/api/v1/query_range")
    async def query_range_post(request: Request, tenant: Tenant = "default") -> dict[str, Any]:
        return await gate.run(query_range_impl, await form_params(request), tenant,
                              encoding_flags(request.headers.get(ENCODING_FLAGS)))

    def query_impl(p: Params, tenant: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        query = required(p, "query")
        direction_of(p)
        whole(p, "limit", 100)
        at = loki_time(p.get("time"), now_us())
        expr = _parse(service, query)
        if isinstance(expr, LogQuery):
            raise QueryError("log queries are not supported as an instant query: use query_range")
        steps = np.array([at], dtype=np.int64)
        engine.figures()
        value = engine.evaluate(expr, steps, tenant)
        series_limit(value)
        f = engine.figures()
        stats = _stats(f.get("lines", 0), f.get("bytes", 0), 1, t0)
        if is_scalar(expr) and isinstance(value, Scalar):
            return _ok({"resultType": "scalar", "result": [at / 1e6, _sample(float(value.values[0]))],
                        "stats": stats})
        if isinstance(value, Scalar):
            value = {(): value.values}
        samples = [(k, float(v[0])) for k, v in sorted(value.items()) if not math.isnan(v[0])]
        # sort()/sort_desc() order an instant vector by its values (ties keep label order), as in
        # Prometheus; every other answer is in label order.
        if isinstance(expr, VectorAggregation) and expr.op in ("sort", "sort_desc"):
            samples.sort(key=lambda kv: kv[1], reverse=expr.op == "sort_desc")
        result = [{"metric": dict(k), "value": [at / 1e6, _sample(v)]} for k, v in samples]
        stats["summary"]["totalEntriesReturned"] = len(result)
        return _ok({"resultType": "vector", "result": result, "stats": stats})

    @r.get("/loki/api/v1/query")
    @gate.guard
    def query_instant(query: str | None = None, time_: Annotated[str | None, Query(alias="time")] = None,
                      limit: str | None = None, direction: str | None = None,
                      tenant: Tenant = "default") -> dict[str, Any]:
        """A metric query at one time: a vector, or a scalar."""
        return query_impl(_args(query=query, time=time_, limit=limit, direction=direction), tenant)

    @r.post("/loki/api/v1/query")
    async def query_instant_post(request: Request, tenant: Tenant = "default") -> dict[str, Any]:
        return await gate.run(query_impl, await form_params(request), tenant)

    def _range(start: str | None, end: str | None, since: str | None = None) -> tuple[int, int]:
        end_us = loki_time(end, now_us())
        default = end_us - (parse_duration_us(since) if since else 6 * _HOUR_US)
        return loki_time(start, default), end_us + 1

    @r.get("/loki/api/v1/labels")
    @gate.guard
    def labels(start: str | None = None, end: str | None = None, since: str | None = None,
               query: str | None = None, tenant: Tenant = "default") -> dict[str, Any]:
        """Label names: the stream labels of the records in the range (and matching ``query``)."""
        lo, hi = _range(start, end, since)
        found: set[str] = set()
        for row in label_queries.label_sets(selector_of(query), lo, hi, tenant, list(STREAM_COLUMNS)):
            found.update(stream_labels(row))
        return _ok(sorted(found))

    @r.get("/loki/api/v1/label/{name}/values")
    @gate.guard
    def label_values(name: str, start: str | None = None, end: str | None = None, since: str | None = None,
                     query: str | None = None, limit: str | None = None,
                     tenant: Tenant = "default") -> dict[str, Any]:
        n = whole(_args(limit=limit), "limit", 1000)
        lo, hi = _range(start, end, since)
        node = selector_of(query)
        values = label_queries.distinct(stream_label_sql(name), node, lo, hi, tenant, max(n, 0))
        return _ok(sorted(values))

    def _series(match: list[str], start: str | None, end: str | None, tenant: str) -> dict[str, Any]:
        lo, hi = _range(start, end)
        found: set[tuple[tuple[str, str], ...]] = set()
        for m in match or ["{service_name=~\".+\"}"]:
            node = selector_of(m)
            for row in label_queries.label_sets(node, lo, hi, tenant, list(STREAM_COLUMNS)):
                found.add(tuple(sorted(stream_labels(row).items())))
        return _ok([dict(k) for k in sorted(found)])

    @r.get("/loki/api/v1/series")
    @gate.guard
    def series(match: Annotated[list[str], Query(alias="match[]")] = [],  # noqa: B006 (FastAPI reads it)
               start: str | None = None, end: str | None = None, tenant: Tenant = "default") -> dict[str, Any]:
        return _series(match, start, end, tenant)

    @r.post("/loki/api/v1/series")
    async def series_post(request: Request, tenant: Tenant = "default") -> dict[str, Any]:
        form = await request.form()
        match = [str(v) for v in form.getlist("match[]")] or request.query_params.getlist("match[]")
        p = await form_params(request)
        return await gate.run(_series, match, p.get("start"), p.get("end"), tenant)

    def _index_stats(p: Params, tenant: str) -> dict[str, Any]:
        query = required(p, "query")
        lo, hi = _range(p.get("start"), p.get("end"))
        node = selector_of(query)
        s = label_queries.volume(node, lo, hi, tenant, [])
        total = s[0] if s else {"rows": 0, "bytes": 0, "segments": 0, "streams": 0}
        return {"streams": total["streams"], "chunks": total["segments"], "entries": total["rows"],
                "bytes": total["bytes"]}

    @r.get("/loki/api/v1/index/stats")
    @gate.guard
    def index_stats(query: str | None = None, start: str | None = None, end: str | None = None,
                    tenant: Tenant = "default") -> dict[str, Any]:
        return _index_stats(_args(query=query, start=start, end=end), tenant)

    @r.post("/loki/api/v1/index/stats")
    async def index_stats_post(request: Request, tenant: Tenant = "default") -> dict[str, Any]:
        return await gate.run(_index_stats, await form_params(request), tenant)

    def _volume(p: Params, ranged: bool, tenant: str) -> dict[str, Any]:
        query = required(p, "query")
        limit = whole(p, "limit", 100) or 100        # Loki: 0 is the default
        if limit < 0:
            raise QueryError("limit must be a positive value")
        aggregate_by = p.get("aggregateBy") or "series"
        if aggregate_by not in ("series", "labels"):
            raise QueryError(f"invalid aggregation option {aggregate_by[:40]!r}: expected series or labels")
        target = p.get("targetLabels")
        lo, hi = _range(p.get("start"), p.get("end"))
        node = selector_of(query)
        expr = _parse(service, query)
        if target:
            names = [t.strip() for t in target.split(",")]
        elif aggregate_by == "labels":
            names = list(STREAM_LABELS)     # Loki: every label of the matching streams
        else:
            names = [m.name for m in expr.selector.matchers] if isinstance(expr, LogQuery) else []
        names = list(dict.fromkeys(n for n in names if n))
        step_us = loki_step(p.get("step"), lo, hi) if ranged else 0
        if aggregate_by == "labels":
            # One series per label name, {name: ""}, with the bytes of the records that have it.
            if not ranged:
                per = []
                for n in names:
                    rows = label_queries.volume(node, lo, hi, tenant, [stream_label_sql(n)])
                    per.append((n, sum(r["bytes"] for r in rows if r["labels"][0] is not None)))
                per.sort(key=lambda x: (-x[1], x[0]))
                return _ok({"resultType": "vector", "result": [
                    {"metric": {n: ""}, "value": [(hi - 1) / 1e6, str(b)]} for n, b in per if b][:limit]})
            assert node is not None
            label_series: dict[str, dict[int, int]] = {}
            for n in names:
                table = service.buckets(node, tenant, lo - 1, hi - 1, lo - 1, step_us, [stream_label_sql(n)],
                                        line_bytes=True)
                if not table.num_rows:
                    continue
                col = table["l0"].to_pylist()
                for j, k in enumerate(table["k"].to_pylist()):
                    if col[j] is not None:
                        points = label_series.setdefault(n, {})
                        t = lo + (k - 1) * step_us
                        points[t] = points.get(t, 0) + int(table["bytes"][j].as_py())
            ordered = sorted(label_series.items(), key=lambda x: (-sum(x[1].values()), x[0]))[:limit]
            return _ok({"resultType": "matrix", "result": [
                {"metric": {n: ""}, "values": [[t / 1e6, str(v)] for t, v in sorted(pts.items())]}
                for n, pts in ordered]})
        if not ranged:
            rows = label_queries.volume(node, lo, hi, tenant, [stream_label_sql(n) for n in names])[:limit]
            return _ok({"resultType": "vector", "result": [
                {"metric": {n: str(r["labels"][i]) for i, n in enumerate(names) if r["labels"][i] is not None},
                 "value": [(hi - 1) / 1e6, str(r["bytes"])]} for r in rows]})
        assert node is not None     # the query is not empty: the parse above refuses an empty one
        table = service.buckets(node, tenant, lo - 1, hi - 1, lo - 1, step_us, [stream_label_sql(n) for n in names],
                                line_bytes=True)
        series: dict[tuple[tuple[str, str], ...], dict[int, int]] = {}
        cols = [table[f"l{i}"].to_pylist() for i in range(len(names))] if table.num_rows else []
        for j, k in enumerate(table["k"].to_pylist() if table.num_rows else []):
            key = tuple((n, str(cols[i][j])) for i, n in enumerate(names) if cols[i][j] is not None)
            t = lo + (k - 1) * step_us      # the bucket's start
            points = series.setdefault(key, {})
            points[t] = points.get(t, 0) + int(table["bytes"][j].as_py())
        result = [{"metric": dict(k), "values": [[t / 1e6, str(v)] for t, v in sorted(pts.items())]}
                  for k, pts in sorted(series.items())][:limit]
        return _ok({"resultType": "matrix", "result": result})

    @r.post("/loki/api/v1/index/volume")
    @r.post("/loki/api/v1/index/volume_range")
    async def volume_post(request: Request, tenant: Tenant = "default") -> dict[str, Any]:
        p = await form_params(request)
        return await gate.run(_volume, p, request.url.path.endswith("volume_range"), tenant)

    @r.get("/loki/api/v1/index/volume")
    @gate.guard
    def volume(query: str | None = None, start: str | None = None, end: str | None = None,
               limit: str | None = None, targetLabels: str | None = None,  # noqa: N803 (Loki's names)
               aggregateBy: str | None = None, tenant: Tenant = "default") -> dict[str, Any]:  # noqa: N803
        """Bytes per label set in the range (Grafana's log volume)."""
        return _volume(_args(query=query, start=start, end=end, limit=limit, targetLabels=targetLabels,
                             aggregateBy=aggregateBy), False, tenant)

    @r.get("/loki/api/v1/index/volume_range")
    @gate.guard
    def volume_range(query: str | None = None, start: str | None = None, end: str | None = None,
                     limit: str | None = None, step: str | None = None,
                     targetLabels: str | None = None,  # noqa: N803
                     aggregateBy: str | None = None, tenant: Tenant = "default") -> dict[str, Any]:  # noqa: N803
        return _volume(_args(query=query, start=start, end=end, limit=limit, step=step, targetLabels=targetLabels,
                             aggregateBy=aggregateBy), True, tenant)

    @r.get("/loki/api/v1/detected_labels")
    @gate.guard
    def detected_labels(query: str | None = None, start: str | None = None, end: str | None = None,
                        tenant: Tenant = "default") -> dict[str, Any]:
        lo, hi = _range(start, end)
        counts = label_queries.cardinalities(selector_of(query), lo, hi, tenant,
                                             {name: stream_label_sql(name) for name in STREAM_LABELS})
        # Loki lists a label only if it has values (querier.go: shouldRejectLabel of no values).
        return {"detectedLabels": [{"label": name, "cardinality": counts[name]} for name in STREAM_LABELS
                                   if counts[name]]}

    def _detected(query: str | None, lo: int, hi: int, tenant: str) -> dict[str, dict[str, Any]]:
        """Fields by label name, as Loki detects them: the structured metadata (sampled by the
        service: attributes, trace and span ids, detected level) and the fields of JSON or logfmt lines
        among the newest lines; each with its values, cardinality and parsers (``stored``: its values
        can be read from the records, by :func:`label_sql`)."""
        found: dict[str, dict[str, Any]] = {}
        fields, _ = service.fields_node(selector_of(query), lo, hi, tenant, top=100)
        for f in fields:
            if f.name in ("level", "trace_id", "span_id"):
                name = "detected_level" if f.name == "level" else f.name
            elif f.name in STREAM_LABELS or f.name in FIELD_COLUMNS:
                continue
            else:
                name = label_name(f.name.removeprefix("attrs."))
            if not name:
                continue
            d = found.setdefault(name, {"stored": True, "values": set(), "cardinality": 0, "parsers": []})
            d["values"] |= {str(t["value"]) for t in f.top}
            d["cardinality"] = max(d["cardinality"], f.distinct)
        expr = _parse(service, query) if query else parse('{service=~".+"}')
        if isinstance(expr, LogQuery):
            entries, _ = engine.logs(expr, lo, hi, DETECT_SAMPLE, "backward", tenant)
            for e in entries:
                for parser in (JsonParser(), LogfmtParser()):
                    probe = Entry(e.ts_us, e.line, e.stream())     # a field named as a stream label is x_extracted
                    apply(parser, probe)
                    got = {k: v for k, v in probe.labels.items() if k in probe.parsed}
                    if ERROR in probe.labels or not got:
                        continue
                    name = "json" if isinstance(parser, JsonParser) else "logfmt"
                    for k, v in got.items():
                        d = found.setdefault(k, {"stored": False, "values": set(), "cardinality": 0, "parsers": []})
                        d["values"].add(v)
                        if name not in d["parsers"]:
                            d["parsers"].append(name)
                    break
        for d in found.values():
            d["cardinality"] = max(d["cardinality"], len(d["values"]))
        return found

    @r.get("/loki/api/v1/detected_fields")
    @gate.guard
    def detected_fields(query: str | None = None, start: str | None = None, end: str | None = None,
                        limit: str | None = None, tenant: Tenant = "default") -> dict[str, Any]:
        """Fields of the records beyond their stream labels, under names LogQL accepts."""
        n = max(whole(_args(limit=limit), "limit", 1000), 0)
        lo, hi = _range(start, end)
        found = _detected(query, lo, hi, tenant)
        out = [{"label": name, "type": field_type(d["values"]), "cardinality": d["cardinality"],
                "parsers": d["parsers"] or None} for name, d in sorted(found.items())][:n]
        return {"fields": out, "limit": n}

    @r.get("/loki/api/v1/detected_field/{name}/values")
    @gate.guard
    def detected_field_values(name: str, query: str | None = None, start: str | None = None,
                              end: str | None = None, limit: str | None = None,
                              tenant: Tenant = "default") -> dict[str, Any]:
        n = max(whole(_args(limit=limit), "limit", 1000), 0)
        lo, hi = _range(start, end)
        if name in STREAM_LABELS or column_of(name) in STREAM_COLUMNS:
            values = label_queries.distinct(stream_label_sql(name), selector_of(query), lo, hi, tenant, n)
            return {"values": sorted(values)}
        d = _detected(query, lo, hi, tenant).get(name)
        if d is None:
            return {"values": []}
        if d["stored"]:
            values = label_queries.distinct(label_sql(name), selector_of(query), lo, hi, tenant, n)
            return {"values": sorted(values), "limit": n}
        return {"values": sorted(d["values"])[:n], "limit": n}

    @r.get("/loki/api/v1/status/buildinfo")
    def buildinfo() -> dict[str, str]:
        return {"version": VERSION, "revision": "loglake", "branch": "main", "buildUser": "loglake",
                "buildDate": "", "goVersion": ""}

    @r.get("/loki/api/v1/drilldown-limits")
    def drilldown_limits(tenant: Tenant = "default") -> dict[str, Any]:
        """The tenant's limits and features, as Loki 3 tells Grafana's Logs Drilldown (it hides its
        patterns tab without ``pattern_ingester_enabled``); each is what this service enforces."""
        q = service.cfg.query
        policy = Rules.of(service.cfg.retention).age_policy(tenant, "*")
        retention_s = policy.max_age_s if policy is not None and policy.max_age_s is not None else 0
        return {
            "limits": {
                "discover_log_levels": True,
                # service_name is the record's service (else unknown_service).
                "discover_service_name": ["service"],
                "log_level_fields": ["level", "detected_level"],
                "max_entries_limit_per_query": q.max_limit,
                "max_line_size_truncate": False,
                "max_query_bytes_read": format_bytes(q.max_scan_bytes),
                "max_query_length": "0s",
                "max_query_lookback": "0s",
                "max_query_range": "0s",
                "max_query_series": MAX_SERIES,
                "metric_aggregation_enabled": False,
                "pattern_persistence_enabled": False,
                "query_timeout": format_duration(int(q.timeout_s * 1e9)),
                "retention_period": format_duration(int(retention_s) * 1_000_000_000),
                "volume_enabled": True,
                "volume_max_series": MAX_SERIES,
            },
            # Patterns are mined from stored messages when asked (/loki/api/v1/patterns).
            "pattern_ingester_enabled": True,
            "version": VERSION,
        }

    def _format_query(p: Params) -> dict[str, Any]:
        return _ok(to_string(_parse(service, required(p, "query"))))

    @r.get("/loki/api/v1/format_query")
    def format_query(query: str | None = None) -> dict[str, Any]:
        """The query as Loki prints it (Grafana's query editor's "Format query")."""
        return _format_query(_args(query=query))

    @r.post("/loki/api/v1/format_query")
    async def format_query_post(request: Request) -> dict[str, Any]:
        return _format_query(await form_params(request))

    @r.get("/ready")
    def ready() -> JSONResponse:
        try:
            service.catalog.totals()
        except Exception as e:  # not ready is the honest answer to any catalog failure
            return JSONResponse({"status": "unavailable", "reason": str(e)}, status_code=503)
        return JSONResponse("ready", status_code=200)

    @r.websocket("/loki/api/v1/tail")
    async def tail(ws: WebSocket) -> None:
        """New lines matching a log query, pushed as they are stored (polled every second).

        Every ending is a close frame with a reason: 1008 for a refused query or parameter, and for
        a key revoked or expired while streaming (the key is checked again before every poll, so it
        stops within ``auth.cache_s`` and a second); 1013 if the key cannot be checked just now;
        1011 for anything else."""
        await ws.accept()
        reauthenticate = getattr(ws.state, "reauthenticate", None)    # set by the auth middleware
        try:
            p: Params = dict(ws.query_params)
            q = required(p, "query")
            tenant = ws.headers.get("x-scope-orgid", "default")
            flags = encoding_flags(ws.headers.get(ENCODING_FLAGS))
            limit = whole(p, "limit", 100)
            if not 1 <= limit <= service.cfg.query.max_limit:
                raise QueryError(f"limit must be between 1 and {service.cfg.query.max_limit}")
            delay = whole(p, "delay_for", 0)
            if not 0 <= delay <= MAX_DELAY_FOR_S:
                raise QueryError(f"delay_for must be between 0 and {MAX_DELAY_FOR_S} seconds")
            expr = _parse(service, q)
            if not isinstance(expr, LogQuery):
                raise QueryError("tail needs a log query")
            since = loki_time(p.get("start"), now_us() - _HOUR_US)
            while True:
                if reauthenticate is not None:
                    try:
                        await reauthenticate()
                    except AuthDenied as e:
                        await _close(ws, 1013 if e.status == 429 else 1008, f"API key: {e.message}")
                        return
                until = now_us() - delay * 1_000_000 + 1      # delay_for: let slow shippers catch up
                entries, _ = await gate.run(engine.logs, expr, since, until, limit, "forward", tenant)
                if entries:
                    since = entries[-1].ts_us + 1
                    message: dict[str, Any] = {"streams": _streams(entries, CATEGORIZE in flags),
                                               "dropped_entries": None}
                    if flags:
                        message["encodingFlags"] = flags
                    await ws.send_json(message)
                if await _client_left(ws, 1.0):
                    return
        except WebSocketDisconnect:
            return
        except QueryError as e:
            await _close(ws, 1008, str(e))
        except Exception as e:  # noqa: BLE001 (the client gets a close frame, whatever went wrong)
            log.warning("live tail ended by an error: %r", e)
            await _close(ws, 1011, "internal error")

    return r


async def _client_left(ws: WebSocket, wait_s: float) -> bool:
    """Wait ``wait_s`` for the client; True if it closed meanwhile. A tail sends only when there is
    something new, so without this a client that left an idle stream was never noticed: its poll went
    on, and a server shutting down waited for it."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            return False
        if message["type"] == "websocket.disconnect":
            return True     # (anything the client sends is ignored: it does not make the poll sooner)
    return False


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close with ``code`` and ``reason`` (cut to the 123 bytes a close frame holds), if the client is still there."""
    try:
        await ws.close(code=code, reason=reason.encode()[:123].decode(errors="ignore"))
    except (RuntimeError, OSError, WebSocketDisconnect):
        pass       # already gone
