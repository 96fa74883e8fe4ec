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

#: The columns that are a record's stream labels, under their own names.
STREAM_COLUMNS = ("service", "host", "level", "source")
#: Loki 3's service label, which its distributor adds to every stream at ingest (``discover_service_name``):
#: a stream's ``service_name`` if it has one, else the first non-empty of ``service``, ``app``, ... ``job``,
#: else ``unknown_service``. loglake's stream has ``service`` (and no ``service_name`` of its own, which
#: the Loki push route takes as the service), so ``service_name`` is ``service``, or
#: ``unknown_service`` where that is empty; ``service`` stays a label, as Loki keeps the original.
SERVICE_NAME = "service_name"
UNKNOWN_SERVICE = "unknown_service"
#: Every stream label of a Loki answer.
STREAM_LABELS = ("service", SERVICE_NAME, "host", "level", "source")
#: Names Grafana also asks for that are a column under another name (not labels of an answer).
_ALIASES = {"detected_level": "level", "app": "service", "job": "service"}


def column_of(label: str) -> str:
    """The record field a Loki label addresses (a column, or an attribute key); ``service_name`` is
    derived from ``service`` (see :func:`service_name`) and has a matcher of its own."""
    return _ALIASES.get(label, label)


def service_name(service: object) -> str:
    """The ``service_name`` of a record whose ``service`` column is ``service``."""
    return str(service) if service is not None and service != "" else UNKNOWN_SERVICE


def _empty_matches(pattern: str) -> bool:
    # RE2, as everywhere a user's pattern runs: Python's re can take exponential time even on "".
    try:
        return regex(pattern, capture=False).fullmatch("") is not None
    except QueryError:
        return False        # refused with its reason where the SQL checks the pattern


def _service_name_node(m: Matcher) -> Node:
    """A matcher on ``service_name``: on the service column where it has a value, and where it is empty
    the matcher's verdict on ``unknown_service`` (service_name is never empty, so never absent)."""
    empty = Term("service", "", "phrase")
    if m.op in ("=", "!="):
        column: Node = Term("service", m.value, "phrase")
        unknown = m.value == UNKNOWN_SERVICE
    else:
        column = Term("service", f"^(?:{m.value})$", "regex")
        try:
            unknown = regex(m.value, capture=False).fullmatch(UNKNOWN_SERVICE) is not None
        except QueryError:
            unknown = False     # refused with its reason where the SQL checks the pattern
    if m.op in ("!=", "!~"):
        column, unknown = Not(column), not unknown
    elif m.op == "=" and m.value != "" and not unknown:
        return column       # the usual {service_name="api"}: the column alone, which the catalog prunes by
    return Or((empty, column)) if unknown else And((Not(empty), column))


def matcher_node(m: Matcher) -> Node:
    """One selector matcher; an absent label reads as "" (Loki's rule)."""
    if m.name == SERVICE_NAME:
        return _service_name_node(m)
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
