"""Backtests: a rule replayed over stored history, every step through the evaluator's own state machine,
to say when it would have fired and resolved before it pages anyone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from query.alerts.evaluation import Found, RuleQueries
from query.alerts.rules import Rule, RuleError
from query.alerts.state import advance
from query.alerts.store import AlertRow
from query.timerange import format_us

MAX_STEPS = 100_000


@dataclass
class Firing:
    """One alert's life in the replay: pending from, firing from, resolved at (None: still firing)."""

    labels: dict[str, str]
    pending_us: int
    fired_us: int
    resolved_us: int | None
    max_value: float

    def as_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "pending_at": format_us(self.pending_us), "fired_at": format_us(self.fired_us),
                "resolved_at": format_us(self.resolved_us) if self.resolved_us is not None else None,
                "max_value": self.max_value}


@dataclass
class BacktestResult:
    rule: str
    start_us: int
    end_us: int
    step_us: int
    steps: int
    firings: list[Firing]

    def as_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "start": format_us(self.start_us), "end": format_us(self.end_us),
                "step_s": self.step_us / 1e6, "steps": self.steps, "firings": [f.as_json() for f in self.firings]}


def backtest_steps(start_us: int, end_us: int, step_us: int) -> np.ndarray:
    """The evaluation times in [start, end]: multiples of the step, as the evaluator's slots are."""
    if step_us <= 0:
        raise RuleError("the step must be positive")
    if end_us < start_us:
        raise RuleError("end is before start")
    first = -(-start_us // step_us) * step_us
    steps = np.arange(first, end_us + 1, step_us, dtype=np.int64)
    if len(steps) > MAX_STEPS:
        raise RuleError(f"{len(steps)} steps; at most {MAX_STEPS}: use a larger step or a shorter range")
    return steps


def replay(rule: Rule, steps: np.ndarray, found_at: list[list[Found]]) -> list[Firing]:
    """The firings of ``rule`` given what it found at each step."""
    alerts: list[AlertRow] = []
    open_: dict[tuple[str, int], Firing] = {}
    done: list[Firing] = []
    for t, found in zip(steps.tolist(), found_at, strict=True):
        alerts, _, changes = advance(rule, alerts, found, t, 0)
        for a in alerts:
            f = open_.get((a.fingerprint, a.active_us))
            if f is not None and a.value is not None and a.state == "firing":
                f.max_value = max(f.max_value, a.value)
        for c in changes:
            a = c.alert
            if c.to == "firing":
                f = Firing(a.labels, a.active_us, t, None, a.value if a.value is not None else float("nan"))
                open_[(a.fingerprint, a.active_us)] = f
                done.append(f)
            elif c.to == "resolved":
                f = open_.pop((a.fingerprint, a.active_us))
                f.resolved_us = t
    return sorted(done, key=lambda f: (f.fired_us, sorted(f.labels.items())))


def backtest(queries: RuleQueries, rule: Rule, tenant: str, start_us: int, end_us: int,
             step_us: int) -> BacktestResult:
    """Replay ``rule`` at every step of [start, end] over what is stored now."""
    if rule.kind != "alert":
        raise RuleError(f"rule {rule.name!r}: only alerting rules can be backtested")
    steps = backtest_steps(start_us, end_us, step_us)
    series = queries.series(rule, tenant, steps) if len(steps) else {}
    found_at = [[Found(dict(k), float(v[j])) for k, v in sorted(series.items()) if not np.isnan(v[j])]
                for j in range(len(steps))]
    return BacktestResult(rule.name, start_us, end_us, step_us, len(steps), replay(rule, steps, found_at))
