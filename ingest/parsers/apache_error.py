"""The Apache httpd error log, 2.2 (``[time] [level] message``) and 2.4 (``[module:level] [pid N:tid M]``)."""

from __future__ import annotations

from ingest.parsers import Parser, attrs_sql, body_sql

REGEX = (r'^\[([A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]?\d \d{2}:\d{2}:\d{2}(?:\.\d+)? \d{4})\] '
         r'\[(?:([\w-]*):)?([a-z]+)\d?\](?: \[pid (\d+)(?::tid (\d+))?\])? ?((?s:.*))$')
GROUPS = ("time", "module", "level", "pid", "tid", "msg")

PARSER = Parser(
    name="apache_error",
    detect=r"regexp_matches(line, '^\[[A-Z][a-z]{2} [A-Z][a-z]{2} ')",
    steps=(("m", f"regexp_extract(line, '{REGEX}', {list(GROUPS)})"),
           # The client stays in the message (it says whom the message is about) and is an attribute too.
           ("client", r"regexp_extract({p}_m.msg, '^\[client ([^\]]+)\]', 1)")),
    ok="{p}_m.time <> ''",
    out={
        "ts_local": "ll_ts_local(regexp_replace({p}_m.time, '  +', ' '))",
        "lvl": "{p}_m.level",
        "message": body_sql("{p}_m.msg"),
        "attrs": attrs_sql([
            ("apache.module", "{p}_m.module"),
            ("process.pid", "{p}_m.pid"),
            ("thread.id", "{p}_m.tid"),
            ("client.address", "{p}_client"),
        ]),
    },
)
