"""`loglake alert [load | check | list | delete | backtest]`: the rule evaluator, and rules on the catalog."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from loglake.core.config import Config
from query.alerts.api import find_rule
from query.alerts.backtest import backtest
from query.alerts.evaluation import RuleQueries
from query.alerts.evaluator import AlertEvaluator, external_url, load_rule_files
from query.alerts.rules import Rule, RuleError, parse_rule_file
from query.alerts.store import AlertStore
from query.service import SearchService
from query.timerange import format_us, now_us, parse_duration_us, parse_time_us
from storage.catalog import Catalog


def cmd_alert(cfg: Config, args: argparse.Namespace) -> int:
    action = args.alert_command or "run"
    if action == "check":
        for path in args.files:
            groups = parse_rule_file(_read(path), path.name, int(cfg.alerts.default_interval_s * 1e6))
            print(f"{path}: {len(groups)} groups, {sum(len(g.rules) for g in groups)} rules")
        return 0
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    try:
        if action == "run":
            return _run(cfg, catalog)
        store = AlertStore(catalog)
        if action == "load":
            n = load_rule_files(store, args.files, args.tenant, int(cfg.alerts.default_interval_s * 1e6))
            print(f"loaded {n} groups for tenant {args.tenant}")
        elif action == "list":
            _list(store, args.tenant)
        elif action == "delete":
            if not store.delete_group((args.tenant, args.namespace, args.group)):
                print(f"loglake alert: no group {args.namespace}/{args.group}", file=sys.stderr)
                return 1
        elif action == "backtest":
            return _backtest(cfg, catalog, store, args)
    finally:
        catalog.close()
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise RuleError(f"{path}: {e.strerror or e}") from None


def _run(cfg: Config, catalog: Catalog) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    evaluator = AlertEvaluator(cfg, catalog)
    if cfg.alerts.metrics_listen:
        _serve_metrics(cfg.alerts.metrics_listen, evaluator)
    evaluator.run(stop)
    return 0


def _serve_metrics(listen: str, evaluator: AlertEvaluator) -> None:
    """/metrics and the probes on a thread of their own: evaluations run synchronously."""
    from loglake.core.metrics_server import serve_in_thread

    serve_in_thread(listen, evaluator.metrics.registry, evaluator.health, evaluator.ready)


def _list(store: AlertStore, tenant: str) -> None:
    table = Table(box=None, show_edge=False, pad_edge=False)
    for col in ("group", "rule", "query", "for", "alerts"):
        table.add_column(col)
    for g in store.groups(tenant):
        alerts = store.alerts(g.key)
        for r in g.group.rules:
            states = [a.state for a in alerts if a.rule == r.name]
            summary = ", ".join(f"{states.count(s)} {s}" for s in ("firing", "pending", "resolved") if s in states)
            table.add_row(f"{g.group.namespace}/{g.group.name}", f"{r.kind} {r.name}", r.text,
                          f"{r.for_us / 1e6:g}s", summary)
    Console().print(table)


def _backtest(cfg: Config, catalog: Catalog, store: AlertStore, args: argparse.Namespace) -> int:
    step_us = parse_duration_us(args.step) if args.step else None
    rule: Rule
    if args.file:
        groups = parse_rule_file(_read(args.file), args.file.name, int(cfg.alerts.default_interval_s * 1e6))
        hits = [(g, r) for g in groups for r in g.rules if r.name == args.rule]
        if not hits:
            raise RuleError(f"{args.file}: no rule named {args.rule!r}")
        group, rule = hits[0]
        step_us = step_us or group.interval_us
    else:
        namespace, _, rest = args.rule.rpartition("/") if "/" in args.rule else ("", "", args.rule)
        ns, _, grp = namespace.partition("/") if namespace else (None, "", None)
        sg, rule = find_rule(store, args.tenant, rest, ns or None, grp or None)
        step_us = step_us or sg.group.interval_us
    end_us = parse_time_us(args.end) if args.end else now_us()
    start_us = end_us - parse_duration_us(args.since)
    result = backtest(RuleQueries(SearchService(cfg, catalog), external_url(cfg)), rule, args.tenant, start_us, end_us,
                      step_us)
    if args.output == "json":
        print(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{rule.name}: {result.steps} evaluations every {step_us / 1e6:g}s from {format_us(start_us)} "
          f"to {format_us(end_us)}; {len(result.firings)} firings")
    table = Table(box=None, show_edge=False, pad_edge=False)
    for col in ("fired", "resolved", "pending from", "max value", "labels"):
        table.add_column(col)
    for f in result.firings:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(f.labels.items()) if k != "alertname")
        table.add_row(format_us(f.fired_us), format_us(f.resolved_us) if f.resolved_us else "(still firing)",
                      format_us(f.pending_us), f"{f.max_value:g}", labels)
    Console(width=200).print(table)
    return 0
