"""AST + catalog -> parameterised DuckDB SQL over exactly the data that can match.

User text never becomes SQL text: values are bound parameters, column names
come from the schema, and attribute keys are bound as map keys.

Pruning happens in three steps, each reported in the query's stats: the
catalog drops segments outside the time range or without a pinned service or
level; the trigram index in each remaining segment's footer drops row groups
whose messages cannot contain the searched text (and segments left with
none); DuckDB then skips row groups by their Parquet statistics and reads only
the columns the query uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from query.errors import QueryError, UnknownField
from query.language.ast import And, Compare, Exists, MatchAll, Node, Not, Or, Range, Term
from query.language.lexer import FIELD_RE
from query.patterns import template
from storage import tokens
from storage.catalog import SegmentRow
from storage.errors import StorageError
from storage.schema import LINE_SQL, ORIGINAL_COLUMNS, SEVERITY
from storage.tokens import SegmentIndex

#: Columns a term can address by name and compare exactly.
_EXACT = {"service", "host", "source", "trace_id", "span_id"}
_ALIASES = {"msg": "message", "body": "message", "svc": "service"}
SELECT_COLUMNS = ("ts", "observed_ts", "service", "host", "source", "level", "severity",
                  "message", "attrs", "trace_id", "span_id")
#: Fields that read the original line: ``line`` (computed) and the columns it is kept in. A query
#: or projection naming one reads those columns, which segments written before them lack.
ORIGINAL_FIELDS = ("line", *ORIGINAL_COLUMNS)
#: Every name a field resolves to as a column rather than an attribute (``attrs.<name>`` reaches
#: an attribute of that name).
FIELD_COLUMNS = frozenset((*SELECT_COLUMNS, *ORIGINAL_FIELDS))
#: Fields searched as text, by substring, like bare words (``field:value`` is exact on the others).
_TEXT_FIELDS = ("message", *ORIGINAL_FIELDS)
_TIME_COLUMNS = {"ts", "observed_ts"}

_LEVEL_ALIASES = {"warning": "warn", "err": "error", "critical": "fatal", "crit": "fatal"}

#: A number with an optional duration unit, as attribute values write them (run by DuckDB's RE2;
#: :func:`number` reads the same shape in Python without a regex).
_DURATION_SQL = r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$"
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def level_value(text: str) -> str:
    """A level as stored: lower case, common aliases folded."""
    value = text.lower()
    return _LEVEL_ALIASES.get(value, value)


def resolve(name: str) -> tuple[str, str]:
    """``("column", name)`` for a record column, else ``("attr", key)``."""
    name = _ALIASES.get(name, name)
    if not FIELD_RE.fullmatch(name):
        raise UnknownField(f"invalid field name {name!r}")
    if name in FIELD_COLUMNS:
        return "column", name
    return "attr", name.removeprefix("attrs.")


def _like_pattern(value: str) -> str:
    """Lucene wildcards to a LIKE pattern with '\\' as the escape."""
    out = []
    for c in value:
        if c in "%_\\":
            out.append("\\" + c)
        elif c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        else:
            out.append(c)
    return "".join(out)


def literal_regex(text: str, *, ignore_case: bool = True) -> str:
    """An RE2 pattern matching ``text`` anywhere (ignoring case: Unicode simple case folding)."""
    body = "".join(c if c.isalnum() or ord(c) > 0x7F else f"\\x{{{ord(c):02x}}}" for c in text)
    return "(?i)" + body if ignore_case else body


_LITERAL_REGEX = re.compile(r"(?:\(\?i\))?((?:[^\x00-\x7f]|[A-Za-z0-9]|\\x\{[0-9a-f]{2}\})*)")


def literal_of(pattern: str) -> str | None:
    """The text a :func:`literal_regex` pattern matches, or None for any other pattern."""
    m = _LITERAL_REGEX.fullmatch(pattern)
    if not m:
        return None
    return re.sub(r"\\x\{([0-9a-f]{2})\}", lambda g: chr(int(g.group(1), 16)), m.group(1))


_DIGITS = frozenset("0123456789")
#: Longest unit first, so that "ms" is not read as "m" after a number ending in "s".
_UNITS_LONGEST_FIRST = sorted(_UNIT_S, key=len, reverse=True)


def _digits(text: str, i: int) -> int:
    """The index after the ASCII digits starting at ``i``."""
    while i < len(text) and text[i] in _DIGITS:
        i += 1
    return i


def is_decimal(text: str, *, bare_point: bool = False) -> bool:
    """Whether ``text`` is ``[-+]?digits[.digits][e[-+]digits]`` (``.5`` too; ``5.`` with ``bare_point``).

    A single left-to-right pass: Python's backtracking regexes for this shape are quadratic on a long
    run of digits that ends badly, and user queries and stored values can be 100,000 characters long."""
    i = 1 if text[:1] in ("-", "+") else 0
    j = _digits(text, i)
    whole = j > i
    if text[j:j + 1] == ".":
        k = _digits(text, j + 1)
        if k == j + 1 and not (bare_point and whole):
            return False
        j = k
    elif not whole:
        return False
    if text[j:j + 1] in ("e", "E"):
        k = j + 1 + (text[j + 1:j + 2] in ("-", "+"))
        j = _digits(text, k)
        if j == k:
            return False
    return j == len(text)


def number(text: str) -> tuple[float, str | None] | None:
    """``500`` -> (500.0, None); ``250ms`` -> (0.25, 'ms') in seconds; None if neither.

    The shape of ``_DURATION_SQL``, read in linear time (see :func:`is_decimal`)."""
    body = text.strip()
    unit = next((u for u in _UNITS_LONGEST_FIRST if body.endswith(u)), None)
    if unit is not None:
        body = body[:-len(unit)].rstrip()
    if not is_decimal(body):
        return None
    value = float(body)
    return (value * _UNIT_S[unit], unit) if unit else (value, None)


@dataclass
class Compiled:
    sql: str
    params: list[object] = field(default_factory=list)


def _value_sql(kind: str, name: str) -> Compiled:
    if kind == "attr":
        return Compiled("attrs[?]", [name])
    return Compiled(LINE_SQL if name == "line" else name)


def field_sql(name: str) -> Compiled:
    """The SQL of one field's value (a column, the original line, or an attribute)."""
    return _value_sql(*resolve(name))


def numeric_sql(v: Compiled, unit: str | None) -> Compiled:
    """``v`` as a number; with a unit, as seconds (a bare number is taken in ``unit``)."""
    if unit is None:
        return Compiled(f"TRY_CAST({v.sql} AS DOUBLE)", v.params)
    cases = " ".join(f"WHEN '{u}' THEN {f!r}" for u, f in _UNIT_S.items())
    sql = (f"TRY_CAST(regexp_extract({v.sql}, '{_DURATION_SQL}', 1) AS DOUBLE) * "
           f"CASE regexp_extract({v.sql}, '{_DURATION_SQL}', 2) WHEN '' THEN {_UNIT_S[unit]!r} {cases} END")
    return Compiled(sql, v.params * 2)


def group_sql(name: str) -> Compiled:
    """The SQL of one field to group by (a column as text, or an attribute); not a timestamp."""
    kind, key = resolve(name)
    if kind == "attr":
        return Compiled("attrs[?]", [key])
    if key in ("ts", "observed_ts", "attrs"):
        raise UnknownField(f"cannot group by {key}")
    return Compiled(f"CAST({_value_sql(kind, key).sql} AS VARCHAR)")


_SQL_OPS = {">": ">", ">=": ">=", "<": "<", "<=": "<="}


def _comparisons(fname: str, bounds: list[tuple[str, str]]) -> Compiled:
    """``field op value`` for each (op, value), ANDed; numeric when every value is a number or duration."""
    kind, name = resolve(fname)
    if name in _TIME_COLUMNS:
        raise QueryError(f"{name} cannot be compared in a query: use start and end")
    if name == "attrs":
        raise QueryError("attrs holds every attribute: compare one by its key, e.g. attrs.latency>250ms")
    if name == "level" or name == "severity":
        params: list[object] = []
        for _, value in bounds:
            if name == "level" and level_value(value) in SEVERITY:
                params.append(SEVERITY[level_value(value)])
            else:
                try:
                    params.append(int(value))
                except ValueError:
                    raise QueryError(f"{fname} compares with a level name or a severity number, "
                                     f"not {value!r}") from None
        return Compiled(" AND ".join(f"severity {_SQL_OPS[op]} ?" for op, _ in bounds), params)
    parsed = [number(v) for _, v in bounds]
    subject = _value_sql(kind, name)
    if all(p is not None for p in parsed):
        units = [p[1] for p in parsed if p is not None and p[1] is not None]
        unit = units[0] if units else None
        num = numeric_sql(subject, unit)
        parts, params = [], []
        for (op, _), p in zip(bounds, parsed, strict=True):
            assert p is not None
            scaled = p[0] if p[1] is not None or unit is None else p[0] * _UNIT_S[unit]
            parts.append(f"{num.sql} {_SQL_OPS[op]} ?")
            params += [*num.params, scaled]
        return Compiled(" AND ".join(parts), params)
    parts, params = [], []
    for op, value in bounds:
        parts.append(f"{subject.sql} {_SQL_OPS[op]} ?")
        params += [*subject.params, value]
    return Compiled(" AND ".join(parts), params)


def _term(t: Term) -> Compiled:
    if t.field == template.FIELD:
        if t.kind not in ("word", "phrase"):
            raise QueryError(template.USAGE)
        return Compiled("regexp_matches(message, ?)", [template.template_regex(t.value)])
    kind, name = resolve(t.field) if t.field is not None else ("column", "message")
    if t.kind == "regex":
        subject = _value_sql(kind, name)
        if name in _TIME_COLUMNS or name == "severity":
            raise QueryError(f"{name} cannot be matched by a regular expression")
        return Compiled(f"regexp_matches({subject.sql}, ?)", [*subject.params, t.value])
    if name == "attrs":
        raise QueryError("attrs holds every attribute: search one by its key, e.g. attrs.http.status:500")
    if kind == "column" and name in _TEXT_FIELDS:
        text = _value_sql(kind, name).sql
        if t.kind == "wildcard":
            # DuckDB lowers both sides, so they fold alike (Python's lower differs: final sigma, dotted I).
            return Compiled(f"lower({text}) LIKE lower(?) ESCAPE '\\'", [f"%{_like_pattern(t.value)}%"])
        # RE2's case-insensitive literal search: twice as fast as contains(lower(message), ?),
        # which builds a lower-cased copy of every message first.
        return Compiled(f"regexp_matches({text}, ?)", [literal_regex(t.value)])
    if name == "level":
        if t.kind == "wildcard":
            return Compiled("level LIKE ? ESCAPE '\\'", [_like_pattern(t.value.lower())])
        return Compiled("level = ?", [level_value(t.value)])
    if name == "severity":
        try:
            return Compiled("severity = ?", [int(t.value)])
        except ValueError:
            raise QueryError(f"severity takes a number, not {t.value!r}") from None
    if name in _TIME_COLUMNS:
        raise QueryError(f"{name} cannot be searched as a value: use start and end")
    subject = _value_sql(kind, name)
    if t.kind == "wildcard":
        return Compiled(f"{subject.sql} LIKE ? ESCAPE '\\'", [*subject.params, _like_pattern(t.value)])
    return Compiled(f"{subject.sql} = ?", [*subject.params, t.value])


def _exists(e: Exists) -> Compiled:
    kind, name = resolve(e.field)
    if kind == "attr":
        return Compiled("map_contains(attrs, ?)", [name])
    if name in ("trace_id", "span_id"):
        return Compiled(f"coalesce({name}, '') <> ''")
    if name in ORIGINAL_COLUMNS:
        return Compiled(f"{name} IS NOT NULL")
    return Compiled("TRUE")


def compile_filter(node: Node) -> Compiled:
    """The WHERE condition for ``node``."""
    match node:
        case MatchAll():
            return Compiled("TRUE")
        case Term():
            return _term(node)
        case Compare(field=template.FIELD) | Range(field=template.FIELD) | Exists(field=template.FIELD):
            raise QueryError(template.USAGE)
        case Compare(field=f, op=op, value=v):
            return _comparisons(f, [(op, v)])
        case Range(field=f):
            bounds = []
            if node.low is not None:
                bounds.append((">=" if node.include_low else ">", node.low))
            if node.high is not None:
                bounds.append(("<=" if node.include_high else "<", node.high))
            if not bounds:
                return _exists(Exists(f))
            return _comparisons(f, bounds)
        case Exists():
            return _exists(node)
        case Not(item=item):
            inner = compile_filter(item)
            return Compiled(f"NOT coalesce(({inner.sql}), FALSE)", inner.params)
        case And(items=items) | Or(items=items):
            parts = [compile_filter(i) for i in items]
            joiner = " AND " if isinstance(node, And) else " OR "
            return Compiled(joiner.join(f"({p.sql})" for p in parts), [x for p in parts for x in p.params])
    raise TypeError(f"not a query node: {node!r}")


def _on_message_only(node: Node) -> bool:
    """Whether ``node`` reads the message column and nothing else."""
    match node:
        case Term(field=None) | Term(field=template.FIELD):
            return True
        case Term(field=f) if f is not None:
            try:
                return resolve(f) == ("column", "message")
            except QueryError:
                return False
        case Not(item=item):
            return _on_message_only(item)
        case And(items=items) | Or(items=items):
            return all(_on_message_only(i) for i in items)
    return False


def _all_of(parts: list[Compiled]) -> Compiled:
    """``parts`` all true, as one expression: a CASE, which DuckDB evaluates inside a Parquet scan
    as it does a single function call (an AND of two function calls on one column it leaves above
    the scan), and which evaluates each part only on the rows the ones before it kept. Nested as a
    balanced tree, so that a query of ``max_query_terms`` words stays far inside DuckDB's expression
    depth limit (1,000) and Python's recursion limit."""
    if len(parts) == 1:
        return parts[0]
    half = len(parts) // 2
    first, rest = _all_of(parts[:half]), _all_of(parts[half:])
    return Compiled(f"CASE WHEN ({first.sql}) THEN ({rest.sql}) ELSE FALSE END", [*first.params, *rest.params])


def scan_filter(node: Node, where: Compiled) -> tuple[Compiled | None, Compiled]:
    """``node``'s condition (``where``, compiled) in two parts: what to evaluate inside each file's
    scan (None: nothing), and what is left to apply above it (TRUE: nothing); the two together keep
    what ``node`` keeps.

    DuckDB 1.5 evaluates a condition inside the Parquet scan, first on the column it names and on
    the other columns only for the vectors with a match, when the condition is one comparison per
    column or one expression such as ``regexp_matches(message, ?)``; a conjunction of two
    expressions it leaves above the scan, which then decodes every column of every row group
    read. So the conditions on the message (bare words, phrases, patterns) become one expression
    inside, and label equalities stay above beside it (DuckDB pushes those down as comparisons).
    A condition that is one expression of another kind (an attribute, a negated label, an OR across
    columns) goes inside whole; a conjunction holding one keeps all of it above, for DuckDB to
    order its parts by cost."""
    items = list(node.items) if isinstance(node, And) else [node]
    if isinstance(node, MatchAll):
        return None, Compiled("TRUE")
    text = [i for i in items if _on_message_only(i)]
    other = [i for i in items if not _on_message_only(i)]
    if not text:
        return (where, Compiled("TRUE")) if len(items) == 1 else (None, where)
    if not all(_label_equals(i) for i in other):
        # Another expression (a negation, an attribute, a pattern on a label) may be the selective
        # one: left together above the scan, DuckDB orders the conditions by cost and tests the
        # message only on the rows the cheaper ones keep. With the message inside, a search for a
        # common word among the rows of a negated level took twice as long (measured).
        return None, where
    inside = _all_of([compile_filter(i) for i in text])
    if not other:
        return inside, Compiled("TRUE")
    rest = [compile_filter(i) for i in other]
    return inside, Compiled(" AND ".join(f"({r.sql})" for r in rest), [x for r in rest for x in r.params])


def _label_equals(node: Node) -> bool:
    """Whether ``node`` is ``column = value`` on a label column (a comparison DuckDB evaluates in the
    scan itself, and prunes row groups by)."""
    if not isinstance(node, Term) or node.field is None or node.kind not in ("word", "phrase"):
        return False
    try:
        kind, name = resolve(node.field)
    except QueryError:
        return False
    return kind == "column" and (name in _EXACT or name in ("level", "severity"))


def term_count(node: Node) -> int:
    """How many terms (leaves) ``node`` has: what a query costs to compile and to run per row."""
    match node:
        case Not(item=item):
            return term_count(item)
        case And(items=items) | Or(items=items):
            return sum(term_count(i) for i in items)
    return 1


def uses_original(node: Node) -> bool:
    """Whether ``node`` names a field of the original line (see :data:`ORIGINAL_FIELDS`)."""
    match node:
        case Term(field=f) | Compare(field=f) | Range(field=f) | Exists(field=f) if f is not None:
            return _ALIASES.get(f, f) in ORIGINAL_FIELDS
        case Not(item=item):
            return uses_original(item)
        case And(items=items) | Or(items=items):
            return any(uses_original(i) for i in items)
    return False


def regexes(node: Node) -> list[str]:
    """Every regular expression in ``node``, so the service can check them before running."""
    match node:
        case Term(kind="regex"):
            return [node.value]
        case Not(item=item):
            return regexes(item)
        case And(items=items) | Or(items=items):
            return [r for i in items for r in regexes(i)]
    return []


def required_values(node: Node, column: str) -> set[str] | None:
    """Values ``column`` must take for ``node`` to match, if the query pins them."""
    match node:
        case Term(field=f, kind="word" | "phrase") if f is not None and _ALIASES.get(f, f) == column:
            return {level_value(node.value) if column == "level" else node.value}
        case And(items=items):
            sets = [s for s in (required_values(i, column) for i in items) if s is not None]
            if not sets:
                return None
            out = sets[0]
            for s in sets[1:]:
                out = out & s
            return out
        case Or(items=items):
            options = [required_values(i, column) for i in items]
            pinned = [s for s in options if s is not None]
            if len(pinned) < len(options):
                return None
            return set().union(*pinned)
    return None


def prune(segments: list[SegmentRow], node: Node) -> list[SegmentRow]:
    """Drop segments whose catalog stats show they cannot match ``node``."""
    services = required_values(node, "service")
    levels = required_values(node, "level")
    return [s for s in segments
            if (services is None or services & s.services.keys())
            and (levels is None or levels & s.levels.keys())]


# -- the trigram index ----------------------------------------------------------

RowGroupTest = Callable[[SegmentIndex], np.ndarray]


def _message_text(t: Term) -> list[str]:
    """Pieces every matching message contains, ignoring case."""
    if t.field == template.FIELD:
        return template.literals(t.value)
    if t.field is not None and _ALIASES.get(t.field, t.field) != "message":
        return []
    if t.kind in ("word", "phrase"):
        return [t.value]
    if t.kind == "wildcard":
        return [p for p in re.split(r"[*?]", t.value) if p]
    literal = literal_of(t.value)     # a regex that is a plain string, as the Loki API's |= makes
    return [literal] if literal else []


def index_test(node: Node) -> RowGroupTest | None:
    """A per-row-group test from ``node``'s message terms; None if the index cannot help."""
    match node:
        case Term():
            ids = [tokens.required(p) for p in _message_text(node)]
            ids = [i for i in ids if i.size]
            if not ids:
                return None
            need = np.unique(np.concatenate(ids))
            return lambda idx: idx.has_all(need)
        case And(items=items):
            tests = [t for t in (index_test(i) for i in items) if t is not None]
            if not tests:
                return None
            return lambda idx: np.logical_and.reduce([t(idx) for t in tests])
        case Or(items=items):
            found = [index_test(i) for i in items]
            alternatives = [t for t in found if t is not None]
            if len(alternatives) < len(found):
                return None
            return lambda idx: np.logical_or.reduce([t(idx) for t in alternatives])
    return None


def _inside(path: str) -> str:
    """A catalog path, refused if it would leave the data root (DuckDB's check of s3:// URLs is lexical)."""
    if path.startswith("/") or "\\" in path or ".." in path.split("/"):
        raise StorageError(f"segment path {path!r} leaves the data root; run loglake fsck")
    return path


@dataclass
class Scan:
    """The data a query reads: whole segments, and row ranges of others; with what was pruned."""

    whole: list[str] = field(default_factory=list)
    partial: list[tuple[str, list[tuple[int, int]]]] = field(default_factory=list)
    segments_total: int = 0
    segments_after_catalog: int = 0
    segments_scanned: int = 0
    row_groups_total: int = 0
    row_groups_scanned: int = 0
    rows_scanned: int = 0
    bytes_scanned: int = 0
    index_used: bool = False
    #: The segments read, whole or in part.
    segments: list[SegmentRow] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.whole and not self.partial

    def stats(self) -> dict[str, int | bool]:
        return {"segments_total": self.segments_total,
                "segments_pruned_by_catalog": self.segments_total - self.segments_after_catalog,
                "segments_pruned_by_index": self.segments_after_catalog - self.segments_scanned,
                "segments_scanned": self.segments_scanned,
                "row_groups_total": self.row_groups_total, "row_groups_scanned": self.row_groups_scanned,
                "rows_scanned": self.rows_scanned, "bytes_scanned": self.bytes_scanned,
                "index_used": self.index_used}

    def relation(self, columns: str = "*", *, original: bool = False,
                 every_file_has_original: bool = False, where: Compiled | None = None) -> Compiled:
        """A FROM-clause relation over exactly the scanned data, holding only the rows ``where`` keeps
        when it is given.

        With ``original``, it has the columns of the original line (:data:`ORIGINAL_COLUMNS`)
        whatever the segments hold: those written before the columns existed read them as NULL.
        DuckDB binds a file list to its first file's columns, so unless ``every_file_has_original``
        (their footers say so) the files are then read by name (``union_by_name``, which costs
        about a third more on a whole-row search) and the parts joined by name onto an empty
        relation that has them. Otherwise the files are read as they are.

        ``where`` is written into each file's read, beside its row ranges: there DuckDB evaluates it
        inside the Parquet scan, first on the columns it names, and decodes the rest of a row group
        only for the vectors with a match. Above a UNION ALL (or any subquery with a WHERE of its
        own) DuckDB 1.5 pushes down comparisons but not a function such as ``regexp_matches``, and
        every column of every candidate row group was decoded: a needle search over 7 row groups
        read whole rows for 114,688 rows to return 7."""
        if columns == "*" and not original:
            # The record's columns by name: a file list binds to its first file's columns and a file
            # read by row ranges to its own, and a file written before head and raw existed has two
            # fewer, so "*" made the UNION of the two kinds fail on a lake holding both.
            columns = ", ".join(SELECT_COLUMNS)
        original = original and not every_file_has_original
        parts: list[str] = []
        params: list[object] = []
        by_name = ", union_by_name = true" if original else ""
        cond = f" AND ({where.sql})" if where is not None else ""
        cond_params = where.params if where is not None else []
        if self.whole:
            first = f" WHERE ({where.sql})" if where is not None else ""
            parts.append(f"SELECT {columns} FROM read_parquet(?, hive_partitioning = false{by_name}){first}")
            params += [self.whole, *cond_params]
        for url, ranges in self.partial:
            rows = " OR ".join("file_row_number >= ? AND file_row_number < ?" for _ in ranges)
            cols = "* EXCLUDE (file_row_number)" if columns == "*" else columns
            parts.append(f"SELECT {cols} FROM read_parquet(?, hive_partitioning = false, "
                         f"file_row_number = true) WHERE ({rows}){cond}")
            params += [url, *[b for r in ranges for b in r], *cond_params]
        if not original:
            return Compiled("(" + " UNION ALL ".join(parts) + ")", params)
        empty = ", ".join(f"NULL::VARCHAR AS {c}" for c in ORIGINAL_COLUMNS)
        return Compiled(f"(SELECT {empty} WHERE false UNION ALL BY NAME "
                        + " UNION ALL BY NAME ".join(f"({p})" for p in parts) + ")", params)


def nearest_segments(segments: list[SegmentRow], rows: int, *, newest: bool = True) -> list[SegmentRow] | None:
    """The fewest segments nearest one end of a range (the newest by their newest row, else the
    oldest by their oldest row) that hold ``rows`` rows; None when all of them hold fewer. A window
    starting at the oldest time among them (or ending after the newest) holds at least ``rows``."""
    ordered = sorted(segments, key=lambda g: -g.max_ts_us if newest else g.min_ts_us)
    covered = 0
    for n, g in enumerate(ordered, 1):
        covered += g.rows
        if covered >= rows:
            return ordered[:n]
    return None


def choose(node: Node, segments: list[SegmentRow], root: str,
           index_of: Callable[[SegmentRow], SegmentIndex | None] | None = None) -> Scan:
    """What to read for ``node`` among ``segments`` (already limited to the time range)."""
    chosen = prune(segments, node)
    scan = Scan(segments_total=len(segments), segments_after_catalog=len(chosen))
    test = index_test(node) if index_of is not None else None
    for seg in chosen:
        url = f"{root}/{_inside(seg.path)}"
        idx = index_of(seg) if test is not None and index_of is not None else None
        if idx is None or test is None:     # (no test: no index was read)
            scan.segments.append(seg)
            scan.whole.append(url)
            scan.segments_scanned += 1
            scan.rows_scanned += seg.rows
            scan.bytes_scanned += seg.bytes
            continue
        scan.index_used = True
        keep = test(idx)
        scan.row_groups_total += len(idx.rows)
        kept_rows = int(np.asarray(idx.rows)[keep].sum())
        if not keep.any():
            continue
        scan.segments.append(seg)
        scan.segments_scanned += 1
        scan.row_groups_scanned += int(keep.sum())
        scan.rows_scanned += kept_rows
        scan.bytes_scanned += seg.bytes * kept_rows // max(1, seg.rows)
        if keep.all():
            scan.whole.append(url)
        else:
            scan.partial.append((url, idx.row_ranges(keep)))
    return scan
