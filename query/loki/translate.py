"""A LogQL log query to the native query AST, so both languages share one planner.

The selector and every line filter that sees the original line (those before
a ``line_format`` or ``decolorize``) become native nodes: the catalog prunes
by service and level, DuckDB runs the rest. A line filter is a term on the
native ``line`` field, the line as received (time, level and all: what Loki
filters), which the trigram index does not cover (it holds messages), so line
filters do not prune row groups. What cannot be SQL stays a pipeline stage
(``pipeline.py``).
"""

from __future__ import annotations

from query.errors import QueryError
from query.language.ast import And, Exists, MatchAll, Node, Not, Or, Term
from query.logql import Decolorize, Ip, LineFilter, LineFormat, LogQuery, Matcher, Selector, Stage, UnpackParser
from query.loki.pipeline import regex, validate
from query.planner import literal_regex

#: Loki labels every stream has, as loglake's columns; Grafana also asks for these aliases.
STREAM_LABELS = ("service", "host", "level", "source")
_ALIASES = {"service_name": "service", "detected_level": "level", "app": "service", "job": "service"}


def column_of(label: str) -> str:
    """The record field a Loki label addresses (a column, or an attribute key)."""
    return _ALIASES.get(label, label)


def _empty_matches(pattern: str) -> bool:
    # RE2, as everywhere a user's pattern runs: Python's re can take exponential time even on "".
    try:
        return regex(pattern, capture=False).fullmatch("") is not None
    except QueryError:
        return False        # refused with its reason where the SQL checks the pattern


def matcher_node(m: Matcher) -> Node:
    """One selector matcher; an absent label reads as "" (Loki's rule)."""
    name = column_of(m.name)
    absent = Not(Exists(name))
    if m.op in ("=", "!="):
        node: Node = Term(name, m.value, "phrase")
        if m.value == "":
            node = Or((absent, node))
        return node if m.op == "=" else Not(node)
    node = Term(name, f"^(?:{m.value})$", "regex")
    if _empty_matches(m.value):
        node = Or((absent, node))
    return node if m.op == "=~" else Not(node)


def selector_node(sel: Selector) -> Node:
    nodes = [matcher_node(m) for m in sel.matchers]
    return nodes[0] if len(nodes) == 1 else And(tuple(nodes))


def line_filter_node(f: LineFilter) -> Node | None:
    """A line filter (``|=``, ``!=``, ``|~``, ``!~`` on strings) as a native node; None when it keeps every
    line (``|= ""``)."""
    values = [str(v) for v in f.values]
    if f.op in ("|=", "!="):
        if any(v == "" for v in values):
            return None if f.op == "|=" else Not(MatchAll())
        terms = [Term("line", literal_regex(v, ignore_case=False), "regex") for v in values]
    else:
        terms = [Term("line", v, "regex") for v in values]
    node: Node = terms[0] if len(terms) == 1 else Or(tuple(terms))
    return node if f.op in ("|=", "|~") else Not(node)


def _sql_expressible(f: LineFilter) -> bool:
    return f.op in ("|=", "!=", "|~", "!~") and not any(isinstance(v, Ip) for v in f.values)


def pushdown(q: LogQuery) -> tuple[Node, tuple[Stage, ...]]:
    """(the native node for ``q``'s SQL part, the stages left to run on its rows). Raises QueryError for a
    pipeline Loki would refuse to build (``validate``), whether or not any line reaches it."""
    validate(q.pipeline)
    nodes = [selector_node(q.selector)]
    rest: list[Stage] = []
    line_rewritten = False
    for stage in q.pipeline:
        if isinstance(stage, (LineFormat, Decolorize, UnpackParser)):
            line_rewritten = True
        if isinstance(stage, LineFilter) and not line_rewritten and _sql_expressible(stage):
            node = line_filter_node(stage)
            if node is not None:
                nodes.append(node)
            continue
        rest.append(stage)
    return (nodes[0] if len(nodes) == 1 else And(tuple(nodes))), tuple(rest)
