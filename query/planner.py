"""AST + catalog -> parameterised DuckDB SQL over exactly the segments that can match.

User text never becomes SQL text: values are bound parameters, column names
come from the schema, and attribute keys are bound as map keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from query.errors import QueryError, UnknownField
from query.language.ast import And, MatchAll, Node, Not, Or, Term
from query.language.lexer import FIELD_RE
from storage.catalog import SegmentRow
from storage.errors import StorageError

#: Columns a term can address by name, and how it compares.
_EXACT = {"service", "host", "source", "trace_id", "span_id"}
_ALIASES = {"msg": "message", "body": "message", "svc": "service"}
SELECT_COLUMNS = ("ts", "observed_ts", "service", "host", "source", "level", "severity",
                  "message", "attrs", "trace_id", "span_id")


_LEVEL_ALIASES = {"warning": "warn", "err": "error", "critical": "fatal", "crit": "fatal"}


def level_value(text: str) -> str:
    """A level as stored: lower case, common aliases folded."""
    value = text.lower()
    return _LEVEL_ALIASES.get(value, value)


def _like_pattern(value: str) -> str:
    """Lucene wildcards to a LIKE pattern with '\\' as the escape."""
    out = []
    for c in value:
        if c in "%_\\":
            out.append("\\" + c)
        elif c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        else:
            out.append(c)
    return "".join(out)


@dataclass
class Compiled:
    sql: str
    params: list[object] = field(default_factory=list)


def _term(t: Term) -> Compiled:
    name = t.field
    if name is not None:
        name = _ALIASES.get(name, name)
        if not FIELD_RE.fullmatch(name):
            raise UnknownField(f"invalid field name {name!r}")
    if name is None or name == "message":
        if t.kind == "wildcard":
            return Compiled("lower(message) LIKE ? ESCAPE '\\'", [f"%{_like_pattern(t.value.lower())}%"])
        return Compiled("contains(lower(message), ?)", [t.value.lower()])
    if name == "level":
        if t.kind == "wildcard":
            return Compiled("level LIKE ? ESCAPE '\\'", [_like_pattern(t.value.lower())])
        return Compiled("level = ?", [level_value(t.value)])
    if name == "severity":
        try:
            return Compiled("severity = ?", [int(t.value)])
        except ValueError:
            raise QueryError(f"severity takes a number, not {t.value!r}") from None
    if name in ("ts", "observed_ts"):
        raise QueryError(f"{name} cannot be searched as a value: use start and end")
    if name in _EXACT:
        if t.kind == "wildcard":
            return Compiled(f"{name} LIKE ? ESCAPE '\\'", [_like_pattern(t.value)])
        return Compiled(f"{name} = ?", [t.value])
    key = name.removeprefix("attrs.")
    if t.kind == "wildcard":
        return Compiled("attrs[?] LIKE ? ESCAPE '\\'", [key, _like_pattern(t.value)])
    return Compiled("attrs[?] = ?", [key, t.value])


def compile_filter(node: Node) -> Compiled:
    """The WHERE condition for ``node``."""
    match node:
        case MatchAll():
            return Compiled("TRUE")
        case Term():
            return _term(node)
        case Not(item=item):
            inner = compile_filter(item)
            return Compiled(f"NOT coalesce(({inner.sql}), FALSE)", inner.params)
        case And(items=items) | Or(items=items):
            parts = [compile_filter(i) for i in items]
            op = " AND " if isinstance(node, And) else " OR "
            return Compiled(op.join(f"({p.sql})" for p in parts), [x for p in parts for x in p.params])
    raise TypeError(f"not a query node: {node!r}")


def required_values(node: Node, column: str) -> set[str] | None:
    """Values ``column`` must take for ``node`` to match, if the query pins them."""
    match node:
        case Term(field=f, kind="word" | "phrase") if f is not None and _ALIASES.get(f, f) == column:
            return {level_value(node.value) if column == "level" else node.value}
        case And(items=items):
            sets = [s for s in (required_values(i, column) for i in items) if s is not None]
            if not sets:
                return None
            out = sets[0]
            for s in sets[1:]:
                out = out & s
            return out
        case Or(items=items):
            sets = [required_values(i, column) for i in items]
            if any(s is None for s in sets):
                return None
            return set().union(*sets)  # type: ignore[arg-type]
    return None


def prune(segments: list[SegmentRow], node: Node) -> list[SegmentRow]:
    """Drop segments whose catalog stats show they cannot match ``node``."""
    services = required_values(node, "service")
    levels = required_values(node, "level")
    return [s for s in segments
            if (services is None or services & s.services.keys())
            and (levels is None or levels & s.levels.keys())]


def _inside(path: str) -> str:
    """A catalog path, refused if it would leave the data root (DuckDB's check of s3:// URLs is lexical)."""
    if path.startswith("/") or "\\" in path or ".." in path.split("/"):
        raise StorageError(f"segment path {path!r} leaves the data root; run loglake fsck")
    return path


@dataclass
class SearchPlan:
    sql: str
    params: list[object]
    files: list[str]
    segments_total: int
    segments_scanned: int
    rows_in_segments: int
    bytes_in_segments: int


def plan_search(node: Node, segments: list[SegmentRow], root: str, start_us: int, end_us: int,
                limit: int, order: str = "desc") -> SearchPlan:
    chosen = prune(segments, node)
    cond = compile_filter(node)
    direction = "DESC" if order == "desc" else "ASC"
    files = [f"{root}/{_inside(s.path)}" for s in chosen]
    sql = (f"SELECT {', '.join(SELECT_COLUMNS)} FROM read_parquet(?) "
           f"WHERE ts >= make_timestamptz(?::BIGINT) AND ts < make_timestamptz(?::BIGINT) AND ({cond.sql}) "
           f"ORDER BY ts {direction} LIMIT ?")
    return SearchPlan(sql, [files, start_us, end_us, *cond.params, limit], files,
                      len(segments), len(chosen), sum(s.rows for s in chosen), sum(s.bytes for s in chosen))
