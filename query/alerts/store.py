"""Alert rules and their state in the catalog's database (tables from the catalog's migrations).

A group's lease (``alert_leases``) says which evaluator acts for it and the next time to evaluate;
an evaluation's results are committed only while the lease is still the evaluator's and the slot
still the next one, in one transaction with the alerts' new states and the evaluation's row, whose
key is the group and slot: a slot is evaluated once, whoever tries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from query.alerts.rules import Group, parse_group
from storage.catalog import Catalog
from storage.errors import CatalogConflict

GroupKey = tuple[str, str, str]      # tenant, namespace, group name


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class AlertRow:
    """One alert (a rule and a set of labels) as stored."""

    rule: str
    fingerprint: str
    state: str                      # pending | firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float | None
    active_us: int
    fired_us: int | None = None
    resolved_us: int | None = None
    last_eval_us: int = 0
    am_sent_us: int | None = None
    am_state: str | None = None
    hook_state: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    #: A state being sent to webhooks whose delivery is not confirmed yet (the sender may have died).
    hook_sending: str | None = None


@dataclass(frozen=True, slots=True)
class StoredGroup:
    tenant: str
    group: Group
    source: str
    updated_us: int

    @property
    def key(self) -> GroupKey:
        return (self.tenant, self.group.namespace, self.group.name)


@dataclass(frozen=True, slots=True)
class Evaluation:
    slot_us: int
    evaluator: str
    started_us: int
    duration_us: int
    errors: dict[str, str]


class LeaseLost(CatalogConflict):
    """The group's lease or slot moved while this evaluator worked: its results are not recorded."""


_ALERT_COLUMNS = ("rule, fingerprint, state, labels, annotations, value, active_us, fired_us, resolved_us, "
                  "last_eval_us, am_sent_us, am_state, hook_state, detail, hook_sending")


def _alert(r: Sequence[Any]) -> AlertRow:
    return AlertRow(r[0], r[1], r[2], orjson.loads(r[3]), orjson.loads(r[4]), r[5], r[6], r[7], r[8], r[9], r[10],
                    r[11], r[12], orjson.loads(r[13]), r[14])


class AlertStore:
    """Rule groups, alert states, leases and evaluations of every tenant."""

    def __init__(self, catalog: Catalog) -> None:
        self.db = catalog.db

    # -- groups ---------------------------------------------------------------

    def groups(self, tenant: str | None = None, namespace: str | None = None) -> list[StoredGroup]:
        p = self.db.dialect.p
        where, params = [], []
        if tenant is not None:
            where.append(f"tenant={p}")
            params.append(tenant)
        if namespace is not None:
            where.append(f"namespace={p}")
            params.append(namespace)
        sql = "SELECT tenant, namespace, name, interval_s, rules, source, updated_us FROM alert_groups"
        if where:
            sql += " WHERE " + " AND ".join(where)
        out = []
        for t, ns, name, interval_s, rules, source, updated in self.db.read(sql + " ORDER BY 1, 2, 3", params):
            raw = {"name": name, "interval": float(interval_s), "rules": orjson.loads(rules)}
            out.append(StoredGroup(t, parse_group(raw, ns, int(interval_s * 1e6)), source, updated))
        return out

    def group(self, key: GroupKey) -> StoredGroup | None:
        return next((g for g in self.groups(key[0], key[1]) if g.group.name == key[2]), None)

    def put_group(self, tenant: str, group: Group, source: str = "api") -> None:
        """Create or replace a group; states of rules it no longer has are dropped."""
        with self.db.transaction() as tx:
            p = tx.dialect.p
            key = (tenant, group.namespace, group.name)
            tx.execute(f"DELETE FROM alert_groups WHERE tenant={p} AND namespace={p} AND name={p}", key)
            tx.execute(f"INSERT INTO alert_groups (tenant, namespace, name, interval_s, rules, source, updated_us)"
                       f" VALUES ({tx.dialect.params(7)})",
                       (*key, group.interval_us / 1e6, orjson.dumps([r.spec() for r in group.rules]).decode(),
                        source, now_us()))
            kept = [r.name for r in group.rules]
            for (rule,) in tx.execute(f"SELECT DISTINCT rule FROM alert_state WHERE tenant={p} AND namespace={p}"
                                      f" AND grp={p}", key).fetchall():
                if rule not in kept:
                    tx.execute(f"DELETE FROM alert_state WHERE tenant={p} AND namespace={p} AND grp={p}"
                               f" AND rule={p}", (*key, rule))

    def delete_group(self, key: GroupKey) -> bool:
        with self.db.transaction() as tx:
            p = tx.dialect.p
            found = tx.execute(f"DELETE FROM alert_groups WHERE tenant={p} AND namespace={p} AND name={p}",
                               key).rowcount
            for table in ("alert_state", "alert_leases", "alert_evaluations"):
                tx.execute(f"DELETE FROM {table} WHERE tenant={p} AND namespace={p} AND grp={p}", key)
            return bool(found)

    def replace_namespace(self, tenant: str, namespace: str, groups: list[Group], source: str) -> None:
        """The namespace holds exactly ``groups`` (a rule file loaded again)."""
        names = {g.name for g in groups}
        for old in self.groups(tenant, namespace):
            if old.group.name not in names:
                self.delete_group(old.key)
        for g in groups:
            self.put_group(tenant, g, source)

    # -- alerts ---------------------------------------------------------------

    def alerts(self, key: GroupKey) -> list[AlertRow]:
        p = self.db.dialect.p
        rows = self.db.read(f"SELECT {_ALERT_COLUMNS} FROM alert_state WHERE tenant={p} AND namespace={p} AND grp={p}"
                            " ORDER BY rule, fingerprint", key)
        return [_alert(r) for r in rows]

    def mark_sent(self, key: GroupKey, rule: str, fingerprint: str, *, am_sent_us: int | None = None,
                  am_state: str | None = None, hook_state: str | None = None) -> None:
        """Record what was sent of one alert (after sending it)."""
        sets, params = [], []
        p = self.db.dialect.p
        if am_state is not None:
            sets += [f"am_sent_us={p}", f"am_state={p}"]
            params += [am_sent_us, am_state]
        if hook_state is not None:
            sets += [f"hook_state={p}", "hook_sending=NULL"]
            params.append(hook_state)
        if not sets:
            return
        with self.db.transaction() as tx:
            tx.execute(f"UPDATE alert_state SET {', '.join(sets)} WHERE tenant={p} AND namespace={p} AND grp={p}"
                       f" AND rule={p} AND fingerprint={p}", (*params, *key, rule, fingerprint))

    def mark_sending(self, key: GroupKey, rule: str, fingerprint: str, hook_state: str) -> None:
        """Record that ``hook_state`` is about to be sent to the webhooks (before sending it), so that
        a sender that dies before :meth:`mark_sent` leaves a trace: whoever evaluates next sends it
        again under the same id, and sends the resolution of a firing that may have been delivered."""
        p = self.db.dialect.p
        with self.db.transaction() as tx:
            tx.execute(f"UPDATE alert_state SET hook_sending={p} WHERE tenant={p} AND namespace={p} AND grp={p}"
                       f" AND rule={p} AND fingerprint={p}", (hook_state, *key, rule, fingerprint))

    # -- leases and evaluations ----------------------------------------------

    def acquire(self, key: GroupKey, owner: str, lease_us: int, first_slot_us: int) -> int | None:
        """Take or renew the group's lease; the next slot to evaluate if ``owner`` holds it, else None."""
        now = now_us()
        with self.db.transaction() as tx:
            p = tx.dialect.p
            row = tx.execute(f"SELECT owner, expires_us, next_slot_us FROM alert_leases WHERE tenant={p}"
                             f" AND namespace={p} AND grp={p}", key).fetchone()
            if row is None:
                tx.execute(f"INSERT INTO alert_leases (tenant, namespace, grp, owner, expires_us, next_slot_us)"
                           f" VALUES ({tx.dialect.params(6)})", (*key, owner, now + lease_us, first_slot_us))
                return first_slot_us
            holder, expires, next_slot = row
            if holder != owner and expires > now:
                return None
            tx.execute(f"UPDATE alert_leases SET owner={p}, expires_us={p} WHERE tenant={p} AND namespace={p}"
                       f" AND grp={p}", (owner, now + lease_us, *key))
            return int(next_slot)

    def release(self, key: GroupKey, owner: str) -> None:
        with self.db.transaction() as tx:
            p = tx.dialect.p
            tx.execute(f"UPDATE alert_leases SET expires_us=0 WHERE tenant={p} AND namespace={p} AND grp={p}"
                       f" AND owner={p}", (*key, owner))

    def commit(self, key: GroupKey, owner: str, slot_us: int, next_slot_us: int, lease_us: int,
               alerts: list[AlertRow], gone: list[tuple[str, str]], evaluation: Evaluation) -> None:
        """Record one evaluation: the alerts' states, the forgotten ones, the next slot, in one
        transaction, only if ``owner`` still holds the lease at ``slot_us`` (LeaseLost if not)."""
        with self.db.transaction() as tx:
            p = tx.dialect.p
            moved = tx.execute(f"UPDATE alert_leases SET next_slot_us={p}, expires_us={p} WHERE tenant={p}"
                               f" AND namespace={p} AND grp={p} AND owner={p} AND next_slot_us={p}",
                               (next_slot_us, now_us() + lease_us, *key, owner, slot_us)).rowcount
            if not moved:
                raise LeaseLost(f"group {key[1]}/{key[2]} of tenant {key[0]} was taken over before slot "
                                f"{slot_us} was recorded")
            tx.execute(f"INSERT INTO alert_evaluations (tenant, namespace, grp, slot_us, evaluator, started_us,"
                       f" duration_us, errors) VALUES ({tx.dialect.params(8)})",
                       (*key, slot_us, owner, evaluation.started_us, evaluation.duration_us,
                        orjson.dumps(evaluation.errors).decode()))
            # Evaluations are kept for a day: what the rules API shows and what tests count.
            tx.execute(f"DELETE FROM alert_evaluations WHERE tenant={p} AND namespace={p} AND grp={p}"
                       f" AND slot_us < {p}", (*key, slot_us - 86_400_000_000))
            for rule, fp in gone:
                tx.execute(f"DELETE FROM alert_state WHERE tenant={p} AND namespace={p} AND grp={p} AND rule={p}"
                           f" AND fingerprint={p}", (*key, rule, fp))
            for a in alerts:
                tx.execute(f"DELETE FROM alert_state WHERE tenant={p} AND namespace={p} AND grp={p} AND rule={p}"
                           f" AND fingerprint={p}", (*key, a.rule, a.fingerprint))
                tx.execute(f"INSERT INTO alert_state (tenant, namespace, grp, {_ALERT_COLUMNS}) VALUES"
                           f" ({tx.dialect.params(18)})",
                           (*key, a.rule, a.fingerprint, a.state, orjson.dumps(a.labels).decode(),
                            orjson.dumps(a.annotations).decode(), a.value, a.active_us, a.fired_us, a.resolved_us,
                            a.last_eval_us, a.am_sent_us, a.am_state, a.hook_state,
                            orjson.dumps(a.detail).decode(), a.hook_sending))

    def skip_to(self, key: GroupKey, owner: str, slot_us: int, next_slot_us: int) -> bool:
        """Move the next slot forward past missed ones (the caller reports them)."""
        with self.db.transaction() as tx:
            p = tx.dialect.p
            return bool(tx.execute(f"UPDATE alert_leases SET next_slot_us={p} WHERE tenant={p} AND namespace={p}"
                                   f" AND grp={p} AND owner={p} AND next_slot_us={p}",
                                   (next_slot_us, *key, owner, slot_us)).rowcount)

    def evaluations(self, key: GroupKey, limit: int = 1000) -> list[Evaluation]:
        """The group's latest evaluations, newest first."""
        p = self.db.dialect.p
        rows = self.db.read(f"SELECT slot_us, evaluator, started_us, duration_us, errors FROM alert_evaluations"
                            f" WHERE tenant={p} AND namespace={p} AND grp={p} ORDER BY slot_us DESC LIMIT {p}",
                            (*key, limit))
        return [Evaluation(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]
