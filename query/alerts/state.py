"""Each alert's state machine, as Prometheus's ``rules/alerting.go`` keeps it; pure, no I/O.

An alert is a rule and one set of labels. Found at an evaluation: it becomes ``pending``, and
``firing`` once it has been found at every evaluation for ``for`` (at once when ``for`` is 0).
Not found: a pending alert is forgotten; a firing one is ``resolved`` and kept for
``resolved_keep`` (so it is still listed and sent as resolved), then forgotten. A resolved alert
found again starts over as a new pending one. The evaluator and the backtest both step alerts
through :func:`advance`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from query.alerts.evaluation import Found
from query.alerts.rules import Rule, render
from query.alerts.store import AlertRow


def alert_labels(rule: Rule, series: dict[str, str], value: float | None) -> dict[str, str]:
    """The series' labels, the rule's own (rendered) over them, and ``alertname`` (``__name__`` for a
    recording rule)."""
    out = dict(series)
    out.update({k: render(v, series, value) for k, v in rule.labels.items()})
    out["alertname" if rule.kind == "alert" else "__name__"] = rule.name
    return out


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(orjson.dumps(sorted(labels.items()))).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Change:
    """An alert that changed state at an evaluation: ``pending``, ``firing`` or ``resolved``."""

    alert: AlertRow
    to: str


def advance(rule: Rule, previous: Iterable[AlertRow], found: list[Found], at_us: int,
            resolved_keep_us: int) -> tuple[list[AlertRow], list[str], list[Change]]:
    """One evaluation of ``rule`` at ``at_us``: the alerts to keep (their new rows), the fingerprints
    to forget, and what changed."""
    before = {a.fingerprint: a for a in previous if a.rule == rule.name}
    kept: list[AlertRow] = []
    changes: list[Change] = []
    seen: set[str] = set()
    for f in found:
        labels = alert_labels(rule, f.labels, f.value)
        fp = fingerprint(labels)
        if fp in seen:
            continue
        seen.add(fp)
        annotations = {k: render(v, f.labels, f.value) for k, v in rule.annotations.items()}
        old = before.get(fp)
        if old is None or old.state == "resolved":
            a = AlertRow(rule.name, fp, "pending", labels, annotations, f.value, at_us, last_eval_us=at_us)
            if old is not None:        # what was sent of the resolved one still stands
                a.am_sent_us, a.am_state, a.hook_state = old.am_sent_us, old.am_state, old.hook_state
                a.hook_sending = old.hook_sending
            changes.append(Change(a, "pending"))
        else:
            a = AlertRow(rule.name, fp, old.state, labels, annotations, f.value, old.active_us, old.fired_us, None,
                         at_us, old.am_sent_us, old.am_state, old.hook_state, old.detail, old.hook_sending)
        if a.state == "pending" and at_us - a.active_us >= rule.for_us:
            a.state, a.fired_us = "firing", at_us
            changes.append(Change(a, "firing"))
        kept.append(a)
    gone: list[str] = []
    for fp, old in before.items():
        if fp in seen:
            continue
        if old.state == "pending":
            gone.append(fp)
        elif old.state == "firing":
            a = AlertRow(old.rule, fp, "resolved", old.labels, old.annotations, old.value, old.active_us, old.fired_us,
                         at_us, at_us, old.am_sent_us, old.am_state, old.hook_state, old.detail, old.hook_sending)
            kept.append(a)
            changes.append(Change(a, "resolved"))
        elif old.resolved_us is not None and at_us - old.resolved_us >= resolved_keep_us \
                and old.am_state != "firing" and old.hook_state != "firing" and old.hook_sending != "firing":
            gone.append(fp)        # forgotten only once receivers were told it resolved
        else:
            kept.append(old)
    return kept, gone, changes
