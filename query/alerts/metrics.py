"""The evaluator's /metrics: evaluations, failures, durations, lag, firing alerts, notifications, and the
series of recording rules (one gauge per recorded name)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class AlertMetrics:
    """Collectors of one evaluator process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.evaluations = Counter("loglake_alert_evaluations_total", "Group evaluations recorded", ["group"],
                                   registry=r)
        self.failures = Counter("loglake_alert_evaluation_failures_total", "Rule evaluations that failed",
                                ["group", "rule"], registry=r)
        self.duration = Histogram("loglake_alert_evaluation_duration_seconds", "Time to evaluate a group",
                                  ["group"], registry=r, buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60))
        self.lag = Gauge("loglake_alert_evaluation_lag_seconds",
                         "How long after its time the group's last evaluation ran", ["group"], registry=r)
        self.behind = Counter("loglake_alert_evaluations_behind_total",
                              "Evaluations that ran more than one interval after their time", ["group"], registry=r)
        self.missed = Counter("loglake_alert_evaluations_missed_total",
                              "Evaluations dropped past alerts.max_catchup (each one logged)", ["group"], registry=r)
        self.lost_leases = Counter("loglake_alert_lease_lost_total",
                                   "Evaluations not recorded because another evaluator took the group", ["group"],
                                   registry=r)
        self.alerts = Gauge("loglake_alerts", "Alerts of the groups this evaluator holds, by state",
                            ["group", "state"], registry=r)
        self.recorded = RecordedSeries()
        r.register(self.recorded)
        self.notifications: dict[tuple[str, str], int] = {}
        r.register(_Notifications(self))


class _Notifications(Collector):
    def __init__(self, metrics: AlertMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily("loglake_alert_notifications", "Notifications sent, by receiver and outcome",
                                labels=["receiver", "outcome"])
        for (receiver, outcome), n in sorted(self.metrics.notifications.items()):
            c.add_metric([receiver, outcome], n)
        yield c


class RecordedSeries(Collector):
    """The latest value of every recording rule's series, as a gauge named after the rule."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (tenant, group key text, record name) -> [(labels, value)]
        self._series: dict[tuple[str, str, str], list[tuple[dict[str, str], float]]] = {}

    def set(self, tenant: str, group: str, name: str, series: list[tuple[dict[str, str], float]]) -> None:
        with self._lock:
            self._series[(tenant, group, name)] = series

    def drop_group(self, group: str) -> None:
        with self._lock:
            for k in [k for k in self._series if k[1] == group]:
                del self._series[k]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
            for (tenant, _, name), series in self._series.items():
                by_name.setdefault(name, []).extend(({**labels, "tenant": tenant}, v) for labels, v in series)
        for name, series in sorted(by_name.items()):
            names = sorted({k for labels, _ in series for k in labels if k != "__name__"})
            g = GaugeMetricFamily(name, f"recording rule {name}", labels=names)
            for labels, v in series:
                g.add_metric([labels.get(k, "") for k in names], v)
            yield g
