"""`loglake maintain` as a real process: what its jobs did shows on /metrics, and a catalog it
cannot reach on /readyz, while /healthz keeps answering.

The catalog is PostgreSQL behind a TCP relay the test cuts (tests/helpers/relay.py);
the segments are written and committed the way ingest writes them.
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from storage.catalog import Catalog
from storage.root import DataRoot
from tests.helpers.flushed_lake import Lake
from tests.helpers.metrics import Samples, scrape
from tests.helpers.processes import Stack, free_port, wait_until
from tests.helpers.relay import Relay


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.ConnectError:
        return 0, {}                    # not listening yet
    return resp.status_code, resp.json()


def _job(metrics: Samples, name: str, job: str) -> float:
    return metrics.get((name, (("job", job),)), 0.0)


def test_maintain_reports_its_jobs_on_metrics_and_a_lost_catalog_on_readyz(tmp_path: Path, pg_url: str) -> None:
    relay = Relay(("127.0.0.1", 5432))
    relay.up()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    stack = Stack(root=tmp_path / "stack", bootstrap="127.0.0.1:1", topic="unused")
    lake = Lake(tmp_path / "lake", pg_url)
    lake.rng = random.Random(11)
    # Two old hours of small segments, as ingest leaves them.
    lake.fill(("default",), [3, 4], segments=3, rows=120)
    segments_in = lake.catalog.totals()["segments"]
    bytes_in = lake.catalog.totals()["bytes"]
    port = free_port()
    try:
        stack.start("maintain", LOGLAKE_STORAGE__DATA_ROOT=str(lake.dir), LOGLAKE_STORAGE__CATALOG_URL=url,
                    LOGLAKE_STORAGE__GRACE_S="0", LOGLAKE_COMPACTION__MIN_AGE_S="0",
                    LOGLAKE_COMPACTION__SETTLE_S="0",
                    LOGLAKE_COMPACTION__INTERVAL_S="1", LOGLAKE_MAINTAIN__METRICS_LISTEN=f"127.0.0.1:{port}")
        wait_until(lambda: _get(port, "/healthz")[0] == 200, 30, what="maintain answering /healthz")

        # Compaction ran: both hours merged (and, being long over, written at the settled level).
        metrics = wait_until(lambda: (m := scrape(port)).get(("loglake_compaction_input_segments_total", ()))
                             == segments_in and m, 60, what="compaction on /metrics")
        assert metrics[("loglake_compaction_input_bytes_total", ())] == bytes_in
        assert metrics[("loglake_compaction_output_segments_total", ())] == 2
        assert _job(metrics, "loglake_maintenance_job_runs_total", "compaction") >= 1
        assert _job(metrics, "loglake_maintenance_job_failures_total", "compaction") == 0
        assert _job(metrics, "loglake_maintenance_job_last_success_timestamp_seconds", "compaction") > 0
        assert metrics[("loglake_maintenance_ready", ())] == 1
        assert _get(port, "/readyz") == (200, {"status": "ok"})
        live = Catalog(pg_url)
        try:
            assert {s.zstd_level for s in live.live_segments()} == {17}
            totals = live.totals()
        finally:
            live.close()
        # The stored volume is what the catalog says after the last garbage collection
        # (GC runs first, at start, so it may still show the inputs until its next run).
        stored = scrape(port)
        assert stored[("loglake_storage_rows", ())] == totals["rows"] == sum(lake.expected.values())

        # The catalog goes away: the next runs fail, /readyz says so, /healthz still answers.
        relay.down()
        code, body = wait_until(lambda: r if (r := _get(port, "/readyz"))[0] == 503 else None, 30,
                                what="/readyz to report the lost catalog")
        assert body["status"] == "job failing" and "compaction" in body["faults"], body  # type: ignore[operator]
        assert _get(port, "/healthz")[0] == 200
        metrics = scrape(port)
        assert metrics[("loglake_maintenance_ready", ())] == 0
        assert _job(metrics, "loglake_maintenance_job_failures_total", "compaction") >= 1

        # Back: the next run succeeds and it is ready again.
        relay.up()
        wait_until(lambda: _get(port, "/readyz")[0] == 200, 60, what="ready once the catalog is back")
        assert scrape(port)[("loglake_maintenance_ready", ())] == 1
        assert "maintenance job failed" in stack.log_text("maintain")
        assert DataRoot(str(lake.dir)).files()                 # nothing was lost meanwhile
    finally:
        stack.stop_all()
        lake.close()
        relay.down()
