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
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest import _native, json_columns
from ingest.levels import level_sql, severity_sql
from ingest.parsers import (
    ATTRS_TYPE,
    OUTPUTS,
    Parser,
    access,
    apache_error,
    bitmap,
    json,
    logfmt,
    one_chunk,
    pattern,
    sql_str,
    string_buffers,
    strings,
    syslog,
    text,
)
from ingest.sources import KEY_SEPARATOR, PARTS, SourceBook, source_key
from ingest.timestamps import macros
from storage.schema import RECORD_SCHEMA

log = logging.getLogger("loglake.ingest")

# A value per source, repeated on each of its lines: dictionary-encoded, as the batch builds them.
_PER_SOURCE = pa.dictionary(pa.int32(), pa.string())

#: DuckDB's rows per Arrow chunk, and the lines' bytes up to which a batch's result is one chunk
#: (far below the 2 GiB a string chunk can hold, as the message and line can both be whole lines).
_ARROW_BATCH_ROWS = 1_000_000
_ONE_CHUNK_BYTES = 1 << 29

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
    ("zone", _PER_SOURCE),             # "" (ingest's default) or the source's zone for zone-less times
])

#: Attributes that say how a row was parsed (appended after the line's own).
PARSE_FLAGS = ("ts_parse", "ts_original", "format")

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
    #: The strptime-style format of each pattern's `ts` group ("": the layouts ingest knows).
    pattern_ts_formats: tuple[str, ...] = ()
    #: Attributes kept per record (the first ones); how many were dropped goes in `attrs_dropped`.
    max_attrs: int = 1000


#: A Docker json-file line (the first of a record: later ones are partials joined to it).
_DOCKER_LINE = (r'^\{"log":"(?:[^"\\\n]|\\.)*","stream":"(?:stdout|stderr)",'
                r'(?:"attrs":\{(?:[^"\n{}]|"(?:[^"\\\n]|\\.)*")*\},)?"time":"[^"\n]+"\}\r?(?:\n|$)')
#: A CRI line's prefix: "<RFC 3339 time> <stream> <P or F> ".
_CRI_PREFIX = r'\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2}) (?:stdout|stderr) [PF]'

_UNWRAP = rf"""
u AS (
    SELECT * REPLACE (
        CASE wrapper
            WHEN 'cri' THEN regexp_replace(line, '(^|\n){_CRI_PREFIX} ?', '', 'g')
            WHEN 'docker' THEN rtrim(array_to_string(list_transform(string_split(line, chr(10)),
                                   x -> CASE WHEN starts_with(x, '{{"log":"')
                                             THEN coalesce(try(json_extract_string(x, '$.log')), x) ELSE x END), ''),
                                     chr(10))
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
        -- A line is unwrapped only if it has its runtime's shape: the shipper's wrapper comes from
        -- a file's path or name and is only a hint, and other producers' lines may be container
        -- lines too. A configured format without a wrapper means the lines are as written.
        SELECT * REPLACE (CASE WHEN wrapper = '' AND format <> '' THEN ''
                               WHEN starts_with(line, '{{"log":"') AND regexp_matches(line, '{_DOCKER_LINE}')
                                    THEN 'docker'
                               WHEN regexp_matches(line, '^{_CRI_PREFIX}(?: |\n|$)') THEN 'cri'
                               ELSE '' END AS wrapper)
        FROM raw)
)"""


# The time of the source's previous line that had one, for lines without their own: in the batch,
# else (the batch starts inside a record, a flush having ended in its stack trace) the one its source
# carried from earlier batches (`l_before`, ingest/sources.py).
_INHERIT = """SELECT * REPLACE (coalesce(parsed_ts, CASE WHEN l_cont THEN before END) AS parsed_ts),
           parsed_ts IS NULL AND l_cont AND before IS NOT NULL AS inherited
    FROM (SELECT *, coalesce(last_value(parsed_ts IGNORE NULLS) OVER (PARTITION BY service, source ORDER BY rn
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), l_before) AS before
          FROM tsr)"""


def _case(parsers: Sequence[Parser], column: str, output: str, default: str = "NULL") -> str:
    whens = [f"WHEN {sql_str(p.name)} THEN {p.sql(p.out[output])}" for p in parsers if output in p.out]
    if not whens:
        return default
    return f"CASE {column} {' '.join(whens)} ELSE {default} END"


def build_sql(settings: ParseSettings, inherit: bool = False, present: frozenset[str] | None = None,
              compiled: frozenset[str] = frozenset()) -> tuple[str, str]:
    """The two normalising statements for ``settings``.

    With ``inherit``, a line of a source with a learned layout that carries no time of its own
    (a stack trace's continuation) takes the time of the line before it from the same source, or
    where there is none in the batch, its source's ``l_before``. A statement that may parse plain
    text (``present`` None or with "text") also returns ``ts_believed``: per row, NULL where no time
    was read from the line, else whether that time was believed (see :meth:`Normaliser._carry`).
    With ``present`` (the formats the batch's lines were routed to), the second statement has
    only those parsers' steps, and ``compiled`` names the parsers whose lines the compiled
    pre-pass took every one of (their SQL fallbacks are left out): a smaller statement, planned
    and run faster, with the same answer for that batch.

    The first routes the lines of a registered relation ``raw`` (unwrapped, each
    with its format); the second parses them from a relation ``c``: the first's
    rows plus, per parser with a compiled pre-pass, its columns. Both return one row
    per input row, in the input's order (a flush normalises several partitions in one
    statement and splits the rows back by position). The second leaves out ``observed_ts`` and
    ``source``, which parsing does not change: the caller takes them from its batch.
    """
    formats = settings.pattern_ts_formats + ("",) * (len(settings.patterns) - len(settings.pattern_ts_formats))
    patterns = tuple(pattern.parser(i, p, f) for i, (p, f) in enumerate(zip(settings.patterns, formats, strict=True)))
    first = (*DETECTED, *patterns)
    # Each row's zone for zone-less times: its source's, else the default.
    zone = f"coalesce(nullif(zone, ''), {sql_str(settings.default_timezone)})"

    detect = " ".join(f"WHEN {p.detect} THEN {sql_str(p.name)}" for p in DETECTED if p.detect)
    configured = " ".join(f"WHEN {sql_str(name)} THEN {sql_str(p.name)}" for name, p in
                          {**FORMATS, **{p.name: p for p in patterns}}.items())
    # Stage one, unwrapping and routing, ends here: its rows come back (a line only where it was
    # unwrapped) and, with the batch's columns and those of the parsers' compiled pre-passes
    # added, become the relation "c" (see Normaliser).
    route = f"""WITH {_UNWRAP.strip()}
SELECT CASE WHEN wrapper <> '' THEN line END AS unwrapped, wrap_ts, wrap_stream, format <> '' AS configured,
       CASE format {configured} WHEN '' THEN CASE {detect} ELSE 'text' END ELSE 'text' END AS fmt
FROM u"""
    ctes: list[str] = []
    prev = "c"
    parsing, with_text = first, True
    if present is not None:
        parsing = tuple(p for p in first if p.name in present)
        # Plain text parses the lines routed to it and those another parser's `ok` turns down,
        # which a line the compiled pre-pass took never is.
        with_text = "text" in present or any(p.name not in compiled or p.compiled_steps is None for p in parsing)
    everyone = (*parsing, text.PARSER) if with_text else parsing
    # Each parser's steps, evaluated only on its rows.
    for p in parsing:
        steps = p.compiled_steps if p.name in compiled and p.compiled_steps is not None else p.steps
        for name, expr in steps:
            ctes.append(f"{p.name}_{name} AS (SELECT *, CASE WHEN fmt = {sql_str(p.name)} "
                        f"THEN {p.sql(expr)} END AS p_{p.name}_{name} FROM {prev})")
            prev = f"{p.name}_{name}"
    oks = " ".join(f"WHEN fmt = {sql_str(p.name)} AND ({p.sql(p.ok)}) THEN {sql_str(p.name)}" for p in parsing)
    ctes.append(f"routed AS (SELECT *, CASE {oks} ELSE 'text' END AS fmt2 FROM {prev})" if oks else
                f"routed AS (SELECT *, 'text' AS fmt2 FROM {prev})")
    prev = "routed"
    for name, expr in text.PARSER.steps if with_text else ():
        ctes.append(f"text_{name} AS (SELECT *, CASE WHEN fmt2 = 'text' "
                    f"THEN {text.PARSER.sql(expr)} END AS p_text_{name} FROM {prev})")
        prev = f"text_{name}"

    # (typed: a batch whose parsers give no value of one still has its column)
    types = {"ts_tz": "TIMESTAMPTZ", "ts_local": "TIMESTAMP", "ts_noyear": "TIMESTAMP"}
    outputs = {o: _case(everyone, "fmt2", o, f"NULL::{types.get(o, 'VARCHAR')}")
               for o in OUTPUTS if o not in ("message", "attrs")}
    outputs["message"] = _case(everyone, "fmt2", "message", "line")
    outputs["attrs"] = _case(everyone, "fmt2", "attrs", f"[]::{ATTRS_TYPE}")
    select_out = ",\n        ".join(f"{expr} AS o_{name}" for name, expr in outputs.items())
    # The positions of a JSON line's entries that became columns: they leave its attrs at the end.
    drop = "CASE WHEN fmt2 = 'json' THEN p_json_drop END" if json.PARSER in parsing else "NULL::INTEGER[]"
    ctes.append(f"o AS (SELECT line, observed_ts, service, host, source, labels, zone, wrap_ts, wrap_stream,\n"
                f"        fmt2, configured AND fmt2 = 'text' AND fmt <> 'text' AS unmatched, rn, l_cont,"
                f" {drop} AS o_drop,"
                f"{' l_before,' if inherit else ''}\n"
                # (the compiled pass's shape only where it parsed the line: its values are the columns')
                f"        CASE WHEN fmt2 = 'json' AND p_json_status = 1 THEN p_json_shape END AS shape,\n"
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
), inh AS (
    {_INHERIT if inherit else "SELECT *, FALSE AS inherited FROM tsr"}
), q AS (
    -- (JSON the compiled pass left) where the message stands in the line as a plain JSON string
    -- (nothing in it JSON escapes): there the stored line leaves it out, as the pass's shape does.
    SELECT *, CASE WHEN fmt2 = 'json' AND shape IS NULL AND length(o_message) >= 8
                        AND NOT regexp_matches(o_message, '["\\\\[:cntrl:]]')
                   THEN strpos(line, '"' || o_message || '"') ELSE 0 END AS quoted
    FROM inh
), r AS (
    -- Too far ahead, or before 1900 (a misread number): not believed.
    SELECT *, parsed_ts > observed_ts + to_microseconds(CAST({int(settings.max_ahead_s * 1e6)} AS BIGINT))
              OR parsed_ts < TIMESTAMPTZ '1900-01-01 00:00:00+00' AS implausible
    FROM q
), a AS (
    -- Where attrs are made (see the final SELECT): the first two of its cases for a compiled JSON
    -- line short of the cap, else 0 (here).
    SELECT *, CAST(CASE WHEN shape IS NULL OR len(o_attrs) >= {int(settings.max_attrs)} OR labels IS NOT NULL
                            OR wrap_stream IS NOT NULL OR coalesce(implausible, TRUE) OR unmatched OR inherited THEN 0
                        WHEN coalesce(o_host, '') IN ('', host) OR host = '' THEN 1
                        WHEN NOT contains(line, 'agent') THEN 2 ELSE 0 END AS TINYINT) AS attrs_from
    FROM r
), k AS (
    -- The other rows' entries without those that became columns, once (ll_last_wins repeats its list).
    SELECT *, CASE WHEN attrs_from = 0 THEN ll_drop(o_attrs, o_drop) END AS o_kept
    FROM a
)""")
    # Only batches with text lines (the only ones with a learned layout) say which times to carry.
    carried = "" if present is not None and "text" not in present else \
        ",\n    CASE WHEN parsed_ts IS NOT NULL AND NOT inherited THEN NOT implausible END AS ts_believed"
    sql = "WITH " + ",\n".join(ctes) + f"""
SELECT
    CAST(CASE WHEN parsed_ts IS NULL OR implausible THEN observed_ts ELSE parsed_ts END AS TIMESTAMPTZ) AS ts,
    coalesce(o_service, service) AS service,
    -- The host the line names wins; the shipper's machine then goes to attrs.agent.host.
    coalesce(nullif(o_host, ''), host) AS host,
    {level_sql('severity')} AS level,
    severity,
    o_message AS message,
    -- Labels from the shipper's input first, then the container stream, then what the
    -- line itself says (which wins a clash), then the parse flags.
    -- A compiled JSON line's (shape) in the first two cases is made in Arrow (attrs_from:
    -- 1 its entries, 2 agent.host and its entries; attrs_drop the entries to leave out), not here.
    CASE WHEN attrs_from > 0 THEN NULL
         WHEN labels IS NULL AND wrap_stream IS NULL AND NOT coalesce(implausible, TRUE) AND NOT unmatched
              AND NOT inherited AND (coalesce(o_host, '') IN ('', host) OR host = '')
         THEN o_kept
         -- (a line without the word cannot have an agent.host of its own to clash with)
         WHEN labels IS NULL AND wrap_stream IS NULL AND NOT coalesce(implausible, TRUE) AND NOT unmatched
              AND NOT inherited AND NOT contains(line, 'agent')
         THEN list_prepend({{'key': 'agent.host', 'value': host}}, o_kept)
         ELSE ll_last_wins(list_concat(
             CASE WHEN labels IS NULL THEN []::{ATTRS_TYPE} ELSE CAST(map_entries(labels) AS {ATTRS_TYPE}) END,
             CASE WHEN wrap_stream IS NULL THEN []::{ATTRS_TYPE} ELSE [{{'key': 'stream', 'value': wrap_stream}}] END,
             CASE WHEN coalesce(o_host, '') IN ('', host) OR host = '' THEN []::{ATTRS_TYPE}
                  ELSE [{{'key': 'agent.host', 'value': host}}] END,
             o_kept,
             CASE WHEN implausible THEN [{{'key': 'ts_parse', 'value': 'fallback'}},
                                         {{'key': 'ts_original', 'value': CAST(parsed_ts AS VARCHAR)}}]
                  WHEN inherited THEN [{{'key': 'ts_parse', 'value': 'inherited'}}]
                  -- A line its source's configured format did not read: parsed as text, and said so.
                  WHEN unmatched AND parsed_ts IS NULL
                  THEN [{{'key': 'ts_parse', 'value': 'observed'}}, {{'key': 'format', 'value': 'unmatched'}}]
                  WHEN unmatched THEN [{{'key': 'format', 'value': 'unmatched'}}]
                  WHEN fmt2 = 'text' AND parsed_ts IS NULL AND severity = 0
                  THEN [{{'key': 'ts_parse', 'value': 'observed'}}, {{'key': 'format', 'value': 'unknown'}}]
                  -- The time was not read from the line: say so.
                  WHEN parsed_ts IS NULL THEN [{{'key': 'ts_parse', 'value': 'observed'}}]
                  ELSE []::{ATTRS_TYPE} END)) END AS attrs,
    attrs_from,
    CASE WHEN attrs_from > 0 THEN o_drop END AS attrs_drop,
    o_trace_id AS trace_id,
    o_span_id AS span_id,
    -- The line as received: head || message when the message is its tail, else the line itself
    -- (storage/lines.py), with the values the columns hold stored once, in the columns.
    CASE WHEN o_message IS DISTINCT FROM line AND ends_with(line, o_message)
         THEN left(line, length(line) - length(o_message)) END AS head,
    CASE WHEN ends_with(line, o_message) THEN NULL
         -- The compiled pass's shape: the values the columns hold left out (storage/lines.py).
         -- It is the batch's own column, p_json_shape: taken from there (raw_is_shape), not
         -- copied back out of DuckDB.
         WHEN shape IS NOT NULL THEN NULL
         WHEN quoted > 0 THEN left(line, quoted) || chr(2) || substr(line, quoted + 1 + length(o_message))
         ELSE line END AS raw,
    ends_with(line, o_message) IS NOT TRUE AND shape IS NOT NULL AS raw_is_shape,
    fmt2 AS parsed_format{carried}
FROM k
{"ORDER BY rn" if inherit else ""}
"""
    # A record with a hundred thousand keys would make every later scan of the map pay for it. The
    # flags saying how the row was parsed come last and are kept past the cut: they are why it is odd.
    n = int(settings.max_attrs)
    flags = ", ".join(sql_str(k) for k in PARSE_FLAGS)
    return route, f"""SELECT * REPLACE (
    CASE WHEN attrs IS NULL OR len(attrs) <= {n} THEN attrs
         ELSE list_concat(attrs[:{n}],
                          [{{'key': 'attrs_dropped',
                             'value': CAST(len(attrs) - {n} - len(list_filter(attrs[{n} + 1:],
                                                                   e -> e.key IN ({flags}))) AS VARCHAR)}}],
                          list_filter(attrs[{n} + 1:], e -> e.key IN ({flags})))
    END AS attrs)
FROM ({sql})"""


class Normaliser:
    """Parses batches of raw lines (``RAW_SCHEMA``) into records (``RECORD_SCHEMA``)."""

    def __init__(self, settings: ParseSettings | None = None, threads: int = 1, *,
                 json_in_arrow: bool = True) -> None:
        """``json_in_arrow`` False: every batch goes through the parsing statement, even one
        :mod:`ingest.json_columns` could make in Arrow (the tests compare the two)."""
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
        for i, f in enumerate(self.settings.pattern_ts_formats):
            try:
                if f:
                    self.con.execute("SELECT try_strptime('', ?)", [f])
            except duckdb.Error as e:
                raise pattern.PatternError(f"pattern {i}'s ts_format {f!r} is not a strptime format: {e}") from None
        # Labels, then what the line says: on a clash the later entry stays.
        self.con.execute("""CREATE OR REPLACE MACRO ll_last_wins(l) AS
            CASE WHEN list_unique(list_transform(l, e -> e.key)) = len(l) THEN l
                 ELSE list_filter(l, (e, i) -> NOT list_contains(list_transform(l[i + 1:], x -> x.key), e.key)) END""")
        # Flattening can make two keys equal; the later ones get "#<position>".
        self.con.execute("""CREATE OR REPLACE MACRO ll_dedupe_once(l) AS
            CASE WHEN list_unique(list_transform(l, e -> e.key)) = len(l) THEN l
                 ELSE list_transform(l, (e, i) -> CASE WHEN list_contains(list_transform(l[:i - 1], x -> x.key), e.key)
                                                  THEN {'key': e.key || '#' || i, 'value': e.value} ELSE e END) END""")
        # A JSON line's entries without those at the positions that became columns.
        self.con.execute("""CREATE OR REPLACE MACRO ll_drop(l, drop) AS
            CASE WHEN drop IS NULL OR len(drop) = 0 THEN l
                 ELSE list_filter(l, (x, i) -> NOT list_contains(drop, i)) END""")
        # Twice: a renamed key can meet one the line already had under that name.
        self.con.execute("""CREATE OR REPLACE MACRO ll_dedupe(l) AS ll_dedupe_once(ll_dedupe_once(l))""")
        self.route_sql, self.parse_sql = build_sql(self.settings)
        self.json_in_arrow = json_in_arrow
        self._level_words = json_columns.LevelWords(self.con)
        # Only batches with lines to inherit a time pay for the window it takes.
        self.inherit_sql = build_sql(self.settings, inherit=True)[1]
        #: The parsing statement per (inherit, formats present, parsers the compiled pass took
        #: whole): a batch pays for planning and running only the parsers its lines need.
        self._parse_sql: dict[tuple[bool, frozenset[str], frozenset[str]], str] = {}
        #: The routing of a JSON object line, per batch's format names (see _route_objects).
        self._routes: dict[tuple[str, ...], pa.Table] = {}
        # (parser name, its compiled pre-pass) for the parsers that have one
        self.native = [(p.name, p.native) for p in DETECTED if p.native is not None]
        #: Learned layouts of the text sources this normaliser has seen.
        self.sources = SourceBook()
        #: Per (tenant, service, source) of the output: the format most of its rows in its latest batch
        #: were parsed as.
        self.formats: dict[tuple[str, str, str], str] = {}

    def __call__(self, raw: pa.Table, tenant: str = "") -> pa.Table:
        """``raw``'s records; ``tenant`` keeps its sources' learned layouts apart from other tenants'."""
        c, compiled = self._pre_pass(self._route(raw), tenant)
        out = json_columns.columns(c, self.settings.max_attrs, self.settings.max_ahead_s, self._level_words) \
            if self.json_in_arrow and "json" in compiled else None
        if out is None:
            self.con.register("c", c)
            try:
                inherit = bool(pc.any(c.column("l_cont")).as_py())
                out = self.con.execute(self._statement(c, inherit, compiled)).to_arrow_table(_batch_rows(c))
            finally:
                self.con.unregister("c")
        # The columns parsing never changes come from the batch as they are, not through DuckDB
        # (converting them back to Arrow cost a copy, and the source's dictionary).
        out = out.add_column(1, "observed_ts", c.column("observed_ts")).add_column(4, "source", c.column("source"))
        out = _attrs_from_entries(_raw_from_shapes(out, c), c)
        # The attributes come out as a list of key/value pairs; as a map they are the same buffers.
        pairs = one_chunk(out.column("attrs"))
        attrs = pa.MapArray.from_arrays(pairs.offsets, pairs.values.field("key"), pairs.values.field("value"),
                                        mask=pairs.is_null() if pairs.null_count else None)
        out = out.set_column(out.schema.get_field_index("attrs"), "attrs", attrs)
        # Now that the attributes are final: the JSON lines' skeletons (storage/lines.py).
        out = out.set_column(out.schema.get_field_index("raw"), "raw", _skeletons(out, pairs))
        self._note_formats(out, tenant)
        if "ts_believed" in out.column_names:
            self._carry(c, out, tenant)
            out = out.drop_columns(["ts_believed"])
        return out.drop_columns(["parsed_format"]).cast(RECORD_SCHEMA)

    def _statement(self, c: pa.Table, inherit: bool, compiled: frozenset[str]) -> str:
        """The parsing statement for the batch ``c``, built once per shape of batch."""
        present = frozenset(v for v in pc.unique(c.column("fmt")).to_pylist() if v is not None)
        key = (inherit, present, compiled & present)
        sql = self._parse_sql.get(key)
        if sql is None:
            if len(self._parse_sql) >= 64:      # (pattern rules can make many shapes: keep a few)
                self._parse_sql.clear()
            sql = self._parse_sql[key] = build_sql(self.settings, inherit, present, compiled & present)[1]
        return sql

    def _note_formats(self, out: pa.Table, tenant: str) -> None:
        """Remember each source's format in ``out`` (one group-by over the batch, not a loop over rows)."""
        if out.num_rows == 0:
            return
        keys = pa.table({"service": out.column("service").cast(pa.string()),
                         "source": out.column("source").cast(pa.string()),
                         "format": out.column("parsed_format")})
        counts = keys.group_by(["service", "source", "format"]).aggregate([([], "count_all")])
        best: dict[tuple[str, str, str], tuple[int, str]] = {}
        columns = (counts.column(c).to_pylist() for c in ("service", "source", "format", "count_all"))
        for service, source, fmt, n in zip(*columns, strict=True):
            key = (tenant, service or "", source or "")
            if n > best.get(key, (0, ""))[0]:
                best[key] = (n, fmt or "text")
        self.formats.update({k: fmt for k, (_, fmt) in best.items()})

    def _carry(self, c: pa.Table, out: pa.Table, tenant: str) -> None:
        """Remember, per text source with a layout in ``c``, the time of its last line that had one, for
        the continuation lines its next batch may start with (one group-by over those lines).

        A time not believed is not carried: that record's trace then gets the observed time. The times
        are not kept anywhere else: a restarted worker gives such lines the observed time, and a flush
        retried after its commit failed gives them the time its own batch left (a later record's);
        either way only the lines before a batch's first timed line of their source are affected.
        """
        # (l_few is set on exactly the lines of a source with a layout)
        rows = pc.and_(pc.is_valid(out.column("ts_believed")), pc.is_valid(c.column("l_few")))
        if not pc.any(rows).as_py():
            return
        read = pa.table({"service": c.column("service"), "source": c.column("source"), "ts": out.column("ts"),
                         "believed": out.column("ts_believed")}).filter(rows)
        read = read.set_column(0, "service", read.column("service").cast(pa.string()))
        read = read.set_column(1, "source", read.column("source").cast(pa.string()))
        # (ordered: without threads, "last" is the last row of the group in the batch's order)
        last = read.group_by(["service", "source"], use_threads=False).aggregate([("ts", "last"),
                                                                                  ("believed", "last")])
        columns = (last.column(name).to_pylist() for name in ("service", "source", "ts_last", "believed_last"))
        self.sources.carry((source_key(tenant, service, source), ts if believed else None)
                           for service, source, ts, believed in zip(*columns, strict=True))

    def _route(self, raw: pa.Table) -> pa.Table:
        """The first statement over ``raw``: each line (unwrapped) with its format."""
        routed = self._route_objects(raw) if _objects_only(raw.column("line")) else None
        if routed is not None:
            line = raw.column("line")
        else:
            self.con.register("raw", raw)
            try:
                routed = self.con.execute(self.route_sql).to_arrow_table(_batch_rows(raw))
            finally:
                self.con.unregister("raw")
            # The lines come straight from the batch, not through DuckDB, but for those it unwrapped.
            unwrapped = routed.column("unwrapped")
            line = raw.column("line") if unwrapped.null_count == len(unwrapped) else \
                pc.coalesce(unwrapped, raw.column("line"))
            routed = routed.drop_columns(["unwrapped"])
        routed = routed.append_column("line", line)
        # So do the columns routing does not change.
        for name in ("observed_ts", "service", "host", "source", "labels", "zone"):
            routed = routed.append_column(name, raw.column(name))
        return routed

    def _route_objects(self, raw: pa.Table) -> pa.Table | None:
        """Routing of a batch whose every line is a JSON object, not a container runtime's: no line
        is unwrapped, and a line's route depends on its source's format alone. So the routing
        statement runs over one line per format (cached), not over every line: 0.13 µs a line
        less, 4% of normalising a JSON batch. None if a row has no format (the statement decides)."""
        formats = one_chunk(raw.column("format"))
        if not isinstance(formats.type, pa.DictionaryType):
            formats = formats.dictionary_encode()
        indices, names = formats.indices, formats.dictionary
        if indices.null_count or names.null_count:
            return None
        key = tuple(names.to_pylist())
        routes = self._routes.get(key)
        if routes is None:
            sample = pa.table({"line": pa.array(["{"] * len(key), pa.string()), "wrapper": [""] * len(key),
                               "format": names.cast(pa.string())})
            self.con.register("raw", sample)
            try:
                routes = self.con.execute(self.route_sql).to_arrow_table().drop_columns(["unwrapped"])
            finally:
                self.con.unregister("raw")
            if len(self._routes) >= 64:
                self._routes.clear()
            self._routes[key] = routes
        return routes.take(indices)

    def _pre_pass(self, routed: pa.Table, tenant: str = "") -> tuple[pa.Table, frozenset[str]]:
        """``routed`` plus the compiled pre-passes' columns, each over its own parser's rows; and
        the parsers whose rows the compiled pass took every one of."""
        lines, fmt = one_chunk(routed.column("line")), one_chunk(routed.column("fmt"))
        if lines.type != pa.string():
            lines = lines.cast(pa.string())         # the compiled code reads int32 offsets
        compiled = set()
        for parser, pre_pass in self.native:
            selected = pc.fill_null(pc.equal(fmt, parser), False).to_numpy(zero_copy_only=False)
            columns = pre_pass(lines, selected)
            if (columns["status"].to_numpy(zero_copy_only=False)[selected] == 1).all():
                compiled.add(parser)
            for name, column in columns.items():
                routed = routed.append_column(f"p_{parser}_{name}", column)
        # Plain text is read with its source's learned layout.
        text = pc.fill_null(pc.equal(fmt, "text"), False).to_numpy(zero_copy_only=False)
        learned: dict[str, pa.Array] = {}
        if text.any():      # (a batch of JSON and access lines has no source key to build)
            keys = pc.binary_join_element_wise(pa.scalar(tenant),
                                               one_chunk(routed.column("service")).cast(pa.string()),
                                               one_chunk(routed.column("source")).cast(pa.string()), KEY_SEPARATOR)
            learned = self.sources.columns(lines, keys, text)
        for part in PARTS:
            routed = routed.append_column(f"l_{part}", learned.get(f"l_{part}", pa.nulls(len(lines), pa.string())))
        routed = routed.append_column("l_timeonly", learned.get("l_timeonly", pa.nulls(len(lines), pa.bool_())))
        routed = routed.append_column("l_few", learned.get("l_few", pa.nulls(len(lines), pa.bool_())))
        if "l_before" in learned:       # (only the inheriting statement reads it, and only with a layout)
            routed = routed.append_column("l_before", learned["l_before"])
        # A line its source's layout did not read at all may continue the line before it.
        cont = learned.get("l_layout")
        cont = pc.and_(pc.is_valid(cont), pc.is_null(learned["l_msg"])) if cont is not None else \
            pa.array(np.zeros(len(lines), dtype=bool))
        routed = routed.append_column("l_cont", pc.fill_null(cont, False))
        return routed.append_column("rn", pa.array(np.arange(len(lines), dtype=np.int64))), frozenset(compiled)

    def close(self) -> None:
        self.con.close()


def _raw_from_shapes(out: pa.Table, c: pa.Table) -> pa.Table:
    """``out``'s ``raw`` with the compiled JSON pass's shapes filled in where the statement said
    so (``raw_is_shape``): the batch's column itself when every row takes its shape."""
    is_shape = one_chunk(out.column("raw_is_shape"))
    out = out.drop_columns(["raw_is_shape"])
    taken = is_shape.true_count
    if taken == 0:
        return out
    shapes = one_chunk(c.column("p_json_shape"))
    raw = shapes if taken == len(is_shape) else pc.if_else(is_shape, shapes, one_chunk(out.column("raw")))
    return out.set_column(out.schema.get_field_index("raw"), "raw", raw)


def _attrs_from_entries(out: pa.Table, c: pa.Table) -> pa.Table:
    """``out``'s ``attrs`` with the rows the statement left to Arrow made (``attrs_from``): a
    compiled JSON line's entries (``p_json_c``) but those at the positions in ``attrs_drop``,
    after ``agent.host`` (the shipper's host) where ``attrs_from`` is 2. In DuckDB, filtering
    and prepending the lists and copying them back out cost half of the parsing statement; here
    it is one take over the entries, the hosts and the statement's own lists."""
    code = one_chunk(out.column("attrs_from")).to_numpy(zero_copy_only=False)
    drop = one_chunk(out.column("attrs_drop"))
    out = out.drop_columns(["attrs_from", "attrs_drop"])
    if not code.any():
        return out
    made, entries = one_chunk(out.column("attrs")), one_chunk(c.column("p_json_c"))
    n, sel, prep = len(code), code > 0, (code == 2).astype(np.int64)
    e_off, m_off = np.asarray(entries.offsets, np.int64), np.asarray(made.offsets, np.int64)
    e_len, m_len = np.diff(e_off), np.diff(m_off)
    # Which entries stay: those of the rows made here, but for the positions (1-based) dropped.
    e_row = np.repeat(np.arange(n, dtype=np.int32), e_len)
    keep = sel[e_row]
    d_off = np.asarray(drop.offsets, np.int64)
    d_len = np.diff(d_off)
    d_pos = drop.values.to_numpy(zero_copy_only=False)[d_off[0]:d_off[-1]]
    inside = (d_pos >= 1) & (d_pos <= np.repeat(e_len, d_len))
    keep[(np.repeat(e_off[:-1] - e_off[0] - 1, d_len) + d_pos)[inside]] = False
    n_made = int(m_off[-1] - m_off[0])
    nulls = ~sel & np.asarray(made.is_null().to_numpy(zero_copy_only=False))
    if not n_made:
        # Every element is an entry or an agent.host: written out in one compiled pass (the take
        # below copied each string three times: a cast, the concatenation, the take).
        fields, offsets32 = _kept_entries(entries, e_off, keep, prep, one_chunk(c.column("host")))
        attrs = pa.ListArray.from_arrays(offsets32, pa.StructArray.from_arrays(fields, ["key", "value"]),
                                         mask=pa.array(nulls) if nulls.any() else None)
        return out.set_column(out.schema.get_field_index("attrs"), "attrs", attrs)
    kept = np.nonzero(keep)[0]
    kept_per_row = np.bincount(e_row[kept], minlength=n)
    counts = np.where(sel, kept_per_row + prep, m_len)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    # Where each output element comes from: [the entries | one agent.host per row with 2 | the
    # statement's lists], by position in their concatenation.
    taken = np.empty(offsets[-1], np.int64)
    # (the k-th entry kept goes to k plus its row's shift: the rows before it made longer or
    # shorter, and its own agent.host first; the statement's elements likewise)
    first_kept = np.zeros(n + 1, np.int64)
    np.cumsum(kept_per_row, out=first_kept[1:])
    taken[np.arange(len(kept)) + (offsets[:-1] + prep - first_kept[:-1])[e_row[kept]]] = kept
    hosted = np.nonzero(prep)[0]
    n_entries = int(e_off[-1] - e_off[0])
    taken[offsets[hosted]] = n_entries + np.arange(len(hosted))
    if n_made:
        # (only the rows the statement made: the null list it gives a row made here may still
        # span elements in Arrow, and they must not land in that row)
        m_row = np.repeat(np.arange(n), m_len)
        m_elems = np.nonzero(~sel[m_row])[0]
        taken[m_elems + (offsets[:-1] - m_off[:-1] + m_off[0])[m_row[m_elems]]] = n_entries + len(hosted) + m_elems
    taken_array = pa.array(taken)
    fields = []
    for f in ("key", "value"):
        own = entries.values.field(f).slice(int(e_off[0]), n_entries).cast(pa.string())
        theirs = made.values.field(f).slice(int(m_off[0]), n_made).cast(pa.string())
        host = pa.repeat(pa.scalar("agent.host", pa.string()), len(hosted)) if f == "key" else \
            one_chunk(c.column("host")).take(pa.array(hosted)).cast(pa.string())
        fields.append(pa.concat_arrays([own, host, theirs]).take(taken_array))
    attrs = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                     pa.StructArray.from_arrays(fields, ["key", "value"]),
                                     mask=pa.array(nulls) if nulls.any() else None)
    return out.set_column(out.schema.get_field_index("attrs"), "attrs", attrs)


def _kept_entries(entries: pa.ListArray, e_off: np.ndarray, keep: np.ndarray, prep: np.ndarray,
                  hosts: pa.Array) -> tuple[list[pa.Array], pa.Array]:
    """The key and value arrays and the list offsets of each row's ``keep`` entries (``e_off`` its
    entries, ``keep`` a flag per entry from ``e_off[0]`` on), after ``agent.host`` (its ``hosts``
    value) where ``prep`` is 1 (``_native.attrs_kept``)."""
    first, last = int(e_off[0]), int(e_off[-1])
    keys, values = entries.values.field("key"), entries.values.field("value")
    k_off, k_data = string_buffers(keys, first, last)
    v_off, v_data = string_buffers(values, first, last)
    valid = np.asarray(values.slice(first, last - first).is_valid().to_numpy(zero_copy_only=False), np.uint8)
    h_off, h_data = string_buffers(hosts.take(pa.array(np.nonzero(prep)[0])).cast(pa.string()))
    lists, ko, kd, vo, vd, vv = _native.attrs_kept(
        e_off - first, k_off, k_data, v_off, v_data, valid, keep.view(np.uint8), prep.astype(np.uint8),
        h_off, h_data)
    flags = np.frombuffer(vv, np.uint8)
    n = len(flags)
    return [strings(n, ko, kd), strings(n, vo, vd, bitmap(flags))], \
        pa.Array.from_buffers(pa.int32(), len(e_off), [None, pa.py_buffer(lists)])


def _skeletons(out: pa.Table, pairs: pa.ListArray) -> pa.Array:
    """``out``'s ``raw`` as stored (storage/lines.py): each JSON row's line as its skeleton (the
    values its columns, ``attrs`` and ``ts`` hold written as slots), any other line as it is,
    marked literal if it holds a byte a skeleton uses (``_native.skeletons``, one pass)."""
    raw = one_chunk(out.column("raw"))
    if raw.null_count == len(raw):
        return raw
    # (the compiled pass reads int32 offsets, as DuckDB writes them)
    raw = raw if raw.type == pa.string() else raw.cast(pa.string())
    valid = pc.is_valid(raw)
    is_json = pc.fill_null(pc.equal(one_chunk(out.column("parsed_format")), "json"), False)
    # 1: a skeleton, 2: kept (marked if need be), 0: a null
    mode = pc.add(valid.cast(pa.uint8()), pc.and_(valid, pc.invert(is_json)).cast(pa.uint8()))
    ts = one_chunk(out.column("ts"))
    offsets, keys, values = pairs.offsets, pairs.values.field("key"), pairs.values.field("value")
    keys = keys if keys.type == pa.string() else keys.cast(pa.string())
    values = values if values.type == pa.string() else values.cast(pa.string())
    off, data = _native.skeletons(
        raw.buffers()[1], raw.buffers()[2], mode.to_numpy(zero_copy_only=False), raw.offset, len(raw),
        ts.buffers()[1], ts.offset, offsets.buffers()[1], pairs.buffers()[0], offsets.offset,
        keys.buffers()[1], keys.buffers()[2], keys.offset, values.buffers()[1], values.buffers()[2],
        values.buffers()[0], values.offset)
    return pa.Array.from_buffers(pa.string(), len(raw), [valid.buffers()[1] if raw.null_count else None,
                                                          pa.py_buffer(off), pa.py_buffer(data)])


def _objects_only(lines: pa.ChunkedArray) -> bool:
    """Whether every line starts with ``{`` and none with a Docker json-file line's ``{"log":"``."""
    return len(lines) > 0 and lines.null_count == 0 and bool(pc.all(pc.starts_with(lines, "{")).as_py()) \
        and not pc.any(pc.starts_with(lines, '{"log":"')).as_py()


def _batch_rows(lines: pa.Table) -> int:
    """DuckDB's rows per Arrow chunk for a statement over the batch ``lines``: all of them where
    that fits (a second chunk costs a copy of every column to join them again)."""
    return max(lines.num_rows, 1) if lines.column("line").nbytes < _ONE_CHUNK_BYTES else _ARROW_BATCH_ROWS


def normalise_safely(normaliser: Normaliser, raw: pa.Table,
                     tenant: str = "") -> tuple[pa.Table, list[tuple[int, str]]]:
    """Like calling ``normaliser``, but a row it fails on is set aside instead of failing the batch.

    The batch is halved until the failing rows are alone; returns the records
    of the others and (row index, error) for each failed row.
    """
    try:
        return normaliser(raw, tenant), []
    except (duckdb.OutOfMemoryException, duckdb.InterruptException):
        raise                       # not the data's fault: the flush fails and is retried
    except duckdb.Error as e:
        if raw.num_rows <= 1:
            return RECORD_SCHEMA.empty_table(), [(0, f"{type(e).__name__}: {e}")]
        log.warning("normalising failed; looking for the rows at fault", extra={"rows": raw.num_rows,
                                                                              "reason": str(e)[:200]})
    half = raw.num_rows // 2
    left, bad_left = normalise_safely(normaliser, raw.slice(0, half), tenant)
    right, bad_right = normalise_safely(normaliser, raw.slice(half), tenant)
    return pa.concat_tables([left, right]), bad_left + [(i + half, err) for i, err in bad_right]
