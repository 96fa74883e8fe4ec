"""JSON objects, one per line: nested objects flattened into dotted keys, arrays kept as JSON text.

Well-known keys become record columns (the first present of each list below
wins); every other key goes to ``attrs``. Nesting deeper than ``MAX_DEPTH``
levels stays JSON text; JSON null is a NULL value. When flattening makes two
keys equal (``{"a.b": 1, "a": {"b": 2}}``) the later one gets ``#<position>``
appended, so nothing is lost; so does a key repeated in the line. A line that is not a valid JSON
object is not an error: it falls back to plain text.

The flattening is compiled (``_native.json_entries``, one pass over the
batch); it keeps numbers as written (``1.50`` stays ``1.50``). What it does not
take (a repeated key, a lone surrogate or ``\\u0000``, more than 256 keys,
nesting deeper than 256, anything that is not strict JSON) it leaves to the SQL steps below, which
decide it as they always did: there, numbers are written as DuckDB's JSON
reader writes them (``1.5``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ingest import _native
from ingest.levels import OTEL_SHORT_NAMES, numeric_word_sql
from ingest.parsers import ATTRS_TYPE, Parser, bitmap, instants, native_args, sql_str, strings

# Nested ones too, as flattening names them: MongoDB's {"t": {"$date": ...}}, ECS's {"log": {"level": ...}}.
TS_KEYS = ("@timestamp", "timestamp", "time", "ts", "t", "t.$date", "timestamp.$date", "time.$date", "@t",
           "datetime", "eventTime", "event.created", "timeMillis")
LEVEL_KEYS = ("level", "severity", "lvl", "loglevel", "log.level", "levelname", "level_name", "severity_text",
              "severityText", "@l", "s")
MESSAGE_KEYS = ("message", "msg", "log", "@m", "short_message", "log.message", "message.text")
SERVICE_KEYS = ("service", "service.name", "app")
TRACE_KEYS = ("trace_id", "traceId")
SPAN_KEYS = ("span_id", "spanId")
HOST_KEYS = ("host", "hostname", "host.name", "host.hostname")
MAX_DEPTH = 8

#: When none of the listed keys is present: the first key, at any depth and in any case, whose
#: last component is one of these (MongoDB-style "$date"/"$numberLong" wrappers after it are
#: skipped). Single letters count only at the top ("t", MongoDB's): deeper down they mean anything.
TS_LEAVES = ("@timestamp", "timestamp", "time", "ts", "datetime", "eventTime", "timeMillis")
LEVEL_LEAVES = ("level", "severity", "lvl", "loglevel", "log_level", "levelname", "level_name", "severity_text",
                "severityText")


def leaf_pattern(names: tuple[str, ...], top: tuple[str, ...] = ()) -> str:
    """RE2: a flattened key whose last component (before any $-wrapper) is one of ``names``, or
    which is one of ``top`` wrapped."""
    leaves = "|".join(n.lower() for n in names)
    tops = "".join(f"|^{n}" for n in top)
    return f"(?i)(?:(?:^|\\.)(?:{leaves}){tops})(?:\\.\\$(?:date|numberlong))*$"


def _leaf_sql(names: tuple[str, ...], top: tuple[str, ...] = ()) -> str:
    """:func:`leaf_pattern` as a SQL literal."""
    return sql_str(leaf_pattern(names, top))

_MAP = "'\"MAP(VARCHAR, JSON)\"'"
#: Level texts that leave attrs once they are the level column: the normalised names, and
#: OpenTelemetry's short names with a number ("warn2"), whose severity says all they do.
STORED_LEVELS = ", ".join(f"'{w}'" for w in ("trace", "debug", "info", "warn", "error", "fatal", *OTEL_SHORT_NAMES))
_TEXT_MAP = "'\"MAP(VARCHAR, VARCHAR)\"'"


def _has_object(entries: str) -> str:
    # JSON values are raw JSON text: an object (other than an empty one) starts with '{'.
    return f"list_bool_or(list_transform({entries}, e -> starts_with(e.value, '{{') AND e.value <> '{{}}'))"


def _flatten_once(entries: str) -> str:
    return (f"flatten(list_transform({entries}, e -> CASE WHEN starts_with(e.value, '{{') AND e.value <> '{{}}' "
            f"THEN list_transform(map_entries(json_transform(e.value, {_MAP})), "
            f"c -> {{'key': e.key || '.' || c.key, 'value': c.value}}) ELSE [e] END))")


# Values as text: strings unquoted, numbers, booleans, arrays and deeper objects as JSON, null as NULL.
# A string without escapes only loses its quotes; the others are decoded.
_AS_TEXT = (f"CAST(list_transform({{p}}_n, e -> {{'key': e.key, 'value': "
            "CASE WHEN starts_with(e.value, '\"') THEN CASE WHEN contains(e.value, chr(92)) THEN e.value->>'$' "
            "ELSE CAST(e.value AS VARCHAR)[2:-2] END WHEN e.value = 'null' THEN NULL "
            f"ELSE CAST(e.value AS VARCHAR) END}}) AS {ATTRS_TYPE})")


_ENTRIES = pa.list_(pa.struct([("key", pa.large_string()), ("value", pa.large_string())]))
PARSED = 1          # the line's status from _native: 1 flattened there, 2 left to the SQL steps


#: The groups of well-known keys, each in precedence order: their positions become the step ``k``.
WELL_KNOWN = {"ts": TS_KEYS, "lvl": LEVEL_KEYS, "msg": MESSAGE_KEYS, "svc": SERVICE_KEYS, "trace": TRACE_KEYS,
              "span": SPAN_KEYS, "host": HOST_KEYS}
_GROUPS = [[k.encode() for k in keys] for keys in WELL_KNOWN.values()]


def native_entries(lines: pa.StringArray, selected: np.ndarray) -> dict[str, pa.Array]:
    """The compiled flattening of the ``selected`` lines: ``status``, their entries ``c`` and
    where their well-known keys are (``pos``, as the step ``k`` has them), each line's ``shape``
    (the line with the values kept elsewhere left out: see :func:`storage.lines.original_line`),
    and ``at``, the instant of its time key's value where that is plain RFC 3339 with a zone (what
    ``ll_ts_tz`` would make of it; the step ``tz`` reads the others)."""
    status, list_off, key_off, keys, val_off, vals, valid, positions, shape_off, shape, at = \
        _native.json_entries(*native_args(lines, selected), MAX_DEPTH, _GROUPS)
    m = len(valid)
    present = np.frombuffer(valid, np.uint8)
    key_arr = strings(m, key_off, keys, large=True)
    val_arr = strings(m, val_off, vals, bitmap(present), large=True)
    st = np.frombuffer(status, np.int8)
    entries = pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), len(st) + 1, [None, pa.py_buffer(list_off)]),
                                       pa.StructArray.from_arrays([key_arr, val_arr], names=["key", "value"]),
                                       type=_ENTRIES, mask=pa.array(st != PARSED))
    pos = np.frombuffer(positions, np.int32).reshape(len(st), len(WELL_KNOWN))
    found = pa.StructArray.from_arrays([pa.array(pos[:, g], mask=pos[:, g] == 0) for g in range(len(WELL_KNOWN))],
                                       names=list(WELL_KNOWN))
    flattened = st == PARSED
    shapes = strings(len(st), shape_off, shape, bitmap(flattened), large=True)
    return {"status": pa.array(st), "c": entries, "pos": found, "shape": shapes, "at": instants(at)}


def _flatten_steps() -> tuple[tuple[str, str], ...]:
    """The slow path: one step per nesting level, then the entries of the last one the row needs.

    Nesting n levels deep takes n opening braces, so a line with b of them is
    flat after b - 1 steps: later steps leave it NULL instead of copying its
    entries on, and ``n`` takes them from step b - 1 (or the last step).
    """
    steps = [("n0", f"CASE WHEN {{p}}_status <> {PARSED} AND {{p}}_fast IS NULL "
                    f"THEN try(map_entries(json_transform(line, {_MAP}))) END"),
             ("braces", "CASE WHEN {p}_n0 IS NOT NULL THEN len(string_split(line, '{')) - 1 END")]
    for level in range(1, MAX_DEPTH):
        prev = f"{{p}}_n{level - 1}"
        # Nested CASEs, not AND: only a CASE branch runs on just the rows it selects.
        steps.append((f"n{level}", f"CASE WHEN {prev} IS NULL OR {{p}}_braces <= {level} THEN NULL "
                                   f"WHEN {_has_object(prev)} THEN try({_flatten_once(prev)}) ELSE {prev} END"))
    last = " ".join(f"WHEN {{p}}_braces = {level + 1} THEN {{p}}_n{level}" for level in range(MAX_DEPTH - 1))
    steps.append(("n", f"CASE WHEN {{p}}_n0 IS NULL THEN NULL {last} ELSE {{p}}_n{MAX_DEPTH - 1} END"))
    return tuple(steps)


def _position(keys: tuple[str, ...]) -> str:
    return "coalesce(" + ", ".join(f"list_position({{p}}_keys, {sql_str(k)})" for k in keys) + ")"


# The fast path: a flat object with unique keys becomes a text map in one step. A '{'
# after the first character may open a nested object, and a repeated key fails the
# map: those lines take the slow path, which flattens and renames.
_FLAT = "strpos(substr(line, 2), '{') = 0"

_FIND_DEEPER = ("CASE WHEN {p}_e IS NULL OR ({p}_k0.ts IS NOT NULL AND {p}_k0.lvl IS NOT NULL) THEN {p}_k0 "
                "ELSE {'ts': coalesce({p}_k0.ts, list_position(list_transform({p}_e, x -> regexp_matches(x.key, "
                + _leaf_sql(TS_LEAVES, ("t",)) + ")), true)), "
                "'lvl': coalesce({p}_k0.lvl, list_position(list_transform({p}_e, x -> regexp_matches(x.key, "
                + _leaf_sql(LEVEL_LEAVES) + ")), true)), "
                "'msg': {p}_k0.msg, 'svc': {p}_k0.svc, 'trace': {p}_k0.trace, 'span': {p}_k0.span, "
                "'host': {p}_k0.host} END")

# From the entries and where the well-known keys are: their values, the time, what leaves attrs.
_VALUE_STEPS: tuple[tuple[str, str], ...] = (
    # Only a row missing a listed time or level key looks deeper (so the usual row pays nothing).
    ("k", _FIND_DEEPER),
    ("v", "{"
          "'ts': {p}_e[{p}_k.ts].value, 'lvl': {p}_e[{p}_k.lvl].value, 'msg': {p}_e[{p}_k.msg].value, "
          "'svc': {p}_e[{p}_k.svc].value, 'trace': {p}_e[{p}_k.trace].value, "
          "'span': {p}_e[{p}_k.span].value, 'host': {p}_e[{p}_k.host].value"
          "}"),
    # (the compiled pass read the plain RFC 3339 times, the usual ones: a CASE runs the macro on the rest)
    ("tz", "CASE WHEN {p}_at IS NOT NULL THEN {p}_at ELSE ll_ts_tz({p}_v.ts) END"),
    ("local", "CASE WHEN {p}_tz IS NULL THEN ll_ts_local({p}_v.ts) END"),
    # Keys that became columns leave attrs: the time only if it parsed, the level only if
    # it is a normalised name in some case (so "WARNING" or 30 is still there to see).
    ("drop", "list_filter(["
             "CASE WHEN {p}_tz IS NOT NULL OR {p}_local IS NOT NULL THEN {p}_k.ts END, "
             f"CASE WHEN lower({{p}}_v.lvl) IN ({STORED_LEVELS}) "
             "     THEN {p}_k.lvl END, "
             "{p}_k.msg, {p}_k.svc, {p}_k.trace, {p}_k.span, "
             "CASE WHEN coalesce({p}_v.host, '') <> '' THEN {p}_k.host END], x -> x IS NOT NULL)"),
)

PARSER = Parser(
    name="json",
    detect="starts_with(line, '{')",
    steps=(
        # The SQL steps run only on the lines the compiled pass left (status 2).
        ("m", f"CASE WHEN {{p}}_status <> {PARSED} AND {_FLAT} THEN try(json_transform(line, {_TEXT_MAP})) END"),
        # The map does not check that keys are unique (an Arrow map must not repeat one).
        ("fast", "CASE WHEN {p}_m IS NULL THEN NULL "
                 "WHEN list_unique(map_keys({p}_m)) = cardinality({p}_m) THEN map_entries({p}_m) END"),
        *_flatten_steps(),
        ("text", f"CASE WHEN {{p}}_n IS NOT NULL THEN {_AS_TEXT} END"),
        ("tkeys", "list_transform({p}_text, x -> x.key)"),
        ("e", f"CASE WHEN {{p}}_status = {PARSED} THEN {{p}}_c "
              "WHEN {p}_fast IS NOT NULL THEN {p}_fast WHEN {p}_text IS NULL THEN NULL "
              "WHEN list_unique({p}_tkeys) = len({p}_tkeys) THEN {p}_text ELSE ll_dedupe({p}_text) END"),
        ("keys", f"CASE WHEN {{p}}_status <> {PARSED} THEN list_transform({{p}}_e, x -> x.key) END"),
        ("k0", f"CASE WHEN {{p}}_status = {PARSED} THEN {{p}}_pos ELSE {{"
               + ", ".join(f"'{name}': {_position(keys)}" for name, keys in WELL_KNOWN.items()) + "} END"),
        *_VALUE_STEPS,
    ),
    compiled_steps=(("e", "{p}_c"), ("k0", "{p}_pos"), *_VALUE_STEPS),
    ok="{p}_e IS NOT NULL",
    native=native_entries,
    out={
        "ts_tz": "{p}_tz",
        "ts_local": "{p}_local",
        "lvl": f"CASE WHEN regexp_full_match({{p}}_v.lvl, '\\d{{1,2}}') "
               f"THEN {numeric_word_sql('TRY_CAST({p}_v.lvl AS INTEGER)')} "
               # MongoDB's debug levels D1 (least verbose) to D5.
               "WHEN length({p}_v.lvl) = 2 AND starts_with({p}_v.lvl, 'D') AND {p}_v.lvl BETWEEN 'D1' AND 'D5' "
               "THEN 'debug' ELSE {p}_v.lvl END",
        "message": "CASE WHEN {p}_k.msg IS NULL THEN line ELSE coalesce({p}_v.msg, 'null') END",
        # (the keys in {p}_drop leave them in the last step, in DuckDB or in Arrow: see normalise.py)
        "attrs": "{p}_e",
        "service": "{p}_v.svc",
        "host": "{p}_v.host",
        "trace_id": "{p}_v.trace",
        "span_id": "{p}_v.span",
    },
)
