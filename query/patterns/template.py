"""Templates as filters: the ``pattern:"..."`` term of the native language.

A template is text with ``<_>`` for each variable part, as ``/api/v1/patterns`` and Loki's
``/loki/api/v1/patterns`` write them. A message matches when the whole message is the template
with each ``<_>`` standing for one or more characters (any, spaces included); literal text
matches exactly, case included.
"""

from __future__ import annotations

from query.patterns.drain import PARAM

#: The field name of the term (``attrs.pattern`` reaches an attribute of that name).
FIELD = "pattern"
USAGE = f'{FIELD}: takes a template in quotes, e.g. {FIELD}:"user <_> logged in"'


def literals(template: str) -> list[str]:
    """The literal pieces of ``template``, in order (what every matching message contains)."""
    return [p for p in template.split(PARAM) if p]


def template_regex(template: str) -> str:
    """An RE2 pattern that matches exactly the messages ``template`` stands for."""
    parts = template.split(PARAM)
    # Every non-alphanumeric ASCII character written as \x{..}: nothing in a template is regex syntax.
    escaped = ["".join(c if c.isalnum() or ord(c) > 0x7F else f"\\x{{{ord(c):02x}}}" for c in p) for p in parts]
    return "(?s)^" + ".+".join(escaped) + "$"
