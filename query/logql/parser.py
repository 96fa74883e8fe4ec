"""Recursive-descent LogQL parser: tokens to AST, after Loki's grammar (``pkg/logql/syntax/syntax.y``).

    expr        := binary
    binary      := unary (binop modifiers unary)*      precedence climbing, see PRECEDENCE
    unary       := ["+"|"-"] NUMBER | "(" expr ")" | logQuery | rangeAgg | vectorAgg | vector | labelReplace
    logQuery    := selector stage*
    rangeAgg    := RANGE_OP "(" [NUMBER ","] logRange ")" [grouping]
    logRange    := selector [RANGE [offset]] stage* [unwrap] [RANGE [offset]]   exactly one RANGE
                 | "(" logRange-without-or-with-range ")" [RANGE [offset]]
    vectorAgg   := VECTOR_OP [grouping] "(" [NUMBER ","] expr ")" [grouping]
    stage       := lineFilter | "|" (parser | labelFilter | line_format | label_format | keep | drop | decolorize)
    labelFilter := or ;  or := and ("or" and)* ;  and := primary ("and" primary)* ["," | juxtaposed] or?

Loki's yacc grammar gives ``,`` and juxtaposition (``a b``) no precedence, so they shift: the
right-hand side of ``a, ...`` is everything up to the end of the filter, ``a, b or c`` is
``a and (b or c)``. This parser does the same.

Errors: QuerySyntaxError (with the position) for text that is not LogQL, LogQLUnsupported for
LogQL that loglake does not answer.
"""

from __future__ import annotations

import re
from typing import Literal, NoReturn, cast

import re2

from query.errors import QuerySyntaxError
from query.logql.ast import (
    COMPARISON_OPS,
    GROUPED_RANGE_OPS,
    LINE_RANGE_OPS,
    RANGE_OPS,
    SET_OPS,
    UNWRAP_RANGE_OPS,
    VECTOR_OPS,
    BinaryOp,
    BinaryOperator,
    BytesFilter,
    Cardinality,
    CompareOp,
    Conversion,
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
    LabelFormatItem,
    LabelOr,
    LabelPredicate,
    LabelReplace,
    LineFilter,
    LineFilterOp,
    LineFormat,
    LogfmtParser,
    LogQLUnsupported,
    LogQuery,
    LogRange,
    Matcher,
    MatchOp,
    MetricExpr,
    Number,
    NumericFilter,
    PatternParser,
    RangeAggregation,
    RangeOp,
    RegexpParser,
    Selector,
    Stage,
    UnpackParser,
    Unwrap,
    Vector,
    VectorAggregation,
    VectorMatching,
    VectorOp,
)
from query.logql.lexer import Token, tokenize
from query.logql.template import TemplateError, compile_template

#: Parentheses, aggregations and right-associative chains nest no deeper, to bound recursion.
MAX_DEPTH = 100

#: Binding strength of binary operators (Loki's and PromQL's); ``^`` alone is right-associative.
PRECEDENCE: dict[str, int] = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, ">": 3, ">=": 3, "<": 3, "<=": 3,
                              "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "^": 6}
RIGHT_ASSOCIATIVE = frozenset({"^"})

_MATCH_OPS = ("=", "!=", "=~", "!~")
_LINE_FILTER_OPS = ("|=", "!=", "|~", "!~", "|>", "!>")
#: The largest k of topk (Go's strconv.Atoi into an int64, as Loki reads it).
MAX_K = 2**63 - 1
_LABEL_OPS = ("=", "!=", "=~", "!~", "==", ">", ">=", "<", "<=")
_CONVERSIONS = ("bytes", "duration", "duration_seconds")
_PATTERN_CAPTURE_RE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")
_NAMED_GROUP_RE = re.compile(r"\(\?P?<[A-Za-z_]")
_RE2_QUIET = re2.Options()
_RE2_QUIET.log_errors = False
_RE2_QUIET.never_capture = True       # a yes/no answer: RE2's DFA, not groups x states per step


def pattern_parts(pattern: str) -> tuple[tuple[str, str], ...]:
    """``| pattern`` text as ("literal", text) and ("capture", name) parts; ``<_>`` is the capture "_".

    Raises ValueError when Loki would reject the pattern: no named capture, two captures in a row,
    or a name captured twice.
    """
    parts: list[tuple[str, str]] = []
    at = 0
    for m in _PATTERN_CAPTURE_RE.finditer(pattern):
        if m.start() > at:
            parts.append(("literal", pattern[at:m.start()]))
        elif parts and parts[-1][0] == "capture":
            raise ValueError(f"consecutive captures <{parts[-1][1]}><{m.group(1)}> need a literal between them")
        parts.append(("capture", m.group(1)))
        at = m.end()
    if at < len(pattern):
        parts.append(("literal", pattern[at:]))
    names = [name for kind, name in parts if kind == "capture" and name != "_"]
    if not names:
        raise ValueError("a pattern needs at least one named capture such as <status>")
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise ValueError(f"capture <{dup}> appears twice")
    return tuple(parts)


def _describe(tok: Token) -> str:
    if tok.kind == "EOF":
        return "end of query"
    if tok.kind == "RANGE":
        return f"range {tok.text}"
    if tok.kind in ("STRING", "NUMBER", "DURATION", "BYTES"):
        return f"{tok.kind.lower()} {tok.text}"
    return repr(tok.text)


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = tokenize(query)
        self.i = 0
        self.depth = 0

    # -- token helpers -------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "EOF":
            self.i += 1
        return tok

    def at(self, kind: str, text: str | None = None, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == kind and (text is None or tok.text == text)

    def at_keyword(self, *words: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "KEYWORD" and tok.text in words

    def error(self, message: str, pos: int) -> QuerySyntaxError:
        return QuerySyntaxError(message, pos, self.query)

    def fail(self, expected: str, tok: Token | None = None) -> NoReturn:
        tok = tok or self.peek()
        message = f"expected {expected}, found {_describe(tok)}"
        if tok.kind == "RANGE":
            message += " (a range is only allowed inside a range aggregation such as count_over_time(...))"
        raise self.error(message, tok.pos)

    def unsupported(self, construct: str, tok: Token) -> NoReturn:
        raise LogQLUnsupported(construct, tok.pos, self.query)

    def expect(self, kind: str, expected: str) -> Token:
        if not self.at(kind):
            self.fail(expected)
        return self.take()

    def expect_keyword(self, word: str) -> Token:
        if not self.at_keyword(word):
            self.fail(f"'{word}'")
        return self.take()

    def label_name(self, what: str = "a label name") -> str:
        tok = self.peek()
        if tok.kind == "KEYWORD":
            raise self.error(f"expected {what}, found the keyword {tok.text!r}, which cannot name a label",
                             tok.pos)
        return cast(str, self.expect("IDENT", what).value)

    def string(self, expected: str = "a string") -> str:
        return cast(str, self.expect("STRING", expected).value)

    def checked(self, m: Matcher, tok: Token) -> Matcher:
        """``m``, once its regular expression compiles (Loki compiles matchers as it parses them)."""
        if m.op in ("=~", "!~"):
            try:
                re2.compile(f"^(?:{m.value})$", options=_RE2_QUIET)
            except re2.error as e:
                raise self.error(f"invalid regular expression {m.value!r}: {e}", tok.pos) from None
        return m

    def nest(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH}", tok.pos)

    # -- entry ---------------------------------------------------------------------------

    def parse(self) -> Expr:
        if self.at("EOF"):
            self.fail("a stream selector such as {service=\"api\"} or a metric query")
        expr = self.binary(0)
        if not self.at("EOF"):
            self.fail("a binary operator or end of query")
        return expr

    # -- metric expressions --------------------------------------------------------------

    def binary_operator(self) -> str | None:
        tok = self.peek()
        if tok.kind in PRECEDENCE and tok.kind not in SET_OPS:
            return tok.kind
        if tok.kind == "KEYWORD" and tok.text in SET_OPS:
            return tok.text
        return None

    def binary(self, min_prec: int) -> Expr:
        start = self.peek()
        self.nest(start)
        left = self.unary()
        while (op := self.binary_operator()) is not None and PRECEDENCE[op] >= min_prec:
            op_tok = self.take()
            self.check_operand(left, op, start)
            return_bool, matching = self.binary_modifiers(op, op_tok)
            right_tok = self.peek()
            right = self.binary(PRECEDENCE[op] + (0 if op in RIGHT_ASSOCIATIVE else 1))
            self.check_operand(right, op, right_tok)
            left = BinaryOp(cast(BinaryOperator, op), cast(MetricExpr, left), cast(MetricExpr, right),
                            return_bool, matching)
            if _metric_depth(left) > MAX_DEPTH:
                raise self.error(f"expression nests deeper than {MAX_DEPTH}", op_tok.pos)
        self.depth -= 1
        return left

    def check_operand(self, operand: Expr, op: str, tok: Token) -> None:
        if isinstance(operand, LogQuery):
            raise self.error(f"a log query cannot be an operand of {op!r}; turn it into samples first, "
                             "e.g. count_over_time({...}[5m])", tok.pos)
        if op in SET_OPS and isinstance(operand, Number):
            raise self.error(f"{op!r} needs vectors on both sides, not the number {operand.value:g}", tok.pos)

    def binary_modifiers(self, op: str, op_tok: Token) -> tuple[bool, VectorMatching | None]:
        return_bool = False
        if self.at_keyword("bool"):
            bool_tok = self.take()
            if op not in COMPARISON_OPS:
                raise self.error(f"bool only applies to comparison operators, not {op!r}", bool_tok.pos)
            return_bool = True
        if self.at_keyword("group_left", "group_right"):
            raise self.error(f"{self.peek().text} needs on(...) or ignoring(...) before it", self.peek().pos)
        if not self.at_keyword("on", "ignoring"):
            return return_bool, None
        on = self.take().text == "on"
        labels = self.label_list()
        card: Cardinality = "one-to-one"
        include: tuple[str, ...] = ()
        if self.at_keyword("group_left", "group_right"):
            card = "many-to-one" if self.take().text == "group_left" else "one-to-many"
            if self.at("("):
                include = self.label_list()
        return return_bool, VectorMatching(on, labels, card, include)

    def unary(self) -> Expr:
        tok = self.peek()
        if tok.kind in ("+", "-"):
            if not self.at("NUMBER", ahead=1):
                raise self.error(f"unary {tok.kind} only applies to a number in LogQL", tok.pos)
            self.take()
            value = cast(float, self.take().value)
            return Number(-value if tok.kind == "-" else value)
        if tok.kind == "NUMBER":
            self.take()
            return Number(cast(float, tok.value))
        if tok.kind == "(":
            self.take()
            inner = self.binary(0)
            self.expect(")", "')'")
            return inner
        if tok.kind == "{":
            return self.log_query()
        if tok.kind == "FUNC":
            if tok.text in RANGE_OPS:
                return self.range_aggregation()
            if tok.text in VECTOR_OPS:
                return self.vector_aggregation()
            if tok.text == "vector":
                return self.vector()
            if tok.text == "label_replace":
                return self.label_replace()
            raise self.error(f"{tok.text}(...) is not a query function", tok.pos)
        self.fail("a stream selector, a number or a function such as count_over_time(...)")

    def metric_operand(self) -> MetricExpr:
        tok = self.peek()
        expr = self.binary(0)
        if isinstance(expr, LogQuery):
            raise self.error("expected a metric expression, found a log query; turn it into samples first, "
                             "e.g. count_over_time({...}[5m])", tok.pos)
        return expr

    def label_list(self) -> tuple[str, ...]:
        self.expect("(", "'('")
        labels: list[str] = []
        if not self.at(")"):
            labels.append(self.label_name())
            while self.at(","):
                self.take()
                labels.append(self.label_name())
        self.expect(")", "',' or ')'")
        return tuple(labels)

    def grouping(self) -> Grouping:
        without = self.take().text == "without"
        return Grouping(self.label_list(), without)

    def range_aggregation(self) -> RangeAggregation:
        op_tok = self.take()
        op = cast(RangeOp, op_tok.text)
        self.expect("(", "'('")
        param: float | None = None
        if self.at("NUMBER"):
            num = self.take()
            if op != "quantile_over_time":
                raise self.error(f"{op} takes no parameter", num.pos)
            param = cast(float, num.value)
            self.expect(",", "','")
        elif op == "quantile_over_time":
            self.fail("the quantile, e.g. quantile_over_time(0.99, ...)")
        log_range = self.log_range()
        self.expect(")", "')'")
        grouping = self.grouping() if self.at_keyword("by", "without") else None
        if grouping is not None and op not in GROUPED_RANGE_OPS:
            raise self.error(f"{op}(...) cannot be followed by by/without; aggregate it instead, "
                             f"e.g. sum by (...) ({op}(...))", op_tok.pos)
        if log_range.unwrap is not None and op not in UNWRAP_RANGE_OPS:
            raise self.error(f"{op} cannot be used with | unwrap", op_tok.pos)
        if log_range.unwrap is None and op not in LINE_RANGE_OPS:
            raise self.error(f"{op} needs | unwrap <label> before the range", op_tok.pos)
        return RangeAggregation(op, log_range, param, grouping)

    def vector_aggregation(self) -> VectorAggregation:
        op_tok = self.take()
        op = cast(VectorOp, op_tok.text)
        grouping = self.grouping() if self.at_keyword("by", "without") else None
        self.expect("(", "'('")
        param: int | None = None
        if self.at("NUMBER") and self.at(",", ahead=1):
            num = self.take()
            self.take()
            if op not in ("topk", "bottomk", "approx_topk"):
                raise self.error(f"{op} takes no parameter", num.pos)
            if not re.fullmatch(r"[0-9]+", num.text) or not 0 < int(num.text) <= MAX_K:
                raise self.error(f"{op} needs a whole number greater than 0 (at most {MAX_K}), not {num.text}",
                                 num.pos)
            param = int(num.text)
        elif op in ("topk", "bottomk", "approx_topk"):
            self.fail(f"k, e.g. {op}(10, ...)")
        expr = self.metric_operand()
        self.expect(")", "')'")
        if self.at_keyword("by", "without"):
            if grouping is not None:
                raise self.error(f"{op} is grouped twice", self.peek().pos)
            grouping = self.grouping()
        if grouping is not None and op == "approx_topk":
            raise self.error("approx_topk cannot be grouped; aggregate inside it instead, "
                             "e.g. approx_topk(10, sum by (a) (...))", op_tok.pos)
        if grouping is not None and grouping.labels and op in ("sort", "sort_desc"):
            raise self.error(f"{op} cannot be grouped by labels: it orders the whole result", op_tok.pos)
        return VectorAggregation(op, expr, param, grouping)

    def vector(self) -> Vector:
        self.take()
        self.expect("(", "'('")
        value = cast(float, self.expect("NUMBER", "a number").value)
        self.expect(")", "')'")
        return Vector(value)

    def label_replace(self) -> LabelReplace:
        self.take()
        self.expect("(", "'('")
        expr = self.metric_operand()
        args: list[str] = []
        regex_tok = self.peek()
        for _ in range(4):
            self.expect(",", "','")
            regex_tok = self.peek()
            args.append(self.string())
        self.expect(")", "')'")
        try:
            re2.compile(f"^(?:{args[3]})$", options=_RE2_QUIET)
        except re2.error as e:
            raise self.error(f"invalid regular expression in label_replace: {e}", regex_tok.pos) from None
        return LabelReplace(expr, *args)

    # -- log ranges ----------------------------------------------------------------------

    def log_range(self) -> LogRange:
        query, range_ns, offset_ns, unwrap = self.log_range_part()
        if range_ns is None:
            self.fail("a range such as [5m]")
        return LogRange(query, range_ns, offset_ns, unwrap)

    def range_and_offset(self) -> tuple[int, int]:
        range_ns = cast(int, self.take().value)
        offset_ns = 0
        if self.at_keyword("offset"):
            self.take()
            offset_ns = cast(int, self.expect("DURATION", "a duration such as 1h").value)
        return range_ns, offset_ns

    def log_range_part(self) -> tuple[LogQuery, int | None, int, Unwrap | None]:
        if self.at("("):
            paren = self.take()
            self.nest(paren)
            inner_paren = self.at("(")
            query, range_ns, offset_ns, unwrap = self.log_range_part()
            self.expect(")", "')'")
            self.depth -= 1
            if range_ns is None:
                # Loki's grammar: `(selector pipeline) [5m]`, one level of parentheses before the range
                # (around a whole range, `(({...}[5m]))`, as many as you like).
                if inner_paren or not self.at("RANGE"):
                    self.fail("a range such as [5m]")
                range_ns, offset_ns = self.range_and_offset()
            return query, range_ns, offset_ns, unwrap
        selector = self.selector()
        range_ns = None
        offset_ns = 0
        if self.at("RANGE"):
            range_ns, offset_ns = self.range_and_offset()
        stages = self.pipeline()
        unwrap = self.unwrap() if self.at("|") and self.at_keyword("unwrap", ahead=1) else None
        if range_ns is None and self.at("RANGE"):
            range_ns, offset_ns = self.range_and_offset()
        return LogQuery(selector, stages), range_ns, offset_ns, unwrap

    def unwrap(self) -> Unwrap:
        self.take()
        self.take()
        conversion: Conversion | None = None
        if self.at("FUNC") and self.peek().text in _CONVERSIONS:
            conversion = cast(Conversion, self.take().text)
            self.expect("(", "'('")
            label = self.label_name()
            self.expect(")", "')'")
        else:
            label = self.label_name("a label name or bytes(...), duration(...), duration_seconds(...)")
        filters: list[LabelPredicate] = []
        while self.at("|") and (self.at("IDENT", ahead=1) or self.at("(", ahead=1)):
            self.take()
            filters.append(self.label_or())
        if self.peek().kind in ("|", *_LINE_FILTER_OPS, "|>", "!>"):
            raise self.error("only label filters (| name op value) may follow | unwrap", self.peek().pos)
        return Unwrap(label, conversion, tuple(filters))

    # -- log queries ---------------------------------------------------------------------

    def log_query(self) -> LogQuery:
        selector = self.selector()
        stages = self.pipeline()
        if self.at("|") and self.at_keyword("unwrap", ahead=1):
            raise self.error("| unwrap is only allowed inside a range aggregation such as sum_over_time(...)",
                             self.peek(1).pos)
        return LogQuery(selector, stages)

    def selector(self) -> Selector:
        brace = self.expect("{", "'{'")
        if self.at("}"):
            raise self.error('a stream selector needs at least one matcher, e.g. {service="api"}', brace.pos)
        matchers = [self.matcher()]
        while self.at(","):
            self.take()
            matchers.append(self.matcher())
        self.expect("}", "',' or '}'")
        if not any(_selects(m) for m in matchers):
            raise self.error("a stream selector needs at least one = or =~ matcher that cannot match an empty "
                             'value: {app=~".*"} selects everything, {app=~".+"} does not', brace.pos)
        return Selector(tuple(matchers))

    def matcher(self) -> Matcher:
        name = self.label_name()
        op_tok = self.peek()
        if op_tok.kind not in _MATCH_OPS:
            self.fail("=, !=, =~ or !~")
        self.take()
        return self.checked(Matcher(name, cast(MatchOp, op_tok.kind), self.string()), self.peek(-1))

    def pipeline(self) -> tuple[Stage, ...]:
        stages: list[Stage] = []
        while True:
            tok = self.peek()
            if tok.kind in _LINE_FILTER_OPS:
                stages.append(self.line_filter())
            elif tok.kind == "|" and not self.at_keyword("unwrap", ahead=1):
                self.take()
                stages.append(self.stage())
            else:
                return tuple(stages)

    def line_filter(self) -> LineFilter:
        op = cast(LineFilterOp, self.take().kind)
        values = [self.line_filter_value()]
        while self.at_keyword("or"):
            self.take()
            values.append(self.line_filter_value())
        return LineFilter(op, tuple(values))

    def line_filter_value(self) -> str | Ip:
        if self.at("FUNC", "ip"):
            return Ip(self.ip_call())
        return self.string()

    def ip_call(self) -> str:
        """``ip("...")``: the pattern (checked when the query runs, as in Loki)."""
        self.take()
        self.expect("(", "'('")
        pattern = self.string("a quoted address, CIDR prefix or range")
        self.expect(")", "')'")
        return pattern

    def stage(self) -> Stage:
        tok = self.peek()
        if tok.kind == "KEYWORD":
            self.take()
            match tok.text:
                case "json":
                    return JsonParser(self.extractions())
                case "logfmt":
                    strict = keep_empty = False
                    while self.at("FLAG"):
                        flag = self.take().text
                        strict, keep_empty = strict or flag == "--strict", keep_empty or flag == "--keep-empty"
                    return LogfmtParser(self.extractions(), strict, keep_empty)
                case "regexp":
                    pattern_tok = self.expect("STRING", "a regular expression")
                    if not _NAMED_GROUP_RE.search(cast(str, pattern_tok.value)):
                        raise self.error("the regexp parser needs at least one named group such as (?P<name>...)",
                                         pattern_tok.pos)
                    return RegexpParser(cast(str, pattern_tok.value))
                case "pattern":
                    pattern_tok = self.expect("STRING", "a pattern")
                    try:
                        pattern_parts(cast(str, pattern_tok.value))
                    except ValueError as e:
                        raise self.error(f"invalid pattern: {e}", pattern_tok.pos) from None
                    return PatternParser(cast(str, pattern_tok.value))
                case "unpack":
                    return UnpackParser()
                case "line_format":
                    return LineFormat(self.template("line_format"))
                case "label_format":
                    return self.label_format()
                case "keep" | "drop":
                    items = self.named_matchers()
                    return KeepLabels(items) if tok.text == "keep" else DropLabels(items)
                case "decolorize":
                    return Decolorize()
            raise self.error(f"the keyword {tok.text!r} cannot start a pipeline stage", tok.pos)
        if tok.kind == "IDENT" and tok.text.lower() == "xml" and self.peek(1).kind not in _LABEL_OPS:
            self.unsupported("| xml", tok)
        if tok.kind in ("IDENT", "("):
            return LabelFilter(self.label_or())
        self.fail("a parser (json, logfmt, pattern, regexp), a label filter, line_format, label_format, "
                  "keep, drop or decolorize after '|'")

    def extractions(self) -> tuple[Extraction, ...]:
        if not self.at("IDENT"):
            return ()
        items = [self.extraction()]
        while self.at(","):
            self.take()
            items.append(self.extraction())
        return tuple(items)

    def extraction(self) -> Extraction:
        label = self.label_name()
        if not self.at("="):
            return Extraction(label, label)
        self.take()
        return Extraction(label, self.string("a quoted expression"))

    def template(self, where: str) -> str:
        tok = self.expect("STRING", "a template string")
        source = cast(str, tok.value)
        try:
            compile_template(source)
        except TemplateError as e:
            raise self.error(f"invalid {where} template: {e.message}", tok.pos) from None
        except LogQLUnsupported as e:
            raise LogQLUnsupported(f"| {where} {e.construct}", tok.pos, self.query) from None
        return source

    def label_format(self) -> LabelFormat:
        items: list[LabelFormatItem] = []
        while True:
            dst_tok = self.peek()
            dst = self.label_name()
            if dst == "__error__":
                raise self.error("__error__ cannot be set by label_format", dst_tok.pos)
            if any(item.dst == dst for item in items):
                raise self.error(f"label_format sets {dst} twice; use two label_format stages", dst_tok.pos)
            self.expect("=", "'='")
            if self.at("IDENT"):
                items.append(LabelFormatItem(dst, self.label_name(), True))
            elif self.at("STRING"):
                items.append(LabelFormatItem(dst, self.template("label_format"), False))
            else:
                self.fail("a label name or a template string")
            if not self.at(","):
                return LabelFormat(tuple(items))
            self.take()

    def named_matchers(self) -> tuple[str | Matcher, ...]:
        items: list[str | Matcher] = []
        while True:
            name = self.label_name()
            if self.peek().kind in _MATCH_OPS:
                op = cast(MatchOp, self.take().kind)
                items.append(self.checked(Matcher(name, op, self.string()), self.peek(-1)))
            else:
                items.append(name)
            if not self.at(","):
                return tuple(items)
            self.take()

    # -- label filter expressions ---------------------------------------------------------

    def label_or(self) -> LabelPredicate:
        # Loki's grammar shifts on `,` and on juxtaposition, so `p, rest` is `p and (rest)` where rest runs
        # to the end of the filter: `a, b or c` is `a and (b or c)`. Iterative, with the pending left-hand
        # sides on a stack, so that a long `a=1, b=2, ...` list stays flat and cannot exhaust the stack.
        pending: list[tuple[list[LabelPredicate], list[LabelPredicate]]] = []
        disjuncts: list[LabelPredicate] = []
        while True:
            start = self.peek()
            conjuncts = [self.label_primary()]
            while self.at_keyword("and"):
                self.take()
                conjuncts.append(self.label_primary())
            if self.at(",") or self.at("IDENT") or self.at("("):
                if self.at(","):
                    self.take()
                pending.append((disjuncts, conjuncts))
                if sum(1 for prefix, _ in pending if prefix) > MAX_DEPTH:
                    raise self.error(f"label filter nests deeper than {MAX_DEPTH}", start.pos)
                disjuncts = []
                continue
            disjuncts.append(_and(conjuncts))
            if self.at_keyword("or"):
                self.take()
                continue
            break
        result = _or(disjuncts)
        while pending:
            prefix, conjuncts = pending.pop()
            tail: list[LabelPredicate] = list(result.items) if isinstance(result, LabelAnd) else [result]
            result = _or([*prefix, _and(conjuncts + tail)])
        return result

    def label_primary(self) -> LabelPredicate:
        tok = self.peek()
        if tok.kind == "(":
            self.take()
            self.nest(tok)
            inner = self.label_or()
            self.expect(")", "')'")
            self.depth -= 1
            return inner
        name = self.label_name("a label name or '('")
        op_tok = self.peek()
        if op_tok.kind not in _LABEL_OPS:
            self.fail("a comparison (=, !=, =~, !~, ==, >, >=, <, <=)")
        self.take()
        op = op_tok.kind
        value = self.peek()
        if value.kind == "STRING":
            if op not in _MATCH_OPS:
                raise self.error(f"{op} compares numbers, durations or byte sizes, not strings", value.pos)
            self.take()
            return self.checked(Matcher(name, cast(MatchOp, op), cast(str, value.value)), value)
        if op in ("=~", "!~"):
            self.fail(f"a quoted regular expression after {op}")
        compare = cast(CompareOp, "==" if op == "=" else op)
        if value.kind == "FUNC" and value.text == "ip" and op in ("=", "!="):
            return IpFilter(name, cast(Literal["=", "!="], op), self.ip_call())
        if value.kind in ("+", "-") and self.at("NUMBER", ahead=1):
            self.take()
            number = cast(float, self.take().value)
            return NumericFilter(name, compare, -number if value.kind == "-" else number)
        if value.kind == "NUMBER":
            self.take()
            return NumericFilter(name, compare, cast(float, value.value))
        if value.kind == "DURATION":
            self.take()
            return DurationFilter(name, compare, cast(int, value.value))
        if value.kind == "BYTES":
            self.take()
            return BytesFilter(name, compare, cast(int, value.value))
        self.fail(f"a string, number, duration or byte size after {op}")


def _and(items: list[LabelPredicate]) -> LabelPredicate:
    return items[0] if len(items) == 1 else LabelAnd(tuple(items))


def _or(items: list[LabelPredicate]) -> LabelPredicate:
    return items[0] if len(items) == 1 else LabelOr(tuple(items))


def _metric_depth(expr: Expr) -> int:
    match expr:
        case BinaryOp(left=left, right=right):
            return 1 + max(_metric_depth(left), _metric_depth(right))
        case VectorAggregation(expr=e) | LabelReplace(expr=e):
            return 1 + _metric_depth(e)
    return 1


def _selects(m: Matcher) -> bool:
    """Whether ``m`` narrows the streams: Loki refuses selectors whose every matcher matches ""."""
    if m.op == "=":
        return m.value != ""
    if m.op == "=~":
        # RE2, Loki's engine: Python's re can take exponential time even on "" ((x?|y?)(z?|w?)... ).
        try:
            return re2.compile(m.value, options=_RE2_QUIET).fullmatch("") is None
        except re2.error:
            return True   # the regex is refused with its reason where it is compiled
    return False


def parse(query: str) -> Expr:
    """Parse LogQL text into its AST; raises QuerySyntaxError (with the position) or LogQLUnsupported."""
    return _Parser(query).parse()
