"""`loglake alert`: evaluates every rule group on its interval, as Prometheus's rule manager does.

Each group's evaluation times (slots) are multiples of its interval. An evaluator acts for a group
only while it holds the group's lease in the catalog, so evaluators may run anywhere, any number of
them: one evaluates a group, the others take over when its lease runs out. The slot, the alerts'
states and the evaluation's row are committed together, conditional on the lease, so a slot is
recorded once; notifications go out after the commit, and what was sent is recorded after sending
(a crash in between sends once more, which Alertmanager deduplicates). A restarted evaluator reads
the states back: pending alerts keep counting their ``for``, firing ones keep their start and are
not announced again.

An evaluator that falls behind evaluates the missed slots in order, each at its own time (logs are
stored, so a late evaluation sees what an on-time one would have), and reports the lag; slots past
``alerts.max_catchup`` are dropped, logged and counted, never silently.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loglake.core.config import Config
from query.alerts.evaluation import RuleQueries
from query.alerts.metrics import AlertMetrics
from query.alerts.notify import Notifier, alertmanager_alert, webhook_body
from query.alerts.rules import RuleError, parse_rule_file
from query.alerts.state import advance
from query.alerts.store import AlertRow, AlertStore, Evaluation, GroupKey, LeaseLost, StoredGroup, now_us
from query.service import SearchService
from storage.catalog import Catalog
from storage.errors import StorageError

log = logging.getLogger("loglake.alerts")


def external_url(cfg: Config) -> str:
    """The base of links in notifications."""
    if cfg.alerts.external_url:
        return cfg.alerts.external_url.rstrip("/")
    scheme = "https" if cfg.query.tls_cert else "http"
    return f"{scheme}://{cfg.query.host}:{cfg.query.port}"


def load_rule_files(store: AlertStore, paths: list[Path], tenant: str, default_interval_us: int) -> int:
    """Load each file into the namespace named after it; RuleError names the file, rule and problem."""
    n = 0
    for path in paths:
        try:
            text = path.read_text()
        except OSError as e:
            raise RuleError(f"{path}: {e.strerror or e}") from None
        groups = parse_rule_file(text, path.name, default_interval_us)
        store.replace_namespace(tenant, path.name, groups, str(path))
        n += len(groups)
    return n


@dataclass
class _Held:
    next_slot_us: int
    renew_at_us: int


def _group_text(key: GroupKey) -> str:
    return f"{key[0]}/{key[1]}/{key[2]}"


class AlertEvaluator:
    """The evaluation loop of one process."""

    def __init__(self, cfg: Config, catalog: Catalog, owner: str | None = None) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.store = AlertStore(catalog)
        self.service = SearchService(cfg, catalog)
        self.queries = RuleQueries(self.service, external_url(cfg))
        a = cfg.alerts
        self.notifier = Notifier(a.alertmanager_urls, a.webhook_urls, a.notify_timeout_s)
        self.metrics = AlertMetrics()
        self.metrics.notifications = self.notifier.sent
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_us = int(a.lease_s * 1e6)
        self._held: dict[GroupKey, _Held] = {}
        self._warned: dict[GroupKey, float] = {}
        self.last_error: str | None = None

    # -- the loop -------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        a = self.cfg.alerts
        if a.rule_files:
            n = load_rule_files(self.store, a.rule_files, a.rule_files_tenant, int(a.default_interval_s * 1e6))
            log.info("rule files loaded", extra={"files": [str(p) for p in a.rule_files], "groups": n})
        log.info("alert evaluator started", extra={"owner": self.owner})
        try:
            while not stop.is_set():
                busy = self.tick()
                if not busy:
                    stop.wait(0.1)
        finally:
            for key in list(self._held):
                try:
                    self.store.release(key, self.owner)
                except StorageError:
                    pass
            self.notifier.close()

    def tick(self) -> bool:
        """One pass over the groups; True when some group evaluated (more may be due at once)."""
        try:
            groups = self.store.groups()
        except (StorageError, RuleError) as e:
            self._fault(f"cannot read the rule groups: {e}")
            return False
        busy = False
        present = {g.key for g in groups}
        for key in [k for k in self._held if k not in present]:
            del self._held[key]
            self.metrics.recorded.drop_group(_group_text(key))
        for g in groups:
            try:
                busy |= self._tick_group(g)
            except StorageError as e:
                self._fault(f"catalog unavailable: {e}")
        return busy

    def _fault(self, reason: str) -> None:
        if reason != self.last_error:
            log.error("alert evaluation paused", extra={"reason": reason[:500]})
        self.last_error = reason

    def _tick_group(self, g: StoredGroup) -> bool:
        key, interval = g.key, g.group.interval_us
        now = now_us()
        held = self._held.get(key)
        if held is not None and held.next_slot_us > now and held.renew_at_us > now:
            return False
        slot = self.store.acquire(key, self.owner, self.lease_us, now // interval * interval)
        if slot is None:
            self._held.pop(key, None)
            return False
        self._held[key] = _Held(slot, now + self.lease_us // 3)
        if slot > now:
            return False
        behind = (now - slot) // interval        # whole intervals late
        if behind > self.cfg.alerts.max_catchup:
            keep_from = (now // interval - self.cfg.alerts.max_catchup + 1) * interval
            dropped = (keep_from - slot) // interval
            if self.store.skip_to(key, self.owner, slot, keep_from):
                self.metrics.missed.labels(_group_text(key)).inc(dropped)
                log.error("alert evaluations dropped: the evaluator was too far behind",
                          extra={"group": _group_text(key), "dropped": dropped, "from": slot, "to": keep_from,
                                 "max_catchup": self.cfg.alerts.max_catchup})
            self._held.pop(key, None)
            return True
        self.evaluate_slot(g, slot, now)
        return True

    # -- one evaluation ------------------------------------------------------

    def evaluate_slot(self, g: StoredGroup, slot: int, started: int) -> None:
        key, group = g.key, g.group
        name = _group_text(key)
        lag_s = (started - slot) / 1e6
        self.metrics.lag.labels(name).set(lag_s)
        if started - slot > group.interval_us:
            self.metrics.behind.labels(name).inc()
            last = self._warned.get(key, 0.0)
            if time.monotonic() - last > 10:
                self._warned[key] = time.monotonic()
                log.warning("alert evaluation behind its schedule", extra={"group": name, "lag_s": round(lag_s, 3),
                                                                         "interval_s": group.interval_us / 1e6})
        t0 = time.perf_counter()
        before = self.store.alerts(key)
        rows: list[AlertRow] = []
        gone: list[tuple[str, str]] = []
        errors: dict[str, str] = {}
        keep_us = int(self.cfg.alerts.resolved_keep_s * 1e6)
        for rule in group.rules:
            previous = [a for a in before if a.rule == rule.name]
            try:
                found = self.queries.evaluate(rule, g.tenant, slot)
            except Exception as e:  # a rule's failure is reported and leaves its alerts as they were
                errors[rule.name] = f"{type(e).__name__}: {e}"[:1000]
                self.metrics.failures.labels(name, rule.name).inc()
                log.warning("rule evaluation failed", extra={"group": name, "rule": rule.name,
                                                             "reason": errors[rule.name]})
                rows += previous
                continue
            if rule.kind == "record":
                self.metrics.recorded.set(g.tenant, name, rule.name, [(f.labels, f.value) for f in found])
                continue
            kept, forgotten, changes = advance(rule, previous, found, slot, keep_us)
            for c in changes:
                if c.to == "firing":
                    self._describe(c.alert, rule_name=rule.name, g=g, slot=slot)
            rows += kept
            gone += [(rule.name, fp) for fp in forgotten]
        elapsed = time.perf_counter() - t0
        evaluation = Evaluation(slot, self.owner, started, int(elapsed * 1e6), errors)
        try:
            self.store.commit(key, self.owner, slot, slot + group.interval_us, self.lease_us, rows, gone, evaluation)
        except LeaseLost as e:
            self.metrics.lost_leases.labels(name).inc()
            log.warning("evaluation not recorded", extra={"group": name, "reason": str(e)})
            self._held.pop(key, None)
            return
        self._held[key] = _Held(slot + group.interval_us, now_us() + self.lease_us // 3)
        self.last_error = None
        self.metrics.evaluations.labels(name).inc()
        self.metrics.duration.labels(name).observe(elapsed)
        for state in ("pending", "firing"):
            self.metrics.alerts.labels(name, state).set(sum(1 for a in rows if a.state == state))
        self.send(g, rows)

    def _describe(self, a: AlertRow, rule_name: str, g: StoredGroup, slot: int) -> None:
        """The link and sample lines a firing alert's notifications carry (computed once, when it fires)."""
        rule = g.group.rule(rule_name)
        assert rule is not None
        series = {k: v for k, v in a.labels.items() if k != "alertname" and k not in rule.labels}
        detail: dict[str, Any] = {"link": self.queries.link(rule, g.tenant, slot, series)}
        try:
            detail["samples"] = self.queries.samples(rule, g.tenant, slot, series, self.cfg.alerts.sample_lines)
        except Exception as e:  # the alert goes out without samples rather than not at all
            log.warning("sample lines unavailable", extra={"rule": rule_name, "reason": str(e)[:300]})
            detail["samples"] = []
        a.detail = detail

    # -- notifications --------------------------------------------------------

    def send(self, g: StoredGroup, rows: list[AlertRow]) -> None:
        """Send what is due of ``rows`` and record what was sent."""
        key = g.key
        now = now_us()
        resend_us = int(self.cfg.alerts.resend_delay_s * 1e6)
        valid_until = now + 4 * max(resend_us, g.group.interval_us)
        due = [a for a in rows
               if (a.state == "firing" and (a.am_state != "firing" or now - (a.am_sent_us or 0) >= resend_us))
               or (a.state == "resolved" and a.am_state == "firing")]
        if due and self.notifier.to_alertmanager([alertmanager_alert(a, valid_until) for a in due]):
            for a in due:
                self.store.mark_sent(key, a.rule, a.fingerprint, am_sent_us=now, am_state=a.state)
        if not self.notifier.webhook_urls:
            return
        for a in rows:
            if a.state == "firing":
                owed = a.hook_state != "firing"
            else:      # a resolution is owed to a receiver that was (or may have been) told it fires
                owed = a.state == "resolved" and "firing" in (a.hook_state, a.hook_sending)
            if not owed:
                continue
            body = webhook_body(a, *key)
            if a.hook_sending == a.state:
                # Sent before by an evaluator that did not live to see the answer: the same id again.
                self.notifier.redelivered()
                log.info("webhook notification sent again: its delivery was not confirmed",
                         extra={"group": _group_text(key), "rule": a.rule, "state": a.state, "id": body["id"]})
            else:
                self.store.mark_sending(key, a.rule, a.fingerprint, a.state)
                a.hook_sending = a.state
            if self.notifier.to_webhooks(body):
                self.store.mark_sent(key, a.rule, a.fingerprint, hook_state=a.state)

    # -- probes ---------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ok", "owner": self.owner}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        if self.last_error:
            return False, {"status": "unavailable", "reason": self.last_error}
        return True, {"status": "ready", "groups_held": len(self._held)}

