"""Recursive-descent parser: tokens to AST.

    query   := or EOF | EOF
    or      := and ("OR" and)*
    and     := unary (["AND"] unary)*          juxtaposition is AND
    unary   := ("NOT" | "-") unary | primary
    primary := "(" or ")" | CMP | FIELD (WORD | PHRASE | REGEX | RANGE) | WORD | PHRASE

(The lexer makes a REGEX token only after a field: a bare /x/ is a word, as paths are.)
"""

from __future__ import annotations

from typing import cast

from query.errors import QuerySyntaxError
from query.language.ast import And, Compare, CompareOp, Exists, MatchAll, Node, Not, Or, Range, Term
from query.language.lexer import FIELD_RE, Token, tokenize

MAX_DEPTH = 64
EXISTS = "_exists_"


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = tokenize(query)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, expected: str, tok: Token | None = None) -> QuerySyntaxError:
        tok = tok or self.peek()
        found = "end of query" if tok.kind == "EOF" else repr(tok.text or tok.kind.lower())
        return QuerySyntaxError(f"expected {expected}, found {found}", tok.pos, self.query)

    def parse(self) -> Node:
        if self.peek().kind == "EOF":
            return MatchAll()
        node = self.or_()
        if self.peek().kind != "EOF":
            raise self.fail("AND, OR or end of query")
        return node

    def or_(self) -> Node:
        items = [self.and_()]
        while self.peek().kind == "OR":
            self.take()
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_(self) -> Node:
        items = [self.unary()]
        while self.peek().kind in ("AND", "NOT", "MINUS", "LPAREN", "FIELD", "WORD", "PHRASE", "REGEX", "CMP",
                                  "RANGE"):
            if self.peek().kind == "AND":
                self.take()
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Node:
        negations = 0
        while self.peek().kind in ("NOT", "MINUS"):
            tok = self.take()
            negations += 1
            if negations > MAX_DEPTH:
                raise QuerySyntaxError(f"more than {MAX_DEPTH} negations in a row", tok.pos, self.query)
        node = self.primary()
        for _ in range(negations):
            node = Not(node)
        return node

    def primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "LPAREN":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise QuerySyntaxError(f"nesting deeper than {MAX_DEPTH}", tok.pos, self.query)
            node = self.or_()
            if self.peek().kind != "RPAREN":
                raise self.fail("')'")
            self.take()
            self.depth -= 1
            return node
        if tok.kind == "CMP":
            self.take()
            op, value = cast(tuple[CompareOp, str], tok.args)     # what the lexer puts in a CMP token
            if tok.text == EXISTS:
                raise QuerySyntaxError(f"{EXISTS} takes a field name", tok.pos, self.query)
            return Compare(tok.text, op, value)
        field = None
        if tok.kind == "FIELD":
            field = self.take().text
            tok = self.peek()
            if field == EXISTS:
                return self.exists(tok)
            if tok.kind == "RANGE":
                self.take()
                # what the lexer puts in a RANGE token
                low, high, inc_low, inc_high = cast(tuple[str | None, str | None, bool, bool], tok.args)
                return Range(field, low, high, bool(inc_low), bool(inc_high))
        if tok.kind == "PHRASE":
            self.take()
            return Term(field, tok.text, "phrase")
        if tok.kind == "REGEX":
            self.take()
            return Term(field, tok.text, "regex")
        if tok.kind == "WORD":
            self.take()
            wild = any(c in "*?" and k not in tok.escaped for k, c in enumerate(tok.text))
            # The one escape a wildcard takes: a leading '-' (written '\-'), which would otherwise
            # negate it when it starts a term.
            if wild and tok.escaped and not (tok.escaped == {0} and tok.text.startswith("-")):
                raise QuerySyntaxError("escaped characters are not supported in a wildcard term",
                                       tok.pos, self.query)
            return Term(field, tok.text, "wildcard" if wild else "word")
        if tok.kind == "RANGE":
            raise QuerySyntaxError("a range needs a field, e.g. status:[400 TO 499]", tok.pos, self.query)
        raise self.fail("a value" if field else "a search term, a field:value or '('")

    def exists(self, tok: Token) -> Node:
        if tok.kind != "WORD" or tok.escaped or not FIELD_RE.fullmatch(tok.text):
            raise self.fail(f"a field name after {EXISTS}:", tok)
        self.take()
        return Exists(tok.text)


def parse(query: str) -> Node:
    """Parse a query string into its AST; raises QuerySyntaxError with the position."""
    return _Parser(query).parse()
