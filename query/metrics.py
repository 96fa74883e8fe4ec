"""What the query server reports on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from query.planner import Scan


class QueryMetrics:
    """One registry per app, so tests can run several apps in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "loglake_query_request_seconds", "HTTP requests by route and status", ["route", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry)
        self.segments = Counter("loglake_query_segments", "Segments considered, by what became of them",
                                ["outcome"], registry=self.registry)
        self.row_groups = Counter("loglake_query_row_groups", "Row groups the trigram index looked at, by outcome",
                                  ["outcome"], registry=self.registry)
        self.rows_scanned = Counter("loglake_query_rows_scanned", "Rows in the row groups queries read",
                                    registry=self.registry)
        self.bytes_scanned = Counter("loglake_query_bytes_scanned", "Bytes of the row groups queries read",
                                     registry=self.registry)

    def scanned(self, scan: Scan) -> None:
        self.segments.labels("pruned_by_catalog").inc(scan.segments_total - scan.segments_after_catalog)
        self.segments.labels("pruned_by_index").inc(scan.segments_after_catalog - scan.segments_scanned)
        self.segments.labels("scanned").inc(scan.segments_scanned)
        self.row_groups.labels("pruned").inc(scan.row_groups_total - scan.row_groups_scanned)
        self.row_groups.labels("scanned").inc(scan.row_groups_scanned)
        self.rows_scanned.inc(scan.rows_scanned)
        self.bytes_scanned.inc(scan.bytes_scanned)
