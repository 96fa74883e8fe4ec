"""Tokens of the search language, each with its position in the query string."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from query.errors import QuerySyntaxError

TokenKind = Literal["LPAREN", "RPAREN", "AND", "OR", "NOT", "MINUS", "FIELD", "WORD", "PHRASE", "EOF"]

FIELD_RE = re.compile(r"[A-Za-z_@][A-Za-z0-9_.@-]*")
_SPECIAL = set('()"')
_KEYWORDS = {"AND", "OR", "NOT"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    text: str          # unescaped value (field name without its colon)
    pos: int
    escaped: frozenset[int] = frozenset()   # indexes in ``text`` of escaped characters


def tokenize(query: str) -> list[Token]:
    """Split ``query`` into tokens; raises QuerySyntaxError on an unclosed quote."""
    out: list[Token] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
        elif c == "(":
            out.append(Token("LPAREN", c, i))
            i += 1
        elif c == ")":
            out.append(Token("RPAREN", c, i))
            i += 1
        elif c == '"':
            start, i = i, i + 1
            buf: list[str] = []
            while i < n and query[i] != '"':
                if query[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(query[i])
                i += 1
            if i >= n:
                raise QuerySyntaxError('unclosed quote: expected "', n, query)
            out.append(Token("PHRASE", "".join(buf), start))
            i += 1
        elif c == "-" and (not out or out[-1].kind in ("LPAREN", "AND", "OR", "NOT", "MINUS")
                           or query[i - 1].isspace()) and i + 1 < n and not query[i + 1].isspace():
            out.append(Token("MINUS", c, i))
            i += 1
        else:
            start = i
            buf = []
            escaped: set[int] = set()
            fielded = False
            while i < n and query[i] not in _SPECIAL and not query[i].isspace():
                if query[i] == "\\" and i + 1 < n:
                    i += 1
                    escaped.add(len(buf))
                elif query[i] == ":" and not buf:
                    raise QuerySyntaxError("expected a field name before ':'", i, query)
                elif query[i] == ":" and not fielded and not escaped:
                    name = "".join(buf)
                    if not FIELD_RE.fullmatch(name):
                        raise QuerySyntaxError(f"invalid field name {name!r}", start, query)
                    out.append(Token("FIELD", name, start))
                    i += 1
                    buf, escaped = [], set()
                    if i >= n or query[i].isspace() or query[i] == ")":
                        raise QuerySyntaxError(f"expected a value after '{name}:'", i, query)
                    if query[i] in "(\"":
                        break      # the value is a phrase or a group: its own token
                    start, fielded = i, True
                    continue
                buf.append(query[i])
                i += 1
            text = "".join(buf)
            if not text and out and out[-1].kind == "FIELD":
                continue
            if text in _KEYWORDS and not escaped:
                out.append(Token(text, text, start))  # type: ignore[arg-type]
            else:
                out.append(Token("WORD", text, start, frozenset(escaped)))
    out.append(Token("EOF", "", n))
    return out

