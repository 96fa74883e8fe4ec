"""Syslog: RFC 5424, and RFC 3164 (BSD) with or without its priority, as written to files or sent by rsyslog.

BSD timestamps have no year (see :mod:`ingest.timestamps`); rsyslog's
RFC 3339 timestamps in the BSD layout are read too. The level comes from the
priority, or failing that from a level word near the start of the message.
"""

from __future__ import annotations

from ingest.levels import syslog_word_sql
from ingest.parsers import Parser, attrs_sql, body_sql
from ingest.parsers.text import LEVEL_REGEX

RFC5424 = r'^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (?:-|(?:\[(?:[^\]\\]|\\.)*\])+) ?(.*)$'
RFC5424_GROUPS = ("pri", "time", "host", "app", "procid", "msgid", "msg")
# The tag: a word (with a version), its [pid], a macOS "(address)", then ": "; or, only when a [pid]
# follows (so that a message's "two words: ..." is not taken for one), a name of a few words,
# as macOS writes an app's name ("Text Editor[4242]: ").
RFC3164 = (r'^(?:<(\d{1,3})>)?([A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T\S+) (\S+) '
           r'(?:([^:\[\s]+(?: v?\d[\d.]*)?)(?:\[(\d+)\])?(?: \([^)\s]*\))?: '
           r'|([^:\[\s]+(?: [^:\[\s]+){1,3})\[(\d+)\](?: \([^)\s]*\))?: )?(.*)$')
RFC3164_GROUPS = ("pri", "time", "host", "app", "procid", "app_words", "procid_words", "msg")


def _nil(v: str) -> str:
    return f"nullif(nullif({v}, ''), '-')"


PARSER = Parser(
    name="syslog",
    detect=r"starts_with(line, '<') OR regexp_matches(line, '^[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} ')",
    steps=(
        ("m", f"CASE WHEN starts_with(line, '<') AND substr(line, strpos(line, '>') + 1, 2) = '1 ' "
              f"THEN regexp_extract(line, '{RFC5424}', {list(RFC5424_GROUPS)}) "
              f"ELSE {{'pri': '', 'time': '', 'host': '', 'app': '', 'procid': '', 'msgid': '', 'msg': ''}} END"),
        ("b", f"CASE WHEN {{p}}_m.time = '' THEN regexp_extract(line, '{RFC3164}', {list(RFC3164_GROUPS)}) END"),
        ("pri", "try_cast(coalesce(nullif({p}_m.pri, ''), nullif({p}_b.pri, '')) AS INTEGER)"),
    ),
    ok="{p}_m.time <> '' OR coalesce({p}_b.time, '') <> ''",
    out={
        "ts_tz": "ll_ts_tz(coalesce(nullif({p}_m.time, ''), {p}_b.time))",
        "ts_noyear": "CASE WHEN {p}_b.time NOT LIKE '____-%' THEN ll_ts_noyear({p}_b.time) END",
        "lvl": f"coalesce({syslog_word_sql('{p}_pri')}, "
               f"nullif(regexp_extract(left(coalesce({{p}}_b.msg, {{p}}_m.msg), 64), '{LEVEL_REGEX}', 1), ''), "
               f"nullif(regexp_extract(left(coalesce({{p}}_b.msg, {{p}}_m.msg), 64), '{LEVEL_REGEX}', 2), ''))",
        "host": _nil("coalesce(nullif({p}_m.host, ''), {p}_b.host)"),
        # The message is what follows the header (time, host, tag); the header stays in the line.
        "message": body_sql("coalesce(nullif({p}_m.msg, ''), {p}_b.msg, line)"),
        "attrs": attrs_sql([
            ("syslog.facility", "CAST({p}_pri // 8 AS VARCHAR)"),
            ("syslog.hostname", _nil("coalesce(nullif({p}_m.host, ''), {p}_b.host)")),
            ("syslog.appname", _nil("coalesce(nullif({p}_m.app, ''), nullif({p}_b.app, ''), {p}_b.app_words)")),
            ("syslog.procid", _nil("coalesce(nullif({p}_m.procid, ''), nullif({p}_b.procid, ''), "
                                   "{p}_b.procid_words)")),
            ("syslog.msgid", _nil("{p}_m.msgid")),
        ]),
    },
)
