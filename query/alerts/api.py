"""Alert rules over HTTP: managing groups (JSON, or YAML as Loki's ruler API), the Prometheus-compatible
rules and alerts listings Grafana reads, and backtests."""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Body, Header, Query, Request, Response
from pydantic import BaseModel, Field

from query.alerts.backtest import backtest
from query.alerts.evaluation import RuleQueries
from query.alerts.rules import Group, Rule, RuleError, parse_group, parse_rule
from query.alerts.store import AlertRow, AlertStore, StoredGroup
from query.api.limits import QueryGate
from query.errors import QueryError
from query.service import SearchService
from query.timerange import format_us, now_us, parse_duration_us, parse_range

Tenant = Annotated[str, Header(alias="X-Scope-OrgID")]
_NAMESPACE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


class RuleNotFound(QueryError):
    status_code = 404


class GroupIn(BaseModel):
    interval: str | float | None = Field(None, description="evaluation interval, e.g. 1m "
                                                           "(default alerts.default_interval_s)")
    rules: list[dict[str, Any]] = Field(description="rules as in a rule file: alert/record, expr or query/saved_query "
                                                    "with condition, for, labels, annotations")


class BacktestIn(BaseModel):
    rule: dict[str, Any] | None = Field(None, description="a rule to try (as in a rule file), or name a stored one")
    namespace: str | None = None
    group: str | None = None
    name: str | None = Field(None, description="the stored rule's name")
    since: str | None = Field(None, description="replay the last ..., e.g. 7d (default 1d)")
    start: str | None = None
    end: str | None = None
    step: str | None = Field(None, description="evaluation step (default the group's interval, else 1m)")


def _check_namespace(ns: str) -> None:
    if not (0 < len(ns) <= 128) or any(c not in _NAMESPACE_CHARS for c in ns) or ns in (".", ".."):
        raise RuleError(f"invalid namespace {ns[:60]!r}: 1-128 ASCII letters, digits, '.', '_', '-'")


def _seconds(us: int) -> float:
    return us / 1e6


def _alert_json(a: AlertRow) -> dict[str, Any]:
    return {"labels": a.labels, "annotations": a.annotations, "state": a.state,
            "activeAt": format_us(a.active_us), "value": "" if a.value is None else f"{a.value:g}",
            **({"firedAt": format_us(a.fired_us)} if a.fired_us else {}),
            **({"resolvedAt": format_us(a.resolved_us)} if a.resolved_us else {})}


def find_rule(store: AlertStore, tenant: str, name: str, namespace: str | None = None,
              group: str | None = None) -> tuple[StoredGroup, Rule]:
    """A stored rule by name (and namespace/group, needed when the name is not unique in the tenant)."""
    hits = [(g, r) for g in store.groups(tenant, namespace) if group is None or g.group.name == group
            for r in g.group.rules if r.name == name]
    if not hits:
        raise RuleNotFound(f"no rule named {name!r} in tenant {tenant!r}")
    if len(hits) > 1:
        where = ", ".join(f"{g.group.namespace}/{g.group.name}" for g, _ in hits)
        raise RuleError(f"rule {name!r} is in several groups ({where}): name the namespace and group")
    return hits[0]


def router(service: SearchService, gate: QueryGate | None = None, default_interval_s: float = 60.0,
           external_url: str = "") -> APIRouter:
    store = AlertStore(service.catalog)
    queries = RuleQueries(service, external_url)
    gate = gate or QueryGate(service.cfg.query)
    default_us = int(default_interval_s * 1e6)
    r = APIRouter(tags=["alerts"])

    def groups_json(tenant: str) -> list[dict[str, Any]]:
        out = []
        for g in store.groups(tenant):
            alerts = store.alerts(g.key)
            last = store.evaluations(g.key, 1)
            out.append({"namespace": g.group.namespace, "name": g.group.name,
                        "interval_s": _seconds(g.group.interval_us), "source": g.source,
                        "last_evaluation": format_us(last[0].slot_us) if last else None,
                        "rules": [{**rule.spec(), "alerts": [_alert_json(a) for a in alerts if a.rule == rule.name],
                                   "last_error": last[0].errors.get(rule.name) if last else None}
                                  for rule in g.group.rules]})
        return out

    @r.get("/api/v1/alerts/groups")
    def list_groups(tenant: Tenant = "default") -> list[dict[str, Any]]:
        """Every rule group of the tenant, with its rules, their alerts and last errors."""
        return groups_json(tenant)

    @r.put("/api/v1/alerts/groups/{namespace}/{group}")
    def put_group(namespace: str, group: str, body: Annotated[GroupIn, Body()],
                  tenant: Tenant = "default") -> dict[str, Any]:
        """Create or replace a group (writer)."""
        _check_namespace(namespace)
        g = parse_group({"name": group, "interval": body.interval, "rules": body.rules}, namespace, default_us)
        store.put_group(tenant, g)
        return g.spec()

    @r.delete("/api/v1/alerts/groups/{namespace}/{group}", status_code=204)
    def delete_group(namespace: str, group: str, tenant: Tenant = "default") -> Response:
        if not store.delete_group((tenant, namespace, group)):
            raise RuleNotFound(f"no group {namespace}/{group}")
        return Response(status_code=204)

    @r.post("/api/v1/alerts/backtest")
    @gate.guard
    def backtest_route(body: Annotated[BacktestIn, Body()], tenant: Tenant = "default") -> dict[str, Any]:
        """Replay a rule (given, or stored by name) over stored history: when it would have fired and resolved."""
        step_us = 60_000_000
        if body.rule is not None:
            rule = parse_rule(body.rule)
        elif body.name:
            sg, rule = find_rule(store, tenant, body.name, body.namespace, body.group)
            step_us = sg.group.interval_us
        else:
            raise RuleError("give a rule, or the name of a stored one")
        if body.step:
            step_us = parse_duration_us(body.step)
        if body.since:
            end_us = now_us() if body.end is None else parse_range(None, body.end)[1]
            start_us = end_us - parse_duration_us(body.since)
        else:
            start_us, end_us = parse_range(body.start or "now-1d", body.end)
        return backtest(queries, rule, tenant, start_us, end_us, step_us).as_json()

    # -- Prometheus's rules and alerts (what Grafana's alerting views read) --------------------

    @r.get("/prometheus/api/v1/rules")
    def prometheus_rules(tenant: Tenant = "default",
                         type_: Annotated[str | None, Query(alias="type")] = None) -> dict[str, Any]:
        out = []
        for g in store.groups(tenant):
            alerts = store.alerts(g.key)
            evals = store.evaluations(g.key, 1)
            last = evals[0] if evals else None
            rules = []
            for rule in g.group.rules:
                kind = "alerting" if rule.kind == "alert" else "recording"
                if type_ and not kind.startswith(type_.rstrip("s")[:5]):
                    continue
                err = last.errors.get(rule.name) if last else None
                entry: dict[str, Any] = {
                    "name": rule.name, "query": rule.text, "labels": rule.labels, "type": kind,
                    "health": "unknown" if last is None else ("err" if err else "ok"), "lastError": err or "",
                    "lastEvaluation": format_us(last.slot_us) if last else "0001-01-01T00:00:00Z",
                    "evaluationTime": _seconds(last.duration_us) if last else 0}
                if rule.kind == "alert":
                    mine = [a for a in alerts if a.rule == rule.name and a.state != "resolved"]
                    state = "firing" if any(a.state == "firing" for a in mine) else \
                        "pending" if mine else "inactive"
                    entry.update(duration=_seconds(rule.for_us), annotations=rule.annotations, state=state,
                                 alerts=[_alert_json(a) for a in mine])
                rules.append(entry)
            out.append({"name": g.group.name, "file": g.group.namespace, "interval": _seconds(g.group.interval_us),
                        "rules": rules, "evaluationTime": _seconds(last.duration_us) if last else 0,
                        "lastEvaluation": format_us(last.slot_us) if last else "0001-01-01T00:00:00Z"})
        return {"status": "success", "data": {"groups": out}}

    @r.get("/prometheus/api/v1/alerts")
    def prometheus_alerts(tenant: Tenant = "default") -> dict[str, Any]:
        alerts = [_alert_json(a) for g in store.groups(tenant) for a in store.alerts(g.key) if a.state != "resolved"]
        return {"status": "success", "data": {"alerts": alerts}}

    # -- Loki's ruler API (YAML) ----------------------------------------------------------------

    def yaml_response(namespaces: dict[str, list[Group]]) -> Response:
        doc = {ns: [g.spec() for g in gs] for ns, gs in sorted(namespaces.items())}
        return Response(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), media_type="application/yaml")

    def by_namespace(tenant: str, namespace: str | None = None) -> dict[str, list[Group]]:
        out: dict[str, list[Group]] = {}
        for g in store.groups(tenant, namespace):
            out.setdefault(g.group.namespace, []).append(g.group)
        return out

    @r.get("/loki/api/v1/rules")
    def loki_rules(tenant: Tenant = "default") -> Response:
        """Every rule group by namespace, as Loki's ruler lists them (YAML; 404 when there are none, as Loki)."""
        found = by_namespace(tenant)
        if not found:
            raise RuleNotFound("no rule groups found")
        return yaml_response(found)

    @r.get("/loki/api/v1/rules/{namespace}")
    def loki_namespace(namespace: str, tenant: Tenant = "default") -> Response:
        found = by_namespace(tenant, namespace)
        if not found:
            raise RuleNotFound(f"no rule groups in namespace {namespace!r}")
        return yaml_response(found)

    @r.get("/loki/api/v1/rules/{namespace}/{group}")
    def loki_group(namespace: str, group: str, tenant: Tenant = "default") -> Response:
        g = store.group((tenant, namespace, group))
        if g is None:
            raise RuleNotFound(f"no group {namespace}/{group}")
        return Response(yaml.safe_dump(g.group.spec(), sort_keys=False), media_type="application/yaml")

    @r.post("/loki/api/v1/rules/{namespace}", status_code=202)
    async def loki_set_group(namespace: str, request: Request, tenant: Tenant = "default") -> dict[str, str]:
        """Create or replace one group of the namespace from its YAML (writer)."""
        _check_namespace(namespace)
        text = (await request.body()).decode("utf-8", "replace")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RuleError(f"not YAML: {e}") from None
        store.put_group(tenant, parse_group(raw, namespace, default_us))
        return {"status": "success"}

    @r.delete("/loki/api/v1/rules/{namespace}/{group}", status_code=202)
    def loki_delete_group(namespace: str, group: str, tenant: Tenant = "default") -> dict[str, str]:
        if not store.delete_group((tenant, namespace, group)):
            raise RuleNotFound(f"no group {namespace}/{group}")
        return {"status": "success"}

    @r.delete("/loki/api/v1/rules/{namespace}", status_code=202)
    def loki_delete_namespace(namespace: str, tenant: Tenant = "default") -> dict[str, str]:
        groups = store.groups(tenant, namespace)
        if not groups:
            raise RuleNotFound(f"no rule groups in namespace {namespace!r}")
        for g in groups:
            store.delete_group(g.key)
        return {"status": "success"}

    return r
