"""AST back to query text, so that parse(to_string(ast)) == ast."""

from __future__ import annotations

from query.language.ast import And, Compare, Exists, MatchAll, Node, Not, Or, Range, Term

_WORD_SPECIAL = set('()":\\<>')
_BOUND_SPECIAL = set('"[]{}\\')


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(pattern[i:i + 2])
            i += 2
            continue
        out.append("\\/" if pattern[i] == "/" else pattern[i])
        i += 1
    return "/" + "".join(out) + "/"


def _value(t: Term) -> str:
    if t.kind == "phrase":
        return _quote(t.value)
    if t.kind == "regex":
        return _regex(t.value)
    if t.kind == "wildcard":
        # The parser takes no escape in a wildcard but a leading dash's: its text was read as is,
        # and prints as is. (A bare '-*' read after a phrase, '""-*', printed as '"" AND -*',
        # which reads as NOT *.)
        return "\\" + t.value if t.value.startswith("-") and t.field is None else t.value
    out = "".join("\\" + c if c in _WORD_SPECIAL | {"*", "?"} or c.isspace() else c for c in t.value)
    if t.value in ("AND", "OR", "NOT") or t.value.startswith("-") or (t.field and t.value[:1] in "/[{"):
        out = "\\" + out     # an escape keeps a keyword, a leading '-', or a field's '/' or '[' literal
    return out


def _bound(value: str | None) -> str:
    if value is None:
        return "*"
    if not value or value in ("*", "TO") or any(c in _BOUND_SPECIAL or c.isspace() for c in value):
        return _quote(value)
    return value


def to_string(node: Node) -> str:
    """Query text for ``node``."""
    match node:
        case MatchAll():
            return ""
        case Term(field=None):
            return _value(node)
        case Term():
            return f"{node.field}:{_value(node)}"
        case Compare(field=f, op=op, value=v):
            plain = v and not any(c in '()"\\' or c.isspace() for c in v) and not v.startswith("=")
            return f"{f}{op}{v if plain else _quote(v)}"
        case Range():
            return (f"{node.field}:{'[' if node.include_low else '{'}{_bound(node.low)} TO "
                    f"{_bound(node.high)}{']' if node.include_high else '}'}")
        case Exists(field=f):
            return f"_exists_:{f}"
        case Not(item=item):
            return f"NOT {_wrap(item)}"
        case And(items=items):
            return " AND ".join(_wrap(i) for i in items)
        case Or(items=items):
            return " OR ".join(_wrap(i) for i in items)
    raise TypeError(f"not a query node: {node!r}")


def _wrap(node: Node) -> str:
    return f"({to_string(node)})" if isinstance(node, (And, Or)) else to_string(node)
