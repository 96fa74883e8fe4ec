"""Alert and recording rules: what they say, how they are read (Loki's rule files, the API's JSON), checked.

A rule's query is one of three kinds:

* ``expr``: a LogQL metric query, as Loki's ruler reads it; the comparison is part of it
  (``sum by (service) (count_over_time({level="error"}[5m])) > 10``), and every series it
  returns is an alert, as in Prometheus;
* ``query``: a native query (loglake's language) with a ``condition``;
* ``saved_query``: a saved query's name with a ``condition``; its text is looked up at each
  evaluation, so a renamed or deleted saved query is an evaluation error, not a silent no-op.

A condition is ``fn`` (``count``, ``rate`` per second, or ``sum|avg|min|max|p50|p95|p99(field)``)
over ``window`` (the records in ``(t - window, t]``), compared by ``op`` with ``threshold``,
per group of ``by`` fields. Labels and annotations are templates of ``{{ $labels.NAME }}``,
``{{ $value }}`` (also ``.Labels.NAME`` and ``.Value``), checked when the rule is read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from query.aggregate import parse_fn
from query.errors import QueryError
from query.language import parse as parse_native
from query.logql import MetricExpr, is_metric_query
from query.logql import parse as parse_logql
from query.logql.lexer import parse_go_duration
from query.planner import group_sql
from query.timerange import parse_duration_us

_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ :-]{0,127}")
_OPS = (">", ">=", "<", "<=", "==", "!=")
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_LABEL_REF = re.compile(r"(?:\$labels|\.Labels)\.([A-Za-z_][A-Za-z0-9_]*)")
_RULE_KEYS = {"alert", "record", "expr", "query", "saved_query", "condition", "for", "labels", "annotations",
              "keep_firing_for"}
_CONDITION_KEYS = {"fn", "window", "by", "op", "threshold"}
MAX_RULES = 200


class RuleError(QueryError):
    """A rule or rule file that cannot be used: the message names the rule and the problem (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Condition:
    """What a native or saved-query rule computes per group and compares."""

    fn: str = "count"
    window_us: int = 300_000_000
    by: tuple[str, ...] = ()
    op: str = ">"
    threshold: float = 0.0

    def holds(self, value: float) -> bool:
        return {">": value > self.threshold, ">=": value >= self.threshold, "<": value < self.threshold,
                "<=": value <= self.threshold, "==": value == self.threshold,
                "!=": value != self.threshold}[self.op]


@dataclass(frozen=True, slots=True)
class Rule:
    """One alerting (``alert``) or recording (``record``) rule."""

    name: str
    kind: str                       # alert | record
    expr: str | None = None         # LogQL
    query: str | None = None        # native
    saved_query: str | None = None
    condition: Condition | None = None
    for_us: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The query as people read it."""
        if self.expr is not None:
            return self.expr
        c = self.condition or Condition()
        source = self.query if self.query is not None else f"saved:{self.saved_query}"
        by = f" by {','.join(c.by)}" if c.by else ""
        return f"{c.fn}({source})[{c.window_us // 1_000_000}s]{by} {c.op} {c.threshold:g}"

    def logql(self) -> MetricExpr:
        assert self.expr is not None
        parsed = parse_logql(self.expr)
        assert is_metric_query(parsed)
        return parsed  # type: ignore[return-value]

    def spec(self) -> dict[str, Any]:
        """The rule as the API and rule files write it."""
        out: dict[str, Any] = {self.kind: self.name}
        for key in ("expr", "query", "saved_query"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.condition is not None:
            c = self.condition
            out["condition"] = {"fn": c.fn, "window": _duration_text(c.window_us), "by": list(c.by), "op": c.op,
                                "threshold": c.threshold}
        if self.for_us:
            out["for"] = _duration_text(self.for_us)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True)
class Group:
    """Rules evaluated together, in order, every ``interval_us``."""

    namespace: str
    name: str
    interval_us: int
    rules: tuple[Rule, ...]

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "interval": _duration_text(self.interval_us),
                "rules": [r.spec() for r in self.rules]}


def _duration_text(us: int) -> str:
    s = us / 1_000_000
    if s >= 60 and s % 60 == 0:
        return f"{int(s // 60)}m" if s % 3600 else f"{int(s // 3600)}h"
    return f"{s:g}s"


def _duration(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration like 5m, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what} must be a non-negative duration")
        return int(value * 1_000_000)
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a duration like 5m, not {value!r}")
    try:
        us = parse_duration_us(value)
    except QueryError:
        # Prometheus's own files may say 1.5h or 90s as Go durations; days go through the first.
        ns = parse_go_duration(value)
        if ns is None:
            raise ValueError(f"{what} must be a duration like 5m, not {value!r}") from None
        us = ns // 1000
    if us < 0:
        raise ValueError(f"{what} must be a non-negative duration")
    return us


def _templates(kind: str, values: Any) -> dict[str, str]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{kind} must be a mapping of names to text")
    out = {}
    for k, v in values.items():
        if not isinstance(k, str) or not _LABEL.fullmatch(k):
            raise ValueError(f"{kind}: {k!r} is not a valid name (letters, digits and _)")
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ValueError(f"{kind}.{k} must be text")
        text = str(v)
        for action in _ACTION.findall(text):
            if not (action in ("$value", ".Value", "$labels", ".Labels") or _LABEL_REF.fullmatch(action)):
                raise ValueError(f"{kind}.{k}: unsupported template {{{{ {action} }}}} (use {{{{ $labels.NAME }}}} "
                                 "or {{ $value }})")
        out[k] = text
    return out


def render(template: str, labels: dict[str, str], value: float | None) -> str:
    """``template`` with the group's labels and the value filled in."""
    def action(m: re.Match[str]) -> str:
        a = m.group(1)
        if a in ("$value", ".Value"):
            return "" if value is None else f"{value:g}"
        if a in ("$labels", ".Labels"):
            return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        ref = _LABEL_REF.fullmatch(a)
        return labels.get(ref.group(1), "") if ref else m.group(0)
    return _ACTION.sub(action, template)


def _condition(raw: Any) -> Condition:
    if not isinstance(raw, dict):
        raise ValueError("condition must be a mapping with fn, window, by, op and threshold")
    extra = set(raw) - _CONDITION_KEYS
    if extra:
        raise ValueError(f"condition: unknown keys {', '.join(sorted(extra))}")
    fn = raw.get("fn", "count")
    if not isinstance(fn, str):
        raise ValueError("condition.fn must be count, rate or a function like avg(field)")
    if fn != "rate":
        parse_fn(fn)
    window = _duration(raw.get("window", "5m"), "condition.window")
    if window <= 0:
        raise ValueError("condition.window must be positive")
    by = raw.get("by") or []
    if isinstance(by, str):
        by = [b.strip() for b in by.split(",") if b.strip()]
    if not isinstance(by, list) or not all(isinstance(b, str) for b in by) or len(by) > 4:
        raise ValueError("condition.by must be a list of at most 4 field names")
    for b in by:
        group_sql(b)
    op = raw.get("op", ">")
    if op not in _OPS:
        raise ValueError(f"condition.op must be one of {' '.join(_OPS)}, not {op!r}")
    threshold = raw.get("threshold", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise ValueError("condition.threshold must be a number")
    return Condition(fn, window, tuple(by), op, float(threshold))


def parse_rule(raw: Any) -> Rule:
    """A rule from its spec (one entry of a group's ``rules``); RuleError names it and the problem."""
    if not isinstance(raw, dict):
        raise RuleError(f"a rule must be a mapping, not {type(raw).__name__}")
    name = raw.get("alert", raw.get("record"))
    label = f"rule {name!r}" if isinstance(name, str) else "a rule"
    try:
        return _parse_rule(raw)
    except QueryError as e:
        raise RuleError(f"{label}: {e}") from None
    except ValueError as e:
        raise RuleError(f"{label}: {e}") from None


def _parse_rule(raw: dict[str, Any]) -> Rule:
    extra = set(raw) - _RULE_KEYS
    if extra:
        raise ValueError(f"unknown keys {', '.join(sorted(map(str, extra)))}")
    if ("alert" in raw) == ("record" in raw):
        raise ValueError("a rule needs exactly one of alert (a name) or record (a metric name)")
    kind = "alert" if "alert" in raw else "record"
    name = raw[kind]
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 200:
        raise ValueError(f"{kind} must be a name of letters, digits, _ and : (not starting with a digit)")
    sources = [k for k in ("expr", "query", "saved_query") if raw.get(k) is not None]
    if len(sources) != 1:
        raise ValueError("a rule needs exactly one of expr (LogQL), query (native) or saved_query (a name)")
    source = sources[0]
    text = raw[source]
    if not isinstance(text, str) or (source != "query" and not text.strip()):
        raise ValueError(f"{source} must be non-empty text")
    condition = None
    if source == "expr":
        if "condition" in raw:
            raise ValueError("condition goes with query or saved_query; with expr the comparison is in the LogQL")
        parsed = parse_logql(text)
        if not is_metric_query(parsed):
            raise ValueError("expr must be a LogQL metric query such as "
                             "sum by (service) (count_over_time({level=\"error\"}[5m])) > 10, not a log query")
    else:
        condition = _condition(raw.get("condition", {}))
        if source == "query":
            parse_native(text)
    for_us = _duration(raw.get("for", 0), "for")
    if kind == "record" and (for_us or raw.get("annotations")):
        raise ValueError("a recording rule takes no for or annotations")
    labels = _templates("labels", raw.get("labels"))
    annotations = _templates("annotations", raw.get("annotations"))
    return Rule(name, kind, raw.get("expr"), raw.get("query"), raw.get("saved_query"), condition, for_us,
                labels, annotations)


def parse_group(raw: Any, namespace: str, default_interval_us: int) -> Group:
    """A group (``name``, ``interval``, ``rules``); RuleError names the group, the rule and the problem."""
    if not isinstance(raw, dict):
        raise RuleError(f"namespace {namespace!r}: a group must be a mapping with name and rules")
    name = raw.get("name")
    if not isinstance(name, str) or not _GROUP_NAME.fullmatch(name):
        raise RuleError(f"namespace {namespace!r}: a group needs a name (1-128 letters, digits, '.', '_', '-', "
                        f"':', spaces), not {name!r}")
    where = f"group {name!r}"
    extra = set(raw) - {"name", "interval", "rules", "limit"}
    if extra:
        raise RuleError(f"{where}: unknown keys {', '.join(sorted(map(str, extra)))}")
    try:
        interval = _duration(raw["interval"], "interval") if raw.get("interval") is not None \
            else default_interval_us
    except ValueError as e:
        raise RuleError(f"{where}: {e}") from None
    if interval < 1_000_000:
        raise RuleError(f"{where}: interval must be at least 1s")
    rules_raw = raw.get("rules")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise RuleError(f"{where}: rules must be a non-empty list")
    if len(rules_raw) > MAX_RULES:
        raise RuleError(f"{where}: at most {MAX_RULES} rules in a group")
    rules: list[Rule] = []
    for i, r in enumerate(rules_raw):
        try:
            rule = parse_rule(r)
        except RuleError as e:
            raise RuleError(f"{where}, rule #{i + 1}: {e}".replace(f"rule #{i + 1}: rule ", "rule ")) from None
        if any(x.name == rule.name and x.kind == rule.kind for x in rules):
            raise RuleError(f"{where}: rule {rule.name!r} appears twice")
        rules.append(rule)
    return Group(namespace, name, interval, tuple(rules))


def parse_rule_file(text: str, namespace: str, default_interval_us: int) -> list[Group]:
    """The groups of a Prometheus/Loki rule file (``groups: [{name, interval, rules}]``)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RuleError(f"{namespace}: not YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise RuleError(f"{namespace}: a rule file is a mapping with a list of groups "
                        "(groups: [{name: ..., rules: [...]}])")
    extra = set(doc) - {"groups"}
    if extra:
        raise RuleError(f"{namespace}: unknown keys {', '.join(sorted(map(str, extra)))}")
    groups = []
    for raw in doc["groups"]:
        try:
            groups.append(parse_group(raw, namespace, default_interval_us))
        except RuleError as e:
            raise RuleError(f"{namespace}: {e}") if not str(e).startswith(f"namespace {namespace!r}") else e from None
    names = [g.name for g in groups]
    for n in names:
        if names.count(n) > 1:
            raise RuleError(f"{namespace}: group {n!r} appears twice")
    return groups


def group_yaml(groups: list[Group]) -> str:
    """Groups as a rule file."""
    return yaml.safe_dump({"groups": [g.spec() for g in groups]}, sort_keys=False, allow_unicode=True)
