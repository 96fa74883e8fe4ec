"""`loglake alert` against a real Alertmanager: firing after `for`, listed with its labels and annotations,
received, resolved; an evaluator killed mid-firing and another taking over sends nothing twice and loses
nothing; two evaluators at once evaluate each group once per interval."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from query.alerts.rules import parse_group
from query.alerts.store import AlertStore, Evaluation
from storage.catalog import Catalog
from tests.helpers.alertmanager import Receiver, alertmanager, receiver
from tests.helpers.lake import Segment, record, write_lake
from tests.helpers.processes import Stack, free_port, wait_until
from tests.helpers.server import Server, config_for, serve

S = 1_000_000


@dataclass
class Rig:
    stack: Stack
    catalog: Catalog
    am: str
    hooks: Receiver
    server: Server

    def env(self, **extra: str) -> dict[str, str]:
        return {"LOGLAKE_ALERTS__ALERTMANAGER_URLS": f'["{self.am}"]',
                "LOGLAKE_ALERTS__WEBHOOK_URLS": f'["{self.hooks.url}/direct"]',
                "LOGLAKE_ALERTS__LEASE_S": "2", "LOGLAKE_ALERTS__RESEND_DELAY_S": "1",
                "LOGLAKE_ALERTS__RESOLVED_KEEP_S": "60", "LOGLAKE_ALERTS__EXTERNAL_URL": "http://loglake.test",
                "LOGLAKE_LOG__LEVEL": "info", **extra}

    def evaluating(self, key: tuple[str, str, str]) -> None:
        """Wait for a started evaluator's first evaluation of the group."""
        store = AlertStore(self.catalog)
        wait_until(lambda: store.evaluations(key, 1), 30, 0.1, f"an evaluation of {key}")

    def write(self, tenant: str, name: str, rows: list[dict[str, Any]]) -> None:
        write_lake(self.stack.data_root, self.catalog, [Segment(tenant, name, rows)], topic=f"t-{name}")

    def am_alerts(self, **labels: str) -> list[dict[str, Any]]:
        found = httpx.get(f"{self.am}/api/v2/alerts", timeout=5).json()
        return [a for a in found if all(a["labels"].get(k) == v for k, v in labels.items())]

    def direct(self, tenant: str) -> list[dict[str, Any]]:
        return [b for b in self.hooks.bodies("/direct") if b["tenant"] == tenant]

    def from_am(self, **labels: str) -> list[tuple[str, dict[str, Any]]]:
        """(notification status, alert) of every alert Alertmanager sent the receiver with these labels."""
        return [(b["status"], a) for b in self.hooks.bodies("/am") for a in b["alerts"]
                if all(a["labels"].get(k) == v for k, v in labels.items())]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("alerting")
    stack = Stack(root=tmp, bootstrap="127.0.0.1:9", topic="unused")
    catalog = Catalog(f"sqlite:///{stack.data_root / 'catalog.sqlite'}")
    with receiver() as hooks, alertmanager(tmp / "am", f"{hooks.url}/am") as am, \
            serve(config_for(tmp, stack.data_root)) as server:
        try:
            yield Rig(stack, catalog, am, hooks, server)
        finally:
            stack.stop_all()
            catalog.close()


def _errors(service: str, at_us: int, n: int) -> list[dict[str, Any]]:
    return [record(at_us - i * 100_000, service, "error", f"{service} upstream timeout #{i}") for i in range(n)]


def test_an_alert_fires_after_for_is_listed_received_and_resolves(rig: Rig) -> None:
    store = AlertStore(rig.catalog)
    store.put_group("a", parse_group({"name": "errors", "interval": "1s", "rules": [{
        "alert": "ApiErrors", "query": "level:error timeout",
        "condition": {"fn": "count", "window": "6s", "by": ["service"], "op": ">", "threshold": 2},
        "for": "2s", "labels": {"severity": "page"},
        "annotations": {"summary": "{{ $labels.service }}: {{ $value }} timeouts"}}]}, "ops", S))
    metrics_port = free_port()
    rig.stack.start("alert", name="eval-a", **rig.env(LOGLAKE_ALERTS__METRICS_LISTEN=f"127.0.0.1:{metrics_port}"))
    rig.evaluating(("a", "ops", "errors"))
    t_data = time.time_ns() // 1000
    rig.write("a", "burst", _errors("api", t_data, 5))

    listed = wait_until(lambda: rig.am_alerts(alertname="ApiErrors", service="api"), 20, 0.2,
                        "Alertmanager to list the alert")
    alert = listed[0]
    assert alert["labels"] == {"alertname": "ApiErrors", "service": "api", "severity": "page"}
    assert alert["annotations"]["summary"] == "api: 5 timeouts"
    assert alert["annotations"]["value"] == "5"
    assert "upstream timeout" in alert["annotations"]["samples"]
    assert alert["generatorURL"].startswith("http://loglake.test/?q=")
    assert "service%3A%22api%22" in alert["generatorURL"]
    assert alert["status"]["state"] == "active"
    # Fired only after the condition held for `for` (2 s) from the first evaluation that saw the lines.
    fired = wait_until(lambda: [b for b in rig.direct("a") if b["status"] == "firing"], 10, 0.1, "the webhook")
    assert len(fired) == 1
    body = fired[0]
    starts = _us(body["startsAt"])
    assert starts - t_data >= 2 * S - 1 * S        # pending at the first slot after the lines, firing 2 s on
    assert [s["line"] for s in body["samples"]] == [f"api upstream timeout #{i}" for i in range(3)]
    assert body["labels"]["severity"] == "page" and body["value"] == 5
    wait_until(lambda: [s for s, _ in rig.from_am(alertname="ApiErrors") if s == "firing"], 10, 0.2,
               "Alertmanager's notification")
    rules = rig.server.ok("/prometheus/api/v1/rules", tenant="a")["data"]["groups"]
    assert rules[0]["rules"][0]["state"] == "firing" and rules[0]["rules"][0]["health"] == "ok"
    active = rig.server.ok("/prometheus/api/v1/alerts", tenant="a")["data"]["alerts"]
    assert [a["labels"]["service"] for a in active] == ["api"] and active[0]["state"] == "firing"
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'loglake_alerts{group="a/ops/errors",state="firing"} 1.0' in metrics
    assert 'loglake_alert_evaluations_total{group="a/ops/errors"}' in metrics
    assert "loglake_alert_evaluation_duration_seconds_bucket" in metrics
    loki = yaml.safe_load(rig.server.get("/loki/api/v1/rules", tenant="a").text)
    assert loki["ops"][0]["rules"][0]["alert"] == "ApiErrors"

    # The lines leave the 6 s window: resolved, to the webhook, Alertmanager and its receiver.
    resolved = wait_until(lambda: [b for b in rig.direct("a") if b["status"] == "resolved"], 15, 0.2,
                          "the resolved webhook")
    assert len(resolved) == 1 and resolved[0]["startsAt"] == body["startsAt"]
    assert _us(resolved[0]["endsAt"]) - t_data >= 6 * S - S
    wait_until(lambda: [s for s, _ in rig.from_am(alertname="ApiErrors") if s == "resolved"], 15, 0.2,
               "Alertmanager's resolved notification")
    assert {a["startsAt"] for _, a in rig.from_am(alertname="ApiErrors")} == {_am_time(body["startsAt"])}
    rig.stack.kill("eval-a", signal.SIGINT)
    assert len(rig.direct("a")) == 2
    store.delete_group(("a", "ops", "errors"))


def test_evaluators_killed_and_running_twice_neither_resend_nor_lose_nor_repeat(rig: Rig) -> None:
    store = AlertStore(rig.catalog)
    store.put_group("b", parse_group({"name": "errors", "interval": "1s", "rules": [{
        "alert": "WebErrors", "query": "level:error",
        "condition": {"fn": "count", "window": "12s", "by": ["service"], "op": ">=", "threshold": 3},
        "for": "1s"}]}, "ops", S))
    store.put_group("b", parse_group({"name": "quiet", "interval": "1s", "rules": [{
        "record": "lines:count", "query": "", "condition": {"window": "10s"}}]}, "ops", S))
    t_start = time.time_ns() // 1000
    rig.stack.start("alert", name="eval-b1", **rig.env())
    rig.stack.start("alert", name="eval-b2", **rig.env())
    rig.evaluating(("b", "ops", "errors"))
    rig.write("b", "web", _errors("web", t_start, 4))
    wait_until(lambda: [b for b in rig.direct("b") if b["status"] == "firing"], 20, 0.1, "firing")
    # Kill whichever holds the group, mid-firing (a moment after the webhook's answer was recorded; a
    # kill before it is the next test's); the other takes over once its lease runs out, and a restarted
    # one joins.
    time.sleep(1.5)
    owner = rig.catalog.db.read("SELECT owner FROM alert_leases WHERE tenant='b' AND grp='errors'")[0][0]
    pid = int(owner.split(":")[1])
    holder = next(n for n in ("eval-b1", "eval-b2") if rig.stack.procs[n].pid == pid)
    rig.stack.kill(holder)
    rig.stack.start("alert", name=f"{holder}-again", **rig.env())
    wait_until(lambda: [b for b in rig.direct("b") if b["status"] == "resolved"], 25, 0.2, "resolved")
    time.sleep(2)
    t_end = time.time_ns() // 1000

    direct = rig.direct("b")
    assert [b["status"] for b in direct] == ["firing", "resolved"], [(b["status"], b["startsAt"]) for b in direct]
    assert direct[0]["startsAt"] == direct[1]["startsAt"]
    am_sent = rig.from_am(alertname="WebErrors")
    assert {a["startsAt"] for _, a in am_sent} == {_am_time(direct[0]["startsAt"])}
    wait_until(lambda: [s for s, _ in rig.from_am(alertname="WebErrors") if s == "resolved"], 15, 0.2,
               "Alertmanager's resolved notification")

    for group in ("errors", "quiet"):
        evals = store.evaluations(("b", "ops", group))
        slots = sorted(e.slot_us for e in evals)
        assert len(set(slots)) == len(slots)
        assert all(b - a == S for a, b in zip(slots, slots[1:], strict=False)), f"{group}: a slot was skipped"
        # Every slot once, none skipped, up to now: once per interval, whoever evaluated.
        assert t_end - slots[-1] <= 2 * S, (t_end - slots[-1]) / S
    assert len({e.evaluator for e in store.evaluations(("b", "ops", "errors"))}) >= 2
    for name in list(rig.stack.procs):
        if name.startswith("eval-b"):
            rig.stack.kill(name, signal.SIGINT)
    store.delete_group(("b", "ops", "errors"))
    store.delete_group(("b", "ops", "quiet"))


def test_an_evaluator_killed_before_the_webhook_answers_resends_it_once_under_the_same_id(rig: Rig) -> None:
    """The receiver kills the evaluator on the firing POST, before answering: the next evaluator cannot know
    whether it arrived, so it sends it again, once, with the same id (body and Idempotency-Key), then the
    resolution; Alertmanager keeps one alert with one startsAt throughout."""
    store = AlertStore(rig.catalog)
    store.put_group("c", parse_group({"name": "errors", "interval": "1s", "rules": [{
        "alert": "CartErrors", "query": "level:error",
        "condition": {"fn": "count", "window": "8s", "by": ["service"], "op": ">=", "threshold": 3},
        "for": "1s"}]}, "ops", S))
    killed = threading.Event()

    def kill_on_firing(path: str, body: Any) -> None:
        if path == "/direct" and body.get("tenant") == "c" and body["status"] == "firing" and not killed.is_set():
            rig.stack.kill("eval-c1")
            killed.set()

    rig.hooks.before_answer = kill_on_firing
    try:
        rig.stack.start("alert", name="eval-c1", **rig.env())
        rig.evaluating(("c", "ops", "errors"))
        rig.write("c", "cart", _errors("cart", time.time_ns() // 1000, 4))
        assert killed.wait(20), "the webhook never got the firing notification"
        # Alertmanager was told before the webhook: it lists the one alert.
        [listed] = wait_until(lambda: rig.am_alerts(alertname="CartErrors"), 5, 0.1, "Alertmanager's alert")
        assert _us(listed["startsAt"]) == _us(rig.direct("c")[0]["startsAt"])
        rig.stack.start("alert", name="eval-c2", **rig.env())
        wait_until(lambda: [b for b in rig.direct("c") if b["status"] == "resolved"], 25, 0.2, "resolved")
        wait_until(lambda: [s for s, _ in rig.from_am(alertname="CartErrors") if s == "resolved"], 15, 0.2,
                   "Alertmanager's resolved notification")
    finally:
        rig.hooks.before_answer = None
    posts = [(h, b) for h, b in rig.hooks.posts("/direct") if b["tenant"] == "c"]
    assert [b["status"] for _, b in posts] == ["firing", "firing", "resolved"], [b["status"] for _, b in posts]
    (h1, first), (h2, again), (h3, resolved) = posts
    assert again == first and h1["idempotency-key"] == h2["idempotency-key"] == first["id"]
    assert resolved["id"] != first["id"] and h3["idempotency-key"] == resolved["id"]
    assert resolved["startsAt"] == first["startsAt"]
    am_sent = rig.from_am(alertname="CartErrors")
    assert {a["startsAt"] for _, a in am_sent} == {_am_time(first["startsAt"])}
    log = (rig.stack.logs / "eval-c2.log").read_text()
    assert "its delivery was not confirmed" in log and first["id"] in log
    rig.stack.kill("eval-c2", signal.SIGINT)
    store.delete_group(("c", "ops", "errors"))


def test_a_paused_evaluator_catches_up_reports_its_lag_and_drops_the_oldest_past_max_catchup(rig: Rig) -> None:
    store = AlertStore(rig.catalog)
    key = ("d", "ops", "count")
    store.put_group("d", parse_group({"name": "count", "interval": "1s", "rules": [{
        "record": "lines:count", "query": "", "condition": {"window": "5s"}}]}, "ops", S))
    port = free_port()
    proc = rig.stack.start("alert", name="eval-d", **rig.env(LOGLAKE_ALERTS__MAX_CATCHUP="2",
                                                              LOGLAKE_ALERTS__LEASE_S="30",
                                                              LOGLAKE_ALERTS__METRICS_LISTEN=f"127.0.0.1:{port}"))
    rig.evaluating(key)
    time.sleep(1.2)
    proc.send_signal(signal.SIGSTOP)
    paused_at = time.time_ns() // 1000
    time.sleep(4.5)
    proc.send_signal(signal.SIGCONT)
    resumed_at = time.time_ns() // 1000

    def caught_up() -> list[Evaluation]:
        evals = store.evaluations(key)
        return evals if evals and evals[0].slot_us > resumed_at - S else []

    evals = wait_until(caught_up, 10, 0.1, "the evaluator back on time")
    slots = sorted(e.slot_us for e in evals)
    gaps = [(a, b) for a, b in zip(slots, slots[1:], strict=False) if b - a != S]
    assert len(gaps) == 1, [(a / S, b / S) for a, b in gaps]
    before, after = gaps[0]
    assert before < paused_at + S and (after - before) // S - 1 >= 2          # at least 2 slots dropped
    late = [e for e in evals if e.slot_us >= after and e.started_us - e.slot_us > S]
    assert late, "the kept slots were evaluated late, at their own times"
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    missed = float(next(ln.split()[-1] for ln in metrics.splitlines()
                        if ln.startswith('loglake_alert_evaluations_missed_total{group="d/ops/count"}')))
    assert missed == (after - before) // S - 1
    assert 'loglake_alert_evaluations_behind_total{group="d/ops/count"}' in metrics
    log = (rig.stack.logs / "eval-d.log").read_text()
    assert "alert evaluations dropped" in log and "alert evaluation behind its schedule" in log
    rig.stack.kill("eval-d", signal.SIGINT)
    store.delete_group(key)


def _us(text: str) -> int:
    from query.timerange import parse_time_us
    return parse_time_us(text)


def _am_time(text: str) -> str:
    """Our RFC 3339 time as Alertmanager writes it back (nanoseconds trimmed of zeros)."""
    from datetime import UTC, datetime
    t = datetime.fromtimestamp(_us(text) / 1e6, UTC)
    frac = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"



