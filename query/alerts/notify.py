"""Sending alerts: to Alertmanager's v2 API as Prometheus does, and to plain webhooks.

Alertmanager is sent every firing alert again each ``resend_delay_s`` with an ``endsAt`` a few
resends ahead (so it resolves them itself should the evaluator die), and a resolved alert once
with its ``endsAt``; it deduplicates by labels, so a resend is never a second page. A webhook is
sent one POST when an alert starts firing and one when it resolves, each with an ``id`` (also its
``Idempotency-Key`` header) that is the same however often it is sent: the alert's group,
fingerprint, start and state. A POST whose answer never came back (the evaluator died, or the
receiver did not answer) is sent again under the same id, so a receiver that drops ids it has seen
gets each notification exactly once; one that does not may get it twice (at least once: HTTP
cannot tell a lost request from a lost answer).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import httpx

from query.alerts.store import AlertRow
from query.timerange import format_us

log = logging.getLogger("loglake.alerts")


def alertmanager_alert(a: AlertRow, valid_until_us: int) -> dict[str, Any]:
    """One alert as Alertmanager's ``postableAlert``."""
    annotations = dict(a.annotations)
    if a.value is not None:
        annotations.setdefault("value", f"{a.value:g}")
    samples = a.detail.get("samples") or []
    if samples:
        annotations.setdefault("samples", "\n".join(f"{s['ts']} {s['line']}" for s in samples))
    link = a.detail.get("link", "")
    if link:
        annotations.setdefault("link", link)
    ends = a.resolved_us if a.state == "resolved" and a.resolved_us is not None else valid_until_us
    return {"labels": a.labels, "annotations": annotations, "startsAt": format_us(a.fired_us or a.active_us),
            "endsAt": format_us(ends), "generatorURL": link}


def notification_id(a: AlertRow, tenant: str, namespace: str, group: str) -> str:
    """The id of one alert's state change: the same for every send of it, different for any other."""
    key = "\x1f".join((tenant, namespace, group, a.rule, a.fingerprint, str(a.fired_us or a.active_us), a.state))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def webhook_body(a: AlertRow, tenant: str, namespace: str, group: str) -> dict[str, Any]:
    """One alert's state change as a webhook's JSON body."""
    return {"id": notification_id(a, tenant, namespace, group), "status": a.state, "tenant": tenant,
            "namespace": namespace, "group": group, "rule": a.rule,
            "labels": a.labels, "annotations": a.annotations, "value": a.value,
            "startsAt": format_us(a.fired_us or a.active_us),
            "endsAt": format_us(a.resolved_us) if a.resolved_us is not None else None,
            "link": a.detail.get("link", ""), "samples": a.detail.get("samples", [])}


class Notifier:
    """POSTs to the configured Alertmanagers and webhooks; says which succeeded, never raises."""

    def __init__(self, alertmanager_urls: list[str], webhook_urls: list[str], timeout_s: float) -> None:
        self.alertmanager_urls = [u.rstrip("/") for u in alertmanager_urls]
        self.webhook_urls = webhook_urls
        self.client = httpx.Client(timeout=timeout_s)
        self.sent: dict[tuple[str, str], int] = {}      # (receiver, outcome) -> count, for /metrics

    def close(self) -> None:
        self.client.close()

    def _post(self, receiver: str, url: str, body: Any, headers: dict[str, str] | None = None) -> bool:
        try:
            resp = self.client.post(url, json=body, headers=headers)
            ok = 200 <= resp.status_code < 300
            if not ok:
                log.warning("notification refused", extra={"receiver": receiver, "url": url,
                                                           "status": resp.status_code, "body": resp.text[:300]})
        except httpx.HTTPError as e:
            log.warning("notification failed", extra={"receiver": receiver, "url": url, "reason": str(e)[:300]})
            ok = False
        k = (receiver, "sent" if ok else "failed")
        self.sent[k] = self.sent.get(k, 0) + 1
        return ok

    def to_alertmanager(self, alerts: list[dict[str, Any]]) -> bool:
        """Send ``alerts`` to every Alertmanager; True when all took them (False also with none configured)."""
        if not alerts or not self.alertmanager_urls:
            return False
        return all([self._post("alertmanager", f"{u}/api/v2/alerts", alerts) for u in self.alertmanager_urls])

    def to_webhooks(self, body: dict[str, Any]) -> bool:
        """POST ``body`` (a :func:`webhook_body`) to every webhook; True when all took it."""
        if not self.webhook_urls:
            return False
        headers = {"Idempotency-Key": body["id"]}
        return all([self._post("webhook", u, body, headers) for u in self.webhook_urls])

    def redelivered(self) -> None:
        k = ("webhook", "redelivered")
        self.sent[k] = self.sent.get(k, 0) + 1
