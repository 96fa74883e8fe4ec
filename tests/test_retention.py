"""Retention (storage/retention.py), rewrites (storage/rewrite.py) and deletion on demand (query/deletion.py).

Segments are written straight through the storage package (Parquet files plus
catalog rows) into a local data root; the catalog runs on SQLite and on
PostgreSQL (the ``catalog_url`` fixture) wherever the catalog takes part.
Every row carries ``attrs.id``; tests compare the ids the lake still holds.

Most tests pin the clock (``NOW``); the CLI, the maintenance job and the HTTP
API use the real one, so their data is placed relative to it.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import uvicorn

from loglake.core.config import (
    CompactionConfig,
    Config,
    ConfigError,
    LegalHold,
    RetentionConfig,
    RetentionPolicy,
    StorageConfig,
    load_config,
)
from query.deletion import delete_matching
from query.errors import QueryError
from query.service import SearchService
from query.timerange import format_us
from storage import retention
from storage.catalog import Catalog, PartitionCommit, SegmentRow
from storage.compaction import collect_garbage, compact
from storage.maintenance import run_retention
from storage.retention import Rules
from storage.root import DataRoot
from storage.schema import RECORD_SCHEMA, SEVERITY
from storage.segments import SegmentInfo, write_segments
from tests.helpers.processes import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

MIN = 60_000_000
HOUR = 60 * MIN
DAY = 24 * HOUR


def us(text: str) -> int:
    """'2024-06-10T12:30' (UTC) -> epoch microseconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1_000_000


#: The pinned clock: half past an hour, so "N days ago" falls inside an hour.
NOW = us("2024-06-10T12:30")


def real_now() -> int:
    return time.time_ns() // 1000


def hour_start(t: int) -> int:
    return t - t % HOUR


# -- rows, segments, the lake ----------------------------------------------------------------

_ids = iter(range(10**9))


def rec(ts: int, service: str = "api", message: str | None = None, *, level: str = "info",
        rid: str | None = None, **attrs: str) -> dict[str, Any]:
    rid = rid or f"r{next(_ids)}"
    return {"ts": ts, "observed_ts": ts + 1_000, "service": service, "host": "web-1",
            "source": f"/var/log/{service}.log", "level": level, "severity": SEVERITY[level],
            "message": message if message is not None else f"{service} says {rid}",
            "attrs": [("id", rid), *attrs.items()], "trace_id": None, "span_id": None}


def minutes(start: int, n: int, service: str = "api", step: int = MIN, **kw: Any) -> list[dict[str, Any]]:
    return [rec(start + i * step, service, **kw) for i in range(n)]


def norm(row: dict[str, Any]) -> dict[str, Any]:
    """A row as compared: times in microseconds, attrs a dict, the original line's columns NULL if not given."""
    return {"head": None, "raw": None, **row, "attrs": dict(row["attrs"] or ())}


def read_rows(root: DataRoot, path: str) -> list[dict[str, Any]]:
    table = root.read_parquet(path).cast(RECORD_SCHEMA)
    ts = pc.cast(table["ts"], pa.int64()).to_pylist()
    observed = pc.cast(table["observed_ts"], pa.int64()).to_pylist()
    rows = table.to_pylist()
    for r, t, o in zip(rows, ts, observed, strict=True):
        r["ts"], r["observed_ts"] = t, o
    return [norm(r) for r in rows]


class Lake:
    """A local data root and a catalog, filled the way ingest would."""

    def __init__(self, data: Path, url: str) -> None:
        self.root = DataRoot(str(data))
        self.data = data
        self.url = url
        self.catalog = Catalog(url)
        self._next = 0

    def add(self, tenant: str, rows: list[dict[str, Any]], name: str | None = None) -> list[SegmentInfo]:
        """Write ``rows`` (one segment per hour) and commit them."""
        infos = write_segments(self.root, tenant, pa.Table.from_pylist(rows, schema=RECORD_SCHEMA),
                               name or f"logs.{uuid.uuid4().hex[:12]}.parquet")
        self.catalog.commit([PartitionCommit("logs", 0, 0, self._next, self._next + 1, infos)])
        self._next += 1
        return infos

    def segment(self, tenant: str, rows: list[dict[str, Any]]) -> SegmentRow:
        """Write ``rows`` (one hour) as one segment; its catalog row."""
        [info] = self.add(tenant, rows)
        [row] = [s for s in self.catalog.live_segments(tenant) if s.path == info.path]
        return row

    def live_rows(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return [{**r, "tenant": s.tenant, "path": s.path}
                for s in self.catalog.live_segments(tenant) for r in read_rows(self.root, s.path)]

    def ids(self, tenant: str | None = None) -> list[str]:
        """Every id in the live segments (a list: a duplicate shows twice)."""
        return sorted(r["attrs"]["id"] for r in self.live_rows(tenant))

    def files(self) -> dict[str, str]:
        """Every file under the data root, with a hash of its bytes."""
        return {p.relative_to(self.data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in self.data.rglob("*") if p.is_file()}

    def close(self) -> None:
        self.catalog.close()


def ids_of(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(dict(r["attrs"])["id"] for r in rows)


@pytest.fixture
def lake(tmp_path: Path, catalog_url: str) -> Iterator[Lake]:
    """A lake on each catalog backend."""
    lk = Lake(tmp_path / "data", catalog_url)
    yield lk
    lk.close()


@pytest.fixture
def sqlite_lake(tmp_path: Path) -> Iterator[Lake]:
    """A lake on SQLite only, for what does not depend on the catalog's database."""
    lk = Lake(tmp_path / "data", f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    yield lk
    lk.close()


def rules(*policies: dict[str, Any], holds: tuple[dict[str, str], ...] = ()) -> Rules:
    return Rules.of(retention_config(*policies, holds=holds))


def retention_config(*policies: dict[str, Any], holds: tuple[dict[str, str], ...] = (),
                     **kw: Any) -> RetentionConfig:
    return RetentionConfig(policies=[RetentionPolicy(**p) for p in policies],
                           holds=[LegalHold(**h) for h in holds], **kw)


def catalog_state(cat: Catalog) -> dict[str, Any]:
    return {"live": cat.live_segments(), "retired": cat.retired(), "known": cat.known_paths(),
            "audit": cat.audit_log(10_000), "jobs": cat.jobs()}


def gc_everything(lake: Lake) -> None:
    """Collect every retired file, as if the grace period were over."""
    collect_garbage(lake.root, lake.catalog, grace_s=0, now_us=real_now() + 10**6)


# -- 1. which rule applies ----------------------------------------------------------------------

LAYERED = [
    {"tenant": "*", "service": "*", "max_age": "30d"},
    {"tenant": "*", "service": "api", "max_age": "20d"},
    {"tenant": "acme", "service": "*", "max_age": "10d"},
    {"tenant": "acme", "service": "api", "max_age": "5d"},
    {"tenant": "beta", "service": "*", "max_age": "15d"},
]


@pytest.mark.parametrize("order", ["as written", "reversed", "shuffled"])
def test_the_most_specific_age_policy_wins_whatever_the_order(order: str) -> None:
    policies = list(LAYERED)
    if order == "reversed":
        policies.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(policies)
    r = rules(*policies)
    chosen = {(t, s): (p.tenant, p.service, p.max_age)
              for t in ("acme", "beta", "other") for s in ("api", "db")
              if (p := r.age_policy(t, s)) is not None}
    assert chosen == {("acme", "api"): ("acme", "api", "5d"),     # (t, s)
                      ("acme", "db"): ("acme", "*", "10d"),       # (t, *) beats (*, *)
                      ("beta", "api"): ("beta", "*", "15d"),      # (t, *) beats (*, s)
                      ("beta", "db"): ("beta", "*", "15d"),
                      ("other", "api"): ("*", "api", "20d"),      # (*, s) beats (*, *)
                      ("other", "db"): ("*", "*", "30d")}
    assert r.cutoffs("acme", ["api", "db"], NOW) == {"api": (NOW - 5 * DAY, r.age_policy("acme", "api")),
                                                      "db": (NOW - 10 * DAY, r.age_policy("acme", "db"))}


def test_a_policy_without_an_age_does_not_hide_a_wider_age_policy() -> None:
    r = rules({"tenant": "*", "max_age": "30d"}, {"tenant": "acme", "max_bytes": "1GB"})
    p = r.age_policy("acme", "api")
    assert p is not None and (p.tenant, p.max_age) == ("*", "30d")
    assert rules({"tenant": "acme", "max_bytes": "1GB"}).age_policy("acme", "api") is None
    assert rules({"tenant": "acme", "max_age": "1d"}).age_policy("other", "api") is None


def test_a_hold_on_a_tenant_keeps_all_of_it_and_only_it() -> None:
    r = rules({"max_age": "1d"}, holds=({"tenant": "acme", "reason": "litigation"},))
    assert r.held("acme") and r.held("acme", "api") and r.held("acme", "db")
    assert not r.held("other") and not r.held("other", "api")
    assert r.cutoffs("acme", ["api", "db"], NOW) == {}
    assert set(r.cutoffs("other", ["api", "db"], NOW)) == {"api", "db"}


def test_a_hold_on_one_service_keeps_that_service_only() -> None:
    r = rules({"max_age": "1d"}, holds=({"tenant": "acme", "service": "audit"},))
    assert r.held("acme", "audit")
    assert not r.held("acme") and not r.held("acme", "api") and not r.held("other", "audit")
    assert set(r.cutoffs("acme", ["api", "audit", "db"], NOW)) == {"api", "db"}
    assert set(r.cutoffs("other", ["api", "audit"], NOW)) == {"api", "audit"}


def test_the_bytes_policy_is_the_tenants_own_else_everyones() -> None:
    r = rules({"tenant": "*", "max_bytes": "1GB"}, {"tenant": "acme", "max_bytes": "10MB"},
              {"tenant": "beta", "max_age": "7d"})
    assert r.bytes_policy("acme").max_bytes_n == 10 * 10**6          # type: ignore[union-attr]
    assert r.bytes_policy("beta").max_bytes_n == 10**9               # its own policy sets no size
    assert r.bytes_policy("other").max_bytes_n == 10**9              # type: ignore[union-attr]
    assert rules({"tenant": "acme", "max_bytes": 5}).bytes_policy("other") is None


# -- 2. max_age ------------------------------------------------------------------------------------

AGE_7D = {"max_age": "7d"}


def test_plan_drops_old_segments_rewrites_straddling_ones_and_leaves_young_ones(sqlite_lake: Lake) -> None:
    cut = NOW - 7 * DAY                      # 2024-06-03T12:30
    old = sqlite_lake.segment("acme", minutes(cut - 2 * HOUR, 30))
    straddling = sqlite_lake.segment("acme", minutes(cut - 30 * MIN, 60))
    young = sqlite_lake.segment("acme", minutes(cut + HOUR, 30))
    last_row_just_old = sqlite_lake.segment("acme", minutes(cut - 10 * MIN, 10, step=MIN) + [rec(cut - 1)])
    first_row_at_cut = sqlite_lake.segment("beta", [rec(cut), rec(cut + MIN)])
    actions = retention.plan(sqlite_lake.catalog.live_segments(), rules(AGE_7D), NOW)
    kinds = {a.segment.path: a.kind for a in actions}
    assert kinds == {old.path: "drop", straddling.path: "rewrite", last_row_just_old.path: "drop"}
    assert young.path not in kinds and first_row_at_cut.path not in kinds
    [rewrite] = [a for a in actions if a.kind == "rewrite"]
    assert rewrite.cutoffs == {"api": cut}
    assert all(set(a.actors.values()) == {"retention policy tenant=* service=* max_age=7d"} for a in actions)


def test_old_segments_leave_the_catalog_first_and_their_files_after_the_grace_period(lake: Lake) -> None:
    old = lake.segment("acme", minutes(NOW - 10 * DAY, 20) + minutes(NOW - 10 * DAY, 5, "db"))
    young = lake.segment("acme", minutes(NOW - HOUR, 20))
    report = retention.run(lake.root, lake.catalog, rules(AGE_7D), now_us=NOW)

    assert [(r.segment.path, r.rows, r.bytes) for r in report.removed] == [(old.path, 25, old.bytes)]
    assert report.totals[("acme", "api")]["rows"] == 20 and report.totals[("acme", "db")]["rows"] == 5
    assert [s.path for s in lake.catalog.live_segments()] == [young.path]
    assert [s.path for s in lake.catalog.retired()] == [old.path]
    # The file stays for the grace period: a query may have planned it.
    assert lake.root.exists(old.path)
    collect_garbage(lake.root, lake.catalog, grace_s=600)
    assert lake.root.exists(old.path) and [s.path for s in lake.catalog.retired()] == [old.path]
    gc_everything(lake)
    assert not lake.root.exists(old.path) and lake.root.exists(young.path)
    assert old.path not in lake.catalog.known_paths()
    assert lake.ids() == ids_of(read_rows(lake.root, young.path))


def test_a_straddling_segment_loses_exactly_its_expired_rows(lake: Lake) -> None:
    cut = NOW - 7 * DAY
    rows = (minutes(cut - 30 * MIN, 60, "api", region="eu", user="u1")
            + minutes(cut - 29 * MIN, 59, "db", step=MIN, query="SELECT 1")
            + [rec(cut - 1, "web", rid="just-expired"), rec(cut, "web", rid="at-the-cut", why="kept")])
    seg = lake.segment("acme", rows)
    report = retention.run(lake.root, lake.catalog, rules(AGE_7D), now_us=NOW)

    [new] = lake.catalog.live_segments()
    assert new.path != seg.path and new.path.rsplit("/", 1)[0] == seg.path.rsplit("/", 1)[0]
    got = read_rows(lake.root, new.path)
    expected = [norm(r) for r in rows if r["ts"] >= cut]
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["service"], r["ts"], r["attrs"]["id"])

    assert sorted(got, key=key) == sorted(expected, key=key)           # every column, attrs intact
    assert [(r["service"], r["ts"]) for r in got] == sorted((r["service"], r["ts"]) for r in got)
    assert min(r["ts"] for r in got) == cut
    # The catalog describes the new file.
    assert (new.rows, new.min_ts_us, new.max_ts_us) == (len(got), cut, max(r["ts"] for r in got))
    assert new.services == dict(Counter(r["service"] for r in got))
    assert new.bytes == (lake.data / new.path).stat().st_size
    [removed] = report.removed
    assert removed.rows == len(rows) - len(expected)
    assert removed.by_service == dict(Counter(r["service"] for r in rows if r["ts"] < cut))
    assert (removed.min_ts_us, removed.max_ts_us) == (cut - 30 * MIN, cut - 1)
    assert [s.path for s in lake.catalog.retired()] == [seg.path]


def test_each_service_of_a_segment_keeps_its_own_age(lake: Lake) -> None:
    # One hour, 2024-06-08 10:00-11:00; api expires before 10:30, db before 10:20, web has no policy.
    start = us("2024-06-08T10:00")
    api_cut, db_cut = NOW - (50 * HOUR), NOW - (50 * HOUR + 10 * MIN)
    assert (api_cut, db_cut) == (us("2024-06-08T10:30"), us("2024-06-08T10:20"))
    rows = minutes(start, 60, "api") + minutes(start, 60, "db") + minutes(start, 60, "web")
    lake.segment("acme", rows)
    # A wholly expired hour where one service has no policy: only the others go.
    older = minutes(start - DAY, 10, "api") + minutes(start - DAY, 10, "web")
    lake.segment("acme", older)
    r = rules({"tenant": "acme", "service": "api", "max_age": "50h"},
              {"tenant": "acme", "service": "db", "max_age": "3010m"})
    report = retention.run(lake.root, lake.catalog, r, now_us=NOW)

    cuts = {"api": api_cut, "db": db_cut}
    kept = [x for x in rows + older if x["ts"] >= cuts.get(x["service"], 0)]
    assert lake.ids() == ids_of(kept)
    for row in lake.live_rows():
        assert row["ts"] >= cuts.get(row["service"], 0)
    assert {k: v["rows"] for k, v in report.totals.items()} == {("acme", "api"): 30 + 10, ("acme", "db"): 20}


def test_expired_data_is_really_gone_from_disk_after_gc(lake: Lake) -> None:
    secret = f"SECRET-{uuid.uuid4().hex}"
    cut = NOW - 7 * DAY
    old = [rec(NOW - 9 * DAY + i * MIN, "api", f"token {secret} #{i}", leaked=secret) for i in range(20)]
    straddling = ([rec(cut - 20 * MIN + i * MIN, "api", f"token {secret} #{i}", leaked=secret) for i in range(20)]
                  + minutes(cut, 20, "api"))
    young = minutes(NOW - HOUR, 20)
    lake.add("acme", old)
    lake.add("acme", straddling)
    lake.add("acme", young)

    def holding_the_secret() -> list[str]:
        """Files under the data root with the secret in a row, or in their raw bytes."""
        found = []
        for p in lake.data.rglob("*"):
            if not p.is_file():
                continue
            rel = p.relative_to(lake.data).as_posix()
            if secret.encode() in p.read_bytes():
                found.append(rel)
            elif p.suffix == ".parquet" and any(secret in repr(r) for r in read_rows(lake.root, rel)):
                found.append(rel)
        return sorted(found)

    assert len(holding_the_secret()) == 2
    retention.run(lake.root, lake.catalog, rules(AGE_7D), now_us=NOW)
    assert not any(secret in repr(r) for r in lake.live_rows())        # gone from what is served at once
    assert len(holding_the_secret()) == 2                              # files wait out the grace period
    gc_everything(lake)
    assert holding_the_secret() == []
    assert lake.ids() == ids_of([r for r in straddling + young if r["ts"] >= cut])


# -- 3. max_bytes -----------------------------------------------------------------------------------


def hourly_segments(lake: Lake, tenant: str, n: int, first_hour: int, services: tuple[str, ...] = ("api",),
                    rows: int = 30) -> list[SegmentRow]:
    """``n`` segments, one an hour from ``first_hour``, oldest first."""
    first_hour = hour_start(first_hour)
    return [lake.segment(tenant, [r for s in services for r in minutes(first_hour + i * HOUR, rows, s)])
            for i in range(n)]


def drop_oldest_until_under(segs: list[SegmentRow], cap: int) -> list[str]:
    total, out = sum(s.bytes for s in segs), []
    for s in sorted(segs, key=lambda s: (s.max_ts_us, s.id)):
        if total <= cap:
            break
        out.append(s.path)
        total -= s.bytes
    return out


@pytest.mark.parametrize("slack", [0, -1, 10**9])
def test_max_bytes_drops_the_oldest_segments_until_the_tenant_is_under_the_cap(lake: Lake, slack: int) -> None:
    segs = hourly_segments(lake, "acme", 6, NOW - DAY)
    beta = hourly_segments(lake, "beta", 3, NOW - 3 * DAY)
    cap = sum(s.bytes for s in segs[3:]) + slack
    expected = drop_oldest_until_under(segs, cap)
    assert len(expected) == {0: 3, -1: 4, 10**9: 0}[slack]
    report = retention.run(lake.root, lake.catalog, rules({"tenant": "acme", "max_bytes": cap}), now_us=NOW)

    assert [r.segment.path for r in report.removed] == expected           # oldest first
    assert sorted(s.path for s in lake.catalog.live_segments("acme")) == sorted(
        s.path for s in segs if s.path not in expected)
    assert sum(s.bytes for s in lake.catalog.live_segments("acme")) <= cap
    assert [s.path for s in lake.catalog.live_segments("beta")] == [s.path for s in beta]   # no policy
    for e in lake.catalog.audit_log():
        assert e.actor == f"retention policy tenant=acme service=* max_bytes={cap}"


def test_max_bytes_for_every_tenant_caps_each_tenant_on_its_own(lake: Lake) -> None:
    acme = hourly_segments(lake, "acme", 4, NOW - DAY, rows=30)
    beta = hourly_segments(lake, "beta", 4, NOW - DAY, rows=60)
    cap = max(sum(s.bytes for s in acme[2:]), sum(s.bytes for s in beta[3:]))
    expected = drop_oldest_until_under(acme, cap) + drop_oldest_until_under(beta, cap)
    assert expected, "the cap should bite"
    retention.run(lake.root, lake.catalog, rules({"max_bytes": cap}), now_us=NOW)
    for tenant, segs in (("acme", acme), ("beta", beta)):
        live = lake.catalog.live_segments(tenant)
        assert sorted(s.path for s in live) == sorted(s.path for s in segs if s.path not in expected)
        assert sum(s.bytes for s in live) <= cap


def test_max_bytes_never_drops_a_segment_holding_a_held_service(lake: Lake) -> None:
    held = hourly_segments(lake, "acme", 2, NOW - 2 * DAY, services=("api", "audit"))
    free = hourly_segments(lake, "acme", 3, NOW - DAY)
    other = hourly_segments(lake, "beta", 2, NOW - 2 * DAY, services=("api", "audit"))
    report = retention.run(lake.root, lake.catalog,
                           rules({"max_bytes": 1}, holds=({"tenant": "acme", "service": "audit"},)), now_us=NOW)
    # Still over the cap, but what holds the held service stays; the hold is acme's only.
    assert sorted(s.path for s in lake.catalog.live_segments("acme")) == sorted(s.path for s in held)
    assert lake.catalog.live_segments("beta") == []
    assert sorted(r.segment.path for r in report.removed) == sorted(s.path for s in free + other)


def test_max_bytes_leaves_a_held_tenant_alone(lake: Lake) -> None:
    segs = hourly_segments(lake, "acme", 3, NOW - DAY)
    report = retention.run(lake.root, lake.catalog,
                           rules({"max_bytes": 1, "max_age": "1h"}, holds=({"tenant": "acme"},)), now_us=NOW)
    assert report.removed == []
    assert [s.path for s in lake.catalog.live_segments()] == [s.path for s in segs]


def test_age_goes_first_and_the_cap_counts_only_what_age_kept(lake: Lake) -> None:
    expired = hourly_segments(lake, "acme", 2, NOW - 10 * DAY)
    kept = hourly_segments(lake, "acme", 4, NOW - DAY)
    cap = sum(s.bytes for s in kept[1:])
    report = retention.run(lake.root, lake.catalog, rules({"tenant": "acme", "max_age": "7d", "max_bytes": cap}),
                           now_us=NOW)
    assert sorted(s.path for s in lake.catalog.live_segments()) == sorted(s.path for s in kept[1:])
    actors = {r.segment.path: e.actor for r in report.removed for e in lake.catalog.audit_log()
              if e.detail["segment"] == r.segment.path}
    assert actors == {**{s.path: "retention policy tenant=acme service=* max_age=7d" for s in expired},
                      kept[0].path: f"retention policy tenant=acme service=* max_bytes={cap}"}


# -- 4. dry runs ------------------------------------------------------------------------------------


def mixed_lake(lake: Lake, *, straddling: bool = True) -> Rules:
    """Old, straddling (optional), young and capped data of two tenants; the rules that apply."""
    cut = NOW - 7 * DAY
    lake.add("acme", minutes(NOW - 9 * DAY, 30, "api") + minutes(NOW - 9 * DAY, 10, "db"))
    if straddling:
        lake.add("acme", minutes(cut - 30 * MIN, 60, "api") + minutes(cut - 30 * MIN, 60, "db"))
    lake.add("acme", minutes(NOW - HOUR, 30, "api"))
    capped = hourly_segments(lake, "beta", 4, NOW - DAY)
    return rules(AGE_7D, {"tenant": "beta", "max_bytes": sum(s.bytes for s in capped[2:])})


def test_a_dry_run_changes_nothing_and_reports_what_the_real_run_deletes(lake: Lake) -> None:
    r = mixed_lake(lake)
    before, files = catalog_state(lake.catalog), lake.files()
    ids = lake.ids()
    dry = retention.run(lake.root, lake.catalog, r, dry_run=True, now_us=NOW)
    assert (catalog_state(lake.catalog), lake.files(), lake.ids()) == (before, files, ids)
    assert dry.dry_run and dry.removed and dry.conflicts == 0

    real = retention.run(lake.root, lake.catalog, r, now_us=NOW)
    assert lake.ids() != ids
    # Segments, rows and time ranges agree (and bytes: see the dry-run rewrite test below).
    def ignore_bytes(totals: dict[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
        return {k: {f: n for f, n in v.items() if f != "bytes"} for k, v in totals.items()}

    assert ignore_bytes(dry.totals) == ignore_bytes(real.totals)
    assert {k for k, v in real.totals.items()} == {("acme", "api"), ("acme", "db"), ("beta", "api")}
    assert sorted(x.segment.path for x in dry.removed) == sorted(x.segment.path for x in real.removed)
    assert sum(e.rows for e in lake.catalog.audit_log(10_000)) == sum(v["rows"] for v in dry.totals.values())


def test_a_dry_run_of_whole_segments_reports_the_same_bytes_as_the_real_run(lake: Lake) -> None:
    r = mixed_lake(lake, straddling=False)
    dry = retention.run(lake.root, lake.catalog, r, dry_run=True, now_us=NOW)
    real = retention.run(lake.root, lake.catalog, r, now_us=NOW)
    assert dry.totals == real.totals and real.totals


def test_a_dry_run_of_a_rewrite_reports_the_bytes_the_real_run_frees(sqlite_lake: Lake) -> None:
    cut = NOW - 7 * DAY
    sqlite_lake.add("acme", minutes(cut - 30 * MIN, 60, "api", note="x" * 200))
    dry = retention.run(sqlite_lake.root, sqlite_lake.catalog, rules(AGE_7D), dry_run=True, now_us=NOW)
    real = retention.run(sqlite_lake.root, sqlite_lake.catalog, rules(AGE_7D), now_us=NOW)
    assert real.totals[("acme", "api")]["bytes"] > 0
    assert dry.totals == real.totals


def test_a_dry_run_deletion_changes_nothing(lake: Lake) -> None:
    lake.add("default", [rec(NOW - HOUR + i * MIN, message=f"password={i}") for i in range(10)])
    before, files = catalog_state(lake.catalog), lake.files()
    dry = delete_matching(lake.root, lake.catalog, tenant="default", query="password", start_us=0, end_us=NOW,
                          actor="test", dry_run=True)
    assert (catalog_state(lake.catalog), lake.files()) == (before, files)
    real = delete_matching(lake.root, lake.catalog, tenant="default", query="password", start_us=0, end_us=NOW,
                           actor="test")
    assert dry.rows == real.rows == 10 and dry.bytes == real.bytes


# -- 5. the audit table and the CLI ----------------------------------------------------------------------


def test_every_deletion_is_audited_with_policy_action_tenant_service_range_rows_and_bytes(lake: Lake) -> None:
    r = mixed_lake(lake)
    report = retention.run(lake.root, lake.catalog, r, now_us=NOW)
    log = lake.catalog.audit_log(10_000)
    assert log and all(e.action == "retention" and e.segments == 1 for e in log)
    # One entry per segment and service that lost rows; rows and bytes add up to the report.
    by_key: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for e in log:
        by_key[(e.tenant, e.service)].append(e)
    assert set(by_key) == set(report.totals)
    for key, entries in by_key.items():
        assert sum(e.rows for e in entries) == report.totals[key]["rows"]
        assert sum(e.bytes for e in entries) == report.totals[key]["bytes"]
        assert min(e.start_us for e in entries) == report.totals[key]["min_ts_us"]
        assert max(e.end_us for e in entries) == report.totals[key]["max_ts_us"]
    removed = {x.segment.path: x for x in report.removed}
    assert {e.detail["segment"] for e in log} == set(removed)
    cap = r.bytes_policy("beta").max_bytes                              # type: ignore[union-attr]
    actors = {"acme": "retention policy tenant=* service=* max_age=7d",
              "beta": f"retention policy tenant=beta service=* max_bytes={cap}"}
    for e in log:
        x = removed[e.detail["segment"]]
        assert x.min_ts_us <= e.start_us <= e.end_us <= x.max_ts_us     # type: ignore[operator]
        assert e.rows == x.by_service[e.service] and e.bytes > 0
        assert e.actor == actors[e.tenant]


def _two_service_rewrite(lake: Lake) -> tuple[Rules, dict[str, list[dict[str, Any]]]]:
    """One hour, api expiring before 10:30 and db before 10:20; the rows each should lose."""
    start = us("2024-06-08T10:00")
    rows = minutes(start, 60, "api") + minutes(start, 60, "db")
    lake.segment("acme", rows)
    cuts = {"api": us("2024-06-08T10:30"), "db": us("2024-06-08T10:20")}
    r = rules({"tenant": "acme", "service": "api", "max_age": "50h"},
              {"tenant": "acme", "service": "db", "max_age": "3010m"})
    return r, {s: [x for x in rows if x["service"] == s and x["ts"] < c] for s, c in cuts.items()}


def test_each_services_audit_entry_has_the_range_of_that_services_deleted_rows(sqlite_lake: Lake) -> None:
    r, gone = _two_service_rewrite(sqlite_lake)
    retention.run(sqlite_lake.root, sqlite_lake.catalog, r, now_us=NOW)
    got = {e.service: (e.rows, e.start_us, e.end_us) for e in sqlite_lake.catalog.audit_log()}
    assert got == {s: (len(rows), min(x["ts"] for x in rows), max(x["ts"] for x in rows))
                   for s, rows in gone.items()}


def test_each_services_audit_entry_names_the_policy_that_deleted_its_rows(sqlite_lake: Lake) -> None:
    r, _ = _two_service_rewrite(sqlite_lake)
    retention.run(sqlite_lake.root, sqlite_lake.catalog, r, now_us=NOW)
    got = {e.service: e.actor for e in sqlite_lake.catalog.audit_log()}
    assert got == {"api": "retention policy tenant=acme service=api max_age=50h",
                   "db": "retention policy tenant=acme service=db max_age=3010m"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    env.update(COLUMNS="220", LINES="50", NO_COLOR="1", TERM="dumb")
    return env


def loglake(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "loglake", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=60)


def table_rows(stdout: str) -> list[list[str]]:
    """The rows of the rich table in ``stdout``: the header, then the body."""
    return [[c.strip() for c in line.strip().strip("│┃").replace("┃", "│").split("│")]
            for line in stdout.splitlines() if line.strip()[:1] in ("│", "┃")]


def _time(t: int) -> str:
    return datetime.fromtimestamp(t / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")


def write_config(path: Path, data: Path, body: str, catalog_url: str = "") -> Path:
    path.write_text(f'[storage]\ndata_root = "{data}"\ncatalog_url = "{catalog_url}"\n{body}')
    return path


def test_cli_retention_run_shows_what_it_would_delete_then_deletes_it(sqlite_lake: Lake, tmp_path: Path) -> None:
    now = real_now()
    old_hour = hour_start(now - 10 * DAY)
    # Both services span the same minutes, so each one's from/to is the segment's.
    old = sqlite_lake.segment("acme", minutes(old_hour, 12, "api") + minutes(old_hour, 3, "db", step=330 * 10**6))
    sqlite_lake.segment("beta", minutes(old_hour, 4, "api"))
    sqlite_lake.segment("acme", minutes(hour_start(now - 2 * HOUR), 5, "api"))
    cfg = write_config(tmp_path / "loglake.toml", sqlite_lake.data, """
[[retention.policies]]
max_age = "7d"
[[retention.holds]]
tenant = "beta"
""", sqlite_lake.url)
    before = catalog_state(sqlite_lake.catalog)

    dry = loglake(tmp_path, "--config", str(cfg), "retention", "run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete" in dry.stdout and "retention would delete" in dry.stdout
    header = ["tenant", "service", "segments", "rows", "bytes", "from", "to"]
    body = table_rows(dry.stdout)
    assert body[0] == header
    expected = [["acme", "api", "1", "12", "0.0 MB", _time(old.min_ts_us), _time(old.max_ts_us)],
                ["acme", "db", "1", "3", "0.0 MB", _time(old.min_ts_us), _time(old.max_ts_us)]]
    assert body[1:] == expected
    assert "would delete 15 rows" in dry.stdout
    assert catalog_state(sqlite_lake.catalog) == before

    real = loglake(tmp_path, "--config", str(cfg), "retention", "run")
    assert real.returncode == 0, real.stderr
    assert "would delete" not in real.stdout and "deleted 15 rows" in real.stdout
    assert table_rows(real.stdout)[1:] == expected
    assert old.path not in {s.path for s in sqlite_lake.catalog.live_segments()}
    assert {(e.tenant, e.service, e.rows) for e in sqlite_lake.catalog.audit_log()} == {
        ("acme", "api", 12), ("acme", "db", 3)}

    again = loglake(tmp_path, "--config", str(cfg), "retention", "run", "--tenant", "acme")
    assert again.returncode == 0 and "deleted 0 rows" in again.stdout


def test_cli_delete_dry_run_then_delete_with_the_actor_in_the_audit(sqlite_lake: Lake, tmp_path: Path) -> None:
    now = real_now()
    hour = hour_start(now - DAY)
    rows = [rec(hour + i * MIN, "api", "login password=hunter2" if i % 3 == 0 else "login ok") for i in range(12)]
    sqlite_lake.add("default", rows)
    cfg = write_config(tmp_path / "loglake.toml", sqlite_lake.data, "", sqlite_lake.url)
    args = ["--config", str(cfg), "delete", "--tenant", "default", "--query", "hunter2", "--start", "now-2d"]

    dry = loglake(tmp_path, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 4 rows in 1 of 1 segments" in dry.stdout
    assert [r[:4] for r in table_rows(dry.stdout)[1:]] == [["default", "api", "1", "4"]]
    assert sqlite_lake.ids() == ids_of(rows) and sqlite_lake.catalog.audit_log() == []

    real = loglake(tmp_path, *args, "--actor", "dpo@example.com ticket 42")
    assert real.returncode == 0, real.stderr
    assert "deleted 4 rows" in real.stdout
    assert sqlite_lake.ids() == ids_of([r for r in rows if "hunter2" not in r["message"]])
    [entry] = sqlite_lake.catalog.audit_log()
    assert (entry.actor, entry.action, entry.rows, entry.detail["query"]) == (
        "dpo@example.com ticket 42", "delete", 4, "hunter2")


# -- 6. a bad policy stops everything at start -------------------------------------------------------

BAD_POLICIES = {
    "bad duration": ('[[retention.policies]]\ntenant = "acme"\nmax_age = "7x"\n',
                     ["retention.policies.0.max_age", "'7x'"]),
    "max_bytes on a service policy": ('[[retention.policies]]\ntenant = "acme"\nservice = "api"\n'
                                      'max_bytes = "10GB"\n', ["retention.policies.0", "max_bytes"]),
    "duplicate policy": ('[[retention.policies]]\ntenant = "acme"\nmax_age = "7d"\n'
                         '[[retention.policies]]\ntenant = "acme"\nmax_age = "30d"\n',
                         ["retention", "two retention policies", "'acme'"]),
    "policy with nothing set": ('[[retention.policies]]\ntenant = "acme"\n',
                                ["retention.policies.0", "max_age, max_bytes"]),
    "bad size": ('[[retention.policies]]\nmax_bytes = "10 parsecs"\n',
                 ["retention.policies.0.max_bytes", "10 parsecs"]),
    "hold without a tenant": ('[[retention.holds]]\nservice = "api"\n', ["retention.holds.0.tenant"]),
}


@pytest.mark.parametrize("case", list(BAD_POLICIES))
def test_a_bad_policy_is_a_config_error_naming_the_key(tmp_path: Path, case: str) -> None:
    body, needles = BAD_POLICIES[case]
    cfg = write_config(tmp_path / "bad.toml", tmp_path / "data", body)
    with pytest.raises(ConfigError) as e:      # what `loglake up` loads first
        load_config(cfg, environ={})
    for needle in needles:
        assert needle in str(e.value)


@pytest.mark.parametrize("case", ["bad duration", "max_bytes on a service policy", "duplicate policy"])
def test_retention_run_with_a_bad_policy_exits_2_naming_the_key_and_touches_nothing(tmp_path: Path,
                                                                                    case: str) -> None:
    body, needles = BAD_POLICIES[case]
    write_config(tmp_path / "bad.toml", tmp_path / "data", body)
    proc = loglake(tmp_path, "--config", "bad.toml", "retention", "run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for needle in needles:
        assert needle in proc.stderr
    assert "bad.toml" in proc.stderr
    assert not (tmp_path / "data").exists()          # failed before opening anything


def test_a_zero_max_age_is_a_config_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "bad.toml", tmp_path / "data", '[[retention.policies]]\nmax_age = "0d"\n')
    with pytest.raises(ConfigError, match="max_age"):
        load_config(cfg, environ={})


# -- 7. deletion on demand ---------------------------------------------------------------------------

DEL_START, DEL_END = us("2024-06-10T10:15"), us("2024-06-10T11:45")


def deletion_lake(lake: Lake) -> list[dict[str, Any]]:
    """Three hours of tenant default (and a copy in tenant other); every fifth row leaks a password."""
    rows = []
    for i, t in enumerate(range(us("2024-06-10T09:00"), us("2024-06-10T12:00"), 3 * MIN)):
        svc = ("api", "db", "web")[i % 3]
        leaked = i % 5 == 0
        rows.append(rec(t, svc, f"login user=u{i} password=hunter2" if leaked else f"login user=u{i} ok",
                        level="warn" if leaked else "info", user=f"u{i}"))
    # Rows exactly on the edges of the range.
    rows += [rec(DEL_START, "api", "password=hunter2 at start", rid="edge-start"),
             rec(DEL_END, "api", "password=hunter2 at end", rid="edge-end"),
             rec(DEL_END - 1, "db", "password=hunter2 just before end", rid="edge-before-end")]
    lake.add("default", rows)
    lake.add("other", [{**r, "attrs": [("id", "other-" + dict(r["attrs"])["id"])]} for r in rows])
    return rows


def search_ids(svc: SearchService, q: str, start: int, end: int, tenant: str = "default") -> list[str]:
    result = svc.search(q, str(start), str(end), limit=10_000, order="asc", tenant=tenant)
    return sorted(r["attrs"]["id"] for r in result.rows)


@pytest.fixture
def searcher(lake: Lake) -> SearchService:
    return SearchService(Config(storage=StorageConfig(data_root=str(lake.data))), lake.catalog)


#: Queries, and which rows each should match (said without the query language).
DELETE_QUERIES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "hunter2": lambda r: "hunter2" in r["message"],
    "password AND service:api": lambda r: "password" in r["message"] and r["service"] == "api",
    "level:warn -service:db": lambda r: r["level"] == "warn" and r["service"] != "db",
    "attrs.user:u1* OR password": lambda r: dict(r["attrs"]).get("user", "").startswith("u1")
                                            or "password" in r["message"],
}


@pytest.mark.parametrize("query", list(DELETE_QUERIES))
def test_delete_removes_exactly_what_the_query_matches_in_the_range(lake: Lake, searcher: SearchService,
                                                                    query: str) -> None:
    rows = deletion_lake(lake)
    everything = (us("2024-06-10T00:00"), us("2024-06-11T00:00"))
    def in_range(r: dict[str, Any]) -> bool:
        return DEL_START <= r["ts"] < DEL_END

    expected = ids_of([r for r in rows if DELETE_QUERIES[query](r) and in_range(r)])
    matching = search_ids(searcher, query, DEL_START, DEL_END)
    assert matching == expected                       # the search shows what the deletion will remove
    assert matching and len(matching) < len(rows)
    all_before = search_ids(searcher, "", *everything)
    other_before = lake.ids("other")

    report = delete_matching(lake.root, lake.catalog, tenant="default", query=query, start_us=DEL_START,
                             end_us=DEL_END, actor="gdpr request 7")
    assert report.rows == len(matching) and report.conflicts == 0
    assert search_ids(searcher, query, DEL_START, DEL_END) == []
    assert search_ids(searcher, "", *everything) == sorted(set(all_before) - set(matching))
    assert lake.ids("default") == sorted(set(ids_of(rows)) - set(matching))
    assert lake.ids("other") == other_before                            # other tenants untouched
    # Matches outside the range stay, and so does everything else, column for column.
    outside = ids_of([r for r in rows if DELETE_QUERIES[query](r) and not in_range(r)])
    assert outside and set(outside) <= set(search_ids(searcher, query, *everything))
    kept = {dict(r["attrs"])["id"]: norm(r) for r in rows}
    for r in lake.live_rows("default"):
        assert {k: v for k, v in r.items() if k not in ("tenant", "path")} == kept[r["attrs"]["id"]]
    if query == "hunter2":                              # [start, end): the start is in, the end is out
        assert {"edge-start", "edge-before-end"} <= set(matching) and "edge-end" not in matching
        assert "edge-end" in lake.ids("default")

    log = lake.catalog.audit_log()
    assert {e.action for e in log} == {"delete"} and {e.actor for e in log} == {"gdpr request 7"}
    assert {e.tenant for e in log} == {"default"}
    assert sum(e.rows for e in log) == len(matching)
    assert all(e.detail["query"] == query and (e.detail["start_us"], e.detail["end_us"]) == (DEL_START, DEL_END)
               for e in log)
    by_service = Counter(kept[i]["service"] for i in matching)
    assert {s: sum(e.rows for e in log if e.service == s) for s in by_service} == dict(by_service)
    assert all(DEL_START <= e.start_us <= e.end_us < DEL_END for e in log)


def test_delete_of_every_row_in_a_segment_retires_it_without_a_new_file(lake: Lake) -> None:
    [seg] = lake.add("default", minutes(us("2024-06-10T10:00"), 5, message="secret"))
    report = delete_matching(lake.root, lake.catalog, tenant="default", query="secret", start_us=0, end_us=NOW,
                             actor="t")
    assert report.rows == 5 and lake.catalog.live_segments() == []
    assert [s.path for s in lake.catalog.retired()] == [seg.path]
    assert [p for p in lake.files() if "rewritten-" in p] == []


@pytest.mark.parametrize("query", ['"unclosed', "level:(", "(password", "NOT", "ts:5", "severity:high"])
def test_a_bad_query_is_a_query_error_and_deletes_nothing(lake: Lake, query: str) -> None:
    deletion_lake(lake)
    before, files = catalog_state(lake.catalog), lake.files()
    with pytest.raises(QueryError):
        delete_matching(lake.root, lake.catalog, tenant="default", query=query, start_us=0, end_us=NOW, actor="t")
    assert (catalog_state(lake.catalog), lake.files()) == (before, files)


@pytest.mark.parametrize("args", [["--query", '"unclosed', "--start", "now-1d"],
                                  ["--query", "ts:5", "--start", "now-1d"],
                                  ["--query", "x", "--start", "yesterday-ish"]])
def test_cli_delete_with_a_bad_query_or_range_exits_3(tmp_path: Path, args: list[str]) -> None:
    cfg = write_config(tmp_path / "loglake.toml", tmp_path / "data", "")
    proc = loglake(tmp_path, "--config", str(cfg), "delete", "--tenant", "default", *args)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stderr.startswith("loglake delete: ")


# -- 8. GET /api/v1/retention --------------------------------------------------------------------------


@contextmanager
def serving(cfg: Config, catalog: Catalog) -> Iterator[httpx.Client]:
    from query.api.app import create_app

    port = free_port()
    open_cfg = cfg.model_copy(update={"auth": cfg.auth.model_copy(update={"enabled": False})})  # see test_auth.py
    uv = uvicorn.Server(uvicorn.Config(create_app(open_cfg, catalog), host="127.0.0.1", port=port, log_config=None,
                                       access_log=False, lifespan="off"))
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: uv.started or not thread.is_alive(), 10, 0.02, "uvicorn to start")
        assert uv.started, "uvicorn did not start"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        uv.should_exit = True
        thread.join(10)


def stored_per_service(cat: Catalog, tenant: str | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """(tenant, service) -> (segments, rows), from the catalog."""
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for s in cat.live_segments(tenant):
        for svc, n in s.services.items():
            out[(s.tenant, svc)][0] += 1
            out[(s.tenant, svc)][1] += n
    return {k: (a, b) for k, (a, b) in out.items()}


def test_the_retention_endpoint_shows_policies_holds_storage_runs_and_deletions(lake: Lake) -> None:
    cfg = Config(storage=StorageConfig(data_root=str(lake.data), catalog_url=lake.url, grace_s=120),
                 retention=retention_config({"max_age": "7d"},
                                            {"tenant": "acme", "service": "api", "max_age": "1d"},
                                            {"tenant": "acme", "max_bytes": "1GB"},
                                            holds=({"tenant": "beta", "reason": "litigation"},), interval_s=1800))
    now = real_now()
    ten_days, three_days = hour_start(now - 10 * DAY), hour_start(now - 3 * DAY)
    lake.add("acme", minutes(ten_days, 10, "api") + minutes(ten_days, 4, "db"))        # drop
    lake.add("acme", minutes(three_days, 6, "api") + minutes(three_days, 5, "db"))    # rewrite: api goes
    lake.add("acme", minutes(hour_start(now - HOUR), 3, "api"))
    lake.add("beta", minutes(ten_days, 7, "api"))                                      # held

    with serving(cfg, lake.catalog) as client:
        def get(**params: Any) -> dict[str, Any]:
            resp = client.get("/api/v1/retention", params=params)
            assert resp.status_code == 200, resp.text
            return resp.json()

        def stored(body: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int]]:
            return {(v["tenant"], v["service"]): (v["segments"], v["rows"]) for v in body["stored"]}

        body = get()
        assert body["policies"] == [{"tenant": "*", "service": "*", "max_age": "7d", "max_bytes": ""},
                                    {"tenant": "acme", "service": "api", "max_age": "1d", "max_bytes": ""},
                                    {"tenant": "acme", "service": "*", "max_age": "", "max_bytes": "1GB"}]
        assert body["holds"] == [{"tenant": "beta", "service": "*", "reason": "litigation"}]
        assert (body["enabled"], body["interval_s"], body["grace_s"]) == (True, 1800, 120)
        assert (body["last_run"], body["next_run"], body["deletions"]) == (None, None, [])
        assert stored(body) == stored_per_service(lake.catalog) == {
            ("acme", "api"): (3, 19), ("acme", "db"): (2, 9), ("beta", "api"): (1, 7)}
        [beta] = [v for v in body["stored"] if v["tenant"] == "beta"]
        assert (beta["oldest"], beta["newest"]) == (format_us(ten_days), format_us(ten_days + 6 * MIN))

        first = run_retention(cfg, lake.root, lake.catalog)
        assert (first["rows"], first["segments"], first["conflicts"]) == (10 + 4 + 6, 2, 0)
        body = get()
        job = lake.catalog.jobs()["retention"]
        assert body["last_run"] == {"started": format_us(job["started_us"]), "ended": format_us(job["ended_us"]),
                                    **first}
        assert body["next_run"] == format_us(job["started_us"] + 1800 * 1_000_000)
        assert stored(body) == stored_per_service(lake.catalog) == {
            ("acme", "api"): (1, 3), ("acme", "db"): (1, 5), ("beta", "api"): (1, 7)}
        assert sum(v["rows"] for v in body["stored"]) == len(lake.ids())
        assert sorted((d["tenant"], d["service"], d["rows"]) for d in body["deletions"]) == [
            ("acme", "api", 6), ("acme", "api", 10), ("acme", "db", 4)]

        time.sleep(0.002)
        lake.add("acme", minutes(hour_start(now - 20 * DAY), 2, "web"))
        second = run_retention(cfg, lake.root, lake.catalog)
        assert second["rows"] == 2
        body = get()
        deletions = body["deletions"]
        assert [(d["tenant"], d["service"], d["rows"]) for d in deletions][0] == ("acme", "web", 2)
        assert [d["at"] for d in deletions] == sorted((d["at"] for d in deletions), reverse=True)
        assert deletions == [{"at": format_us(a.at_us), "actor": a.actor, "action": a.action, "tenant": a.tenant,
                              "service": a.service, "from": format_us(a.start_us), "to": format_us(a.end_us),
                              "segments": a.segments, "rows": a.rows, "bytes": a.bytes, "detail": a.detail}
                             for a in lake.catalog.audit_log(50)]
        assert body["last_run"]["rows"] == 2
        assert len(get(limit=2)["deletions"]) == 2

        beta_view = get(tenant="beta")
        assert beta_view["policies"] == [body["policies"][0]]
        assert beta_view["holds"] == body["holds"]
        assert stored(beta_view) == {("beta", "api"): (1, 7)} and beta_view["deletions"] == []
        acme_view = get(tenant="acme")
        assert acme_view["policies"] == body["policies"] and acme_view["holds"] == []
        assert set(stored(acme_view)) == {("acme", "api"), ("acme", "db")}
        assert acme_view["deletions"] == deletions
        assert get(tenant="nobody")["stored"] == []


# -- 9. racing compaction --------------------------------------------------------------------------------

COMPACT = CompactionConfig(min_age_s=0)
#: api expires before 2024-06-08T12:30, db before 12:15.
RACE_RULES = [{"tenant": "acme", "service": "api", "max_age": "2d"},
              {"tenant": "acme", "service": "db", "max_age": "2895m"}]
RACE_CUTS = {"api": us("2024-06-08T12:30"), "db": us("2024-06-08T12:15")}


def race_lake(lake: Lake, per_hour: int = 8, seed: int = 3) -> list[dict[str, Any]]:
    """Many small segments in a wholly expired, a straddling and a young hour."""
    rng = random.Random(seed)
    rows_all = []
    for hour in (us("2024-06-07T12:00"), us("2024-06-08T12:00"), us("2024-06-09T12:00")):
        for _ in range(per_hour):
            rows = [rec(hour + rng.randrange(HOUR), rng.choice(["api", "db"])) for _ in range(25)]
            lake.add("acme", rows)
            rows_all += rows
    return rows_all


def should_keep(rows: list[dict[str, Any]]) -> list[str]:
    return ids_of([r for r in rows if r["ts"] >= RACE_CUTS[r["service"]]])


def no_orphans(lake: Lake) -> None:
    """Every segment file on disk is one the catalog knows (lost races cleaned up after themselves)."""
    known = lake.catalog.known_paths()
    on_disk = {p for p in lake.files() if p.endswith(".parquet")}
    assert on_disk <= set(known), sorted(on_disk - set(known))


class SwapHook:
    """The catalog, but ``before`` runs (once) just ahead of the first swap ``when`` picks."""

    def __init__(self, catalog: Catalog, before: Callable[[], object],
                 when: Callable[..., bool] = lambda *a, **kw: True) -> None:
        self._catalog, self._before, self._when = catalog, before, when
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)

    def swap(self, *args: Any, **kwargs: Any) -> Any:
        if not self.fired and self._when(*args, **kwargs):
            self.fired = True
            self._before()
        return self._catalog.swap(*args, **kwargs)


def _is_rewrite(retire: Any, add: Any = (), **_: Any) -> bool:
    return bool(add)


@pytest.mark.parametrize("moment", ["before the drops commit", "before a rewrite commits"])
def test_compaction_winning_the_race_costs_retention_one_run(lake: Lake, moment: str) -> None:
    rows = race_lake(lake)
    other = Catalog(lake.url)                   # compaction's own connection, as another process would
    try:
        merged = []
        hook = SwapHook(lake.catalog, lambda: merged.append(compact(lake.root, other, COMPACT)),
                        when=_is_rewrite if moment == "before a rewrite commits" else lambda *a, **kw: True)
        first = retention.run(lake.root, hook, rules(*RACE_RULES), now_us=NOW)  # type: ignore[arg-type]
    finally:
        other.close()
    # Before the drops commit, compaction merges all three hours; after it, the two that are left.
    assert hook.fired and merged[0].batches == (3 if moment == "before the drops commit" else 2)
    assert first.conflicts >= 1
    assert set(should_keep(rows)) <= set(lake.ids()) and len(set(lake.ids())) == len(lake.ids())
    no_orphans(lake)

    retention.run(lake.root, lake.catalog, rules(*RACE_RULES), now_us=NOW)
    assert lake.ids() == should_keep(rows)
    no_orphans(lake)


def test_retention_winning_the_race_costs_compaction_its_batch(lake: Lake) -> None:
    rows = race_lake(lake)
    ran = []
    hook = SwapHook(lake.catalog, lambda: ran.append(retention.run(lake.root, other, rules(*RACE_RULES), now_us=NOW)))
    other = Catalog(lake.url)
    try:
        report = compact(lake.root, hook, COMPACT)   # type: ignore[arg-type]
    finally:
        other.close()
    assert ran and ran[0].conflicts == 0
    # The expired and the straddling hour lost; the young hour, untouched by retention, was merged.
    assert (report.conflicts, report.batches) == (2, 1)
    assert lake.ids() == should_keep(rows)
    no_orphans(lake)


def test_a_deletion_that_loses_to_compaction_looks_again_and_deletes_from_the_merged_segment(lake: Lake) -> None:
    hour = us("2024-06-10T10:00")
    rows = []
    for i in range(6):
        part = [rec(hour + (i * 8 + j) * MIN, "api", "password=hunter2" if j % 4 == 0 else "fine") for j in range(8)]
        lake.add("default", part)
        rows += part
    other = Catalog(lake.url)
    try:
        merged = []
        hook = SwapHook(lake.catalog, lambda: merged.append(compact(lake.root, other, COMPACT)))
        report = delete_matching(lake.root, hook, tenant="default", query="hunter2",  # type: ignore[arg-type]
                                 start_us=hour, end_us=hour + HOUR, actor="t")
    finally:
        other.close()
    assert merged and merged[0].batches == 1
    assert report.conflicts == 0 and report.rows == 12
    assert lake.ids() == ids_of([r for r in rows if "hunter2" not in r["message"]])
    assert sum(e.rows for e in lake.catalog.audit_log()) == 12
    no_orphans(lake)


def _compactor(url: str, data: str, start: threading.Barrier, out: list[Any]) -> None:
    cat = Catalog(url)
    try:
        start.wait(10)
        out.append(compact(DataRoot(data), cat, COMPACT))
    finally:
        cat.close()


def test_retention_racing_compaction_converges_within_two_runs(lake: Lake) -> None:
    for rnd in range(3):
        tenant_rows = race_lake(lake, per_hour=10, seed=rnd)
        start, out = threading.Barrier(2), []
        t = threading.Thread(target=_compactor, args=(lake.url, str(lake.data), start, out))
        t.start()
        start.wait(10)
        retention.run(lake.root, lake.catalog, rules(*RACE_RULES), now_us=NOW)
        t.join(60)
        assert out, "compaction failed"
        # Never too much: nothing it should keep is gone, nothing is there twice.
        ids = lake.ids()
        assert set(should_keep(tenant_rows)) <= set(ids) and len(set(ids)) == len(ids)
        retention.run(lake.root, lake.catalog, rules(*RACE_RULES), now_us=NOW)
        assert lake.ids() == should_keep(tenant_rows)
        no_orphans(lake)
        for r in lake.live_rows():
            assert r["ts"] >= RACE_CUTS[r["service"]]
        # Start the next round from an empty tenant.
        for s in lake.catalog.live_segments():
            lake.catalog.swap([s.id])
        gc_everything(lake)
