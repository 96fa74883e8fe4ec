"""Web server access logs: the common and combined log formats (nginx, Apache httpd).

The level comes from the status class: 5xx error, 4xx warn, anything else info.
"""

from __future__ import annotations

from ingest.parsers import Parser, attrs_sql

# A quoted field with backslash escapes, in the unrolled form RE2 runs fastest.
_QUOTED = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
REGEX = (r'^(\S+) (\S+) (\S+) \[([^\]]+)\] "(?:(\S+) (\S+)(?: ([^"]*))?|[^"]*)" (\d{3}) (\d+|-)'
         rf'(?: {_QUOTED} {_QUOTED})?')
GROUPS = ("ip", "ident", "user", "time", "method", "path", "protocol", "status", "bytes", "referer", "agent")

PARSER = Parser(
    name="clf",
    detect=r"regexp_matches(line, '^\S+ \S+ \S+ \[\d')",
    steps=(("m", f"regexp_extract(line, '{REGEX}', {list(GROUPS)})"),),
    ok="{p}_m.status <> ''",
    out={
        "ts_tz": "try_strptime({p}_m.time, '%d/%b/%Y:%H:%M:%S %z')",
        # Only for a time written without its zone (with one, the format above has it).
        "ts_local": "CASE WHEN NOT contains({p}_m.time, ' ') THEN try_strptime({p}_m.time, '%d/%b/%Y:%H:%M:%S') END",
        "lvl": "CASE WHEN {p}_m.status >= '500' THEN 'error' WHEN {p}_m.status >= '400' THEN 'warn' ELSE 'info' END",
        "attrs": attrs_sql([
            ("client.ip", "{p}_m.ip"),
            ("http.user", "nullif({p}_m.user, '-')"),
            ("http.method", "{p}_m.method"),
            ("http.path", "{p}_m.path"),
            ("http.status", "{p}_m.status"),
            ("http.bytes", "nullif({p}_m.bytes, '-')"),
            ("http.referer", "nullif({p}_m.referer, '-')"),
            ("http.user_agent", "nullif({p}_m.agent, '-')"),
        ]),
    },
)
