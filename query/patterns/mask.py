"""The variable parts of a message, masked in DuckDB: the vectorised half of pattern mining.

A variable is:

- a word (a run of ASCII letters and digits) holding a digit: numbers, hex ids, IPs, times,
  dates, the digits of ``blk_-1608999687``, ``workers2``; with a ``-`` sign before it, and with
  the words joined to it by ``.``, ``:``, ``,``, ``/``, ``_`` or ``-`` (an IP and its port, a
  date, a UUID, whose groups of four hex letters may hold no digit); the spaces before it go
  with it but one, so ``user  0101`` (an empty name's extra space) masks like ``user 42``;
- the text of a double-quoted value after ``=`` (``tag="View Lock"``), which may hold spaces.

Each becomes :data:`~query.patterns.drain.PARAM`, in one RE2 pass per message
(``regexp_replace``) run by DuckDB over the column, so no Python touches a line. What is left
of the message is its own text, so a template still matches its lines as a Loki pattern
(``|>``), ``<_>`` standing for a non-empty part.
"""

from __future__ import annotations

from query.patterns.drain import PARAM

_WORD = r"[A-Za-z0-9]*[0-9][A-Za-z0-9]*"
_JOINED = rf"(?:[.:,/_\-]+(?:{_WORD}|(?:[0-9a-fA-F]{{4}})+))*"
#: The variables: group 1 keeps ``="`` of a quoted value, group 2 the one space kept before a word.
VARIABLE_RE = rf'(=")[^"]+|( ?) *-?{_WORD}{_JOINED}'


def mask_sql(column: str) -> str:
    """SQL masking ``column`` (a trusted column expression, never user text)."""
    return f"regexp_replace({column}, '{VARIABLE_RE}', '\\1\\2{PARAM}', 'g')"
