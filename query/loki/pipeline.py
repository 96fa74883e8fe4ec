"""LogQL pipeline stages that run after the SQL: parsers, label filters, formats.

Selectors and the line filters before any stage that rewrites the line are
compiled to SQL (``translate.py``); what is left runs here, entry by entry,
on the rows the SQL returned. Errors follow Loki: a line a parser cannot read
keeps its labels and gains ``__error__`` (and ``__error_details__``), which a
``| __error__ = ""`` filter can drop.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import re2

from query.errors import QueryError
from query.logql import (
    BytesFilter,
    Decolorize,
    DropLabels,
    DurationFilter,
    Ip,
    IpFilter,
    JsonParser,
    KeepLabels,
    LabelAnd,
    LabelFilter,
    LabelFormat,
    LabelFormatItem,
    LabelOr,
    LabelPredicate,
    LineFilter,
    LineFormat,
    LogfmtParser,
    Matcher,
    NumericFilter,
    PatternParser,
    RegexpParser,
    Stage,
    UnpackParser,
    pattern_parts,
    render,
)
from query.logql.lexer import parse_bytes, parse_go_duration

ERROR = "__error__"
ERROR_DETAILS = "__error_details__"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_]")
#: One ``key[=value]`` pair; the whitespace before it is skipped apart (a leading ``\s*`` here would
#: rescan a long run of spaces from each of its characters: quadratic on a line of log text).
_LOGFMT = re.compile(r'([^\s=]+)(?:=("(?:[^"\\]|\\.)*"|\S*))?')


@dataclass
class Entry:
    """One log line on its way through a pipeline.

    Its labels come in Loki's three kinds: stream labels and what stages added (``labels``, the
    added ones named in ``parsed``), and structured metadata (``meta``). Every stage sees all of
    them, a stage's label before metadata of the same name (Loki's precedence: parsed, then
    structured metadata, then stream)."""

    ts_us: int
    line: str
    labels: dict[str, str]
    #: Labels a stage added (they are not stream labels, and collide with them as ``x_extracted``).
    parsed: set[str] = field(default_factory=set)
    #: The record's structured metadata (``metadata.structured_metadata``): not part of the stream.
    meta: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        """A label's value, or the structured metadata's of that name."""
        value = self.labels.get(name)
        return self.meta.get(name) if value is None else value

    def all_labels(self) -> dict[str, str]:
        """Every label the entry has, as Loki's pipeline sees them (templates, grouping)."""
        return {**self.meta, **self.labels}

    def stream(self) -> dict[str, str]:
        """The stream labels alone: what no stage added, no error."""
        return {k: v for k, v in self.labels.items() if k not in self.parsed and k not in (ERROR, ERROR_DETAILS)}

    def parsed_labels(self) -> dict[str, str]:
        """What stages added, errors included (Loki files ``__error__`` with the parsed labels)."""
        return {k: v for k, v in self.labels.items() if k in self.parsed or k in (ERROR, ERROR_DETAILS)}


def sanitize(name: str) -> str:
    """A label name as Loki's parsers make them: invalid characters become '_'."""
    out = _LABEL_CHARS.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.dot_nl = True            # '.' spans the lines of a multi-line record, as Loki's does
_RE2_OPTIONS.log_errors = False
#: For a yes/no match: without capture groups RE2 can use its DFA; with them, a pattern of many
#: groups costs groups x states per character (a minute for one 100,000-character line).
_RE2_TEST_OPTIONS = re2.Options()
_RE2_TEST_OPTIONS.dot_nl = True
_RE2_TEST_OPTIONS.log_errors = False
_RE2_TEST_OPTIONS.never_capture = True


@lru_cache(maxsize=256)
def regex(pattern: str, *, capture: bool = True) -> Any:
    """``pattern`` compiled by RE2, as Loki's Go regexp would take it: linear time, whatever the input.
    ``capture=False`` when only whether it matches is wanted."""
    try:
        return re2.compile(pattern, options=_RE2_OPTIONS if capture else _RE2_TEST_OPTIONS)
    except re2.error as e:
        raise QueryError(f"invalid regular expression {pattern!r}: {e}") from None


def _add(entry: Entry, name: str, value: str) -> None:
    if name in entry.labels and name not in entry.parsed:
        name = f"{name}_extracted"      # a parsed field never hides a stream label
    entry.labels[name] = value
    entry.parsed.add(name)
    entry.meta.pop(name, None)          # it takes the place of structured metadata of its name


def _fail(entry: Entry, error: str, details: str) -> None:
    entry.labels.setdefault(ERROR, error)
    entry.labels.setdefault(ERROR_DETAILS, details)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}_{sanitize(k)}" if prefix else sanitize(k), v, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value, separators=(",", ":"))
    elif value is None:
        out[prefix] = ""
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    else:
        out[prefix] = str(value)


_PATH_PART = re.compile(r'\.?(?:\["((?:[^"\\]|\\.)*)"\]|\[(\d+)\]|([^.\[\]]+))')


def _json_path(doc: Any, expression: str) -> str | None:
    """``a.b[0]`` or ``a["b c"]`` inside a parsed document; None when absent."""
    node = doc
    for m in _PATH_PART.finditer(expression):
        key, index, name = m.groups()
        if index is not None:
            if not isinstance(node, list) or int(index) >= len(node):
                return None
            node = node[int(index)]
        else:
            k = key if key is not None else name
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
    if isinstance(node, (dict, list)):
        return json.dumps(node, separators=(",", ":"))
    if node is None:
        return ""
    return "true" if node is True else "false" if node is False else str(node)


def _json(stage: JsonParser, entry: Entry) -> None:
    try:
        doc = json.loads(entry.line)
    except ValueError as e:
        _fail(entry, "JSONParserErr", str(e))
        return
    if stage.params:
        for p in stage.params:
            value = _json_path(doc, p.expression)
            if value is not None:
                _add(entry, p.label, value)
        return
    if not isinstance(doc, dict):
        _fail(entry, "JSONParserErr", "not a JSON object")
        return
    found: dict[str, str] = {}
    _flatten("", doc, found)
    for k, v in found.items():
        _add(entry, k, v)


def _logfmt(stage: LogfmtParser, entry: Entry) -> None:
    pairs: dict[str, str] = {}
    pos, line = 0, entry.line
    while pos < len(line):
        while pos < len(line) and line[pos].isspace():     # str.isspace is the regex's \s
            pos += 1
        if pos == len(line):
            break
        m = _LOGFMT.match(line, pos)
        if not m:
            if stage.strict:
                _fail(entry, "LogfmtParserErr", f"unexpected character at {pos}")
                return
            pos += 1
            continue
        key, raw = m.group(1), m.group(2)
        pos = m.end()
        if raw is None:
            if stage.strict:
                _fail(entry, "LogfmtParserErr", f"key {key!r} without a value")
                return
            raw = ""
        try:
            value = json.loads(raw) if raw.startswith('"') and len(raw) > 1 else raw
        except ValueError:      # an unclosed quote or a bad escape in log text: the line's error, not ours
            _fail(entry, "LogfmtParserErr", f"invalid quoted value for key {key[:100]!r}")
            return
        if value or stage.keep_empty:
            pairs[sanitize(key)] = value
    if stage.params:
        for p in stage.params:
            if p.expression in pairs:
                _add(entry, p.label, pairs[p.expression])
        return
    for k, v in pairs.items():
        _add(entry, k, v)


def _unpack(entry: Entry) -> None:
    """Promtail's packed entries: a JSON object whose ``_entry`` string is the line; its other string fields
    become labels (only when ``_entry`` is there, as Loki's unpack does)."""
    line = entry.line
    if not line:
        return
    if line[0] != "{":
        _fail(entry, "JSONParserErr", "expecting a JSON object")
        return
    try:
        doc = json.loads(line)
    except ValueError as e:
        _fail(entry, "JSONParserErr", str(e))
        return
    if not isinstance(doc, dict):
        _fail(entry, "JSONParserErr", "expecting a JSON object")
        return
    packed = doc.get("_entry")
    if not isinstance(packed, str):
        return
    entry.line = packed
    for k, v in doc.items():
        if k != "_entry" and isinstance(v, str):
            _add(entry, sanitize(k), v)


@lru_cache(maxsize=256)
def _pattern_regex(pattern: str) -> Any:
    parts = pattern_parts(pattern)
    out = []
    for i, (kind, text) in enumerate(parts):
        # A capture ending the pattern takes the rest of the line (Loki's); others stop at the next literal.
        lazy = "" if i == len(parts) - 1 else "?"
        out.append(re2.escape(text) if kind == "literal" else
                   f"(?:.*{lazy})" if text == "_" else f"(?P<{text}>.*{lazy})")
    return regex("^" + "".join(out))


def _matcher(m: Matcher, labels: dict[str, str], meta: dict[str, str] | None = None) -> bool:
    value = labels.get(m.name)
    if value is None:
        value = (meta or {}).get(m.name, "")
    if m.op == "=":
        return value == m.value
    if m.op == "!=":
        return value != m.value
    found = regex(m.value, capture=False).fullmatch(value) is not None       # label matchers are anchored
    return found if m.op == "=~" else not found


_COMPARE = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


def holds(p: LabelPredicate, entry: Entry) -> bool:
    """A label filter expression on ``entry`` (conversion failures set ``__error__``, as in Loki)."""
    match p:
        case Matcher():
            return _matcher(p, entry.labels, entry.meta)
        case LabelAnd(items=items):
            return all(holds(i, entry) for i in items)
        case LabelOr(items=items):
            return any(holds(i, entry) for i in items)
        case IpFilter(name=name, op=op, pattern=pattern):
            if ERROR in entry.labels:
                return True     # as Loki: after an error only string matchers filter
            raw = entry.get(name)
            if raw is None:
                return False
            return ip_in(raw, pattern) == (op == "=")
        case NumericFilter(name=name, op=op, value=v) | DurationFilter(name=name, op=op, value=v) \
                | BytesFilter(name=name, op=op, value=v):
            raw = entry.get(name)
            if raw is None:
                return False
            got = convert(p, raw)
            if got is None:
                _fail(entry, "LabelFilterErr", f"cannot read {raw!r} of {name}")
                return True     # kept, marked: Loki lets `| __error__=""` decide
            return _COMPARE[op](got, v)
    raise TypeError(f"not a label predicate: {p!r}")


def convert(p: NumericFilter | DurationFilter | BytesFilter, raw: str) -> float | None:
    if isinstance(p, DurationFilter):
        return parse_go_duration(raw.strip())
    if isinstance(p, BytesFilter):
        return parse_bytes(raw.strip())
    try:
        return float(raw)
    except ValueError:
        return None


def _line_filter(f: LineFilter, line: str) -> bool:
    if f.op in ("|=", "!="):
        found = any(ip_in(line, v.pattern) if isinstance(v, Ip) else v in line for v in f.values)
    elif f.op in ("|>", "!>"):
        found = any(pattern_matches(str(v), line) for v in f.values)
    else:
        found = any(regex(str(v), capture=False).search(line) for v in f.values)
    return found if f.op in ("|=", "|~", "|>") else not found


# -- ip("...") -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IpMatcher:
    """The addresses an ``ip()`` pattern takes: those of one family from ``low`` to ``high``."""

    version: int
    low: int
    high: int

    def __contains__(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return ip.version == self.version and self.low <= int(ip) <= self.high


_IP_CANDIDATES = re.compile(
    # where Loki's scan tries an address: a digit with a '.' within its next three characters (IPv4), or the
    # start of a hex group ended by ':' (or "::" and a hex digit) for IPv6
    r"(?=[0-9](?:\.|.\.|..\.)|::[0-9a-fA-F]|[0-9a-fA-F]{1,4}:)")
_V6_HINT = re.compile(r"::[0-9a-fA-F]|[0-9a-fA-F]{1,4}:")
_V4_SPAN = re.compile(r"[0-9.]*")
_V6_SPAN = re.compile(r"[0-9a-fA-F:.]*")


@lru_cache(maxsize=256)
def ip_matcher(pattern: str) -> IpMatcher:
    """An address, a CIDR prefix or a range ``a-b``, as Go's netip reads them; raises QueryError otherwise."""
    def addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if not text or text != text.strip() or "/" in text or "%" in text:
            raise ValueError(text)
        return ipaddress.ip_address(text)

    try:
        a = addr(pattern)
        return IpMatcher(a.version, int(a), int(a))
    except ValueError:
        pass
    address, slash, bits = pattern.partition("/")
    if slash and bits.isascii() and bits.isdigit() and len(bits) <= 3:
        try:
            network = ipaddress.ip_network(f"{addr(address)}/{int(bits)}", strict=False)
            return IpMatcher(network.version, int(network.network_address), int(network.broadcast_address))
        except ValueError:
            pass
    low, dash, high = pattern.partition("-")
    if dash:
        try:
            a, b = addr(low), addr(high)
        except ValueError:
            pass
        else:
            if a.version == b.version and int(a) <= int(b):
                return IpMatcher(a.version, int(a), int(b))
    raise QueryError(f'ip: invalid pattern: "{pattern}"; use an address, a CIDR prefix (10.0.0.0/8) or a range '
                     "(192.168.0.1-192.168.0.10)")


def ip_in(text: str, pattern: str) -> bool:
    """Whether ``text`` holds an address in ``pattern``, found as Loki's ip filter finds them: from each
    place that looks like the start of an address, the longest run of address characters."""
    m = ip_matcher(pattern)
    if "." not in text and ":" not in text:
        return False
    n, resume = len(text), 0
    for candidate in _IP_CANDIDATES.finditer(text):
        i = candidate.start()
        if i < resume:
            continue
        if i + 3 < n and text[i] in "0123456789" and "." in text[i + 1:i + 4]:
            span = _V4_SPAN.match(text, i)
        elif _V6_HINT.match(text, i):
            span = _V6_SPAN.match(text, i)
        else:
            continue
        assert span is not None
        try:
            ip = ipaddress.ip_address(span.group())
        except ValueError:
            ip = None
        if ip is not None and ip in m:
            return True
        resume = span.end() + 1        # Loki's scan goes on after the run (and the character after it)
    return False


# -- |> "pattern" --------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def line_pattern(pattern: str) -> tuple[tuple[str, str], ...]:
    """A ``|>`` pattern's parts; raises QueryError where Loki refuses it (named or consecutive captures)."""
    parts: list[tuple[str, str]] = []
    at = 0
    for m in re.finditer(r"<([A-Za-z_][A-Za-z0-9_]*)>", pattern):
        if m.start() > at:
            parts.append(("literal", pattern[at:m.start()]))
        elif parts and parts[-1][0] == "capture":
            raise QueryError(f"invalid pattern {pattern!r}: consecutive captures <_><_> need a literal between them")
        if m.group(1) != "_":
            raise QueryError(f"invalid pattern {pattern!r}: a line filter pattern takes only <_> captures, "
                             f"not <{m.group(1)}>")
        parts.append(("capture", "_"))
        at = m.end()
    if at < len(pattern):
        parts.append(("literal", pattern[at:]))
    return tuple(parts)


def pattern_matches(pattern: str, line: str) -> bool:
    """Loki's pattern line filter test: each literal found in turn after the previous one, every ``<_>`` at
    least one character, nothing left over unless the pattern ends with a ``<_>``."""
    parts = line_pattern(pattern)
    if not line or not parts:
        return not line and not parts
    off = 0
    for i, (kind, text) in enumerate(parts):
        if kind != "literal":
            continue
        j = line.find(text, off)
        if j < 0 or (i != 0 and j == off):
            return False
        off = j + len(text)
    return (parts[-1][0] == "capture") == (off != len(line))


def validate(stages: Iterable[Stage]) -> None:
    """Refuse, before any line is read, what Loki refuses when it builds the pipeline: ip() with another
    operator than |= and !=, bad ip() patterns, bad pattern filters, bad line filter regexes."""
    def predicate(p: LabelPredicate) -> None:
        if isinstance(p, IpFilter):
            ip_matcher(p.pattern)
        elif isinstance(p, (LabelAnd, LabelOr)):
            for item in p.items:
                predicate(item)

    for stage in stages:
        if isinstance(stage, LineFilter):
            for v in stage.values:
                if isinstance(v, Ip):
                    if stage.op not in ("|=", "!="):
                        raise QueryError(f"ip: invalid operation: ip(...) filters lines with |= and != only, "
                                         f"not {stage.op}")
                    ip_matcher(v.pattern)
                elif stage.op in ("|>", "!>"):
                    line_pattern(v)
                elif stage.op in ("|~", "!~"):
                    regex(v, capture=False)
        elif isinstance(stage, LabelFilter):
            predicate(stage.predicate)


def _keep(items: Iterable[str | Matcher], labels: dict[str, str], keep: bool) -> dict[str, str]:
    names = {i for i in items if isinstance(i, str)}
    matchers = [i for i in items if isinstance(i, Matcher)]

    def listed(k: str) -> bool:
        return k in names or any(m.name == k and _matcher(m, labels) for m in matchers)

    return {k: v for k, v in labels.items() if listed(k) == keep}


def _label_format(items: Iterable[LabelFormatItem], entry: Entry) -> None:
    """``| label_format``: every template sees the labels as they were before the stage. A renamed
    label keeps its kind (a stream label stays one, metadata stays metadata); a templated one is a
    parsed label, as in Loki."""
    before = entry.all_labels()
    labels, meta, parsed = dict(entry.labels), dict(entry.meta), set(entry.parsed)
    for item in items:
        if item.rename:
            if item.value in entry.labels:
                labels[item.dst] = entry.labels[item.value]
                labels.pop(item.value, None)
                meta.pop(item.dst, None)
                if item.value in entry.parsed:
                    parsed.add(item.dst)
                else:
                    parsed.discard(item.dst)
            elif item.value in entry.meta:
                meta[item.dst] = entry.meta[item.value]
                meta.pop(item.value, None)
        else:
            labels[item.dst] = render(item.value, before, entry.line)
            meta.pop(item.dst, None)
            parsed.add(item.dst)
    entry.labels, entry.meta, entry.parsed = labels, meta, parsed


def apply(stage: Stage, entry: Entry) -> bool:
    """Run one stage on ``entry`` in place; False drops it."""
    match stage:
        case LineFilter():
            return _line_filter(stage, entry.line)
        case JsonParser():
            _json(stage, entry)
        case LogfmtParser():
            _logfmt(stage, entry)
        case RegexpParser(pattern=pattern):
            m = regex(pattern).search(entry.line)
            if m:
                for k, v in m.groupdict().items():
                    if v is not None:
                        _add(entry, k, v)
        case UnpackParser():
            _unpack(entry)
        case PatternParser(pattern=pattern):
            m = _pattern_regex(pattern).search(entry.line)
            if m:
                for k, v in m.groupdict().items():
                    _add(entry, k, v)
        case LabelFilter(predicate=p):
            return holds(p, entry)
        case LineFormat(template=t):
            entry.line = render(t, entry.all_labels(), entry.line)
        case LabelFormat(items=items):
            _label_format(items, entry)
        case KeepLabels(items=items):
            entry.labels = _keep(items, entry.labels, True)
            entry.meta = _keep(items, entry.meta, True)
        case DropLabels(items=items):
            entry.labels = _keep(items, entry.labels, False)
            entry.meta = _keep(items, entry.meta, False)
        case Decolorize():
            entry.line = _ANSI.sub("", entry.line)
    return True


def run(stages: tuple[Stage, ...], entries: Iterable[Entry]) -> Iterator[Entry]:
    """The entries that pass every stage, transformed by them."""
    for e in entries:
        if all(apply(s, e) for s in stages):
            yield e
