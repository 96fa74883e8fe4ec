"""Managing alert rules over HTTP with authentication on (a real uvicorn server, keys made by the real
function the CLI calls): the group routes and Loki's ruler API (YAML), who may change rules (a
writer or admin of the tenant; not a reader, not a writer of another tenant), and the Prometheus rules
and alerts listings in the shapes Grafana reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from loglake.core.config import load_config
from query.alerts.store import AlertRow, AlertStore, Evaluation
from query.auth import create_key
from query.timerange import parse_time_us
from storage.catalog import Catalog
from tests.helpers.processes import free_port
from tests.helpers.server import Server, serve
from tests.helpers.tenants import build_lake

RULES = [{"alert": "Errors", "query": "level:error", "for": "1m", "labels": {"severity": "page"},
          "annotations": {"summary": "{{ $value }} errors"},
          "condition": {"fn": "count", "window": "5m", "by": ["service"], "op": ">", "threshold": 2}},
         {"record": "lines:rate", "expr": 'sum by (service) (rate({service=~".+"}[5m]))'}]
LOKI_GROUP = """
name: loki-made
interval: 30s
rules:
  - alert: Timeouts
    expr: sum(count_over_time({level="error"} |= "timeout" [5m])) > 3
    for: 2m
    labels: {team: web}
"""


@dataclass
class Lake:
    config: Path
    catalog: Catalog
    keys: dict[str, str]


KEYS = {"reader": (["acme"], "reader"), "writer": (["acme"], "writer"), "admin": (["acme"], "admin"),
        "beta_writer": (["beta"], "writer"), "beta_reader": (["beta"], "reader")}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    """The two tenants' lake, auth on, and a key per ``KEYS`` entry (made in process by the function
    ``loglake keys create`` calls: the CLI itself is tested in test_auth.py)."""
    root = tmp_path_factory.mktemp("alerts-api")
    config = root / "loglake.toml"
    config.write_text(f'[storage]\ndata_root = "{root / "data"}"\n\n[auth]\nenabled = true\n')
    cfg = load_config(config, environ={})
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    build_lake(cfg.storage.data_root, catalog)
    keys = {name: create_key(catalog, tenants, role, None) for name, (tenants, role) in KEYS.items()}
    try:
        yield Lake(config, catalog, keys)
    finally:
        catalog.close()


@pytest.fixture(scope="module")
def server(lake: Lake) -> Iterator[Server]:
    with serve(load_config(lake.config, environ={}), port=free_port()) as s:
        assert s.cfg.auth.enabled
        yield s


def names(server: Server, key: str, tenant: str | None = None) -> list[tuple[str, str]]:
    resp = server.get("/api/v1/alerts/groups", key, tenant)
    assert resp.status_code == 200, resp.text
    return [(g["namespace"], g["name"]) for g in resp.json()]


def test_a_writer_puts_replaces_and_deletes_a_group(server: Server, lake: Lake) -> None:
    writer, reader = lake.keys["writer"], lake.keys["reader"]
    put = server.call("PUT", "/api/v1/alerts/groups/team/errors", writer, json={"interval": "30s", "rules": RULES})
    assert put.status_code == 200, put.text
    assert put.json()["interval"] == "30s" and [r.get("alert") or r.get("record") for r in put.json()["rules"]] \
        == ["Errors", "lines:rate"]
    [g] = server.get("/api/v1/alerts/groups", reader).json()
    assert (g["namespace"], g["name"], g["interval_s"], g["source"]) == ("team", "errors", 30.0, "api")
    assert g["rules"][0]["labels"] == {"severity": "page"} and g["rules"][0]["alerts"] == []
    again = server.call("PUT", "/api/v1/alerts/groups/team/errors", writer, json={"rules": RULES[:1]})
    assert again.status_code == 200, again.text
    [g] = server.get("/api/v1/alerts/groups", reader).json()
    assert [r["alert"] for r in g["rules"]] == ["Errors"] and g["interval_s"] == 60.0     # the default
    bad = server.call("PUT", "/api/v1/alerts/groups/team/errors", writer,
                      json={"rules": [{"alert": "Bad", "query": "x", "condition": {"fn": "median(x)"}}]})
    assert bad.status_code == 400 and "rule 'Bad'" in bad.text, bad.text
    bad_ns = server.call("PUT", "/api/v1/alerts/groups/a%20b/errors", writer, json={"rules": RULES})
    assert bad_ns.status_code == 400 and "namespace" in bad_ns.text
    assert [r["alert"] for r in server.get("/api/v1/alerts/groups", reader).json()[0]["rules"]] == ["Errors"]
    assert server.call("DELETE", "/api/v1/alerts/groups/team/errors", writer).status_code == 204
    assert server.call("DELETE", "/api/v1/alerts/groups/team/errors", writer).status_code == 404
    assert names(server, reader) == []


def test_only_writers_and_admins_of_the_tenant_change_its_rules(server: Server, lake: Lake) -> None:
    k = {n: lake.keys[n] for n in ("reader", "writer", "admin", "beta_writer")}
    assert server.call("PUT", "/api/v1/alerts/groups/team/g", k["writer"], json={"rules": RULES}).status_code == 200
    changes = [("PUT", "/api/v1/alerts/groups/team/g", {"json": {"rules": RULES[:1]}}),
               ("DELETE", "/api/v1/alerts/groups/team/g", {}),
               ("POST", "/loki/api/v1/rules/team", {"content": LOKI_GROUP,
                                                    "headers": {"Content-Type": "application/yaml"}}),
               ("DELETE", "/loki/api/v1/rules/team/g", {}),
               ("DELETE", "/loki/api/v1/rules/team", {})]
    for method, path, kw in changes:
        resp = server.call(method, path, k["reader"], **kw)
        assert resp.status_code == 403 and resp.json()["error"] == "Forbidden", f"{method} {path}: {resp.text}"
        # A writer of beta, naming acme, is refused; naming nobody, it writes into beta, never acme.
        resp = server.call(method, path, k["beta_writer"], "acme", **kw)
        assert resp.status_code == 403, f"{method} {path}: {resp.status_code} {resp.text}"
    assert names(server, k["reader"]) == [("team", "g")]
    [g] = server.get("/api/v1/alerts/groups", k["reader"]).json()
    assert len(g["rules"]) == 2                                       # untouched
    beta = server.call("PUT", "/api/v1/alerts/groups/team/g", k["beta_writer"], json={"rules": RULES[:1]})
    assert beta.status_code == 200, beta.text
    assert server.call("DELETE", "/loki/api/v1/rules/team", k["beta_writer"]).status_code == 202
    assert len(server.get("/api/v1/alerts/groups", k["reader"]).json()[0]["rules"]) == 2    # acme's still there
    assert names(server, k["beta_writer"]) == []
    # A reader may still read and backtest: neither changes anything.
    bt = server.call("POST", "/api/v1/alerts/backtest", k["reader"], json={"name": "Errors", "since": "1h"})
    assert bt.status_code == 200, bt.text
    # An admin of acme manages acme's rules.
    assert server.call("PUT", "/api/v1/alerts/groups/team/g", k["admin"], json={"rules": RULES[:1]}).status_code \
        == 200
    assert len(server.get("/api/v1/alerts/groups", k["reader"]).json()[0]["rules"]) == 1
    assert server.call("DELETE", "/api/v1/alerts/groups/team/g", k["admin"]).status_code == 204
    assert names(server, k["reader"]) == []


def test_lokis_ruler_api_sets_lists_and_deletes_groups_as_yaml(server: Server, lake: Lake) -> None:
    writer, reader = lake.keys["writer"], lake.keys["reader"]
    empty = server.get("/loki/api/v1/rules", reader)
    assert empty.status_code == 404 and "no rule groups found" in empty.text     # as Loki's ruler answers
    yaml_type = {"Content-Type": "application/yaml"}
    posted = server.call("POST", "/loki/api/v1/rules/web.yaml", writer, content=LOKI_GROUP, headers=yaml_type)
    assert posted.status_code == 202 and posted.json()["status"] == "success", posted.text
    second = LOKI_GROUP.replace("loki-made", "second").replace("Timeouts", "Slow")
    assert server.call("POST", "/loki/api/v1/rules/web.yaml", writer, content=second,
                       headers=yaml_type).status_code == 202
    assert server.call("POST", "/loki/api/v1/rules/other", writer, content=LOKI_GROUP.replace(
        "loki-made", "third"), headers=yaml_type).status_code == 202

    listed = server.get("/loki/api/v1/rules", reader)
    assert listed.status_code == 200 and listed.headers["content-type"].startswith("application/yaml")
    doc = yaml.safe_load(listed.text)
    assert list(doc) == ["other", "web.yaml"]
    assert [g["name"] for g in doc["web.yaml"]] == ["loki-made", "second"]
    made = doc["web.yaml"][0]
    assert made["interval"] == "30s"
    assert made["rules"] == [{"alert": "Timeouts", "expr": 'sum(count_over_time({level="error"} |= "timeout" [5m]))'
                                                           " > 3", "for": "2m", "labels": {"team": "web"}}]
    assert list(yaml.safe_load(server.get("/loki/api/v1/rules/web.yaml", reader).text)) == ["web.yaml"]
    one = yaml.safe_load(server.get("/loki/api/v1/rules/web.yaml/second", reader).text)
    assert one["name"] == "second" and one["rules"][0]["alert"] == "Slow"
    assert server.get("/loki/api/v1/rules/web.yaml/nope", reader).status_code == 404
    assert server.get("/loki/api/v1/rules/nope", reader).status_code == 404

    bad = server.call("POST", "/loki/api/v1/rules/web.yaml", writer, content="name: [", headers=yaml_type)
    assert bad.status_code == 400 and "not YAML" in bad.text
    bad = server.call("POST", "/loki/api/v1/rules/web.yaml", writer,
                      content="name: x\nrules:\n  - alert: NoExpr\n", headers=yaml_type)
    assert bad.status_code == 400 and "rule 'NoExpr'" in bad.text, bad.text

    assert server.call("DELETE", "/loki/api/v1/rules/web.yaml/second", writer).status_code == 202
    assert server.call("DELETE", "/loki/api/v1/rules/web.yaml/second", writer).status_code == 404
    assert [g["name"] for g in yaml.safe_load(server.get("/loki/api/v1/rules", reader).text)["web.yaml"]] \
        == ["loki-made"]
    assert server.call("DELETE", "/loki/api/v1/rules/web.yaml", writer).status_code == 202
    assert server.call("DELETE", "/loki/api/v1/rules/web.yaml", writer).status_code == 404
    assert list(yaml.safe_load(server.get("/loki/api/v1/rules", reader).text)) == ["other"]
    assert server.call("DELETE", "/loki/api/v1/rules/other", writer).status_code == 202


def _is_time(text: str) -> bool:
    return parse_time_us(text) > 0


def test_prometheus_rules_and_alerts_have_the_shapes_grafana_reads(server: Server, lake: Lake) -> None:
    writer, reader = lake.keys["writer"], lake.keys["reader"]
    assert server.call("PUT", "/api/v1/alerts/groups/team/errors", writer,
                       json={"interval": "30s", "rules": RULES}).status_code == 200
    unevaluated = server.ok("/prometheus/api/v1/rules", reader)
    rule0 = unevaluated["data"]["groups"][0]["rules"][0]
    assert (rule0["health"], rule0["state"], rule0["alerts"]) == ("unknown", "inactive", [])

    # An evaluation as the evaluator records it: one firing alert, one pending, one resolved, no errors.
    store = AlertStore(lake.catalog)
    key = ("acme", "team", "errors")
    slot = 1_700_000_000_000_000
    assert store.acquire(key, "test", 60_000_000, slot) == slot
    firing = AlertRow("Errors", "f1", "firing", {"alertname": "Errors", "service": "shop", "severity": "page"},
                      {"summary": "7 errors"}, 7.0, slot - 60_000_000, fired_us=slot, last_eval_us=slot)
    pending = AlertRow("Errors", "f2", "pending", {"alertname": "Errors", "service": "cart", "severity": "page"},
                       {"summary": "3 errors"}, 3.0, slot, last_eval_us=slot)
    resolved = AlertRow("Errors", "f3", "resolved", {"alertname": "Errors", "service": "old", "severity": "page"},
                        {}, 4.0, slot - 600_000_000, slot - 500_000_000, slot - 100_000_000, slot)
    store.commit(key, "test", slot, slot + 30_000_000, 60_000_000, [firing, pending, resolved], [],
                 Evaluation(slot, "test", slot + 1000, 25_000, {"lines:rate": "QueryError: boom"}))

    body = server.ok("/prometheus/api/v1/rules", reader)
    assert body["status"] == "success"
    [group] = body["data"]["groups"]
    assert {"name", "file", "rules", "interval", "evaluationTime", "lastEvaluation"} <= set(group)
    assert (group["name"], group["file"], group["interval"]) == ("errors", "team", 30.0)
    assert group["evaluationTime"] == pytest.approx(0.025) and _is_time(group["lastEvaluation"])
    alerting, recording = group["rules"]
    assert {"state", "name", "query", "duration", "labels", "annotations", "alerts", "health", "lastError",
            "evaluationTime", "lastEvaluation", "type"} <= set(alerting)
    assert (alerting["type"], alerting["name"], alerting["state"], alerting["health"], alerting["duration"]) == \
        ("alerting", "Errors", "firing", "ok", 60.0)
    assert alerting["query"] == "count(level:error)[300s] by service > 2" and alerting["labels"] == {"severity": "page"}
    assert parse_time_us(alerting["lastEvaluation"]) == slot
    alerts = {a["labels"]["service"]: a for a in alerting["alerts"]}
    assert set(alerts) == {"shop", "cart"}                            # the resolved one is not active
    for a in alerts.values():
        assert {"labels", "annotations", "state", "activeAt", "value"} <= set(a) and isinstance(a["value"], str)
    assert (alerts["shop"]["state"], alerts["shop"]["value"]) == ("firing", "7")
    assert parse_time_us(alerts["shop"]["activeAt"]) == slot - 60_000_000
    assert alerts["cart"]["state"] == "pending"
    assert {"name", "query", "labels", "health", "evaluationTime", "lastEvaluation", "type"} <= set(recording)
    assert (recording["type"], recording["health"], recording["lastError"]) == ("recording", "err",
                                                                                "QueryError: boom")
    assert "alerts" not in recording and "state" not in recording
    only_alerting = server.ok("/prometheus/api/v1/rules", reader, type="alert")["data"]["groups"][0]["rules"]
    assert [r["type"] for r in only_alerting] == ["alerting"]
    only_recording = server.ok("/prometheus/api/v1/rules", reader, type="record")["data"]["groups"][0]["rules"]
    assert [r["type"] for r in only_recording] == ["recording"]

    listed = server.ok("/prometheus/api/v1/alerts", reader)
    assert listed["status"] == "success"
    got: dict[str, Any] = {a["labels"]["service"]: a for a in listed["data"]["alerts"]}
    assert set(got) == {"shop", "cart"}
    assert got["shop"] == alerts["shop"]
    # The other tenant sees none of it.
    beta = lake.keys["beta_reader"]
    assert server.ok("/prometheus/api/v1/alerts", beta)["data"]["alerts"] == []
    assert server.ok("/prometheus/api/v1/rules", beta)["data"]["groups"] == []
    assert server.call("DELETE", "/api/v1/alerts/groups/team/errors", writer).status_code == 204
