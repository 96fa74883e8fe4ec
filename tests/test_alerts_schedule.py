"""An evaluator that falls behind, on a clock the test moves (the evaluator and the store read the time
through ``now_us``): missed slots are evaluated late, each at its own time, the lag is measured and logged;
beyond ``alerts.max_catchup`` the oldest are dropped, logged and counted. The catalog, the lake and the
queries are real (an empty SQLite lake)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from loglake.core.config import load_config
from query.alerts import evaluator as evaluator_module
from query.alerts import store as store_module
from query.alerts.evaluator import AlertEvaluator
from query.alerts.rules import parse_group
from storage.catalog import Catalog

S = 1_000_000
KEY = ("t", "ns", "g")
NAME = "t/ns/g"


class Clock:
    def __init__(self, at_us: int) -> None:
        self.at_us = at_us

    def __call__(self) -> int:
        return self.at_us


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AlertEvaluator, Clock]]:
    (tmp_path / "empty.toml").write_text("")
    cfg = load_config(environ={"LOGLAKE_CONFIG": str(tmp_path / "empty.toml"),
                               "LOGLAKE_STORAGE__DATA_ROOT": str(tmp_path / "data"),
                               "LOGLAKE_ALERTS__MAX_CATCHUP": "3", "LOGLAKE_ALERTS__LEASE_S": "3600"})
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    ev = AlertEvaluator(cfg, catalog, owner="only")
    ev.store.put_group("t", parse_group({"name": "g", "interval": "10s", "rules": [
        {"record": "lines:count", "query": "", "condition": {"window": "10s"}},
        {"alert": "Errors", "query": "level:error", "condition": {"fn": "count", "window": "10s", "op": ">",
                                                                   "threshold": 0}}]}, "ns", S))
    # An aligned time well in the past, so that no real clock reading can be mistaken for it.
    clock = Clock((1_700_000_000 * S) // (10 * S) * (10 * S))
    monkeypatch.setattr(evaluator_module, "now_us", clock)
    monkeypatch.setattr(store_module, "now_us", clock)
    try:
        yield ev, clock
    finally:
        ev.notifier.close()
        catalog.close()


def run_until_idle(ev: AlertEvaluator) -> int:
    """Ticks until nothing is due (as the loop does without sleeping); how many ticks did work."""
    busy = 0
    while ev.tick():
        busy += 1
        assert busy < 100
    return busy


def sample(ev: AlertEvaluator, name: str) -> float | None:
    return ev.metrics.registry.get_sample_value(name, {"group": NAME})


def test_late_slots_run_at_their_own_times_and_beyond_max_catchup_the_oldest_are_dropped(
        rig: tuple[AlertEvaluator, Clock], caplog: pytest.LogCaptureFixture) -> None:
    ev, clock = rig
    t0 = clock.at_us
    caplog.set_level(logging.INFO, "loglake.alerts")

    def slots() -> list[int]:
        return sorted((e.slot_us - t0) // S for e in ev.store.evaluations(KEY))

    clock.at_us = t0 + 1 * S
    assert run_until_idle(ev) == 1
    clock.at_us = t0 + 11 * S
    assert run_until_idle(ev) == 1
    assert slots() == [0, 10]
    assert sample(ev, "loglake_alert_evaluation_lag_seconds") == pytest.approx(1.0)
    assert not sample(ev, "loglake_alert_evaluations_behind_total")

    # Paused for 30 s: slots 20, 30 and 40 are due (3 = max_catchup): each is evaluated, late, at its own time.
    clock.at_us = t0 + 41 * S
    assert run_until_idle(ev) == 3
    assert slots() == [0, 10, 20, 30, 40]
    assert [(e.slot_us - t0) // S for e in ev.store.evaluations(KEY, 3)] == [40, 30, 20]
    assert all(e.started_us == t0 + 41 * S for e in ev.store.evaluations(KEY, 3))
    assert sample(ev, "loglake_alert_evaluations_behind_total") == 2       # 20 (21 s late) and 30 (11 s)
    assert sample(ev, "loglake_alert_evaluation_lag_seconds") == pytest.approx(1.0)   # 40, the last
    behind = [r for r in caplog.records if r.getMessage() == "alert evaluation behind its schedule"]
    assert behind and behind[0].__dict__["lag_s"] == pytest.approx(21.0) and behind[0].__dict__["group"] == NAME
    assert not sample(ev, "loglake_alert_evaluations_missed_total")

    # Paused for 100 s: slots 50..140 are due, 10 of them; the 7 oldest are dropped, the 3 newest run.
    clock.at_us = t0 + 141 * S
    assert run_until_idle(ev) == 4                 # one skip, three evaluations
    assert slots() == [0, 10, 20, 30, 40, 120, 130, 140]
    assert sample(ev, "loglake_alert_evaluations_missed_total") == 7
    [dropped] = [r for r in caplog.records if r.getMessage().startswith("alert evaluations dropped")]
    assert dropped.levelno == logging.ERROR
    assert (dropped.__dict__["dropped"], dropped.__dict__["from"] - t0, dropped.__dict__["to"] - t0) == \
        (7, 50 * S, 120 * S)
    # Back on time: the next slot runs when due, not before.
    clock.at_us = t0 + 149 * S
    assert run_until_idle(ev) == 0
    clock.at_us = t0 + 150 * S
    assert run_until_idle(ev) == 1 and slots()[-1] == 150
    assert sample(ev, "loglake_alert_evaluations_total") == 9
    assert ev.store.evaluations(KEY, 1)[0].errors == {}
