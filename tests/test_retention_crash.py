"""A retention run SIGKILLed at random points: nothing it should keep is lost, nothing is doubled.

`loglake retention run` runs as a real process over a local data root whose
segments hold expired rows (whole segments, and segments that straddle the
cut-off, so rewrites are under way when the kill lands), with the catalog on
SQLite and on PostgreSQL. After every kill the live segments are read back
row by row; after a last, complete run no expired row is left, and garbage
collection plus fsck leave the root clean.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage.catalog import Catalog, PartitionCommit
from storage.compaction import collect_garbage
from storage.fsck import fsck
from storage.root import DataRoot
from storage.schema import RECORD_SCHEMA
from storage.segments import write_segments

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
MAX_AGE_DAYS = 7          # every service
WEB_MAX_AGE_DAYS = 5      # service web: segments between the two cut-offs are rewritten, one by one
ROUNDS = 6


def _batch(start_us: int, n: int, tag: str) -> pa.Table:
    """``n`` rows from ``start_us`` on, one a minute, each with a unique message."""
    ts = pa.array([start_us + i * 60_000_000 for i in range(n)], pa.timestamp("us", tz="UTC"))
    return pa.table({
        "ts": ts, "observed_ts": ts,
        "service": pa.array(["api" if i % 3 else "web" for i in range(n)]),
        "host": pa.array(["h1"] * n), "source": pa.array(["/var/log/app.log"] * n),
        "level": pa.array(["info"] * n), "severity": pa.array([9] * n, pa.int8()),
        "message": pa.array([f"{tag} row {i}" for i in range(n)]),
        "attrs": pa.array([[("i", str(i))] for i in range(n)], pa.map_(pa.string(), pa.string())),
        "trace_id": pa.nulls(n, pa.string()), "span_id": pa.nulls(n, pa.string()),
        "head": pa.nulls(n, pa.string()), "raw": pa.nulls(n, pa.string()),
    }).cast(RECORD_SCHEMA)


def _fill(root: Path, url: str, now_us: int) -> dict[str, tuple[int, str]]:
    """Segments around the cut-off; returns each message's (time, service)."""
    cat = Catalog(url)
    rows: dict[str, tuple[int, str]] = {}
    cut = now_us - MAX_AGE_DAYS * DAY_US
    offset = 0
    try:
        # 30 batches of 240 rows (4 hours each): old, straddling and fresh ones.
        for b in range(60):
            # Half a minute off the grid: no row lies within seconds of the cut-off the run computes.
            start = cut - 2 * DAY_US + b * 4 * HOUR_US - 2 * HOUR_US + 30_000_000
            table = _batch(start, 240, f"b{b}")
            ts = pc.cast(table["ts"], pa.int64()).to_pylist()
            rows.update(zip(table["message"].to_pylist(), zip(ts, table["service"].to_pylist(), strict=True),
                            strict=True))
            infos = write_segments(root, "default", table, f"logs.p0.e0.{offset:012d}-{offset + 9:012d}.parquet")
            Catalog.commit(cat, [PartitionCommit("logs", 0, 0, offset, offset + 10, infos)])
            offset += 10
    finally:
        cat.close()
    return rows


def _kept(rows: dict[str, tuple[int, str]], now_us: int) -> set[str]:
    """The messages a run that takes ``now_us`` as its time keeps."""
    cut = now_us - MAX_AGE_DAYS * DAY_US
    web_cut = now_us - WEB_MAX_AGE_DAYS * DAY_US
    return {m for m, (t, svc) in rows.items() if t >= (web_cut if svc == "web" else cut)}


def _now_us() -> int:
    return time.time_ns() // 1000


def _live_messages(root: Path, url: str) -> Counter[str]:
    cat = Catalog(url)
    try:
        return Counter(m for s in cat.live_segments()
                       for m in pq.read_table(root / s.path, columns=["message"])["message"].to_pylist())
    finally:
        cat.close()


def _audited(url: str) -> int:
    cat = Catalog(url)
    try:
        return len(cat.audit_log(limit=100_000))
    finally:
        cat.close()


def _toml(tmp_path: Path, root: Path, url: str) -> Path:
    path = tmp_path / "loglake.toml"
    path.write_text(f'[storage]\ndata_root = "{root}"\ncatalog_url = "{url}"\ngrace_s = 0\n'
                    f'[[retention.policies]]\ntenant = "*"\nmax_age = "{MAX_AGE_DAYS}d"\n'
                    f'[[retention.policies]]\ntenant = "*"\nservice = "web"\nmax_age = "{WEB_MAX_AGE_DAYS}d"\n')
    return path


def _retention(toml: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen([sys.executable, "-m", "loglake", "--config", str(toml), "retention", "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


@pytest.mark.timeout(240)
def test_retention_killed_at_random_points_keeps_everything_it_should(tmp_path: Path, catalog_url: str) -> None:
    root = tmp_path / "data"
    rows = _fill(root, catalog_url, _now_us())
    # Rows are a minute apart and the cut-off moves with the clock: each run's expectation is taken
    # at the times it could have read the clock (a slow machine must not make a kept row expire).
    assert _kept(rows, _now_us()) and len(_kept(rows, _now_us())) < len(rows)
    toml = _toml(tmp_path, root, catalog_url)
    rng = random.Random(7)
    kills = 0
    for _ in range(ROUNDS):
        before = _audited(catalog_url)
        proc = _retention(toml)
        # Kill just after one of its commits, or up to a tenth of a second later (mid-rewrite).
        while proc.poll() is None and _audited(catalog_url) == before:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        live = _live_messages(root, catalog_url)
        assert all(n == 1 for n in live.values()), "a row is stored twice"
        keep = _kept(rows, _now_us())
        assert keep <= set(live), f"{len(keep - set(live))} rows that should be kept are gone"
        assert set(live) <= set(rows)
    print(f"retention SIGKILLed {kills} times of {ROUNDS}")
    assert kills >= 2, "the runs ended before the kills: the test showed nothing"
    # A complete run finishes the job; then nothing expired is left, and nothing is left over.
    started = _now_us()
    proc = _retention(toml)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    ended = _now_us()
    live = _live_messages(root, catalog_url)
    assert all(n == 1 for n in live.values())
    assert _kept(rows, ended) <= set(live) <= _kept(rows, started)
    cat = Catalog(catalog_url)
    try:
        data = DataRoot(str(root))
        collect_garbage(data, cat, grace_s=0, now_us=_now_us() + 1)
        report = fsck(data, cat, grace_s=0)
        assert report.clean, report
        # Expired rows are gone from the disk, not just from the catalog.
        on_disk = {m for f in root.rglob("*.parquet")
                   for m in pq.read_table(f, columns=["message"])["message"].to_pylist()}
        assert on_disk == set(live)
    finally:
        cat.close()
