"""Syntax tree of a search query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TermKind = Literal["word", "phrase", "wildcard", "regex"]
CompareOp = Literal[">", ">=", "<", "<="]


@dataclass(frozen=True, slots=True)
class Term:
    """``value`` on ``field`` (``None``: the message). ``wildcard`` values hold ``*``/``?``;
    ``regex`` values are RE2 patterns matched anywhere in the field."""

    field: str | None
    value: str
    kind: TermKind = "word"


@dataclass(frozen=True, slots=True)
class Compare:
    """``field>=value``: numeric when the value is a number or a duration, else by text."""

    field: str
    op: CompareOp
    value: str


@dataclass(frozen=True, slots=True)
class Range:
    """``field:[low TO high]`` (inclusive) or ``{low TO high}`` (exclusive); ``None`` is ``*``."""

    field: str
    low: str | None
    high: str | None
    include_low: bool = True
    include_high: bool = True


@dataclass(frozen=True, slots=True)
class Exists:
    """``_exists_:field``."""

    field: str


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class MatchAll:
    """The empty query: every record in the range."""


Node = Term | Compare | Range | Exists | And | Or | Not | MatchAll
