"""The maintenance loop `loglake up` runs (and `loglake maintain` alone): compaction,
retention and garbage collection, each on its own schedule; and, when configured,
the Iceberg mirror's sync (also right after each compaction and retention run) and
backups.

Several of these loops may run at once (one per machine, say): every change
they make is a conditional catalog swap, so the loser of a race just drops
its work. Each run is recorded in the catalog's ``jobs`` table, which is
where ``GET /api/v1/retention`` finds the last and next runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from loglake.core.config import Config
from storage import compaction, retention
from storage.catalog import Catalog
from storage.root import DataRoot
from storage.segments import minute_level_counts, service_level_counts

if TYPE_CHECKING:
    from storage.iceberg import IcebergMirror

log = logging.getLogger("loglake.maintenance")

#: How often retired files past their grace period, and orphans, are looked for.
GC_INTERVAL_S = 60.0
#: Segments recorded before the catalog kept rows per service and level, counted per GC run
#: (two label columns each: a few milliseconds a segment).
FILL_PER_RUN = 200


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


def fill_counts(root: DataRoot, catalog: Catalog, limit: int = FILL_PER_RUN) -> int:
    """Count the rows per service and level and per minute and level of up to ``limit`` live
    segments recorded before the catalog kept them (reading their time and two label columns), so
    that such counts are answered from the catalog for old data too; how many were filled. A segment
    whose file is gone is left to fsck."""
    filled = 0
    for seg in catalog.lacking_counts(limit):
        try:
            part = root.read_parquet(seg.path, columns=["ts", "service", "level"])
        except (OSError, ValueError) as e:
            log.warning("cannot count a segment's services and levels", extra={"path": seg.path, "error": str(e)})
            continue
        filled += catalog.set_counts(seg.id, service_level_counts(part), minute_level_counts(part))
    return filled


def run_gc(cfg: Config, root: DataRoot, catalog: Catalog) -> dict[str, Any]:
    started = _now_us()
    result = asdict(compaction.collect_garbage(root, catalog, cfg.storage.grace_s))
    result["counts_filled"] = fill_counts(root, catalog)
    catalog.record_job("gc", started, result)
    if any(result.values()):
        log.info("garbage collected", extra=result)
    return result


def run_iceberg(mirror: IcebergMirror, catalog: Catalog) -> dict[str, Any]:
    started = _now_us()
    r = mirror.sync()
    result = {"tables": r.tables, "commits": r.commits, "files_added": r.added, "files_removed": r.removed,
              "conflicts": r.conflicts}
    catalog.record_job("iceberg", started, result)
    if r.commits or r.conflicts:
        log.info("iceberg mirror synced", extra=result | {"changes": r.changes})
    return result


def run_backup(cfg: Config, root: DataRoot, catalog: Catalog) -> dict[str, Any]:
    from storage import backup

    started = _now_us()
    dest = DataRoot(cfg.backup.dest, cfg.storage.s3)
    r = backup.create(root, catalog, dest)
    pruned = backup.prune(dest, cfg.backup.keep)
    result = {"backup": r.manifest.id, "segments": len(r.manifest.segments), "copied": r.manifest.copied,
              "copied_bytes": r.manifest.copied_bytes, "pruned_backups": len(pruned.backups),
              "pruned_segments": pruned.segments}
    catalog.record_job("backup", started, result)
    log.info("backup created", extra=result)
    return result


Job = Callable[[Config, DataRoot, Catalog], dict[str, Any]]


@dataclass
class JobState:
    """What one job has done since start, for /metrics and /readyz."""

    interval_s: float
    runs: int = 0
    failures: int = 0
    last_success: float | None = None          # unix time
    last_seconds: float | None = None
    #: Why the last run failed (None once a run succeeds).
    fault: str | None = None
    totals: Counter[str] = field(default_factory=Counter)


class Maintenance:
    """The jobs, their schedule and their state: one instance per maintenance process."""

    def __init__(self, cfg: Config, *, catalog: Catalog | None = None, root: DataRoot | None = None) -> None:
        self.cfg = cfg
        self.catalog = catalog or Catalog(cfg.storage.resolved_catalog_url())
        self.root = root or DataRoot.from_config(cfg.storage)
        self.jobs: dict[str, tuple[Job, JobState]] = {"gc": (self._gc, JobState(GC_INTERVAL_S))}
        if cfg.compaction.enabled:
            self.jobs["compaction"] = (run_compaction, JobState(cfg.compaction.interval_s))
        if cfg.retention.enabled and cfg.retention.policies:
            self.jobs["retention"] = (run_retention, JobState(cfg.retention.interval_s))
        #: The Iceberg mirror, when `iceberg.enabled` (else nothing of it is imported).
        self.mirror: IcebergMirror | None = None
        if cfg.iceberg.enabled:
            from storage.iceberg import IcebergMirror

            self.mirror = IcebergMirror(cfg.iceberg, self.root, self.catalog)
            self.jobs["iceberg"] = (self._sync_mirror, JobState(cfg.iceberg.interval_s))
        if cfg.backup.dest:
            self.jobs["backup"] = (run_backup, JobState(cfg.backup.interval_s))
        #: Live segments, rows and bytes in the catalog, as of the last garbage collection.
        self.stored: dict[str, int] = {}

    def _sync_mirror(self, cfg: Config, root: DataRoot, catalog: Catalog) -> dict[str, Any]:
        assert self.mirror is not None
        return run_iceberg(self.mirror, catalog)

    def _gc(self, cfg: Config, root: DataRoot, catalog: Catalog) -> dict[str, Any]:
        # Snapshots first: once GC deletes a retired file, no snapshot left may name it (a table's
        # history reaches back the grace period, no further).
        expired = 0
        if self.mirror is not None:
            expired = self.mirror.expire(_now_us() - int(cfg.storage.grace_s * 1e6))
        return run_gc(cfg, root, catalog) | {"snapshots_expired": expired}

    def run_job(self, name: str) -> None:
        """Run job ``name`` once, recording how it went; a failure is logged, not raised.

        After compaction or retention, the Iceberg mirror (when on) is synced at once."""
        self._run_one(name)
        if name in ("compaction", "retention") and "iceberg" in self.jobs:
            self._run_one("iceberg")

    def _run_one(self, name: str) -> None:
        job, state = self.jobs[name]
        state.runs += 1
        t0 = time.monotonic()
        try:
            result = job(self.cfg, self.root, self.catalog)
            if name == "gc":
                self.stored = {k: int(v) for k, v in self.catalog.totals().items()}
        except Exception as e:
            state.failures += 1
            state.fault = f"{type(e).__name__}: {e}"[:500]
            log.error("maintenance job failed", extra={"job": name, "reason": state.fault})
        else:
            state.fault = None
            state.last_success = time.time()
            state.totals.update({k: v for k, v in result.items() if isinstance(v, int) and not isinstance(v, bool)})
        finally:
            state.last_seconds = time.monotonic() - t0

    def run(self, stop: threading.Event) -> None:
        """Run the jobs on their intervals until ``stop`` is set; a failing job is retried next interval."""
        due = {name: time.monotonic() for name in self.jobs}
        if "backup" in self.jobs:
            # A restarted process does not back up again before the interval since the last one is over.
            last = self.catalog.jobs().get("backup")
            if last is not None:
                due["backup"] += max(0.0, last["started_us"] / 1e6 + self.cfg.backup.interval_s - time.time())
        log.info("maintenance started", extra={"jobs": list(self.jobs)})
        while not stop.is_set():
            for name, (_, state) in self.jobs.items():
                if stop.is_set() or time.monotonic() < due[name]:
                    continue
                self.run_job(name)
                due[name] = time.monotonic() + state.interval_s
            stop.wait(max(0.1, min(due.values()) - time.monotonic()))

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the process answers. The details say what each job last did."""
        return True, {"jobs": {name: {"runs": st.runs, "failures": st.failures, "last_success": st.last_success,
                                      "last_seconds": st.last_seconds, "fault": st.fault}
                               for name, (_, st) in self.jobs.items()}}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Doing its work: not while a job's last run failed (the catalog or the data root is unreachable)."""
        faults = {name: st.fault for name, (_, st) in self.jobs.items() if st.fault is not None}
        if faults:
            return False, {"status": "job failing", "faults": faults}
        return True, {"status": "ok"}


def maintain(cfg: Config, stop: threading.Event, *, catalog: Catalog | None = None,
             root: DataRoot | None = None) -> None:
    """Run the jobs on their intervals until ``stop`` is set; a failing job is logged and retried."""
    Maintenance(cfg, catalog=catalog, root=root).run(stop)
