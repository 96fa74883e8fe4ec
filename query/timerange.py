"""Reading ``start``/``end``: RFC 3339, epoch numbers, ``now`` and ``now-15m``."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from query.errors import BadTimeRange

_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000,
             "d": 86_400_000_000, "w": 7 * 86_400_000_000}
_DURATION = re.compile(r"(\d+)(us|ms|s|m|h|d|w)")
_RELATIVE = re.compile(r"now(?:\s*([+-])\s*((?:\d+(?:us|ms|s|m|h|d|w))+))?")


#: The times a datetime can hold (years 1 to 9999): what is stored, compared and printed stays in it.
MIN_US = -62_135_596_800_000_000
MAX_US = 253_402_300_799_999_999
#: Digits a number in a time or duration may have: far past any real one, far below Python's
#: int-conversion limit (4,300 digits), which would otherwise be an unhandled error.
_MAX_DIGITS = 30


def now_us() -> int:
    return time.time_ns() // 1000


def _bounded(us: int, text: str) -> int:
    if not MIN_US <= us <= MAX_US:
        raise BadTimeRange(f"time {text[:60]!r} is outside the years 1 to 9999")
    return us


def parse_duration_us(text: str) -> int:
    """``15m``, ``1h30m``, ``250ms`` -> microseconds."""
    text = text.strip()
    pos, total = 0, 0
    # Anchored at each position, not finditer: that would rescan a long run of digits from every
    # one of its characters (quadratic, holding the GIL).
    while m := _DURATION.match(text, pos):
        if len(m.group(1)) > _MAX_DIGITS:
            break
        total += int(m.group(1)) * _UNITS_US[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise BadTimeRange(f"invalid duration {text[:60]!r}: expected e.g. 30s, 15m, 1h, 7d")
    if total > MAX_US - MIN_US:
        raise BadTimeRange(f"duration {text[:60]!r} is longer than the years 1 to 9999")
    return total


def parse_time_us(text: str, *, now: int | None = None) -> int:
    """One point in time, as epoch microseconds."""
    t = text.strip()
    now = now_us() if now is None else now
    if m := _RELATIVE.fullmatch(t):
        if not m.group(1):
            return now
        delta = parse_duration_us(m.group(2))
        return _bounded(now - delta if m.group(1) == "-" else now + delta, text)
    if m := _EPOCH_NUMBER.fullmatch(t):
        if len(m.group(1)) > _MAX_DIGITS:
            raise BadTimeRange(f"time {text[:60]!r} is outside the years 1 to 9999")
        return _bounded(_epoch_us(m.group(1), (m.group(2) or "")[:_MAX_DIGITS]), text)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadTimeRange(f"invalid time {text[:60]!r}: expected RFC 3339, epoch seconds or now-15m") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        since = dt - _EPOCH          # integer arithmetic: exact to the microsecond
    except OverflowError:            # 0001-01-01 in a zone east of UTC is before year 1
        raise BadTimeRange(f"time {text[:60]!r} is outside the years 1 to 9999") from None
    # The subtraction can succeed and still land before 0001-01-01 UTC (0001-01-01T00:00+14:00).
    return _bounded((since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds, text)


_EPOCH_NUMBER = re.compile(r"(\d+)(?:\.(\d+))?")


def _epoch_us(whole: str, frac: str) -> int:
    """Epoch seconds, ms, us or ns (by magnitude of the integer part), exactly, truncated to us."""
    digits = len(whole.lstrip("0")) or 1
    # < 1e11 seconds, < 1e14 ms, < 1e17 us, else ns: the magnitude says the unit.
    shift = 6 if digits <= 11 else 3 if digits <= 14 else 0 if digits <= 17 else -3
    if shift >= 0:
        return int(whole) * 10 ** shift + int((frac + "0" * shift)[:shift] or 0)
    return int(whole) // 10 ** -shift


def parse_range(start: str | None, end: str | None, *, default_span: str = "1h",
                now: int | None = None) -> tuple[int, int]:
    """``[start, end)`` in epoch microseconds; default the last ``default_span``."""
    now = now_us() if now is None else now
    end_us = parse_time_us(end, now=now) if end else now
    start_us = parse_time_us(start, now=now) if start else \
        _bounded(end_us - parse_duration_us(default_span), f"{end} - {default_span}")
    if end_us < start_us:
        raise BadTimeRange("end is before start")
    return start_us, end_us


def format_us(us: int) -> str:
    """RFC 3339 with microseconds and Z (a four-digit year, as RFC 3339 and DuckDB's strftime write it)."""
    t = _EPOCH + timedelta(microseconds=us)
    return f"{t.year:04d}" + t.strftime("-%m-%dT%H:%M:%S.%fZ")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
