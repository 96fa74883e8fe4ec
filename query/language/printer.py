"""AST back to query text, so that parse(to_string(ast)) == ast."""

from __future__ import annotations

from query.language.ast import And, MatchAll, Node, Not, Or, Term

_WORD_SPECIAL = set('()":\\')


def _value(t: Term) -> str:
    if t.kind == "phrase":
        return '"' + t.value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    special = _WORD_SPECIAL if t.kind == "wildcard" else _WORD_SPECIAL | {"*", "?"}
    out = "".join("\\" + c if c in special or c.isspace() else c for c in t.value)
    if t.value in ("AND", "OR", "NOT") or t.value.startswith("-"):
        out = "\\" + out     # an escape keeps a keyword or a leading '-' literal
    return out


def to_string(node: Node) -> str:
    match node:
        case MatchAll():
            return ""
        case Term(field=None):
            return _value(node)
        case Term():
            return f"{node.field}:{_value(node)}"
        case Not(item=item):
            return f"NOT {_wrap(item)}"
        case And(items=items):
            return " AND ".join(_wrap(i) for i in items)
        case Or(items=items):
            return " OR ".join(_wrap(i) for i in items)
    raise TypeError(f"not a query node: {node!r}")


def _wrap(node: Node) -> str:
    return f"({to_string(node)})" if isinstance(node, (And, Or)) else to_string(node)
