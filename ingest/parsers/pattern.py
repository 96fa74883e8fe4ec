"""A user-defined pattern: a regular expression (RE2) with named groups, per source.

Groups named ``ts``, ``level``, ``message``, ``service``, ``host``,
``trace_id`` and ``span_id`` fill those fields; every other named group
becomes an attribute. A line the pattern does not match falls back to plain
text.
"""

from __future__ import annotations

from ingest.parsers import Parser, attrs_sql, sql_str
from loglake.core.config import PatternError, group_names

__all__ = ["FIELDS", "PatternError", "group_names", "parser"]

FIELDS = ("ts", "level", "message", "service", "host", "trace_id", "span_id")


def parser(index: int, pattern: str, ts_format: str = "") -> Parser:
    """The parser for the ``index``-th configured pattern (its ``ts`` group read with ``ts_format`` if given)."""
    names = group_names(pattern)
    # RE2 takes (?P<name>...); DuckDB hands back groups by position, named as listed.
    positional = pattern
    m = "{p}_m"

    def g(name: str) -> str:
        return f"nullif({m}.\"{name}\", '')" if name in names else "NULL"

    zoned = "%z" in ts_format or "%Z" in ts_format
    # Without a year in the format, the time is read in the year 2000 and given the observed one later.
    yearless = bool(ts_format) and not any(d in ts_format for d in ("%Y", "%y", "%G", "%s"))
    if yearless:
        reading = f"try_strptime('2000 ' || {g('ts')}, {sql_str('%Y ' + ts_format)})"
    else:
        reading = f"try_strptime({g('ts')}, {sql_str(ts_format)})"
    return Parser(
        name=f"pattern{index}",
        detect=None,
        steps=(("m", f"regexp_extract(line, {sql_str(positional)}, {list(names)})"),),
        ok=f"regexp_matches(line, {sql_str(positional)})",
        out=({
            # strptime gives an instant when the format reads a zone, else a wall-clock time.
            "ts_tz": reading if zoned else "NULL",
            "ts_local": reading if not zoned and not yearless else "NULL",
            "ts_noyear": reading if yearless else "NULL",
        } if ts_format else {
            "ts_tz": f"ll_ts_tz({g('ts')})",
            "ts_local": f"ll_ts_local({g('ts')})",
            "ts_noyear": f"ll_ts_noyear({g('ts')})",
        }) | {
            "lvl": g("level"),
            "message": f"coalesce({g('message')}, line)",
            "service": g("service"),
            "host": g("host"),
            "trace_id": g("trace_id"),
            "span_id": g("span_id"),
            "attrs": attrs_sql([(n, g(n)) for n in names if n not in FIELDS]),
        },
    )
