"""The search language: lexer, parser and AST; it knows nothing of DuckDB."""

from query.language.ast import And, MatchAll, Node, Not, Or, Term
from query.language.parser import parse
from query.language.printer import to_string

__all__ = ["And", "MatchAll", "Node", "Not", "Or", "Term", "parse", "to_string"]
