"""The search language: lexer, parser and AST; it knows nothing of DuckDB."""

from query.language.ast import And, Compare, Exists, MatchAll, Node, Not, Or, Range, Term
from query.language.parser import parse
from query.language.printer import to_string

__all__ = ["And", "Compare", "Exists", "MatchAll", "Node", "Not", "Or", "Range", "Term", "parse", "to_string"]
