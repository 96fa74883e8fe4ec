"""The maintenance loop `loglake up` runs (and `loglake maintain` alone): compaction,
retention and garbage collection, each on its own schedule.

Several of these loops may run at once (one per machine, say): every change
they make is a conditional catalog swap, so the loser of a race just drops
its work. Each run is recorded in the catalog's ``jobs`` table, which is
where ``GET /api/v1/retention`` finds the last and next runs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from loglake.config import Config
from storage import compaction, retention
from storage.catalog import Catalog
from storage.root import DataRoot

log = logging.getLogger("loglake.maintenance")

#: How often retired files past their grace period, and orphans, are looked for.
GC_INTERVAL_S = 60.0


def _now_us() -> int:
    return time.time_ns() // 1000


def run_compaction(cfg: Config, root: DataRoot, catalog: Catalog) -> dict[str, Any]:
    started = _now_us()
    r = compaction.compact(root, catalog, cfg.compaction)
    result = {k: v for k, v in asdict(r).items() if k != "hours"} | {"mb_per_s": round(r.mb_per_s, 2)}
    catalog.record_job("compaction", started, result)
    if r.batches or r.conflicts:
        log.info("compaction", extra=result)
    return result


def run_retention(cfg: Config, root: DataRoot, catalog: Catalog) -> dict[str, Any]:
    started = _now_us()
    r = retention.run(root, catalog, retention.Rules.of(cfg.retention), zstd_level=cfg.compaction.zstd_level)
    result = {"segments": len(r.removed), "rows": sum(x.rows for x in r.removed),
              "bytes": sum(x.bytes for x in r.removed), "conflicts": r.conflicts}
    catalog.record_job("retention", started, result)
    if r.removed or r.conflicts:
        log.info("retention", extra=result)
    return result


def run_gc(cfg: Config, root: DataRoot, catalog: Catalog) -> dict[str, Any]:
    started = _now_us()
    result = asdict(compaction.collect_garbage(root, catalog, cfg.storage.grace_s))
    catalog.record_job("gc", started, result)
    if any(result.values()):
        log.info("garbage collected", extra=result)
    return result


def maintain(cfg: Config, stop: threading.Event, *, catalog: Catalog | None = None,
             root: DataRoot | None = None) -> None:
    """Run the jobs on their intervals until ``stop`` is set; a failing job is logged and retried."""
    catalog = catalog or Catalog(cfg.storage.resolved_catalog_url())
    root = root or DataRoot.from_config(cfg.storage)
    jobs = [("gc", GC_INTERVAL_S, run_gc)]
    if cfg.compaction.enabled:
        jobs.append(("compaction", cfg.compaction.interval_s, run_compaction))
    if cfg.retention.enabled and cfg.retention.policies:
        jobs.append(("retention", cfg.retention.interval_s, run_retention))
    due = {name: time.monotonic() for name, _, _ in jobs}
    log.info("maintenance started", extra={"jobs": [n for n, _, _ in jobs]})
    while not stop.is_set():
        for name, interval, job in jobs:
            if stop.is_set() or time.monotonic() < due[name]:
                continue
            try:
                job(cfg, root, catalog)
            except Exception as e:
                log.error("maintenance job failed", extra={"job": name, "reason": f"{type(e).__name__}: {e}"[:500]})
            due[name] = time.monotonic() + interval
        stop.wait(max(0.1, min(due.values()) - time.monotonic()))
