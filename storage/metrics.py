"""What the maintenance process reports on /metrics; figures are read from it at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loglake.core.metrics_server import registry_of

if TYPE_CHECKING:
    from storage.maintenance import Maintenance

#: Per-job totals worth a counter: (job, result key) -> (metric, help).
_TOTALS = {
    ("compaction", "inputs"): ("loglake_compaction_input_segments", "Segments merged or rewritten by compaction"),
    ("compaction", "outputs"): ("loglake_compaction_output_segments", "Segments compaction wrote"),
    ("compaction", "bytes_in"): ("loglake_compaction_input_bytes", "Segment bytes compaction read"),
    ("compaction", "bytes_out"): ("loglake_compaction_output_bytes", "Segment bytes compaction wrote"),
    ("compaction", "conflicts"): ("loglake_compaction_conflicts", "Compactions dropped after losing a race"),
    ("retention", "segments"): ("loglake_retention_segments", "Segments retention removed or rewrote"),
    ("retention", "rows"): ("loglake_retention_rows", "Rows retention deleted"),
    ("retention", "bytes"): ("loglake_retention_bytes", "Bytes retention freed"),
    ("gc", "retired_deleted"): ("loglake_gc_retired_files_deleted", "Retired segment files deleted"),
    ("gc", "orphans_deleted"): ("loglake_gc_orphan_files_deleted", "Unreferenced segment files deleted"),
    ("gc", "bytes_freed"): ("loglake_gc_bytes_freed", "Bytes of segment files deleted"),
    ("gc", "snapshots_expired"): ("loglake_iceberg_snapshots_expired", "Iceberg snapshots expired"),
    ("iceberg", "commits"): ("loglake_iceberg_commits", "Snapshots the Iceberg mirror committed"),
    ("iceberg", "files_added"): ("loglake_iceberg_files_added", "Segments added to the Iceberg mirror"),
    ("iceberg", "files_removed"): ("loglake_iceberg_files_removed", "Segments removed from the Iceberg mirror"),
    ("iceberg", "conflicts"): ("loglake_iceberg_conflicts", "Iceberg commits lost to another writer"),
    ("backup", "copied"): ("loglake_backup_segments_copied", "Segments copied by backups"),
    ("backup", "copied_bytes"): ("loglake_backup_bytes_copied", "Segment bytes copied by backups"),
}


class MaintenanceCollector(Collector):
    def __init__(self, maintenance: Maintenance) -> None:
        self.m = maintenance

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        runs = CounterMetricFamily("loglake_maintenance_job_runs", "Job runs", labels=["job"])
        failures = CounterMetricFamily("loglake_maintenance_job_failures", "Job runs that failed", labels=["job"])
        success = GaugeMetricFamily("loglake_maintenance_job_last_success_timestamp_seconds",
                                    "When the job last succeeded (unix time)", labels=["job"])
        seconds = GaugeMetricFamily("loglake_maintenance_job_last_duration_seconds", "How long the last run took",
                                    labels=["job"])
        for name, (_, st) in self.m.jobs.items():
            runs.add_metric([name], st.runs)
            failures.add_metric([name], st.failures)
            if st.last_success is not None:
                success.add_metric([name], st.last_success)
            if st.last_seconds is not None:
                seconds.add_metric([name], st.last_seconds)
        yield from (runs, failures, success, seconds)
        for (job, key), (metric, doc) in _TOTALS.items():
            if job in self.m.jobs:
                yield CounterMetricFamily(metric, doc, value=self.m.jobs[job][1].totals.get(key, 0))
        for key, doc in (("segments", "Live segments"), ("rows", "Rows in live segments"),
                         ("bytes", "Bytes of live segments")):
            if key in self.m.stored:
                yield GaugeMetricFamily(f"loglake_storage_{key}", f"{doc}, as of the last garbage collection",
                                        value=self.m.stored[key])
        yield GaugeMetricFamily("loglake_maintenance_ready", "1 while every job's last run succeeded, else 0",
                                value=1 if self.m.ready()[0] else 0)


def registry_for(maintenance: Maintenance) -> CollectorRegistry:
    return registry_of(MaintenanceCollector(maintenance))
