"""Raw lines to typed records, in DuckDB statements over an Arrow batch.

Two statements run in stages, each over the whole batch:

1. unwrap container runtime lines (CRI, Docker json-file) so the inner line is parsed;
2. pick each line's format: the one configured for its source, else the
   first parser whose cheap ``detect`` test matches (JSON, syslog, access
   log, Apache error log, logfmt), else plain text;

   (between the two, the compiled pre-passes of the JSON and access-log
   parsers run over their own lines, on the Arrow batch);
3. run each parser's steps on its own rows only (a CASE per parser, so a
   regex never runs on a line of another format); a line that fails its
   format falls back to the plain-text parser;
4. resolve times (zone, missing year, implausible future) and levels, and
   assemble the record.

A line that no parser understands is still stored, whole, as the message,
at the observed time, with ``attrs.format = unknown``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ingest.levels import level_sql, severity_sql
from ingest.parsers import (
    ATTRS_TYPE,
    OUTPUTS,
    Parser,
    access,
    apache_error,
    json,
    logfmt,
    pattern,
    sql_str,
    syslog,
    text,
)
from ingest.timestamps import macros
from storage.schema import RECORD_SCHEMA

log = logging.getLogger("loglake.ingest")

# A value per source, repeated on each of its lines: dictionary-encoded, as the batch builds them.
_PER_SOURCE = pa.dictionary(pa.int32(), pa.string())

#: Columns of the batch handed to :class:`Normaliser`.
RAW_SCHEMA = pa.schema([
    ("line", pa.string()),
    ("observed_ts", pa.timestamp("us", tz="UTC")),
    ("service", _PER_SOURCE),
    ("host", _PER_SOURCE),
    ("source", _PER_SOURCE),
    ("labels", pa.map_(pa.string(), pa.string())),
    ("wrapper", _PER_SOURCE),          # "", "cri" or "docker": the container runtime's line format
    ("format", _PER_SOURCE),           # "" (detect) or a name from FORMATS / "pattern<i>"
])

#: Auto-detection order; plain text is the fallback.
DETECTED: tuple[Parser, ...] = (json.PARSER, syslog.PARSER, access.PARSER, apache_error.PARSER, logfmt.PARSER)
#: Format names a source can be configured with (besides "auto" and "pattern").
FORMATS: dict[str, Parser] = {p.name: p for p in (*DETECTED, text.PARSER)} | {
    "nginx": access.PARSER, "apache": access.PARSER, "syslog3164": syslog.PARSER, "syslog5424": syslog.PARSER,
}


@dataclass(frozen=True)
class ParseSettings:
    """What parsing needs from the configuration."""

    #: Zone for timestamps written without one (an IANA name).
    default_timezone: str = "UTC"
    #: A parsed time more than this far ahead of the observed time is not believed.
    max_ahead_s: float = 7 * 86400
    #: User-defined patterns; a source configured with the i-th uses format "pattern<i>".
    patterns: tuple[str, ...] = ()
    #: Attributes kept per record (the first ones); how many were dropped goes in `attrs_dropped`.
    max_attrs: int = 1000


_UNWRAP = r"""
u AS (
    SELECT * REPLACE (
        CASE wrapper
            WHEN 'cri' THEN regexp_replace(line, '(^|\n)\S+ (?:stdout|stderr) [PF] ?', '', 'g')
            WHEN 'docker' THEN rtrim(array_to_string(list_transform(string_split(line, chr(10)),
                                   x -> coalesce(try(json_extract_string(x, '$.log')), x)), ''), chr(10))
            ELSE line END AS line),
        CASE wrapper
            WHEN 'cri' THEN try_cast(regexp_extract(line, '^(\S+)', 1) AS TIMESTAMPTZ)
            WHEN 'docker' THEN try_cast(try(json_extract_string(split_part(line, chr(10), 1), '$.time')) AS TIMESTAMPTZ)
        END AS wrap_ts,
        CASE wrapper
            WHEN 'cri' THEN nullif(regexp_extract(line, '^\S+ (stdout|stderr) ', 1), '')
            WHEN 'docker' THEN try(json_extract_string(split_part(line, chr(10), 1), '$.stream'))
        END AS wrap_stream
    FROM (
        -- Records from other producers may be container lines too: recognise them.
        SELECT * REPLACE (CASE WHEN wrapper <> '' OR format <> '' THEN wrapper
                               WHEN starts_with(line, '{"log":')
                                    AND regexp_matches(line, '"stream":"(?:stdout|stderr)","time":"[^"]+"}\s*$')
                                    THEN 'docker'
                               WHEN regexp_matches(line, '^\d{4}-\d{2}-\d{2}T\S+ (?:stdout|stderr) [PF] ') THEN 'cri'
                               ELSE '' END AS wrapper)
        FROM raw)
)"""


def _case(parsers: Sequence[Parser], column: str, output: str, default: str = "NULL") -> str:
    whens = [f"WHEN {sql_str(p.name)} THEN {p.sql(p.out[output])}" for p in parsers if output in p.out]
    if not whens:
        return default
    return f"CASE {column} {' '.join(whens)} ELSE {default} END"


def build_sql(settings: ParseSettings) -> tuple[str, str]:
    """The two normalising statements for ``settings``.

    The first routes the lines of a registered relation ``raw`` (unwrapped, each
    with its format); the second parses them from a relation ``c``: the first's
    rows plus, per parser with a compiled pre-pass, its columns.
    """
    patterns = tuple(pattern.parser(i, p) for i, p in enumerate(settings.patterns))
    first = (*DETECTED, *patterns)
    everyone = (*first, text.PARSER)
    zone = sql_str(settings.default_timezone)

    detect = " ".join(f"WHEN {p.detect} THEN {sql_str(p.name)}" for p in DETECTED if p.detect)
    configured = " ".join(f"WHEN {sql_str(name)} THEN {sql_str(p.name)}" for name, p in
                          {**FORMATS, **{p.name: p for p in patterns}}.items())
    # Stage one, unwrapping and routing, ends here: its rows come back (a line only where it was
    # unwrapped) and, with the batch's columns and those of the parsers' compiled pre-passes
    # added, become the relation "c" (see Normaliser).
    route = f"""WITH {_UNWRAP.strip()}
SELECT CASE WHEN wrapper <> '' THEN line END AS unwrapped, wrap_ts, wrap_stream,
       CASE format {configured} WHEN '' THEN CASE {detect} ELSE 'text' END ELSE 'text' END AS fmt
FROM u"""
    ctes: list[str] = []
    prev = "c"
    # Each parser's steps, evaluated only on its rows.
    for p in first:
        for name, expr in p.steps:
            ctes.append(f"{p.name}_{name} AS (SELECT *, CASE WHEN fmt = {sql_str(p.name)} "
                        f"THEN {p.sql(expr)} END AS p_{p.name}_{name} FROM {prev})")
            prev = f"{p.name}_{name}"
    oks = " ".join(f"WHEN fmt = {sql_str(p.name)} AND ({p.sql(p.ok)}) THEN {sql_str(p.name)}" for p in first)
    ctes.append(f"routed AS (SELECT *, CASE {oks} ELSE 'text' END AS fmt2 FROM {prev})")
    prev = "routed"
    for name, expr in text.PARSER.steps:
        ctes.append(f"text_{name} AS (SELECT *, CASE WHEN fmt2 = 'text' "
                    f"THEN {text.PARSER.sql(expr)} END AS p_text_{name} FROM {prev})")
        prev = f"text_{name}"

    outputs = {o: _case(everyone, "fmt2", o) for o in OUTPUTS if o not in ("message", "attrs")}
    outputs["message"] = _case(everyone, "fmt2", "message", "line")
    outputs["attrs"] = _case(everyone, "fmt2", "attrs", f"[]::{ATTRS_TYPE}")
    select_out = ",\n        ".join(f"{expr} AS o_{name}" for name, expr in outputs.items())
    ctes.append(f"o AS (SELECT observed_ts, service, host, source, labels, wrap_ts, wrap_stream, fmt2,\n"
                f"        {select_out}\n    FROM {prev})")

    ctes.append(f"""
tsr AS (
    SELECT *,
        coalesce(o_ts_tz, timezone({zone}, o_ts_local),
                 -- no year written: the observed one, or the year before if that is more than a day ahead
                 -- (the observed wall-clock time is worked out only for these rows)
                 timezone({zone}, CASE WHEN o_ts_noyear IS NULL THEN NULL
                     WHEN o_ts_noyear + to_years(year(timezone({zone}, observed_ts)) - 2000)
                          > timezone({zone}, observed_ts) + INTERVAL 1 DAY
                     THEN o_ts_noyear + to_years(year(timezone({zone}, observed_ts)) - 2001)
                     ELSE o_ts_noyear + to_years(year(timezone({zone}, observed_ts)) - 2000) END),
                 wrap_ts) AS parsed_ts,
        {severity_sql('o_lvl')} AS severity
    FROM o
), r AS (
    -- Too far ahead, or before 1900 (a misread number): not believed.
    SELECT *, parsed_ts > observed_ts + to_microseconds(CAST({int(settings.max_ahead_s * 1e6)} AS BIGINT))
              OR parsed_ts < TIMESTAMPTZ '1900-01-01 00:00:00+00' AS implausible
    FROM tsr
)""")
    sql = "WITH " + ",\n".join(ctes) + f"""
SELECT
    CAST(CASE WHEN parsed_ts IS NULL OR implausible THEN observed_ts ELSE parsed_ts END AS TIMESTAMPTZ) AS ts,
    observed_ts,
    coalesce(o_service, service) AS service,
    CASE WHEN host = '' THEN coalesce(o_host, '') ELSE host END AS host,
    source,
    {level_sql('severity')} AS level,
    severity,
    o_message AS message,
    -- Labels from the shipper's input first, then the container stream, then what the
    -- line itself says (which wins a clash), then the parse flags.
    CASE WHEN labels IS NULL AND wrap_stream IS NULL AND NOT coalesce(implausible, FALSE) AND fmt2 <> 'text'
         THEN o_attrs
         ELSE ll_last_wins(list_concat(
             CASE WHEN labels IS NULL THEN []::{ATTRS_TYPE} ELSE CAST(map_entries(labels) AS {ATTRS_TYPE}) END,
             CASE WHEN wrap_stream IS NULL THEN []::{ATTRS_TYPE} ELSE [{{'key': 'stream', 'value': wrap_stream}}] END,
             o_attrs,
             CASE WHEN implausible THEN [{{'key': 'ts_parse', 'value': 'fallback'}},
                                         {{'key': 'ts_original', 'value': CAST(parsed_ts AS VARCHAR)}}]
                  WHEN fmt2 = 'text' AND parsed_ts IS NULL AND severity = 0
                  THEN [{{'key': 'format', 'value': 'unknown'}}]
                  ELSE []::{ATTRS_TYPE} END)) END AS attrs,
    o_trace_id AS trace_id,
    o_span_id AS span_id,
    NULL::VARCHAR AS head,
    NULL::VARCHAR AS raw
FROM r
"""
    # A record with a hundred thousand keys would make every later scan of the map pay for it.
    n = int(settings.max_attrs)
    return route, f"""SELECT * REPLACE (
    CASE WHEN len(attrs) <= {n} THEN attrs
         ELSE list_concat(attrs[:{n}], [{{'key': 'attrs_dropped', 'value': CAST(len(attrs) - {n} AS VARCHAR)}}])
    END AS attrs)
FROM ({sql})"""


class Normaliser:
    """Parses batches of raw lines (``RAW_SCHEMA``) into records (``RECORD_SCHEMA``)."""

    def __init__(self, settings: ParseSettings | None = None, threads: int = 1) -> None:
        self.settings = settings or ParseSettings()
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(f"SET threads = {int(threads)}")
        for m in macros():
            self.con.execute(m)
        for i, p in enumerate(self.settings.patterns):
            try:
                self.con.execute("SELECT regexp_matches('', ?)", [p])
            except duckdb.Error as e:
                raise pattern.PatternError(f"pattern {i} ({p!r}) is not valid RE2: {e}") from None
        # Labels, then what the line says: on a clash the later entry stays.
        self.con.execute("""CREATE OR REPLACE MACRO ll_last_wins(l) AS
            CASE WHEN list_unique(list_transform(l, e -> e.key)) = len(l) THEN l
                 ELSE list_filter(l, (e, i) -> NOT list_contains(list_transform(l[i + 1:], x -> x.key), e.key)) END""")
        # Flattening can make two keys equal; the later ones get "#<position>".
        self.con.execute("""CREATE OR REPLACE MACRO ll_dedupe_once(l) AS
            CASE WHEN list_unique(list_transform(l, e -> e.key)) = len(l) THEN l
                 ELSE list_transform(l, (e, i) -> CASE WHEN list_contains(list_transform(l[:i - 1], x -> x.key), e.key)
                                                  THEN {'key': e.key || '#' || i, 'value': e.value} ELSE e END) END""")
        # Twice: a renamed key can meet one the line already had under that name.
        self.con.execute("""CREATE OR REPLACE MACRO ll_dedupe(l) AS ll_dedupe_once(ll_dedupe_once(l))""")
        self.route_sql, self.parse_sql = build_sql(self.settings)
        # (parser name, its compiled pre-pass) for the parsers that have one
        self.native = [(p.name, p.native) for p in DETECTED if p.native is not None]

    def __call__(self, raw: pa.Table) -> pa.Table:
        self.con.register("c", self._pre_pass(self._route(raw)))
        try:
            out = self.con.execute(self.parse_sql).to_arrow_table()
        finally:
            self.con.unregister("c")
        # The attributes come out as a list of key/value pairs; as a map they are the same buffers.
        pairs = _one_chunk(out.column("attrs"))
        attrs = pa.MapArray.from_arrays(pairs.offsets, pairs.values.field("key"), pairs.values.field("value"),
                                        mask=pairs.is_null() if pairs.null_count else None)
        out = out.set_column(out.schema.get_field_index("attrs"), "attrs", attrs)
        return out.cast(RECORD_SCHEMA)

    def _route(self, raw: pa.Table) -> pa.Table:
        """The first statement over ``raw``: each line (unwrapped) with its format."""
        self.con.register("raw", raw)
        try:
            routed = self.con.execute(self.route_sql).to_arrow_table()
        finally:
            self.con.unregister("raw")
        # The columns routing does not change come straight from the batch, not through DuckDB;
        # so do the lines, but for those it unwrapped.
        unwrapped = routed.column("unwrapped")
        line = raw.column("line") if unwrapped.null_count == len(unwrapped) else \
            pc.coalesce(unwrapped, raw.column("line"))
        routed = routed.drop_columns(["unwrapped"]).append_column("line", line)
        for name in ("observed_ts", "service", "host", "source", "labels"):
            routed = routed.append_column(name, raw.column(name))
        return routed

    def _pre_pass(self, routed: pa.Table) -> pa.Table:
        """``routed`` plus the compiled pre-passes' columns, each over its own parser's rows."""
        lines, fmt = _one_chunk(routed.column("line")), _one_chunk(routed.column("fmt"))
        if lines.type != pa.string():
            lines = lines.cast(pa.string())         # the compiled code reads int32 offsets
        for parser, pre_pass in self.native:
            selected = pc.fill_null(pc.equal(fmt, parser), False).to_numpy(zero_copy_only=False)
            for name, column in pre_pass(lines, selected).items():
                routed = routed.append_column(f"p_{parser}_{name}", column)
        return routed

    def close(self) -> None:
        self.con.close()


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    # combine_chunks copies even a single chunk.
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def normalise_safely(normaliser: Normaliser, raw: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Like calling ``normaliser``, but a row it fails on is set aside instead of failing the batch.

    The batch is halved until the failing rows are alone; returns the records
    of the others and (row index, error) for each failed row.
    """
    try:
        return normaliser(raw), []
    except (duckdb.OutOfMemoryException, duckdb.InterruptException):
        raise                       # not the data's fault: the flush fails and is retried
    except duckdb.Error as e:
        if raw.num_rows <= 1:
            return RECORD_SCHEMA.empty_table(), [(0, f"{type(e).__name__}: {e}")]
        log.warning("normalising failed; looking for the rows at fault", extra={"rows": raw.num_rows,
                                                                              "reason": str(e)[:200]})
    half = raw.num_rows // 2
    left, bad_left = normalise_safely(normaliser, raw.slice(0, half))
    right, bad_right = normalise_safely(normaliser, raw.slice(half))
    return pa.concat_tables([left, right]), bad_left + [(i + half, err) for i, err in bad_right]
