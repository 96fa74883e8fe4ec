"""Syntax tree of a search query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TermKind = Literal["word", "phrase", "wildcard"]


@dataclass(frozen=True, slots=True)
class Term:
    """``value`` on ``field`` (``None``: the message). ``wildcard`` values hold ``*``/``?``."""

    field: str | None
    value: str
    kind: TermKind = "word"


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


Node = Term | And | Or | Not | MatchAll
