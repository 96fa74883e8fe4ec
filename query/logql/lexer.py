"""Tokens of LogQL, each with its position; follows Loki's lexer (``pkg/logql/syntax/lex.go``).

Like Loki's, this lexer is context-free: a number glued to a unit is a DURATION or BYTES
token, ``[...]`` is one RANGE token, keywords are case-insensitive and reserved everywhere,
and a function name is a FUNC token only when ``(`` (or ``by (``/``without (``) follows it,
so that ``rate`` or ``bytes`` stay usable as label names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from query.errors import QuerySyntaxError

#: Reserved words: never a label name, in any letter case.
KEYWORDS = frozenset({"by", "without", "bool", "offset", "on", "ignoring", "group_left", "group_right", "or", "and",
                      "unless", "json", "regexp", "logfmt", "unpack", "pattern", "label_format", "line_format",
                      "decolorize", "drop", "keep", "unwrap"})
#: Names that are FUNC tokens when called, identifiers otherwise.
FUNCTIONS = frozenset({"count_over_time", "rate", "rate_counter", "bytes_over_time", "bytes_rate", "avg_over_time",
                       "sum_over_time", "min_over_time", "max_over_time", "stdvar_over_time", "stddev_over_time",
                       "quantile_over_time", "first_over_time", "last_over_time", "absent_over_time", "vector",
                       "sum", "avg", "max", "min", "count", "stddev", "stdvar", "bottomk", "topk", "sort",
                       "sort_desc", "approx_topk", "label_replace", "bytes", "duration", "duration_seconds", "ip"})
FLAGS = frozenset({"--strict", "--keep-empty"})
LABEL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_TWO_CHAR = ("!=", "=~", "!~", "|=", "|~", "|>", "!>", "==", ">=", "<=")
_ONE_CHAR = "{}(),=|+-*/%^<>"
_SPACE = " \t\r\n"
_DIGITS = "0123456789"
_DURATION_RUNES = set("nuµmshdwy")
_BYTES_RUNES = set("BikKMGTP")
MAX_DURATION_NS = 2**63 - 1

_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
       "m": 60_000_000_000, "h": 3_600_000_000_000}
_PROM_UNITS = {"y": 365 * 86_400 * 10**9, "w": 7 * 86_400 * 10**9, "d": 86_400 * 10**9, "h": 3_600 * 10**9,
               "m": 60 * 10**9, "s": 10**9, "ms": 10**6}
_PROM_RE = re.compile(r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?"
                      r"(?:([0-9]+)ms)?")
_GO_PART_RE = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|µs|μs|ms|s|m|h)")
#: go-humanize's units, lower-cased as it reads them: "k"/"kb" are 1000, "ki"/"kib" 1024, and so on up to P.
_BYTE_UNITS = {"": 1, "b": 1} | {prefix + suffix: base**k for k, prefix in enumerate("kmgtp", start=1)
                                 for suffix, base in (("", 1000), ("b", 1000), ("i", 1024), ("ib", 1024))}


@dataclass(frozen=True, slots=True)
class Token:
    """``kind`` is the operator itself for punctuation (``"|="``, ``"("``), else one of STRING, NUMBER,
    DURATION, BYTES, RANGE, IDENT, KEYWORD, FUNC, FLAG, EOF. ``text`` is the source text (lower case for
    KEYWORD and FUNC); ``value`` the unquoted string, the float, or the nanoseconds/bytes."""

    kind: str
    text: str
    pos: int
    value: str | float | int | None = None


#: Longest text read as a duration or a size: past it the number is absurd (and past 4,300
#: digits Python's int() refuses it).
_MAX_NUMBER_TEXT = 64


def parse_prom_duration(text: str) -> int | None:
    """Nanoseconds of a Prometheus duration (``1h30m``, ``1d``, ``250ms``), or None."""
    if text == "0":
        return 0
    if len(text) > _MAX_NUMBER_TEXT:
        return None
    m = _PROM_RE.fullmatch(text)
    if not text or m is None:
        return None
    total = sum(int(g) * ns for g, ns in zip(m.groups(), _PROM_UNITS.values(), strict=True) if g is not None)
    return total if total <= MAX_DURATION_NS else None


def parse_go_duration(text: str) -> int | None:
    """Nanoseconds of a Go ``time.ParseDuration`` string (``1.5h``, ``-5m``, ``300us``), or None."""
    if len(text) > _MAX_NUMBER_TEXT:
        return None
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text[1:] if text[:1] == "+" else text)
    if body == "0":
        return 0
    if not body:
        return None
    total, i = Fraction(0), 0
    while i < len(body):
        m = _GO_PART_RE.match(body, i)
        if m is None or not (m.group(1) or m.group(2)):
            return None
        whole, frac, unit = m.group(1) or "0", m.group(2) or "", m.group(3)
        total += (int(whole) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)) * _NS[unit]
        i = m.end()
    ns = int(total)   # Go truncates the fraction of a nanosecond
    return sign * ns if ns <= MAX_DURATION_NS else None


def parse_duration(text: str) -> int | None:
    """Loki's order: a Prometheus duration first, then Go's."""
    ns = parse_prom_duration(text)
    return ns if ns is not None else parse_go_duration(text)


def parse_bytes(text: str) -> int | None:
    """Bytes of a humanized size (``10KB``, ``1.5KiB``, ``20B``, ``5M``), as go-humanize reads it, or None."""
    if len(text) > _MAX_NUMBER_TEXT:
        return None
    m = re.fullmatch(r"([0-9]+\.?[0-9]*|\.[0-9]+)(.*)", text, re.DOTALL)
    unit = _BYTE_UNITS.get(m.group(2).strip().lower()) if m else None
    if m is None or unit is None:
        return None
    value = Fraction(m.group(1)) * unit
    return int(value) if value < 2**64 else None


def format_duration(ns: int) -> str:
    """Text for ``ns`` that ``parse_duration`` reads back exactly; Prometheus style when it can be."""
    if ns == 0:
        return "0s"
    if ns > 0 and ns % 1_000_000 == 0:
        out, rest = [], ns
        for unit in ("w", "d", "h", "m", "s", "ms"):
            n, rest = divmod(rest, _PROM_UNITS[unit])
            if n:
                out.append(f"{n}{unit}")
        return "".join(out)
    out, rest = [], abs(ns)
    for unit in ("h", "m", "s", "ms", "us", "ns"):
        n, rest = divmod(rest, _NS[unit])
        if n:
            out.append(f"{n}{unit}")
    return ("-" if ns < 0 else "") + "".join(out)


def format_range(ns: int) -> str:
    """A range duration: Prometheus style only (a RANGE is read with Prometheus' parser)."""
    if ns < 0 or ns % 1_000_000:
        raise ValueError(f"a range must be a whole number of milliseconds >= 0, not {ns}ns")
    return format_duration(ns)


def format_bytes(n: int) -> str:
    """Text for ``n`` bytes that ``parse_bytes`` reads back exactly."""
    if n == 0:
        return "0KB"        # "0B" scans as an empty binary literal (0b...), in Loki's lexer too
    for k in range(5, 0, -1):
        for base, suffix in ((1024, "iB"), (1000, "B")):
            if n and n % base**k == 0:
                prefix = "KMGTP"[k - 1]
                return f"{n // base**k}{prefix}{suffix}"
    return f"{n}B"


_LITERAL_NAMES = {"x": "hexadecimal literal", "o": "octal literal", "0": "octal literal", "b": "binary literal"}
_HEX = frozenset("0123456789abcdefABCDEF")


def _digits(src: str, i: int, base: int) -> tuple[int, int, str | None]:
    """Go's text/scanner digit run from ``i``: (end, digsep bits: 1 a digit, 2 a '_', first invalid digit)."""
    digsep, invalid = 0, None
    if base <= 10:
        top = str(base - 1)
        while i < len(src) and (src[i] in _DIGITS or src[i] == "_"):
            if src[i] == "_":
                digsep |= 2
            else:
                digsep |= 1
                if src[i] > top and invalid is None:
                    invalid = src[i]
            i += 1
    else:
        while i < len(src) and (src[i] in _HEX or src[i] == "_"):
            digsep |= 2 if src[i] == "_" else 1
            i += 1
    return i, digsep, invalid


def _invalid_separator(text: str) -> bool:
    """Whether a '_' in ``text`` does not separate two digits (a base prefix counts as a digit)."""
    prefix, prev, i = " ", ".", 0
    if len(text) >= 2 and text[0] == "0" and text[1].lower() in "xob":
        prefix, prev, i = text[1].lower(), "0", 2
    for c in text[i:]:
        if c == "_":
            if prev != "0":
                return True
            prev = "_"
        elif c in _DIGITS or (prefix == "x" and c in _HEX):
            prev = "0"
        else:
            if prev == "_":
                return True
            prev = "."
    return prev == "_"


def scan_go_number(src: str, start: int) -> tuple[int, str | None]:
    """The number literal at ``src[start]`` as Loki's lexer reads it (its fork of Go's text/scanner):
    (end, error).

    Go's syntax: ``0x``/``0o``/``0b`` prefixes, a leading ``0`` for octal integers, ``_`` between
    digits, hexadecimal floats with a ``p`` exponent; as in Loki's fork, ``0b`` is a prefix only before
    a binary digit and ``p`` an exponent only after a hexadecimal mantissa (so ``1PB`` stays a size)."""
    i, n = start, len(src)
    base, prefix, digsep, invalid, is_float = 10, "", 0, None, False
    if src[i] != ".":
        if src[i] == "0":
            i += 1
            c = src[i].lower() if i < n else ""
            if c in ("x", "o"):
                base, prefix = {"x": 16, "o": 8}[c], c
                i += 1
            elif c == "b":
                if src[i + 1:i + 2] in ("0", "1"):
                    base, prefix = 2, "b"
                    i += 1
            else:
                base, prefix, digsep = 8, "0", 1
        i, ds, invalid = _digits(src, i, base)
        digsep |= ds
        if i < n and src[i] == ".":
            is_float = True
            i += 1
    else:
        is_float = True
        i += 1
    if is_float:
        if prefix in ("o", "b"):
            return i, f"invalid radix point in {_LITERAL_NAMES[prefix]}"
        i, ds, _ = _digits(src, i, base)
        digsep |= ds
    if not digsep & 1:
        return i, f"{_LITERAL_NAMES.get(prefix, 'decimal literal')} has no digits"
    e = src[i].lower() if i < n else ""
    if e == "e" or (e == "p" and prefix == "x"):
        if e == "e" and prefix not in ("", "0"):
            return i, f"{e!r} exponent requires decimal mantissa"
        i += 1
        is_float = True
        if i < n and src[i] in "+-":
            i += 1
        i, ds, _ = _digits(src, i, 10)
        digsep |= ds
        if not ds & 1:
            return i, "exponent has no digits"
    elif prefix == "x" and is_float:
        return i, "hexadecimal mantissa requires a 'p' exponent"
    if not is_float and invalid is not None:
        return i, f"invalid digit {invalid!r} in {_LITERAL_NAMES.get(prefix, 'decimal literal')}"
    if digsep & 2 and _invalid_separator(src[start:i]):
        return i, "'_' must separate successive digits"
    return i, None


def go_parse_float(text: str) -> float | None:
    """Go's ``strconv.ParseFloat(text, 64)`` on a scanned literal: decimal or hexadecimal with a ``p``
    exponent (``0x10``, ``0b1`` and ``0o7`` are not floats); None if it refuses."""
    body = text.replace("_", "")
    lower = body.lower()
    if lower.startswith(("0b", "0o")):
        return None
    if lower.startswith("0x"):
        if "p" not in lower:
            return None
        try:
            return float.fromhex(body)
        except (ValueError, OverflowError):
            return None
    try:
        value = float(body)
    except ValueError:
        return None
    return None if math.isinf(value) else value


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_QUOTE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class GoStringError(ValueError):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message, self.pos = message, pos


def scan_go_string(src: str, start: int) -> tuple[str, int]:
    """The Go interpreted string literal opening at ``src[start]``: (value, end). ``\\x`` and octal
    escapes are bytes, so the whole is decoded as UTF-8 at the end; raises GoStringError."""
    n = len(src)
    buf = bytearray()
    i = start + 1
    while True:
        if i >= n or src[i] == "\n":
            raise GoStringError("unterminated string: expected a closing \"", start)
        c = src[i]
        if c == '"':
            break
        if c != "\\":
            buf += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        e = src[i + 1:i + 2]
        if not e:
            raise GoStringError("unterminated string: expected a closing \"", start)
        if e in _SIMPLE_ESCAPES or e == '"':
            buf += _SIMPLE_ESCAPES.get(e, '"').encode()
            i += 2
        elif e in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = src[i + 2:i + 2 + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise GoStringError(f"invalid \\{e} escape in a string: expected {width} hex digits", i)
            code = int(digits, 16)
            if e == "x":
                buf.append(code)
            elif code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise GoStringError(f"invalid Unicode code point in \\{e} escape", i)
            else:
                buf += chr(code).encode()
            i += 2 + width
        elif e in "01234567":
            digits = src[i + 1:i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                raise GoStringError("invalid octal escape in a string: expected 3 octal digits up to \\377", i)
            buf.append(int(digits, 8))
            i += 4
        else:
            raise GoStringError(f"unknown escape sequence \\{e} in a string", i)
    try:
        return buf.decode("utf-8"), i + 1
    except UnicodeDecodeError:
        raise GoStringError("string is not valid UTF-8 after its escapes are applied", start) from None


def quote_go_string(value: str) -> str:
    """``value`` as a Go interpreted string literal that ``scan_go_string`` reads back."""
    out = ['"']
    for c in value:
        if c in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


class _Lexer:
    def __init__(self, query: str) -> None:
        self.q = query
        self.i = 0
        self.out: list[Token] = []

    def fail(self, message: str, pos: int) -> QuerySyntaxError:
        return QuerySyntaxError(message, pos, self.q)

    def double_quoted(self) -> Token:
        start = self.i
        try:
            value, self.i = scan_go_string(self.q, start)
        except GoStringError as e:
            raise self.fail(e.message, e.pos) from None
        return Token("STRING", self.q[start:self.i], start, value)

    def raw(self) -> Token:
        start = self.i
        end = self.q.find("`", start + 1)
        if end < 0:
            raise self.fail("unterminated raw string: expected a closing `", start)
        self.i = end + 1
        return Token("STRING", self.q[start:self.i], start, self.q[start + 1:end])

    def unit_run(self, start: int, runes: set[str]) -> int:
        """End of the run after ``start`` that Loki tries as a duration or byte size."""
        j = start
        while j < len(self.q) and (self.q[j] in _DIGITS or self.q[j] in runes or self.q[j] == "."):
            j += 1
        return j

    def number(self) -> Token:
        start = self.i
        end, error = scan_go_number(self.q, start)
        if error is not None:
            raise self.fail(error, start)
        j = self.unit_run(end, _DURATION_RUNES)
        if j > end and (ns := parse_duration(self.q[start:j])) is not None:
            self.i = j
            return Token("DURATION", self.q[start:j], start, ns)
        j = self.unit_run(end, _BYTES_RUNES)
        if j > end and (size := parse_bytes(self.q[start:j])) is not None:
            self.i = j
            return Token("BYTES", self.q[start:j], start, size)
        text = self.q[start:end]
        value = go_parse_float(text)
        if value is None:
            overflow = "x" not in text.lower() and "o" not in text.lower() and "b" not in text.lower()
            raise self.fail(f"number {text} is out of range" if overflow else
                            f"unable to parse literal {text} as a float", start)
        self.i = end
        return Token("NUMBER", text, start, value)

    def minus(self) -> Token:
        """``--strict``-style flags, negative durations (Go syntax only, as in Loki), or ``-``."""
        q, start = self.q, self.i
        if q[start + 1:start + 2] == "-":
            j = start + 2
            while j < len(q) and (q[j].isalpha() or q[j] == "-"):
                j += 1
            if q[start:j] in FLAGS:
                self.i = j
                return Token("FLAG", q[start:j], start, q[start:j])
            if j > start + 2:
                raise self.fail(f"unknown flag {q[start:j]}; logfmt takes --strict and --keep-empty", start)
        j = self.unit_run(start + 1, _DURATION_RUNES)
        if j > start + 1 and (ns := parse_go_duration(q[start:j])) is not None:
            self.i = j
            return Token("DURATION", q[start:j], start, ns)
        self.i += 1
        return Token("-", "-", start)

    def range_(self) -> Token:
        start = self.i
        end = self.q.find("]", start)
        if end < 0:
            raise self.fail("missing closing ']' of the range", start)
        body = self.q[start + 1:end]
        ns = parse_prom_duration(body)
        if ns is None:
            hint = (" (Grafana's variables such as $__auto and $__interval must be substituted before the query "
                    "is sent)" if "$" in body else "; write it like [5m], [1h30m] or [250ms]")
            raise self.fail(f"invalid range duration {body!r}{hint}", start)
        self.i = end + 1
        return Token("RANGE", self.q[start:self.i], start, ns)

    def is_call(self, j: int) -> bool:
        """Whether ``(``, or ``by (``/``without (``, follows position ``j`` (Loki's ``isFunction``)."""
        q, n = self.q, len(self.q)
        while j < n and q[j] in _SPACE:
            j += 1
        if q[j:j + 1] == "(":
            return True
        m = LABEL_RE.match(q, j)
        if m is None or m.group().lower() not in ("by", "without"):
            return False
        j = m.end()
        while j < n and q[j] in _SPACE:
            j += 1
        return q[j:j + 1] == "("

    def word(self) -> Token:
        start = self.i
        m = LABEL_RE.match(self.q, start)
        assert m is not None
        self.i = m.end()
        text, lower = m.group(), m.group().lower()
        if lower in FUNCTIONS and self.is_call(self.i):
            return Token("FUNC", lower, start)
        if lower in KEYWORDS:
            return Token("KEYWORD", lower, start)
        return Token("IDENT", text, start, text)

    def run(self) -> list[Token]:
        q, n = self.q, len(self.q)
        while self.i < n:
            c = q[self.i]
            if c in _SPACE:
                self.i += 1
            elif c == "#":
                end = q.find("\n", self.i)
                self.i = n if end < 0 else end
            elif c == '"':
                self.out.append(self.double_quoted())
            elif c == "`":
                self.out.append(self.raw())
            elif c in _DIGITS or (c == "." and q[self.i + 1:self.i + 2] in tuple(_DIGITS)):
                self.out.append(self.number())
            elif c == "-":
                self.out.append(self.minus())
            elif c == "[":
                self.out.append(self.range_())
            elif c.isascii() and (c.isalpha() or c == "_"):
                self.out.append(self.word())
            elif q[self.i:self.i + 2] in _TWO_CHAR:
                self.out.append(Token(q[self.i:self.i + 2], q[self.i:self.i + 2], self.i))
                self.i += 2
            elif c in _ONE_CHAR:
                self.out.append(Token(c, c, self.i))
                self.i += 1
            else:
                raise self.fail(f"unexpected character {c!r}", self.i)
        self.out.append(Token("EOF", "", n))
        return self.out


def tokenize(query: str) -> list[Token]:
    """Split ``query`` into tokens; raises QuerySyntaxError on a bad string, number or range."""
    return _Lexer(query).run()
