"""logfmt: ``key=value key2="quoted value"`` (Go's logfmt, logrus, Heroku, Grafana's own logs).

Well-known keys become record columns as for JSON; the rest go to ``attrs``.
A line needs at least two pairs to count as logfmt.
"""

from __future__ import annotations

from ingest.parsers import ATTRS_TYPE, Parser, first_key_sql
from ingest.parsers.json import LEVEL_KEYS, MESSAGE_KEYS, SERVICE_KEYS, SPAN_KEYS, TRACE_KEYS, TS_KEYS

PAIR = r'([A-Za-z_][\w.\-/@]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)'
_UNQUOTE = "CASE WHEN starts_with(x, '\"') THEN coalesce(try(json_extract_string(x, '$')), x[2:-2]) ELSE x END"

PARSER = Parser(
    name="logfmt",
    detect=r"regexp_matches(line, '^[A-Za-z_][\w.\-/@]*=')",
    steps=(
        ("pairs", f"list_transform(list_zip(regexp_extract_all(line, '{PAIR}', 1), "
                  f"list_transform(regexp_extract_all(line, '{PAIR}', 2), x -> {_UNQUOTE})), "
                  "z -> {'key': z[1], 'value': z[2]})"),
        ("e", "ll_dedupe({p}_pairs)"),
        ("m", "map_from_entries({p}_e)"),
        ("k", "{"
              f"'ts': {first_key_sql('{p}_m', TS_KEYS)}, 'lvl': {first_key_sql('{p}_m', LEVEL_KEYS)}, "
              f"'msg': {first_key_sql('{p}_m', MESSAGE_KEYS)}, 'svc': {first_key_sql('{p}_m', SERVICE_KEYS)}, "
              f"'trace': {first_key_sql('{p}_m', TRACE_KEYS)}, 'span': {first_key_sql('{p}_m', SPAN_KEYS)}"
              "}"),
        ("t", "{'tz': ll_ts_tz({p}_m[{p}_k.ts]), 'local': ll_ts_local({p}_m[{p}_k.ts])}"),
    ),
    ok="len({p}_e) >= 2",
    out={
        "ts_tz": "{p}_t.tz",
        "ts_local": "{p}_t.local",
        "lvl": "{p}_m[{p}_k.lvl]",
        "message": "coalesce({p}_m[{p}_k.msg], line)",
        "attrs": f"CAST(list_filter({{p}}_e, e -> NOT list_contains(list_filter(["
                 "CASE WHEN {p}_t.tz IS NOT NULL OR {p}_t.local IS NOT NULL THEN {p}_k.ts END, "
                 "CASE WHEN lower({p}_m[{p}_k.lvl]) IN ('trace', 'debug', 'info', 'warn', 'error', 'fatal') "
                 "THEN {p}_k.lvl END, {p}_k.msg, {p}_k.svc, {p}_k.trace, {p}_k.span], x -> x IS NOT NULL), e.key)) "
                 f"AS {ATTRS_TYPE})",
        "service": "{p}_m[{p}_k.svc]",
        "trace_id": "{p}_m[{p}_k.trace]",
        "span_id": "{p}_m[{p}_k.span]",
    },
)
