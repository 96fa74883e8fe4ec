"""The alert store on SQLite and on PostgreSQL (the ``catalog_url`` fixture): groups, every field of an
alert's state, what was sent and what is being sent, leases (two evaluators contending, one acting, a
lapsed lease taken over, a stale commit refused) and evaluations (each slot recorded once, ever)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from query.alerts.rules import Group, parse_group
from query.alerts.store import AlertRow, AlertStore, Evaluation, LeaseLost
from storage.catalog import Catalog

S = 1_000_000
KEY = ("t", "ns", "g")


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog(catalog_url)
    try:
        yield cat
    finally:
        cat.close()


def group(*rules: str, interval: str = "10s") -> Group:
    return parse_group({"name": "g", "interval": interval, "rules": [
        {"alert": r, "query": "level:error", "condition": {"fn": "count", "window": "1m", "op": ">", "threshold": 0}}
        for r in rules]}, "ns", S)


def row(rule: str, fp: str, state: str = "firing", **kw: object) -> AlertRow:
    base: dict[str, object] = {"labels": {"alertname": rule, "service": "api"}, "annotations": {"s": "x"},
                               "value": 3.5, "active_us": 10 * S}
    base.update(kw)
    return AlertRow(rule, fp, state, **base)


def evaluation(slot: int, owner: str) -> Evaluation:
    return Evaluation(slot, owner, slot + 5, 1234, {})


def test_groups_round_trip_replace_and_delete_with_their_state(catalog: Catalog) -> None:
    store = AlertStore(catalog)
    store.put_group("t", group("A", "B"))
    store.put_group("u", group("A"))
    [g] = store.groups("t")
    assert g.key == KEY and [r.name for r in g.group.rules] == ["A", "B"] and g.group.interval_us == 10 * S
    assert store.group(KEY) == g and store.group(("t", "ns", "other")) is None
    assert len(store.groups()) == 2
    slot = store.acquire(KEY, "e1", 10 * S, 100 * S)
    assert slot == 100 * S
    store.commit(KEY, "e1", slot, slot + 10 * S, 10 * S, [row("A", "fa"), row("B", "fb")], [],
                 evaluation(slot, "e1"))
    # Replacing the group without rule B drops B's alerts and keeps A's.
    store.put_group("t", group("A"))
    assert [a.rule for a in store.alerts(KEY)] == ["A"]
    assert store.delete_group(KEY)
    assert not store.delete_group(KEY)
    assert store.alerts(KEY) == [] and store.evaluations(KEY) == [] and store.groups("t") == []
    assert store.acquire(KEY, "e2", 10 * S, 7 * S) == 7 * S        # the lease went with the group
    assert [g.tenant for g in store.groups()] == ["u"]


def test_every_field_of_an_alert_round_trips_and_sends_are_recorded(catalog: Catalog) -> None:
    store = AlertStore(catalog)
    store.put_group("t", group("A"))
    slot = store.acquire(KEY, "e1", 10 * S, 100 * S)
    assert slot is not None
    a = row("A", "fa", fired_us=20 * S, resolved_us=30 * S, last_eval_us=30 * S, am_sent_us=25 * S,
            am_state="firing", hook_state="firing", detail={"link": "http://x/?q=1", "samples": [{"line": "é"}]},
            hook_sending="resolved", state="resolved")
    pending = row("A", "fp", state="pending", value=None, labels={"alertname": "A", "k": "v w"})
    store.commit(KEY, "e1", slot, slot + 10 * S, 10 * S, [a, pending], [], evaluation(slot, "e1"))
    assert store.alerts(KEY) == [a, pending]

    store.mark_sending(KEY, "A", "fp", "firing")
    assert store.alerts(KEY)[1].hook_sending == "firing"
    store.mark_sent(KEY, "A", "fp", hook_state="firing")           # confirmed: nothing is in flight
    got = store.alerts(KEY)[1]
    assert (got.hook_state, got.hook_sending, got.am_state) == ("firing", None, None)
    store.mark_sent(KEY, "A", "fp", am_sent_us=40 * S, am_state="firing")
    got = store.alerts(KEY)[1]
    assert (got.am_sent_us, got.am_state, got.hook_state) == (40 * S, "firing", "firing")
    # A later evaluation forgets one alert and rewrites the other.
    nxt = slot + 10 * S
    store.commit(KEY, "e1", nxt, nxt + 10 * S, 10 * S, [row("A", "fa", value=9.0)], [("A", "fp")],
                 evaluation(nxt, "e1"))
    [only] = store.alerts(KEY)
    assert (only.fingerprint, only.value, only.hook_sending) == ("fa", 9.0, None)


def test_one_lease_holder_acts_a_lapsed_lease_is_taken_over_and_a_stale_commit_refused(catalog: Catalog) -> None:
    store = AlertStore(catalog)
    store.put_group("t", group("A"))
    lease = 300_000          # 0.3 s
    assert store.acquire(KEY, "e1", lease, 100 * S) == 100 * S
    assert store.acquire(KEY, "e2", lease, 999 * S) is None         # held by e1
    with pytest.raises(LeaseLost):
        store.commit(KEY, "e2", 100 * S, 110 * S, lease, [row("A", "x")], [], evaluation(100 * S, "e2"))
    store.commit(KEY, "e1", 100 * S, 110 * S, lease, [row("A", "fa")], [], evaluation(100 * S, "e1"))
    with pytest.raises(LeaseLost):          # the same slot again: the next slot moved on
        store.commit(KEY, "e1", 100 * S, 110 * S, lease, [row("A", "dup")], [], evaluation(100 * S, "e1"))
    assert store.acquire(KEY, "e1", lease, 0) == 110 * S           # renewing keeps the next slot
    time.sleep(0.4)
    assert store.acquire(KEY, "e2", lease, 0) == 110 * S           # lapsed: e2 takes over where e1 was
    with pytest.raises(LeaseLost):
        store.commit(KEY, "e1", 110 * S, 120 * S, lease, [row("A", "late")], [], evaluation(110 * S, "e1"))
    assert store.skip_to(KEY, "e2", 110 * S, 150 * S)
    assert not store.skip_to(KEY, "e1", 150 * S, 160 * S)
    store.commit(KEY, "e2", 150 * S, 160 * S, lease, [row("A", "fa", value=1.0)], [], evaluation(150 * S, "e2"))
    assert [(e.slot_us, e.evaluator) for e in store.evaluations(KEY)] == [(150 * S, "e2"), (100 * S, "e1")]
    assert [e.slot_us for e in store.evaluations(KEY, 1)] == [150 * S]
    assert [a.fingerprint for a in store.alerts(KEY)] == ["fa"]     # no refused commit left a row
    store.release(KEY, "e2")
    assert store.acquire(KEY, "e1", lease, 0) == 160 * S           # released: taken at once


def test_evaluators_contending_record_each_slot_once(catalog_url: str) -> None:
    """Two evaluators, each with its own connection, race to take the group and record slots 0..N: every
    slot is recorded exactly once, by whoever held the lease, and the next slot follows the last."""
    setup = Catalog(catalog_url)
    store = AlertStore(setup)
    store.put_group("t", group("A", interval="1s"))
    n_slots = 40
    start = threading.Barrier(2)
    lost: dict[str, int] = {}

    def evaluator(owner: str) -> None:
        cat = Catalog(catalog_url)
        mine = AlertStore(cat)
        lost[owner] = 0
        start.wait()
        try:
            while True:
                slot = mine.acquire(KEY, owner, 20_000, 0)          # a 20 ms lease: it changes hands
                if slot is None:
                    time.sleep(0.002)
                    continue
                if slot >= n_slots * S:
                    return
                try:
                    mine.commit(KEY, owner, slot, slot + S, 20_000, [row("A", "fa", value=float(slot))], [],
                                evaluation(slot, owner))
                except LeaseLost:
                    lost[owner] += 1
                if slot % (4 * S) == 0:
                    time.sleep(0.03)                                # let the lease lapse now and then
        finally:
            cat.close()

    threads = [threading.Thread(target=evaluator, args=(o,)) for o in ("e1", "e2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        evals = store.evaluations(KEY)
        assert sorted(e.slot_us for e in evals) == [i * S for i in range(n_slots)]
        assert {e.evaluator for e in evals} == {"e1", "e2"}, "the lease never changed hands"
        [a] = store.alerts(KEY)
        assert a.value == float((n_slots - 1) * S)
        print(f"LeaseLost commits refused: {lost}")
    finally:
        setup.close()
