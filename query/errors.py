"""The query package's exceptions; the HTTP edge maps each to a status code."""

from __future__ import annotations


class QueryError(Exception):
    """Base of everything a query can be rejected for (HTTP 400)."""

    status_code = 400


class QuerySyntaxError(QueryError):
    """The query string does not parse; says where and what was expected."""

    def __init__(self, message: str, position: int, query: str) -> None:
        self.position = position
        self.query = query
        self.reason = message
        super().__init__(f"{message} at position {position}")

    def caret(self) -> str:
        return f"{self.query}\n{' ' * self.position}^"


class UnknownField(QueryError):
    """A field name that is not a column and cannot be an attribute key."""


class BadTimeRange(QueryError):
    """``start``/``end`` could not be read, or end is before start."""
