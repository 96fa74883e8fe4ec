"""AST back to LogQL text, so that ``parse(to_string(expr)) == expr``.

The text is canonical rather than a copy of the input: strings in double quotes, ``and``/``or``
rather than ``,``/juxtaposition, grouping before the parentheses of a vector aggregation, the
range after the pipeline and the unwrap, and only the parentheses the tree needs.
"""

from __future__ import annotations

import itertools
import math

from query.logql.ast import (
    BinaryOp,
    BytesFilter,
    Decolorize,
    DropLabels,
    DurationFilter,
    Expr,
    Extraction,
    Grouping,
    Ip,
    IpFilter,
    JsonParser,
    KeepLabels,
    LabelAnd,
    LabelFilter,
    LabelFormat,
    LabelOr,
    LabelPredicate,
    LabelReplace,
    LineFilter,
    LineFormat,
    LogfmtParser,
    LogQuery,
    LogRange,
    Matcher,
    Node,
    Number,
    NumericFilter,
    PatternParser,
    RangeAggregation,
    RegexpParser,
    Selector,
    Stage,
    UnpackParser,
    Unwrap,
    Vector,
    VectorAggregation,
    VectorMatching,
)
from query.logql.lexer import format_bytes, format_duration, format_range, quote_go_string
from query.logql.parser import PRECEDENCE, RIGHT_ASSOCIATIVE


def format_number(value: float) -> str:
    """A float as LogQL reads it back exactly (``repr`` is the shortest round-tripping form)."""
    if not math.isfinite(value):
        raise ValueError(f"LogQL has no literal for {value}")
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _matcher(m: Matcher) -> str:
    return f"{m.name}{m.op}{quote_go_string(m.value)}"


def _labels(labels: tuple[str, ...]) -> str:
    return "(" + ", ".join(labels) + ")"


def _grouping(g: Grouping) -> str:
    return f"{'without' if g.without else 'by'} {_labels(g.labels)}"


def _selector(s: Selector) -> str:
    return "{" + ", ".join(_matcher(m) for m in s.matchers) + "}"


def _predicate(p: LabelPredicate) -> str:
    match p:
        case Matcher():
            return _matcher(p)
        case NumericFilter(name=n, op=op, value=v):
            return f"{n} {op} {format_number(v)}"
        case DurationFilter(name=n, op=op, value=v):
            return f"{n} {op} {format_duration(v)}"
        case BytesFilter(name=n, op=op, value=v):
            return f"{n} {op} {format_bytes(v)}"
        case IpFilter(name=n, op=op, pattern=pattern):
            return f"{n}{op}ip({quote_go_string(pattern)})"
        case LabelAnd(items=items):
            return " and ".join(f"({_predicate(i)})" if isinstance(i, (LabelAnd, LabelOr)) else _predicate(i)
                                for i in items)
        case LabelOr(items=items):
            # `and` binds tighter than `or`, so only a nested `or` needs parentheses.
            return " or ".join(f"({_predicate(i)})" if isinstance(i, LabelOr) else _predicate(i) for i in items)
    raise TypeError(f"not a label predicate: {p!r}")


def _extractions(params: tuple[Extraction, ...]) -> str:
    return "".join((" " if i == 0 else ", ") + f"{e.label}={quote_go_string(e.expression)}"
                   for i, e in enumerate(params))


def _named(items: tuple[str | Matcher, ...]) -> str:
    return ", ".join(i if isinstance(i, str) else _matcher(i) for i in items)


def _stage(s: Stage) -> str:
    match s:
        case LineFilter(op=op, values=values):
            return f"{op} " + " or ".join(f"ip({quote_go_string(v.pattern)})" if isinstance(v, Ip)
                                          else quote_go_string(v) for v in values)
        case JsonParser(params=params):
            return "| json" + _extractions(params)
        case LogfmtParser(params=params, strict=strict, keep_empty=keep_empty):
            flags = (" --strict" if strict else "") + (" --keep-empty" if keep_empty else "")
            return "| logfmt" + flags + _extractions(params)
        case RegexpParser(pattern=pattern):
            return f"| regexp {quote_go_string(pattern)}"
        case PatternParser(pattern=pattern):
            return f"| pattern {quote_go_string(pattern)}"
        case UnpackParser():
            return "| unpack"
        case LabelFilter(predicate=p):
            return f"| {_predicate(p)}"
        case LineFormat(template=t):
            return f"| line_format {quote_go_string(t)}"
        case LabelFormat(items=items):
            return "| label_format " + ", ".join(
                f"{i.dst}={i.value if i.rename else quote_go_string(i.value)}" for i in items)
        case KeepLabels(items=items):
            return f"| keep {_named(items)}"
        case DropLabels(items=items):
            return f"| drop {_named(items)}"
        case Decolorize():
            return "| decolorize"
    raise TypeError(f"not a pipeline stage: {s!r}")


def _log_query(q: LogQuery) -> str:
    for before, after in itertools.pairwise(q.pipeline):
        # `| keep a != "x"` reads as keep a!="x" (in Loki too): no text says keep a, then != "x".
        if (isinstance(before, (KeepLabels, DropLabels)) and isinstance(before.items[-1], str)
                and isinstance(after, LineFilter) and after.op in ("!=", "!~")):
            raise ValueError(f"LogQL cannot write a {after.op} line filter right after a keep/drop that ends "
                             "in a bare label name")
    return " ".join([_selector(q.selector), *(_stage(s) for s in q.pipeline)])


def _unwrap(u: Unwrap) -> str:
    target = f"{u.conversion}({u.label})" if u.conversion else u.label
    return f"| unwrap {target}" + "".join(f" | {_predicate(f)}" for f in u.filters)


def _log_range(r: LogRange) -> str:
    parts = [_log_query(r.query)]
    if r.unwrap is not None:
        parts.append(_unwrap(r.unwrap))
    rng = f"[{format_range(r.range_ns)}]"
    if r.query.pipeline or r.unwrap is not None:
        parts.append(rng)
    else:
        parts[-1] += rng
    if r.offset_ns:
        parts.append(f"offset {format_duration(r.offset_ns)}")
    return " ".join(parts)


def _matching(m: VectorMatching) -> str:
    out = f" {'on' if m.on else 'ignoring'} {_labels(m.labels)}"
    if m.card != "one-to-one":
        # Always with its list: a bare group_left would take a parenthesised right operand for one.
        out += f" {'group_left' if m.card == 'many-to-one' else 'group_right'} {_labels(m.include)}"
    return out


def _operand(e: Expr, parent: str, right: bool) -> str:
    text = to_string(e)
    if not isinstance(e, BinaryOp):
        return text
    mine, theirs = PRECEDENCE[e.op], PRECEDENCE[parent]
    # The side an operator associates to can hold an equal-precedence operand without parentheses.
    same_side_ok = right == (parent in RIGHT_ASSOCIATIVE)
    return text if mine > theirs or (mine == theirs and same_side_ok) else f"({text})"


def to_string(node: Node) -> str:
    """LogQL text for ``node`` (a query, or a LogRange alone)."""
    match node:
        case LogQuery():
            return _log_query(node)
        case LogRange():
            return _log_range(node)
        case RangeAggregation(op=op, log_range=r, param=param, grouping=g):
            if param is not None and param < 0:
                raise ValueError(f"LogQL has no negative parameter for {op}: {param}")
            args = (f"{format_number(param)}, " if param is not None else "") + _log_range(r)
            return f"{op}({args})" + (f" {_grouping(g)}" if g is not None else "")
        case VectorAggregation(op=op, expr=e, param=param, grouping=g):
            head = op + (f" {_grouping(g)} " if g is not None else "")
            return f"{head}({f'{param}, ' if param is not None else ''}{to_string(e)})"
        case BinaryOp(op=op, left=left, right=right, return_bool=b, matching=m):
            modifiers = (" bool" if b else "") + (_matching(m) if m is not None else "")
            return f"{_operand(left, op, False)} {op}{modifiers} {_operand(right, op, True)}"
        case Number(value=v):
            return format_number(v)
        case Vector(value=v):
            if v < 0:
                raise ValueError(f"vector() takes an unsigned number in LogQL, not {v}")
            return f"vector({format_number(v)})"
        case LabelReplace(expr=e, dst=dst, replacement=rep, src=src, regex=regex):
            args = ", ".join(quote_go_string(a) for a in (dst, rep, src, regex))
            return f"label_replace({to_string(e)}, {args})"
    raise TypeError(f"not a LogQL node: {node!r}")
