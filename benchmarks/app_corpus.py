"""The query suite's second corpus shape: one day of JSON application logs.

The shape of issue 26: one day (2026-11-01) of JSON lines from 20 services
with Zipf shares (rank ``r`` gets ``1 / r^1.07`` of the lines), following a
daily curve, each line::

    {"ts":"2026-11-01T14:03:22.123Z","level":"info","service":"payments","host":"payments-03",
     "msg":"order 421337 created in 35ms","trace_id":"<32 hex>","request_id":"<16 hex>",
     "duration_ms":35}

Levels about 10% debug, 80% info, 7% warn, 3% error, 0.05% fatal, with ten
10-minute error bursts of one service each; messages from
:func:`template_count` (about 200) templates with ids, durations, users and
error texts; random trace and request ids. The needle of :mod:`benchmarks.corpus`
is planted in exactly 7 records and its mixed-case substring in about one in
20,000, inside and outside the q5 window, so the five queries' answers are
known (:class:`benchmarks.corpus.Truth`, computed from the draws).

Every draw is a numpy array and every line is assembled with Arrow string
kernels, a chunk at a time: no Python loop per record. One file per service,
in time order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.arrow_text import decimal, hex_strings, join, pick
from benchmarks.corpus import DAY, LEVEL_P, LEVELS, NEEDLE, SUBSTRING, Truth, truth_of

#: In traffic rank order: rank 1 gets the most lines.
SERVICES: tuple[str, ...] = (
    "api-gateway", "orders", "users", "payments", "inventory", "cart", "search", "catalog", "auth", "shipping",
    "billing", "email", "recommendations", "notifications", "checkout", "reviews", "pricing", "fraud",
    "media", "reports",
)
CHUNK = 500_000
_OBJECTS = ("order", "user", "session", "payment", "invoice", "cart", "product", "shipment", "token", "report")
_ACTIONS = ("created", "updated", "deleted", "fetched", "validated", "cached", "retried", "rejected",
            "queued", "processed")
_ERRORS = ("connection refused", "deadline exceeded", "upstream returned 503", "constraint violation",
           "broker unavailable", "permission denied", "no space left on device", "invalid token")
#: Per level, the message templates; ``{name}`` is a variable part.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "debug": tuple(t.replace("{o}", o) for o in _OBJECTS for t in (
        "cache lookup for {o} {id} hit={hit}", "{o} {id} loaded from shard {shard}",
        "acquired lock on {o} {id}", "serialised {o} {id} in {bytes} bytes")),
    "info": tuple(f"{o} {{id}} {a} in {{ms}}ms" for o in _OBJECTS for a in _ACTIONS),
    "warn": tuple(t.replace("{o}", o) for o in _OBJECTS for t in (
        "slow {o} {id}: took {ms}ms (budget 250ms)", "retrying {o} {id} after {ms}ms",
        "{o} {id} rate limited for user {user}")),
    "error": tuple(f"{v} {{obj}} {{id}}: {e}" for e in _ERRORS for v in
                   ("failed to load", "failed to save", "could not lock")),
    "fatal": tuple(f"giving up on {{obj}} {{id}} after {{n}} attempts: {e}" for e in _ERRORS[:6]),
}


def template_count() -> int:
    """Distinct message templates the corpus draws from."""
    return sum(len(t) for t in TEMPLATES.values())


def _messages(template: np.ndarray, fields: dict[str, pa.Array]) -> pa.Array:
    """Element i is template ``template[i]`` (an index into the flattened :data:`TEMPLATES`) filled
    from row i of ``fields``; one Arrow join per template, over its rows."""
    flat = [t for ts in TEMPLATES.values() for t in ts]
    pieces, where = [], []
    for k, shape in enumerate(flat):
        rows = np.flatnonzero(template == k)
        if not rows.size:
            continue
        take = pa.array(rows)
        parts: list[object] = []
        for i, tok in enumerate(re.split(r"\{(\w+)\}", shape)):
            if i % 2:
                parts.append(fields[tok].take(take))
            elif tok:
                parts.append(tok)
        pieces.append(join(*parts) if any(isinstance(p, pa.Array) for p in parts)
                      else pa.array([shape] * rows.size, pa.string()))
        where.append(rows)
    order = np.concatenate(where)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return pa.concat_arrays(pieces).take(pa.array(inverse))


def _lines(rng: np.random.Generator, svc: np.ndarray, ms: np.ndarray, level: np.ndarray,
           extra: np.ndarray) -> pa.Array:
    """The JSON lines of one chunk; ``extra`` per row: 0 nothing, 1 the needle, 2-4 the substring."""
    m = svc.size
    offsets = np.cumsum([0, *[len(TEMPLATES[lv]) for lv in LEVELS]])
    sizes = np.diff(offsets)
    template = offsets[level] + (rng.random(m) * sizes[level]).astype(np.int64)
    took = np.minimum(rng.lognormal(3.5, 1.0, size=m), 30_000).astype(np.int64)
    fields = {"id": decimal(rng.integers(1, 1_000_000, size=m)), "ms": decimal(took),
              "hit": pick(("true", "false"), rng.integers(0, 2, size=m)),
              "shard": decimal(rng.integers(0, 64, size=m)), "bytes": decimal(rng.integers(64, 65_536, size=m)),
              "user": decimal(rng.integers(1, 50_000, size=m)), "obj": pick(_OBJECTS, rng.integers(0, 10, size=m)),
              "n": decimal(rng.integers(2, 10, size=m))}
    msg = _messages(template, fields)
    suffix = pick(("", f" marker={NEEDLE}", f" cause={SUBSTRING}", f" cause={SUBSTRING.lower()}",
                    f" cause={SUBSTRING.upper()}"), extra)
    ts = pa.array(int(DAY.timestamp() * 1000) + ms, pa.int64()).cast(pa.timestamp("ms"))
    names = pick(SERVICES, svc)
    return join(
        '{"ts":"', pc.strftime(ts, "%Y-%m-%dT%H:%M:%S"), 'Z"',     # %S of a ms timestamp has the ms
        ',"level":"', pick(LEVELS, level), '","service":"', names,
        '","host":"', names, "-", pc.utf8_lpad(decimal(rng.integers(0, 12, size=m)), 2, "0"),
        '","msg":"', msg, suffix,
        '","trace_id":"', hex_strings(rng, m, 16), '","request_id":"', hex_strings(rng, m, 8),
        '","duration_ms":', decimal(took), "}")


def _daily_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    minute = np.arange(1440)
    curve = 0.25 + np.exp(-((minute - 600) / 180.0) ** 2) + 0.7 * np.exp(-((minute - 1020) / 150.0) ** 2) \
        - 0.15 * np.exp(-((minute - 750) / 30.0) ** 2)
    return rng.choice(1440, size=n, p=curve / curve.sum()).astype(np.int64) * 60_000 + rng.integers(0, 60_000, size=n)


def generate_app(out_dir: Path, lines: int, *, seed: int = 42) -> Truth:
    """Write ``<out_dir>/<service>.log`` for ``lines`` records and return the answers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = lines
    w = 1.0 / np.arange(1, len(SERVICES) + 1) ** 1.07
    svc = rng.choice(len(SERVICES), size=n, p=w / w.sum())
    ms = _daily_ms(rng, n)
    level = rng.choice(len(LEVELS), size=n, p=np.array(LEVEL_P) / sum(LEVEL_P))
    for _ in range(10):      # error bursts: one service fails a lot for ten minutes
        s, start = rng.integers(0, len(SERVICES)), rng.integers(0, 1430) * 60_000
        level[(svc == s) & (ms >= start) & (ms < start + 600_000) & (rng.random(n) < 0.4)] = LEVELS.index("error")
    extra = np.zeros(n, dtype=np.int64)
    needle_at = rng.choice(n, size=min(7, n), replace=False)
    extra[needle_at] = 1
    subs = rng.choice(n, size=min(n, max(60, n // 20_000)), replace=False)
    subs = subs[extra[subs] == 0]
    extra[subs] = 2 + rng.integers(0, 3, size=subs.size)
    # Each service's file in time order: rows sorted by (service, time), then written a chunk at a time.
    order = np.lexsort((ms, svc))
    svc, ms, level, extra = svc[order], ms[order], level[order], extra[order]
    files = {name: open(out_dir / f"{name}.log", "wb") for name in SERVICES}  # noqa: SIM115
    raw_bytes = 0
    try:
        for a in range(0, n, CHUNK):
            b = min(n, a + CHUNK)
            arr = pc.binary_join_element_wise(_lines(rng, svc[a:b], ms[a:b], level[a:b], extra[a:b]), "\n", "")
            offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
            values = memoryview(arr.buffers()[2])
            bounds = np.searchsorted(svc[a:b], np.arange(len(SERVICES) + 1))
            for k, name in enumerate(SERVICES):
                lo, hi = int(offsets[bounds[k]]), int(offsets[bounds[k + 1]])
                files[name].write(values[lo:hi])
            raw_bytes += int(offsets[-1] - offsets[0])
    finally:
        for f in files.values():
            f.close()
    day_start_us = int(DAY.timestamp() * 1_000_000)
    return truth_of(n, n, raw_bytes, day_start_us, svc, level, day_start_us + ms * 1000,
                    set(np.flatnonzero(extra == 1).tolist()), set(np.flatnonzero(extra >= 2).tolist()),
                    services=SERVICES)
