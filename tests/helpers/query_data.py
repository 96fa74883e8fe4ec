"""The query-feature data sets, the lake built of them, and reference answers computed from them.

Data sets, each in a time range of its own so they do not disturb each other:

    A  2024-03-01 10:00-14:00  240 records of services api, billing and web
       (one segment per service and hour: 12), attributes status, latency
       (durations), bytes, user; some with a trace_id. Language, search,
       aggregate, fields and values tests.
    B  2024-03-02 00:00-01:00  50 records sharing 3 timestamps, some identical
       but for attrs.id, in two segments of 4-row row groups. Cursor tests.
    C  2024-03-03 03:00-04:00  4 segments of filler text, needle words in one
       or two of them; 05:00-06:00 one segment of 10 row groups with a needle
       in one. Index pruning tests.

tests/test_query_features.py tests the service on them; tests/test_query_cli.py the CLI.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from query.timerange import parse_time_us
from storage.catalog import Catalog
from tests.helpers.lake import Segment, record, write_lake

HOUR_US = 3_600_000_000
MIN_US = 60_000_000
SEC_US = 1_000_000


def rec(rid: str, ts_us: int, service: str, level: str, message: str, *, host: str = "web-1",
        trace_id: str | None = None, **attrs: str) -> dict[str, Any]:
    """A record with ``attrs.id`` = ``rid``."""
    return record(ts_us, service, level, message, attrs=[("id", rid), *attrs.items()], host=host,
                  trace_id=trace_id)


def attr(r: dict[str, Any], key: str) -> str | None:
    return dict(r["attrs"]).get(key)


# -- data set A: the language, search and aggregations ---------------------------------

A_START, A_END = "2024-03-01T10:00:00Z", "2024-03-01T14:00:00Z"
RANGE_A = {"start": A_START, "end": A_END}
A0 = parse_time_us(A_START)
A_MESSAGES = [
    "GET /api/users 200 OK", "Timeout talking to db", "upstream timeout after 3 retries",
    "cache miss for key user:42", "payment declined", "connection reset by peer",
    "slow request took 1500 ms", "user logged in",
]
A_LEVELS = ["debug", "info", "info", "info", "warn", "error", "fatal"]
A_STATUS = ["200", "201", "404", "429", "500", "503", None]
A_LATENCY = ["300ms", "1.5s", "120", "2m", "250ms", "80ms", "abc", "0.2s", None, None]
#: Distinct counts, so "top N" is well defined.
A_USERS = ["alice"] * 60 + ["bob"] * 45 + ["carol"] * 30 + ["dave"] * 20 + ["erin"] * 10 + ["frank"] * 5 + [None] * 70


def _data_a() -> list[dict[str, Any]]:
    rng = random.Random(20240301)
    users = list(A_USERS)
    rng.shuffle(users)
    out = []
    for i in range(240):
        ts = A0 + i * MIN_US + rng.randrange(0, 59) * SEC_US + rng.randrange(0, 1000)
        attrs: dict[str, str] = {}
        for key, value in (("status", rng.choice(A_STATUS)), ("latency", rng.choice(A_LATENCY)),
                           ("bytes", None if rng.random() < 0.1 else str(rng.randrange(0, 5000))),
                           ("user", users[i])):
            if value is not None:
                attrs[key] = value
        out.append(rec(f"A{i:03d}", ts, rng.choice(["api", "api", "billing", "web"]), rng.choice(A_LEVELS),
                       rng.choice(A_MESSAGES), host=f"web-{i % 3}",
                       trace_id=f"{rng.getrandbits(64):016x}" if rng.random() < 0.3 else None, **attrs))
    return out


DATA_A = _data_a()

# -- data set B: equal timestamps ---------------------------------------------------------

B_START, B_END = "2024-03-02T00:00:00Z", "2024-03-02T01:00:00Z"
RANGE_B = {"start": B_START, "end": B_END}
B_TIMES = [parse_time_us(f"2024-03-02T00:{m}:00Z") for m in ("10", "20", "30")]
DUP = "duplicate heartbeat"
TWIN, TWINS = "BTWIN", 5


def _data_b() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    n = 0

    def add(ts: int, service: str, message: str, host: str = "h1", rid: str | None = None) -> None:
        nonlocal n
        out.append(rec(rid or f"B{n:02d}", ts, service, "info", message, host=host))
        n += 1

    t1, t2, t3 = B_TIMES
    for _ in range(12):
        add(t1, "pager", DUP)                     # identical but for attrs.id
    for j in range(8):
        add(t1, "pager", f"event {j}")
    for j in range(15):
        add(t2, ["pager", "alpha"][j % 2], "tick", host=f"h{j // 2}")   # differ by service or host only
    for _ in range(TWINS):
        add(t2, "pager", "twin tick", rid=TWIN)   # identical in every column, attrs too
    for _ in range(4):
        add(t3, "pager", DUP)
    for j in range(6):
        add(t3, "alpha", f"event {j}")
    assert len(out) == 50 and len({r["ts"] for r in out}) == 3
    return out


DATA_B = _data_b()

# -- data set C: needles ------------------------------------------------------------------

C_START, C_END = "2024-03-03T03:00:00Z", "2024-03-03T04:00:00Z"
RANGE_C = {"start": C_START, "end": C_END}
C0 = parse_time_us(C_START)
RG_START, RG_END = "2024-03-03T05:00:00Z", "2024-03-03T06:00:00Z"
RANGE_RG = {"start": RG_START, "end": RG_END}
RG0 = parse_time_us(RG_START)
NEEDLE, NEEDLE2, RG_NEEDLE = "zebraquux", "jackdawvex", "xylophonic"
FILLER = ["request handled ok for user {n}", "cache hit on item {n}", "worker {n} idle", "path /items/{n} served"]
C_SERVICES = ["n1", "n2", "n3", "n4"]
RG_ROWS, RG_GROUP = 1000, 100
RG_NEEDLE_ROWS = (537, 538)


def _data_c() -> dict[str, list[dict[str, Any]]]:
    segs: dict[str, list[dict[str, Any]]] = {}
    for s, svc in enumerate(C_SERVICES):
        rows = []
        for i in range(200):
            msg = FILLER[i % len(FILLER)].format(n=i)
            if svc == "n3" and i in (50, 150):
                msg = f"found {NEEDLE} in the cache"
            if svc == "n1" and i == 70:
                msg = f"a {NEEDLE2.upper()} appeared"
            rows.append(rec(f"C{s}-{i:03d}", C0 + i * 10 * SEC_US + s * 1000, svc, "info", msg))
        segs[svc] = rows
    segs["rg"] = [rec(f"R{i:04d}", RG0 + i * 3 * SEC_US, "rg", "info",
                      f"{RG_NEEDLE} event" if i in RG_NEEDLE_ROWS else FILLER[i % len(FILLER)].format(n=i))
                  for i in range(RG_ROWS)]
    return segs


DATA_C = _data_c()


def build(data_root: Path, catalog: Catalog) -> None:
    """The lake of the three data sets: A one segment per service (and hour), B in two of 4-row row groups,
    C one per service and one of ``RG_GROUP``-row row groups."""
    by_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in DATA_A:
        by_service[r["service"]].append(r)
    segments = [Segment("default", f"{svc}-a.parquet", rows) for svc, rows in sorted(by_service.items())]
    segments += [Segment("default", "b-even.parquet", DATA_B[0::2], row_group_rows=4),
                 Segment("default", "b-odd.parquet", DATA_B[1::2], row_group_rows=4)]
    segments += [Segment("default", f"{svc}-c.parquet", DATA_C[svc]) for svc in C_SERVICES]
    segments.append(Segment("default", "rg.parquet", DATA_C["rg"], row_group_rows=RG_GROUP))
    write_lake(data_root, catalog, segments)


def newest_first(rows: list[dict[str, Any]]) -> list[str]:
    return [attr(r, "id") for r in sorted(rows, key=lambda r: r["ts"], reverse=True)]  # type: ignore[misc]


# -- reference answers of aggregation ----------------------------------------------------


def hour_of(us: int, iv: int) -> int:
    return us // iv * iv


def bucket_labels(start_us: int, end_us: int, iv: int) -> list[int]:
    return list(range(start_us // iv * iv, end_us, iv))


def as_us(text: str) -> int:
    return parse_time_us(text)


def series_map(body: dict[str, Any]) -> dict[tuple[tuple[str, str | None], ...] | str, list[float | None]]:
    out: dict[Any, list[float | None]] = {}
    for s in body["series"]:
        key = "other" if s["other"] else tuple(sorted(s["group"].items()))
        assert key not in out
        out[key] = s["points"]
    return out


def expected_counts(rows: list[dict[str, Any]], iv: int, start_us: int, end_us: int,
                    group: Callable[[dict[str, Any]], tuple[tuple[str, str | None], ...]] = lambda r: ()
                    ) -> dict[Any, list[float]]:
    buckets = bucket_labels(start_us, end_us, iv)
    out: dict[Any, list[float]] = {}
    for r in rows:
        if start_us <= r["ts"] < end_us:
            points = out.setdefault(group(r), [0] * len(buckets))
            points[buckets.index(hour_of(r["ts"], iv))] += 1
    return out
