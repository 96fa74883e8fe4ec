"""Tokens of the search language, each with its position in the query string."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from query.errors import QuerySyntaxError

TokenKind = Literal["LPAREN", "RPAREN", "AND", "OR", "NOT", "MINUS", "FIELD", "WORD", "PHRASE",
                    "REGEX", "RANGE", "CMP", "EOF"]

FIELD_RE = re.compile(r"[A-Za-z_@][A-Za-z0-9_.@-]*")
#: ``name>=value`` written without a colon.
_COMPARISON = re.compile(r"([A-Za-z_@][A-Za-z0-9_.@-]*)(>=|<=|>|<)(.*)", re.S)
_SPECIAL = set('()"')
_KEYWORDS: dict[str, TokenKind] = {"AND": "AND", "OR": "OR", "NOT": "NOT"}   # text -> its token kind
_CLOSE = {"[": "]", "{": "}"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    text: str          # unescaped value (field name without its colon; the field of a CMP)
    pos: int
    escaped: frozenset[int] = frozenset()   # indexes in ``text`` of escaped characters
    #: CMP: (op, value). RANGE: (low, high, include_low, include_high), ``None`` for ``*``.
    args: tuple[str | bool | None, ...] = ()


class _Lexer:
    def __init__(self, query: str) -> None:
        self.q = query
        self.i = 0
        self.out: list[Token] = []

    def fail(self, message: str, pos: int) -> QuerySyntaxError:
        return QuerySyntaxError(message, pos, self.q)

    def quoted(self) -> str:
        """A "..." string starting at self.i; backslash escapes the next character."""
        q, n = self.q, len(self.q)
        self.i += 1
        buf: list[str] = []
        while self.i < n and q[self.i] != '"':
            if q[self.i] == "\\" and self.i + 1 < n:
                self.i += 1
            buf.append(q[self.i])
            self.i += 1
        if self.i >= n:
            raise self.fail('unclosed quote: expected "', n)
        self.i += 1
        return "".join(buf)

    def regex(self) -> Token:
        """/pattern/: ``\\/`` is a slash; every other escape is the pattern's own."""
        start, q, n = self.i, self.q, len(self.q)
        self.i += 1
        buf: list[str] = []
        while self.i < n and q[self.i] != "/":
            if q[self.i] == "\\" and self.i + 1 < n:
                buf.append("/" if q[self.i + 1] == "/" else q[self.i:self.i + 2])
                self.i += 2
                continue
            buf.append(q[self.i])
            self.i += 1
        if self.i >= n:
            raise self.fail("unclosed regular expression: expected /", n)
        self.i += 1
        return Token("REGEX", "".join(buf), start)

    def regex_or_none(self) -> Token | None:
        start = self.i
        try:
            tok = self.regex()
        except QuerySyntaxError:
            self.i = start
            if "/" in self.q[start + 1:]:
                raise
            return None
        if self.i < len(self.q) and not self.q[self.i].isspace() and self.q[self.i] != ")":
            self.i = start
            return None
        return tok

    def bound(self, closers: str) -> tuple[str | None, int]:
        q, n = self.q, len(self.q)
        while self.i < n and q[self.i].isspace():
            self.i += 1
        pos = self.i
        if self.i >= n:
            raise self.fail("unclosed range: expected a bound", n)
        if q[self.i] == '"':
            return self.quoted(), pos
        buf: list[str] = []
        while self.i < n and not q[self.i].isspace() and q[self.i] not in closers:
            if q[self.i] == "\\" and self.i + 1 < n:
                self.i += 1
            buf.append(q[self.i])
            self.i += 1
        text = "".join(buf)
        if not text:
            raise self.fail("expected a range bound", pos)
        return (None if text == "*" and q[pos] != "\\" else text), pos

    def range_(self) -> Token:
        """[low TO high], {low TO high} or a mix; '*' is an open end."""
        start, q, n = self.i, self.q, len(self.q)
        include_low = q[self.i] == "["
        self.i += 1
        low, _ = self.bound("]}")
        while self.i < n and q[self.i].isspace():
            self.i += 1
        if q[self.i:self.i + 2] != "TO" or (self.i + 2 < n and not q[self.i + 2].isspace()):
            raise self.fail("expected TO in a range", self.i)
        self.i += 2
        high, pos = self.bound("]}")
        while self.i < n and q[self.i].isspace():
            self.i += 1
        if self.i >= n or q[self.i] not in "]}":
            raise self.fail("expected ] or } to close the range", self.i)
        include_high = q[self.i] == "]"
        self.i += 1
        return Token("RANGE", "", start, args=(low, high, include_low, include_high))

    def comparison_value(self, pos: int) -> str:
        q, n = self.q, len(self.q)
        if self.i < n and q[self.i] == '"':
            return self.quoted()
        buf: list[str] = []
        while self.i < n and q[self.i] not in _SPECIAL and not q[self.i].isspace():
            if q[self.i] == "\\" and self.i + 1 < n:
                self.i += 1
            buf.append(q[self.i])
            self.i += 1
        if not buf:
            raise self.fail("expected a value after the comparison", pos)
        return "".join(buf)

    def field_value(self, name: str, start: int) -> bool:
        """After ``name:``: a regex, range or comparison is lexed here; True if it was."""
        q, i, n = self.q, self.i, len(self.q)
        if i >= n or q[i].isspace() or q[i] == ")":
            raise self.fail(f"expected a value after '{name}:'", i)
        if q[i] == "/":
            # Only a /pattern/ standing alone is a regex, so that path:/api/users stays a word.
            tok = self.regex_or_none()
            if tok is not None:
                self.out.append(tok)
                return True
        if q[i] in _CLOSE:
            self.out.append(self.range_())
            return True
        for op in (">=", "<=", ">", "<"):
            if q.startswith(op, i):
                self.i += len(op)
                self.out[-1] = Token("CMP", name, start, args=(op, self.comparison_value(self.i)))
                return True
        return False

    def word(self) -> None:
        q, n = self.q, len(self.q)
        start = self.i
        buf: list[str] = []
        escaped: set[int] = set()
        fielded = False
        # Once a '<' or '>' was not a comparison, the word holds a character no field name has, so no
        # later one can be: checking again would rescan the word each time (quadratic on "a...a!<<<<").
        may_compare = True
        while self.i < n and q[self.i] not in _SPECIAL and not q[self.i].isspace():
            c = q[self.i]
            if c == "\\" and self.i + 1 < n:
                self.i += 1
                escaped.add(len(buf))
            elif c == ":" and not buf:
                raise self.fail("expected a field name before ':'", self.i)
            elif c == ":" and not escaped and not fielded:
                name = "".join(buf)
                if not FIELD_RE.fullmatch(name):
                    raise self.fail(f"invalid field name {name!r}", start)
                self.out.append(Token("FIELD", name, start))
                self.i += 1
                if self.field_value(name, start) or q[self.i] in '("':
                    return   # a phrase or a group is its own token
                start, buf, escaped, fielded = self.i, [], set(), True
                continue
            elif c in "<>" and not escaped and not fielded and may_compare:
                may_compare = False
                m = _COMPARISON.fullmatch("".join(buf) + c + q[self.i + 1:self.i + 2])
                if m and buf:
                    op = c + "=" if q[self.i + 1:self.i + 2] == "=" else c
                    self.i += len(op)
                    self.out.append(Token("CMP", m.group(1), start, args=(op, self.comparison_value(self.i))))
                    return
            buf.append(q[self.i])
            self.i += 1
        text = "".join(buf)
        if text in _KEYWORDS and not escaped:
            self.out.append(Token(_KEYWORDS[text], text, start))
        else:
            self.out.append(Token("WORD", text, start, frozenset(escaped)))

    def run(self) -> list[Token]:
        q, n = self.q, len(self.q)
        while self.i < n:
            c = q[self.i]
            if c.isspace():
                self.i += 1
            elif c == "(":
                self.out.append(Token("LPAREN", c, self.i))
                self.i += 1
            elif c == ")":
                self.out.append(Token("RPAREN", c, self.i))
                self.i += 1
            elif c == '"':
                start = self.i
                self.out.append(Token("PHRASE", self.quoted(), start))
            elif c == "-" and (not self.out or self.out[-1].kind in ("LPAREN", "AND", "OR", "NOT", "MINUS")
                               or q[self.i - 1].isspace()) and self.i + 1 < n and not q[self.i + 1].isspace():
                self.out.append(Token("MINUS", c, self.i))
                self.i += 1
            else:
                self.word()
        self.out.append(Token("EOF", "", n))
        return self.out


def tokenize(query: str) -> list[Token]:
    """Split ``query`` into tokens; raises QuerySyntaxError on an unclosed quote, range or regex."""
    return _Lexer(query).run()
