"""The subset of Go text/template that ``line_format`` and ``label_format`` may use, and a safe renderer.

Supported: text, ``{{.label}}``, ``{{__line__}}``, string literals, parentheses, pipes and calls of
ToUpper, ToLower, upper, lower, TrimSpace, trim and default; ``{{-``/``-}}`` trim markers and
``{{/* comments */}}``. Anything else Loki accepts (``printf``, ``if``, ``range``, variables, numbers,
the other template functions) raises LogQLUnsupported naming it; what Loki would reject (an unknown
function, an unclosed action) raises TemplateError. Nothing is evaluated but string functions, so
rendering cannot run code or loop.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from query.logql.ast import LogQLUnsupported
from query.logql.lexer import GoStringError, scan_go_string

_SPACE = " \t\r\n"
MAX_DEPTH = 50
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


#: Go's unicode.IsSpace; Python's str.isspace() also counts \x1c-\x1f.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000"


def _default(*args: str) -> str:
    # Sprig's default(d, given...): the given value unless it is empty.
    return args[1] if len(args) == 2 and args[1] != "" else args[0]


def _upper(s: str) -> str:
    # Go maps rune by rune; Python's full case mapping would turn "ß" into "SS".
    return "".join(u if len(u := c.upper()) == 1 else c for c in s)


def _lower(s: str) -> str:
    return "".join(lo if len(lo := c.lower()) == 1 else c for c in s)


def _trim_space(s: str) -> str:
    return s.strip(_GO_SPACE)


#: name -> (least, most arguments, implementation).
FUNCTIONS: dict[str, tuple[int, int, Callable[..., str]]] = {
    "ToUpper": (1, 1, _upper), "upper": (1, 1, _upper),
    "ToLower": (1, 1, _lower), "lower": (1, 1, _lower),
    "TrimSpace": (1, 1, _trim_space), "trim": (1, 1, _trim_space),
    "default": (1, 2, _default),
}
LINE = "__line__"
#: Functions a Loki template may call that loglake does not evaluate (Loki's map, Sprig's part, Go's builtins).
LOKI_FUNCTIONS = frozenset({
    "Replace", "Trim", "TrimLeft", "TrimRight", "TrimPrefix", "TrimSuffix", "regexReplaceAll",
    "regexReplaceAllLiteral", "count", "urldecode", "urlencode", "bytes", "duration", "duration_seconds",
    "unixEpochMillis", "unixEpochNanos", "toDateInZone", "unixToTime", "alignLeft", "alignRight", "b64enc",
    "b64dec", "title", "trunc", "substr", "contains", "hasPrefix", "hasSuffix", "indent", "nindent", "replace",
    "repeat", "trimAll", "trimSuffix", "trimPrefix", "int", "float64", "add", "sub", "mul", "div", "mod", "addf",
    "subf", "mulf", "divf", "max", "min", "maxf", "minf", "ceil", "floor", "round", "fromJson", "date", "toDate",
    "now", "unixEpoch", "__timestamp__", "and", "or", "not", "len", "index", "slice", "print", "printf",
    "println", "html", "js", "urlquery", "eq", "ne", "lt", "le", "gt", "ge", "call"})
_ACTION_KEYWORDS = frozenset({"if", "else", "end", "range", "with", "define", "template", "block", "break",
                              "continue"})


class TemplateError(ValueError):
    """A template Loki would reject too; ``offset`` is in the template's text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message, self.offset = message, offset


@dataclass(frozen=True, slots=True)
class Field:
    """``.name``: the label's value, empty when the label is missing (Loki's ``missingkey=zero``)."""

    name: str


@dataclass(frozen=True, slots=True)
class Str:
    value: str


@dataclass(frozen=True, slots=True)
class Call:
    """``name arg...``; in a pipe the previous value is passed as the last argument."""

    name: str
    args: tuple[Operand, ...] = ()


@dataclass(frozen=True, slots=True)
class Pipe:
    commands: tuple[Operand, ...]


Operand = Field | Str | Call | Pipe


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    parts: tuple[str | Pipe, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """Labels the template reads, in order of first use."""
        seen: dict[str, None] = {}

        def visit(node: Operand) -> None:
            if isinstance(node, Field):
                seen.setdefault(node.name)
            elif isinstance(node, Call):
                for a in node.args:
                    visit(a)
            elif isinstance(node, Pipe):
                for c in node.commands:
                    visit(c)

        for part in self.parts:
            if isinstance(part, Pipe):
                visit(part)
        return tuple(seen)

    @property
    def uses_line(self) -> bool:
        return any(_uses_line(p) for p in self.parts if isinstance(p, Pipe))

    def render(self, labels: Mapping[str, str], line: str) -> str:
        return "".join(p if isinstance(p, str) else _eval(p, labels, line) for p in self.parts)


def _uses_line(node: Operand) -> bool:
    if isinstance(node, Call):
        return node.name == LINE or any(_uses_line(a) for a in node.args)
    if isinstance(node, Pipe):
        return any(_uses_line(c) for c in node.commands)
    return False


def _eval(node: Operand, labels: Mapping[str, str], line: str, piped: str | None = None) -> str:
    if isinstance(node, Field):
        return labels.get(node.name, "")
    if isinstance(node, Str):
        return node.value
    if isinstance(node, Pipe):
        value: str | None = None
        for cmd in node.commands:
            value = _eval(cmd, labels, line, value)
        return value or ""
    if node.name == LINE:
        return line
    args = [_eval(a, labels, line) for a in node.args]
    if piped is not None:
        args.append(piped)
    return FUNCTIONS[node.name][2](*args)


class _Tok:
    __slots__ = ("kind", "pos", "text", "value")

    def __init__(self, kind: str, text: str, pos: int, value: str = "") -> None:
        self.kind, self.text, self.pos, self.value = kind, text, pos, value


class _Compiler:
    def __init__(self, source: str) -> None:
        self.src = source
        self.i = 0
        self.depth = 0

    def fail(self, message: str, offset: int) -> TemplateError:
        return TemplateError(message, offset)

    def unsupported(self, construct: str) -> LogQLUnsupported:
        return LogQLUnsupported(construct)

    def compile(self) -> Template:
        src = self.src
        parts: list[str | Pipe] = []
        text_start = 0
        trim_next = False
        while True:
            open_at = src.find("{{", self.i)
            text = src[text_start:] if open_at < 0 else src[text_start:open_at]
            if trim_next:
                text = text.lstrip(_SPACE)
            if open_at < 0:
                if text:
                    parts.append(text)
                break
            self.i = open_at + 2
            if src[self.i:self.i + 1] == "-" and src[self.i + 1:self.i + 2] in tuple(_SPACE):
                text = text.rstrip(_SPACE)
                self.i += 2
            if text:
                parts.append(text)
            pipe, trim_next = self.action(open_at)
            if pipe is not None:
                parts.append(pipe)
            text_start = self.i
        return Template(self.src, tuple(parts))

    def close(self) -> bool | None:
        """At ``}}`` or `` -}}`` (after spaces): consume it and say whether it trims; else None."""
        src, j = self.src, self.i
        if src.startswith("}}", j):
            self.i = j + 2
            return False
        if src[j:j + 1] in tuple(_SPACE):
            k = j
            while k < len(src) and src[k] in _SPACE:
                k += 1
            if src.startswith("-}}", k):
                self.i = k + 3
                return True
        return None

    def action(self, open_at: int) -> tuple[Pipe | None, bool]:
        src = self.src
        while self.i < len(src) and src[self.i] in _SPACE:
            self.i += 1
        if src.startswith("/*", self.i):
            end = src.find("*/", self.i + 2)
            if end < 0:
                raise self.fail("unclosed comment", self.i)
            self.i = end + 2
            trim = self.close()
            if trim is None:
                raise self.fail("comment ends before closing delimiter", self.i)
            return None, trim
        pipe = self.pipeline(open_at, top=True)
        trim = self.close()
        if trim is None:   # pragma: no cover - pipeline() stops only at a close or raises
            raise self.fail("unclosed action", open_at)
        return pipe, trim

    def next_token(self, open_at: int) -> _Tok:
        src, n = self.src, len(self.src)
        while self.i < n and src[self.i] in _SPACE:
            if self.close_ahead():
                break
            self.i += 1
        if self.i >= n:
            raise self.fail("unclosed action", open_at)
        j, c = self.i, src[self.i]
        if self.close_ahead():
            return _Tok("}}", "}}", j)
        if c in "|()":
            self.i += 1
            return _Tok(c, c, j)
        if c == '"':
            try:
                value, self.i = scan_go_string(src, j)
            except GoStringError as e:
                raise self.fail(e.message, e.pos) from None
            return _Tok("STR", src[j:self.i], j, value)
        if c == "`":
            end = src.find("`", j + 1)
            if end < 0:
                raise self.fail("unterminated raw string", j)
            self.i = end + 1
            return _Tok("STR", src[j:self.i], j, src[j + 1:end])
        if c == ".":
            m = _IDENT_RE.match(src, j + 1)
            if m is None:
                raise self.unsupported("{{ . }}")
            self.i = m.end()
            if src[self.i:self.i + 1] == ".":
                raise self.unsupported(f"{{{{ .{m.group()}.… }}}}")
            return _Tok("FIELD", src[j:self.i], j, m.group())
        m = _IDENT_RE.match(src, j)
        if m is not None:
            self.i = m.end()
            return _Tok("IDENT", m.group(), j, m.group())
        if c == "$":
            raise self.unsupported("{{ $variable }}")
        if c in "0123456789+-'" or (c == "." and src[j + 1:j + 2].isdigit()):
            raise self.unsupported("{{ number or character constant }}")
        if c in ":=,":
            raise self.unsupported("{{ $variable := … }}")
        raise self.fail(f"unexpected {c!r} in a template action", j)

    def close_ahead(self) -> bool:
        src, j = self.src, self.i
        if src.startswith("}}", j):
            return True
        k = j
        while k < len(src) and src[k] in _SPACE:
            k += 1
        return k > j and src.startswith("-}}", k)

    def pipeline(self, open_at: int, top: bool) -> Pipe:
        commands: list[Operand] = []
        while True:
            cmd = self.command(open_at, piped=bool(commands))
            commands.append(cmd)
            tok = self.next_token(open_at)
            if tok.kind == "|":
                continue
            if (tok.kind == "}}") if top else (tok.kind == ")"):
                if top:
                    self.i = tok.pos   # close() consumes the delimiter
                return Pipe(tuple(commands))
            raise self.fail(f"unexpected {tok.text!r} in a template pipeline", tok.pos)

    def command(self, open_at: int, piped: bool) -> Operand:
        operands: list[tuple[_Tok, Operand]] = []
        while True:
            save = self.i
            tok = self.next_token(open_at)
            if tok.kind in ("|", ")", "}}"):
                self.i = save
                break
            operands.append((tok, self.operand(tok, open_at, first=not operands)))
        if not operands:
            raise self.fail("missing value for command", self.i)
        head_tok, head = operands[0]
        if head_tok.kind == "IDENT":
            assert isinstance(head, Call)
            args = tuple(op for _, op in operands[1:])
            self.check_arity(head.name, len(args) + piped, head_tok.pos)
            return Call(head.name, args)
        if len(operands) > 1 or piped:
            raise self.fail(f"can't give argument to non-function {head_tok.text}", head_tok.pos)
        return head

    def operand(self, tok: _Tok, open_at: int, first: bool) -> Operand:
        if tok.kind == "FIELD":
            return Field(tok.value)
        if tok.kind == "STR":
            return Str(tok.value)
        if tok.kind == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.fail(f"parentheses nested deeper than {MAX_DEPTH}", tok.pos)
            pipe = self.pipeline(open_at, top=False)
            self.depth -= 1
            return pipe
        name = tok.value
        if name in _ACTION_KEYWORDS:
            raise self.unsupported(f"{{{{ {name} }}}}")
        if name in ("true", "false", "nil"):
            raise self.unsupported(f"{{{{ {name} }}}}")
        if name != LINE and name not in FUNCTIONS:
            if name in LOKI_FUNCTIONS:
                raise self.unsupported(f"{{{{ {name} }}}}")
            raise self.fail(f'function "{name}" not defined', tok.pos)
        if not first:
            # Go calls a function named as an argument with no arguments of its own.
            self.check_arity(name, 0, tok.pos)
        return Call(name)

    def check_arity(self, name: str, count: int, pos: int) -> None:
        least, most = (0, 0) if name == LINE else FUNCTIONS[name][:2]
        if not least <= count <= most:
            want = str(least) if least == most else f"{least} or {most}"
            raise self.fail(f"wrong number of arguments for {name}: want {want}, got {count}", pos)


@functools.lru_cache(maxsize=1024)
def compile_template(source: str) -> Template:
    """Parse ``source``; raises TemplateError (invalid) or LogQLUnsupported (outside the subset)."""
    return _Compiler(source).compile()


def render(template: str, labels: Mapping[str, str], line: str) -> str:
    """``template`` evaluated with ``labels`` as ``.label`` and ``line`` as ``__line__``."""
    return compile_template(template).render(labels, line)
