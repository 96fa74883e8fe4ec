"""Syntax tree of a LogQL query: the subset loglake answers on its Loki-compatible API.

Durations are integer nanoseconds (Go's ``time.Duration``), byte sizes integer bytes.
Parentheses leave no node: the tree's shape is the grouping.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

from query.errors import QueryError

MatchOp = Literal["=", "!=", "=~", "!~"]
LineFilterOp = Literal["|=", "!=", "|~", "!~", "|>", "!>"]
CompareOp = Literal["==", "!=", ">", ">=", "<", "<="]
Conversion = Literal["bytes", "duration", "duration_seconds"]
Cardinality = Literal["one-to-one", "many-to-one", "one-to-many"]
RangeOp = Literal["count_over_time", "rate", "rate_counter", "bytes_over_time", "bytes_rate", "avg_over_time",
                  "sum_over_time", "min_over_time", "max_over_time", "stdvar_over_time", "stddev_over_time",
                  "quantile_over_time", "first_over_time", "last_over_time", "absent_over_time"]
VectorOp = Literal["sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "approx_topk", "sort",
                   "sort_desc"]
ArithmeticOp = Literal["+", "-", "*", "/", "%", "^"]
SetOp = Literal["and", "or", "unless"]
BinaryOperator = ArithmeticOp | CompareOp | SetOp

RANGE_OPS: frozenset[str] = frozenset(get_args(RangeOp))
VECTOR_OPS: frozenset[str] = frozenset(get_args(VectorOp))
#: Range aggregations over the lines themselves: they take no ``| unwrap``.
LINE_RANGE_OPS = frozenset({"count_over_time", "rate", "bytes_over_time", "bytes_rate", "absent_over_time"})
#: Range aggregations over unwrapped values: they need ``| unwrap``.
UNWRAP_RANGE_OPS = frozenset({"rate", "rate_counter", "avg_over_time", "sum_over_time", "min_over_time",
                              "max_over_time", "stdvar_over_time", "stddev_over_time", "quantile_over_time",
                              "first_over_time", "last_over_time", "absent_over_time"})
#: Range aggregations that may be followed by ``by (...)``/``without (...)`` (Loki's rule, not PromQL's).
GROUPED_RANGE_OPS = frozenset({"avg_over_time", "stddev_over_time", "stdvar_over_time", "quantile_over_time",
                               "max_over_time", "min_over_time", "first_over_time", "last_over_time"})
COMPARISON_OPS = frozenset({"==", "!=", ">", ">=", "<", "<="})
SET_OPS = frozenset({"and", "or", "unless"})


class LogQLUnsupported(QueryError):
    """Valid LogQL that loglake does not answer (HTTP 400); ``construct`` names it."""

    def __init__(self, construct: str, position: int | None = None, query: str | None = None) -> None:
        self.construct = construct
        self.position = position
        self.query = query
        super().__init__(f"unsupported in loglake's LogQL subset: `{construct}`")


# -- log queries ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Matcher:
    """``name op "value"``: in a stream selector, a label filter (string comparison), keep or drop.
    Regular expressions (``=~``, ``!~``) are RE2 and fully anchored."""

    name: str
    op: MatchOp
    value: str


@dataclass(frozen=True, slots=True)
class Selector:
    """``{a="b", c=~"d"}``: at least one matcher."""

    matchers: tuple[Matcher, ...]


@dataclass(frozen=True, slots=True)
class Ip:
    """``ip("192.168.0.0/16")``: an address, a CIDR prefix or a range ``a-b``, checked when the query runs
    (as Loki does)."""

    pattern: str


@dataclass(frozen=True, slots=True)
class LineFilter:
    """``|= "a"``; several values are Loki 3's ``|= "a" or "b"``: any of them for ``|=``/``|~``/``|>``,
    none of them for ``!=``/``!~``/``!>``. Regular expressions are RE2 and not anchored; ``|>`` takes a
    pattern (``<_> error <_>``) that must match the whole line. A value may be ``ip(...)``: a line that
    holds an address in it (only with ``|=`` and ``!=``, checked when the query runs)."""

    op: LineFilterOp
    values: tuple[str | Ip, ...]


@dataclass(frozen=True, slots=True)
class Extraction:
    """``label="expression"`` of ``| json`` or ``| logfmt``; a bare ``label`` has itself as expression."""

    label: str
    expression: str


@dataclass(frozen=True, slots=True)
class JsonParser:
    """``| json``: every field, or only ``params`` (``a="x.y[0]"``)."""

    params: tuple[Extraction, ...] = ()


@dataclass(frozen=True, slots=True)
class LogfmtParser:
    """``| logfmt [--strict] [--keep-empty] [params]``."""

    params: tuple[Extraction, ...] = ()
    strict: bool = False
    keep_empty: bool = False


@dataclass(frozen=True, slots=True)
class RegexpParser:
    """``| regexp "(?P<name>...)"``: RE2 with at least one named group."""

    pattern: str


@dataclass(frozen=True, slots=True)
class PatternParser:
    """``| pattern "<ip> - <_> ..."``; see ``parser.pattern_parts``."""

    pattern: str


@dataclass(frozen=True, slots=True)
class UnpackParser:
    """``| unpack``: a JSON object packed by Promtail; its ``_entry`` becomes the line, its other string
    fields labels."""


@dataclass(frozen=True, slots=True)
class IpFilter:
    """``| addr = ip("10.0.0.0/8")`` (or ``!=``): the label's value is an address in the pattern."""

    name: str
    op: Literal["=", "!="]
    pattern: str


@dataclass(frozen=True, slots=True)
class NumericFilter:
    """``| status >= 500``: the label converted to a float (``=`` is written ``==``)."""

    name: str
    op: CompareOp
    value: float


@dataclass(frozen=True, slots=True)
class DurationFilter:
    """``| duration > 250ms``: the label parsed as a Go duration; ``value`` in nanoseconds."""

    name: str
    op: CompareOp
    value: int


@dataclass(frozen=True, slots=True)
class BytesFilter:
    """``| size > 10KB``: the label parsed as a humanized byte size; ``value`` in bytes."""

    name: str
    op: CompareOp
    value: int


@dataclass(frozen=True, slots=True)
class LabelAnd:
    """``a and b and c`` (two items or more), also written ``a, b`` or ``a b``.

    ``left``/``right`` view it as binary (the first item, and the rest), for code that recurses pairwise.
    """

    items: tuple[LabelPredicate, ...]

    @property
    def left(self) -> LabelPredicate:
        return self.items[0]

    @property
    def right(self) -> LabelPredicate:
        return self.items[1] if len(self.items) == 2 else LabelAnd(self.items[1:])


@dataclass(frozen=True, slots=True)
class LabelOr:
    """``a or b or c`` (two items or more); ``left``/``right`` as in LabelAnd."""

    items: tuple[LabelPredicate, ...]

    @property
    def left(self) -> LabelPredicate:
        return self.items[0]

    @property
    def right(self) -> LabelPredicate:
        return self.items[1] if len(self.items) == 2 else LabelOr(self.items[1:])


LabelPredicate = Matcher | NumericFilter | DurationFilter | BytesFilter | IpFilter | LabelAnd | LabelOr


@dataclass(frozen=True, slots=True)
class LabelFilter:
    """``| predicate`` as a pipeline stage."""

    predicate: LabelPredicate


@dataclass(frozen=True, slots=True)
class LineFormat:
    """``| line_format "{{.a}}"``: Go text/template source, checked against ``template.py``'s subset."""

    template: str


@dataclass(frozen=True, slots=True)
class LabelFormatItem:
    """``dst=src`` (``rename``: ``value`` is a label, dropped after copying) or ``dst="{{...}}"``."""

    dst: str
    value: str
    rename: bool


@dataclass(frozen=True, slots=True)
class LabelFormat:
    items: tuple[LabelFormatItem, ...]


@dataclass(frozen=True, slots=True)
class KeepLabels:
    """``| keep a, b="v"``: a bare name keeps the label; a matcher keeps it where it matches."""

    items: tuple[str | Matcher, ...]


@dataclass(frozen=True, slots=True)
class DropLabels:
    """``| drop a, b="v"``: a bare name drops the label; a matcher drops it where it matches."""

    items: tuple[str | Matcher, ...]


@dataclass(frozen=True, slots=True)
class Decolorize:
    """``| decolorize``: strip ANSI escape sequences from the line."""


Stage = (LineFilter | JsonParser | LogfmtParser | RegexpParser | PatternParser | UnpackParser | LabelFilter
         | LineFormat | LabelFormat | KeepLabels | DropLabels | Decolorize)


@dataclass(frozen=True, slots=True)
class LogQuery:
    """A stream selector and its pipeline, stage by stage, left to right."""

    selector: Selector
    pipeline: tuple[Stage, ...] = ()


# -- metric queries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unwrap:
    """``| unwrap [conversion(]label[)]``, then ``| predicate`` post-filters (on ``__error__`` mostly)."""

    label: str
    conversion: Conversion | None = None
    filters: tuple[LabelPredicate, ...] = ()


@dataclass(frozen=True, slots=True)
class LogRange:
    """``query [range] offset ...``, with the ``| unwrap`` that makes samples of a label."""

    query: LogQuery
    range_ns: int
    offset_ns: int = 0
    unwrap: Unwrap | None = None


@dataclass(frozen=True, slots=True)
class Grouping:
    """``by (a, b)`` or ``without (a, b)``; ``by ()`` is one group."""

    labels: tuple[str, ...] = ()
    without: bool = False


@dataclass(frozen=True, slots=True)
class RangeAggregation:
    """``count_over_time({...}[5m])``; ``param`` is the quantile of ``quantile_over_time``."""

    op: RangeOp
    log_range: LogRange
    param: float | None = None
    grouping: Grouping | None = None


@dataclass(frozen=True, slots=True)
class VectorAggregation:
    """``sum by (a) (expr)``; ``param`` is k of ``topk``/``bottomk``/``approx_topk``."""

    op: VectorOp
    expr: MetricExpr
    param: int | None = None
    grouping: Grouping | None = None


@dataclass(frozen=True, slots=True)
class VectorMatching:
    """``on (a)`` (``on``) or ``ignoring (a)``, then ``group_left``/``group_right`` (``card``, ``include``)."""

    on: bool
    labels: tuple[str, ...] = ()
    card: Cardinality = "one-to-one"
    include: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BinaryOp:
    """``left op [bool] [on/ignoring (...)] [group_left/right (...)] right``."""

    op: BinaryOperator
    left: MetricExpr
    right: MetricExpr
    return_bool: bool = False
    matching: VectorMatching | None = None


@dataclass(frozen=True, slots=True)
class Number:
    """A scalar literal; LogQL has no Inf or NaN literal."""

    value: float


@dataclass(frozen=True, slots=True)
class Vector:
    """``vector(1)``: one sample without labels at every step."""

    value: float


@dataclass(frozen=True, slots=True)
class LabelReplace:
    """``label_replace(expr, "dst", "replacement", "src", "regex")`` as in PromQL."""

    expr: MetricExpr
    dst: str
    replacement: str
    src: str
    regex: str


MetricExpr = RangeAggregation | VectorAggregation | BinaryOp | Number | Vector | LabelReplace
Expr = LogQuery | MetricExpr
Node = Expr | LogRange


def is_log_query(expr: Expr) -> bool:
    """Whether ``expr`` returns log lines (streams) rather than samples."""
    return isinstance(expr, LogQuery)


def is_metric_query(expr: Expr) -> bool:
    return not isinstance(expr, LogQuery)


def is_scalar(expr: Expr) -> bool:
    """Whether ``expr`` is a scalar: a literal or arithmetic on literals only (no series)."""
    if isinstance(expr, Number):
        return True
    if isinstance(expr, BinaryOp):
        return is_scalar(expr.left) and is_scalar(expr.right)
    return False


def walk(expr: Node) -> Iterator[Node]:
    """Every query-level node of ``expr`` (itself first): aggregations, operands, ranges, log queries."""
    yield expr
    match expr:
        case RangeAggregation(log_range=r):
            yield from walk(r)
        case LogRange(query=q):
            yield q
        case VectorAggregation(expr=e) | LabelReplace(expr=e):
            yield from walk(e)
        case BinaryOp(left=left, right=right):
            yield from walk(left)
            yield from walk(right)


def log_queries(expr: Expr) -> tuple[LogQuery, ...]:
    """The log queries ``expr`` reads, left to right."""
    return tuple(n for n in walk(expr) if isinstance(n, LogQuery))
