"""Raw lines to typed records, in one DuckDB statement over an Arrow batch.

The whole batch is parsed in SQL: JSON objects (well-known keys mapped to the
record model, every other key kept in ``attrs``), plain lines with a leading
ISO 8601 / ``YYYY-MM-DD HH:MM:SS,mmm`` timestamp, and common/combined log
format access lines. A line that matches no format is still stored, whole, as
the message, with the observed time.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from storage.schema import RECORD_SCHEMA

#: Columns of the batch handed to :func:`normalise`.
RAW_SCHEMA = pa.schema([
    ("line", pa.string()),
    ("observed_ts", pa.timestamp("us", tz="UTC")),
    ("service", pa.string()),
    ("host", pa.string()),
    ("source", pa.string()),
    ("labels", pa.map_(pa.string(), pa.string())),
    ("wrapper", pa.string()),          # "", "cri" or "docker": the container runtime's line format
])

_NORMALISE_SQL = r"""
WITH u AS (
    -- Unwrap container runtime lines first: CRI "<time> <stream> <P|F> <text>" (partial
    -- lines joined by the shipper) and Docker json-file {"log": ..., "stream", "time"}.
    SELECT * REPLACE (
        CASE wrapper
            WHEN 'cri' THEN regexp_replace(line, '(^|\n)\S+ (?:stdout|stderr) [PF] ?', '', 'g')
            WHEN 'docker' THEN rtrim(array_to_string(list_transform(string_split(line, chr(10)),
                                   x -> coalesce(json_extract_string(x, '$.log'), x)), ''), chr(10))
            ELSE line END AS line),
        CASE wrapper
            WHEN 'cri' THEN try_cast(regexp_extract(line, '^(\S+)', 1) AS TIMESTAMPTZ)
            WHEN 'docker' THEN try_cast(json_extract_string(split_part(line, chr(10), 1), '$.time') AS TIMESTAMPTZ)
        END AS wrap_ts,
        CASE wrapper
            WHEN 'cri' THEN nullif(regexp_extract(line, '^\S+ (stdout|stderr) ', 1), '')
            WHEN 'docker' THEN json_extract_string(split_part(line, chr(10), 1), '$.stream')
        END AS wrap_stream
    FROM raw
), r AS (
    SELECT *,
        CASE WHEN starts_with(line, '{') AND json_valid(line) AND json_type(line) = 'OBJECT'
             THEN json_transform(line, '"MAP(VARCHAR, JSON)"') END AS j
    FROM u
), keys AS (
    SELECT *,
        CASE WHEN j['@timestamp'] IS NOT NULL THEN '@timestamp' WHEN j['timestamp'] IS NOT NULL THEN 'timestamp'
             WHEN j['time'] IS NOT NULL THEN 'time' WHEN j['ts'] IS NOT NULL THEN 'ts'
             WHEN j['t'] IS NOT NULL THEN 't' END AS k_ts,
        CASE WHEN j['level'] IS NOT NULL THEN 'level' WHEN j['severity'] IS NOT NULL THEN 'severity'
             WHEN j['lvl'] IS NOT NULL THEN 'lvl' WHEN j['loglevel'] IS NOT NULL THEN 'loglevel' END AS k_lvl,
        CASE WHEN j['message'] IS NOT NULL THEN 'message' WHEN j['msg'] IS NOT NULL THEN 'msg'
             WHEN j['log'] IS NOT NULL THEN 'log' END AS k_msg,
        CASE WHEN j['service'] IS NOT NULL THEN 'service' WHEN j['service.name'] IS NOT NULL THEN 'service.name'
             WHEN j['app'] IS NOT NULL THEN 'app' END AS k_svc,
        CASE WHEN j['trace_id'] IS NOT NULL THEN 'trace_id' WHEN j['traceId'] IS NOT NULL THEN 'traceId' END AS k_trace,
        CASE WHEN j['span_id'] IS NOT NULL THEN 'span_id' WHEN j['spanId'] IS NOT NULL THEN 'spanId' END AS k_span
    FROM r
), v AS (
    SELECT *,
        j[k_ts] AS j_ts,
        CASE WHEN json_type(j[k_ts]) IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN try_cast(j[k_ts]::VARCHAR AS DOUBLE) END AS j_epoch,
        CASE WHEN j IS NULL THEN regexp_extract(line,
            '^\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?)\]?[ \t]+(.*)$',
            ['ts', 'rest']) END AS lead,
        CASE WHEN j IS NULL THEN regexp_extract(line,
            '^(\S+) \S+ (\S+) \[([^\]]+)\] "(\S+) (\S+)[^"]*" (\d{3}) (\d+|-)(?: "([^"]*)" "([^"]*)")?',
            ['ip', 'user', 'time', 'method', 'path', 'status', 'bytes', 'referer', 'agent']) END AS clf,
        CASE WHEN j IS NULL AND starts_with(line, '<') THEN regexp_extract(line,
            '^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (?:-|(?:\[[^\]]*\])+) ?(.*)$',
            ['pri', 'time', 'host', 'app', 'procid', 'msgid', 'msg']) END AS s5,
        CASE WHEN j IS NULL THEN regexp_extract(line,
            '^(?:<(\d{1,3})>)?([A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2}) (\S+) ([^:\[\s]+)(?:\[(\d+)\])?: ?(.*)$',
            ['pri', 'time', 'host', 'app', 'procid', 'msg']) END AS s3
    FROM keys
), t AS (
    SELECT *,
        CASE
            WHEN j_ts IS NULL THEN NULL
            WHEN json_type(j_ts) = 'VARCHAR' THEN try_cast(replace(j_ts->>'$', ',', '.') AS TIMESTAMPTZ)
            -- epoch seconds, milliseconds, microseconds or nanoseconds, by magnitude
            WHEN j_epoch IS NOT NULL THEN make_timestamptz(CAST(
                CASE WHEN j_epoch < 1e11 THEN j_epoch * 1e6 WHEN j_epoch < 1e14 THEN j_epoch * 1e3
                     WHEN j_epoch < 1e17 THEN j_epoch ELSE j_epoch / 1e3 END AS BIGINT))
        END AS json_ts,
        try_cast(replace(nullif(lead.ts, ''), ',', '.') AS TIMESTAMPTZ) AS lead_ts,
        try_strptime(nullif(clf.time, ''), '%d/%b/%Y:%H:%M:%S %z') AS clf_ts,
        try_cast(nullif(s5.time, '') AS TIMESTAMPTZ) AS s5_ts,
        -- RFC 3164 has no year: take the observed one, or the year before for a
        -- time more than a day ahead (December lines read in January).
        CASE WHEN s3.time <> '' THEN (
            WITH y AS (SELECT try_strptime(CAST(year(observed_ts) AS VARCHAR) || ' ' ||
                                            regexp_replace(s3.time, ' +', ' ', 'g'), '%Y %b %d %H:%M:%S') AS t)
            SELECT CASE WHEN t > observed_ts + INTERVAL 1 DAY THEN t - INTERVAL 1 YEAR ELSE t END FROM y)
        END AS s3_ts,
        try_cast(coalesce(nullif(s5.pri, ''), nullif(s3.pri, '')) AS INTEGER) AS syslog_pri,
        coalesce(j[k_lvl]->>'$',
                 CASE syslog_pri % 8 WHEN 0 THEN 'emerg' WHEN 1 THEN 'alert' WHEN 2 THEN 'crit'
                      WHEN 3 THEN 'err' WHEN 4 THEN 'warning' WHEN 5 THEN 'notice' WHEN 6 THEN 'info'
                      WHEN 7 THEN 'debug' END,
                 CASE WHEN clf.status <> '' THEN
                      CASE WHEN clf.status >= '500' THEN 'error' WHEN clf.status >= '400' THEN 'warn' ELSE 'info' END
                 END,
                 nullif(regexp_extract(left(coalesce(nullif(lead.rest, ''), line), 96),
                     '(?:^|[\s\[|:])(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|FATAL|CRITICAL|CRIT|SEVERE|PANIC)(?:$|[\s\]|:])',
                     1), '')) AS lvl_raw
    FROM v
), lv AS (
    SELECT *,
        CASE lower(trim(lvl_raw))
            WHEN 'trace' THEN 'trace'
            WHEN 'debug' THEN 'debug' WHEN 'dbg' THEN 'debug' WHEN 'fine' THEN 'debug' WHEN 'finer' THEN 'trace'
            WHEN 'info' THEN 'info' WHEN 'information' THEN 'info' WHEN 'notice' THEN 'info'
            WHEN 'warn' THEN 'warn' WHEN 'warning' THEN 'warn'
            WHEN 'error' THEN 'error' WHEN 'err' THEN 'error' WHEN 'severe' THEN 'error'
            WHEN 'fatal' THEN 'fatal' WHEN 'critical' THEN 'fatal' WHEN 'crit' THEN 'fatal'
            WHEN 'panic' THEN 'fatal' WHEN 'emerg' THEN 'fatal' WHEN 'alert' THEN 'fatal'
            ELSE 'unknown'
        END AS level
    FROM t
), parsed AS (
SELECT
    labels,
    wrap_stream,
    coalesce(json_ts, lead_ts, clf_ts, s5_ts, s3_ts, wrap_ts, observed_ts)::TIMESTAMPTZ AS ts,
    observed_ts,
    coalesce(j[k_svc]->>'$', service) AS service,
    host,
    source,
    level,
    CAST(CASE level WHEN 'trace' THEN 1 WHEN 'debug' THEN 5 WHEN 'info' THEN 9 WHEN 'warn' THEN 13
                    WHEN 'error' THEN 17 WHEN 'fatal' THEN 21 ELSE 0 END AS TINYINT) AS severity,
    CASE WHEN k_msg IS NOT NULL THEN
            CASE WHEN json_type(j[k_msg]) = 'VARCHAR' THEN j[k_msg]->>'$' ELSE j[k_msg]::VARCHAR END
         ELSE line END AS message,
    CASE
        WHEN j IS NOT NULL THEN map_from_entries(list_transform(
            list_filter(map_entries(j), e ->
                NOT coalesce(json_ts IS NOT NULL AND e.key = k_ts, FALSE)
                AND NOT coalesce(e.key = k_lvl, FALSE) AND NOT coalesce(e.key = k_msg, FALSE)
                AND NOT coalesce(e.key = k_svc, FALSE) AND NOT coalesce(e.key = k_trace, FALSE)
                AND NOT coalesce(e.key = k_span, FALSE)),
            e -> {'key': e.key,
                  'value': CASE WHEN json_type(e.value) = 'VARCHAR' THEN e.value->>'$' ELSE e.value::VARCHAR END}))
        WHEN clf.status <> '' THEN map_from_entries(list_filter([
            {'key': 'client.ip', 'value': clf.ip},
            {'key': 'http.user', 'value': nullif(clf.user, '-')},
            {'key': 'http.method', 'value': clf.method},
            {'key': 'http.path', 'value': clf.path},
            {'key': 'http.status', 'value': clf.status},
            {'key': 'http.bytes', 'value': nullif(clf.bytes, '-')},
            {'key': 'http.referer', 'value': nullif(nullif(clf.referer, ''), '-')},
            {'key': 'http.user_agent', 'value': nullif(clf.agent, '')}], e -> e.value IS NOT NULL))
        WHEN coalesce(s5.time, '') <> '' OR coalesce(s3.time, '') <> '' THEN map_from_entries(list_filter([
            {'key': 'syslog.facility', 'value': CAST(syslog_pri // 8 AS VARCHAR)},
            {'key': 'syslog.hostname', 'value': nullif(nullif(coalesce(nullif(s5.host, ''), s3.host), ''), '-')},
            {'key': 'syslog.appname', 'value': nullif(nullif(coalesce(nullif(s5.app, ''), s3.app), ''), '-')},
            {'key': 'syslog.procid', 'value': nullif(nullif(coalesce(nullif(s5.procid, ''), s3.procid), ''), '-')},
            {'key': 'syslog.msgid', 'value': nullif(nullif(s5.msgid, ''), '-')}], e -> e.value IS NOT NULL))
        ELSE MAP {}
    END AS attrs,
    j[k_trace]->>'$' AS trace_id,
    j[k_span]->>'$' AS span_id
FROM lv
)
SELECT ts, observed_ts, service, host, source, level, severity, message,
    -- Labels from the shipper's input; what the line itself says wins on a clash.
    CASE WHEN (labels IS NULL OR cardinality(labels) = 0) AND wrap_stream IS NULL THEN attrs
         ELSE map_concat(coalesce(labels, CAST(MAP {} AS MAP(VARCHAR, VARCHAR))),
                         CASE WHEN wrap_stream IS NULL THEN CAST(MAP {} AS MAP(VARCHAR, VARCHAR))
                              ELSE MAP {'stream': wrap_stream} END,
                         attrs) END AS attrs,
    trace_id, span_id
FROM parsed
"""


def new_connection(threads: int = 1) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection set up for normalising (UTC, no external access needed)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET threads = {int(threads)}")
    return con


def normalise(con: duckdb.DuckDBPyConnection, raw: pa.Table) -> pa.Table:
    """Parse a batch of raw lines (``RAW_SCHEMA``) into records (``RECORD_SCHEMA``)."""
    con.register("raw", raw)
    try:
        out = con.execute(_NORMALISE_SQL).to_arrow_table()
    finally:
        con.unregister("raw")
    return out.cast(RECORD_SCHEMA)
