"""The ingest suite's corpus: half JSON application records, half nginx combined lines.

Seeded and deterministic; one file per service, each in time order, one
record per line (no multi-line records), about 200 bytes a record on average.

- JSON records (6 services, about 230 bytes): ``time`` (ISO 8601, ms,
  ``Z``), ``level`` (about 10% debug, 80% info, 7% warn, 3% error),
  ``service``, ``host``, ``msg`` (per-level templates with ids, durations and
  error texts), ``trace_id`` (32 hex), ``duration_ms`` (a decimal),
  ``region``, and in about 30% of records one nested object
  ``"http": {"method": ..., "status": ...}`` (status matching the level), so
  that flattening is exercised.
- nginx combined access lines (4 services, about 185 bytes): client IP,
  user, time, request line (method, path with ids and an occasional query
  string), status (about 90% 2xx/3xx, 7% 4xx, 3% 5xx), bytes, referer and one
  of eight user agents (browsers, curl, probes).

Every draw is a numpy array and every line is assembled with Arrow string
kernels (``binary_join_element_wise``, ``strftime``, ``take``), a chunk of
records at a time: no Python loop per record. Each file's bytes are written
straight from the Arrow value buffer.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.arrow_text import decimal, hex_strings, join, pick

DAY = datetime(2026, 11, 1, tzinfo=UTC)
DAY_MS = int(DAY.timestamp() * 1000)
#: One file per service, in traffic rank order within each format.
JSON_SERVICES = ("api-gateway", "orders", "users", "payments", "cart", "auth")
NGINX_SERVICES = ("nginx-edge", "frontend", "nginx-static", "ingress")
N_HOSTS = 200
CHUNK = 500_000         # records assembled at a time (bounds memory at any scale)

_LEVELS = ("debug", "info", "warn", "error")
_LEVEL_P = (0.10, 0.80, 0.07, 0.03)
_SHAPES = {
    "debug": "{obj} {id} {act} cache_hit={hit} shard={shard}",
    "info": "{obj} {id} {act} in {ms}ms",
    "warn": "slow {obj} {id}: {act} took {ms}ms (budget 250ms)",
    "error": "failed to {verb} {obj} {id}: {err}",
}
_OBJECTS = ("order", "user", "session", "payment", "invoice", "cart", "product", "shipment", "token", "report")
_ACTIONS = ("created", "updated", "deleted", "fetched", "validated", "cached", "retried", "rejected",
            "queued", "processed")
_VERBS = ("load", "save", "lock", "charge", "refund", "publish")
_ERRORS = ("connection refused", "deadline exceeded", "upstream returned 503", "constraint violation",
           "broker unavailable", "permission denied", "no space left on device", "invalid token")
_REGIONS = ("eu-west-1", "us-east-1", "ap-south-1", "us-west-2")
_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD")
_METHOD_P = (0.75, 0.15, 0.05, 0.03, 0.02)
#: nginx paths: (prefix, variable part: "" | "id" | "hex", suffix)
_PATHS = (("/api/v1/orders", "", ""), ("/api/v1/orders/", "id", ""), ("/api/v1/users/", "id", "/profile"),
          ("/api/v1/cart", "", ""), ("/api/v1/search", "", ""), ("/static/js/app.", "hex", ".js"),
          ("/static/css/site.", "hex", ".css"), ("/login", "", ""), ("/healthz", "", ""),
          ("/api/v2/payments/", "id", ""), ("/api/v2/catalog/items", "", ""), ("/images/products/", "id", ".webp"),
          ("/favicon.ico", "", ""), ("/metrics", "", ""), ("/checkout/", "id", "/confirm"))
_QUERIES = ("?page=", "?q=shoes&page=", "?sort=price&limit=", "?utm_source=newsletter&id=")
_USERS = ("alice", "bob", "deploy", "svc-reports")
_REFERERS = ("https://shop.example.com/", "https://shop.example.com/search?q=running+shoes",
             "https://www.google.com/", "https://shop.example.com/cart", "https://m.example.com/products/42")
_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
    "curl/8.5.0",
    "kube-probe/1.30",
    "Go-http-client/1.1",
)
_AGENT_P = (0.22, 0.10, 0.10, 0.12, 0.10, 0.12, 0.14, 0.10)


@dataclass
class IngestCorpus:
    """What was written: counts and bytes per format and per file."""

    records: int
    json_records: int
    nginx_records: int
    raw_bytes: int
    json_bytes: int
    nginx_bytes: int
    seed: int
    files: dict[str, dict[str, int | str]] = field(default_factory=dict)   # service -> {kind, records, bytes}

    def bytes_summary(self) -> str:
        return (f"{self.raw_bytes / 1e6:,.1f} MB, {self.raw_bytes / self.records:.0f} bytes a record "
                f"({self.json_records:,} JSON records of {self.json_bytes / max(self.json_records, 1):.0f} bytes, "
                f"{self.nginx_records:,} nginx lines of {self.nginx_bytes / max(self.nginx_records, 1):.0f})")

    def paths(self, logs: Path, kind: str) -> list[str]:
        return [str(logs / f"{name}.log") for name, f in sorted(self.files.items()) if f["kind"] == kind]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> IngestCorpus:
        return cls(**json.loads(path.read_text()))


# -- vectorised string assembly (benchmarks/arrow_text.py holds the pieces) ---------

def _template(shape: str, fields: dict[str, pa.Array]) -> pa.Array:
    parts: list[object] = []
    for i, tok in enumerate(re.split(r"\{(\w+)\}", shape)):
        if i % 2:
            parts.append(fields[tok])
        elif tok:
            parts.append(tok)
    return join(*parts)


def _by_group(group: np.ndarray, build: dict[int, object]) -> pa.Array:
    """One array whose element i is ``build[group[i]](rows of that group)[...]``, in order."""
    pieces, where = [], []
    for g, fn in build.items():
        rows = np.flatnonzero(group == g)
        if rows.size:
            pieces.append(fn(rows))
            where.append(rows)
    order = np.concatenate(where)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return pa.concat_arrays(pieces).take(pa.array(inverse))


def _json_lines(rng: np.random.Generator, svc: np.ndarray, ms: np.ndarray) -> pa.Array:
    m = svc.size
    level = rng.choice(len(_LEVELS), size=m, p=_LEVEL_P)
    host = rng.integers(0, N_HOSTS, size=m)
    obj, act, verb = rng.integers(0, 10, size=m), rng.integers(0, 10, size=m), rng.integers(0, len(_VERBS), size=m)
    ident = rng.integers(1, 1_000_000, size=m)
    took = np.minimum(rng.lognormal(3.5, 1.0, size=m), 30_000)          # ms, median about 33
    took_int = took.astype(np.int64)
    took_frac = ((took - took_int) * 1000).astype(np.int64)
    err = rng.integers(0, len(_ERRORS), size=m)
    fields = {"obj": pick(_OBJECTS, obj), "id": decimal(ident), "act": pick(_ACTIONS, act),
              "verb": pick(_VERBS, verb), "ms": decimal(took_int), "err": pick(_ERRORS, err),
              "hit": pick(("true", "false"), rng.integers(0, 2, size=m)),
              "shard": decimal(rng.integers(0, 64, size=m))}
    msg = _by_group(level, {k: (lambda rows, k=k: _template(_SHAPES[_LEVELS[k]],
                                                             {n: a.take(pa.array(rows)) for n, a in fields.items()}))
                            for k in range(len(_LEVELS))})
    ts = pa.array(DAY_MS + ms, pa.int64()).cast(pa.timestamp("ms"))
    status = np.where(level == 3, rng.choice((500, 502, 503, 504), size=m),
                      np.where(level == 2, rng.choice((400, 404, 409, 429), size=m),
                               rng.choice((200, 200, 200, 201, 204, 304), size=m)))
    http = join(',"http":{"method":"', pick(_METHODS, rng.choice(len(_METHODS), size=m, p=_METHOD_P)),
                 '","status":', decimal(status), "}")
    has_http = rng.random(m) < 0.3
    return join(
        '{"time":"', pc.strftime(ts, "%Y-%m-%dT%H:%M:%SZ"),
        '","level":"', pick(_LEVELS, level),
        '","service":"', pick(JSON_SERVICES, svc),
        '","host":"host-', pc.utf8_lpad(decimal(host), 3, "0"),
        '","msg":"', msg,
        '","trace_id":"', hex_strings(rng, m, 16),
        '","duration_ms":', decimal(took_int), ".", pc.utf8_lpad(decimal(took_frac), 3, "0"),
        ',"region":"', pick(_REGIONS, rng.integers(0, len(_REGIONS), size=m)), '"',
        pc.if_else(pa.array(has_http), http, ""), "}")


def _nginx_lines(rng: np.random.Generator, ms: np.ndarray) -> pa.Array:
    m = ms.size
    octets = [decimal(rng.integers(1, 224, size=m))] + [decimal(rng.integers(0, 256, size=m)) for _ in range(3)]
    ip = join(octets[0], ".", octets[1], ".", octets[2], ".", octets[3])
    user = pc.if_else(pa.array(rng.random(m) < 0.05), pick(_USERS, rng.integers(0, len(_USERS), size=m)), "-")
    ts = pa.array((DAY_MS + ms) // 1000, pa.int64()).cast(pa.timestamp("s"))
    k = rng.integers(0, len(_PATHS), size=m)
    kinds = np.array([p[1] for p in _PATHS])[k]
    var = pc.if_else(pa.array(kinds == "id"), decimal(rng.integers(1, 100_000, size=m)),
                     pc.if_else(pa.array(kinds == "hex"), hex_strings(rng, m, 4), ""))
    query = pc.if_else(pa.array(rng.random(m) < 0.2),
                       join(pick(_QUERIES, rng.integers(0, len(_QUERIES), size=m)),
                             decimal(rng.integers(1, 50, size=m))), "")
    path = join(pick(tuple(p[0] for p in _PATHS), k), var, pick(tuple(p[2] for p in _PATHS), k), query)
    cls = rng.random(m)
    status = np.where(cls < 0.03, rng.choice((500, 502, 503, 504), size=m),
                      np.where(cls < 0.10, rng.choice((400, 401, 403, 404, 404, 429), size=m),
                               rng.choice((200, 200, 200, 200, 201, 204, 301, 302, 304), size=m)))
    size = np.where(status == 304, 0, np.minimum(rng.lognormal(8.0, 1.5, size=m), 5e6)).astype(np.int64)
    referer = pc.if_else(pa.array(rng.random(m) < 0.3),
                         pick(_REFERERS, rng.integers(0, len(_REFERERS), size=m)), "-")
    return join(ip, " - ", user, " [", pc.strftime(ts, "%d/%b/%Y:%H:%M:%S +0000"), '] "',
                 pick(_METHODS, rng.choice(len(_METHODS), size=m, p=_METHOD_P)), " ", path, ' HTTP/1.1" ',
                 decimal(status), " ", decimal(size), ' "', referer, '" "',
                 pick(_AGENTS, rng.choice(len(_AGENTS), size=m, p=_AGENT_P)), '"')


def _daily_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    """Milliseconds into the day: quiet at night, a morning peak, an evening shoulder."""
    minute = np.arange(1440)
    curve = 0.25 + np.exp(-((minute - 600) / 180.0) ** 2) + 0.7 * np.exp(-((minute - 1020) / 150.0) ** 2)
    return rng.choice(1440, size=n, p=curve / curve.sum()).astype(np.int64) * 60_000 + rng.integers(0, 60_000, size=n)


def _write(files: dict[str, object], names: tuple[str, ...], svc: np.ndarray, lines: pa.Array,
           counts: dict[str, list[int]]) -> None:
    """Append ``lines`` (grouped by ``svc``, ascending) to their services' files."""
    arr = pc.binary_join_element_wise(lines, "\n", "")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    values = memoryview(arr.buffers()[2])
    bounds = np.searchsorted(svc, np.arange(len(names) + 1))
    for s, name in enumerate(names):
        a, b = int(bounds[s]), int(bounds[s + 1])
        if a == b:
            continue
        lo, hi = int(offsets[a]), int(offsets[b])
        files[name].write(values[lo:hi])          # type: ignore[attr-defined]
        counts[name][0] += b - a
        counts[name][1] += hi - lo


def generate_ingest(out_dir: Path, records: int, *, seed: int = 42) -> IngestCorpus:
    """Write ``<out_dir>/<service>.log``: ``records // 2`` JSON records and the rest nginx lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_json = records // 2
    n_nginx = records - n_json
    counts = {name: [0, 0] for name in JSON_SERVICES + NGINX_SERVICES}
    files = {name: open(out_dir / f"{name}.log", "wb") for name in counts}  # noqa: SIM115
    try:
        for names, n, build in ((JSON_SERVICES, n_json, "json"), (NGINX_SERVICES, n_nginx, "nginx")):
            w = 1.0 / np.arange(1, len(names) + 1) ** 0.8
            svc = np.sort(rng.choice(len(names), size=n, p=w / w.sum()))
            ms = _daily_ms(rng, n)
            # Each service's file in time order: sort the times within each service's run.
            bounds = np.searchsorted(svc, np.arange(len(names) + 1))
            for s in range(len(names)):
                ms[bounds[s]:bounds[s + 1]].sort()
            for a in range(0, n, CHUNK):
                b = min(n, a + CHUNK)
                lines = _json_lines(rng, svc[a:b], ms[a:b]) if build == "json" else _nginx_lines(rng, ms[a:b])
                _write(files, names, svc[a:b], lines, counts)
    finally:
        for f in files.values():
            f.close()
    per_file = {name: {"kind": "json" if name in JSON_SERVICES else "nginx", "records": c[0], "bytes": c[1]}
                for name, c in counts.items()}
    json_bytes = sum(c[1] for name, c in counts.items() if name in JSON_SERVICES)
    nginx_bytes = sum(c[1] for name, c in counts.items() if name in NGINX_SERVICES)
    return IngestCorpus(records=records, json_records=n_json, nginx_records=n_nginx,
                        raw_bytes=json_bytes + nginx_bytes, json_bytes=json_bytes, nginx_bytes=nginx_bytes,
                        seed=seed, files=per_file)


def ingest_corpus(records: int, seed: int = 42, work: Path | None = None) -> tuple[Path, IngestCorpus]:
    """The ingest corpus for ``records`` records, generated once and cached under ``work``."""
    if work is None:
        from benchmarks.pipeline import WORK as work
    d = work / f"ingest-corpus-{records}-{seed}"
    meta = d / "corpus.json"          # written last: its presence means the files are complete
    if not meta.exists():
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        corpus = generate_ingest(d / "logs", records, seed=seed)
        corpus.save(meta)
        print(f"  ingest corpus: {records:,} records, {corpus.raw_bytes / 1e6:,.0f} MB "
              f"({corpus.raw_bytes / records:.0f} bytes a record) in {time.perf_counter() - t0:.0f}s")
    return d / "logs", IngestCorpus.load(meta)
