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


def now_us() -> int:
    return time.time_ns() // 1000


def parse_duration_us(text: str) -> int:
    """``15m``, ``1h30m``, ``250ms`` -> microseconds."""
    text = text.strip()
    pos, total = 0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS_US[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise BadTimeRange(f"invalid duration {text!r}: expected e.g. 30s, 15m, 1h, 7d")
    return total


def parse_time_us(text: str, *, now: int | None = None) -> int:
    """One point in time, as epoch microseconds."""
    t = text.strip()
    now = now_us() if now is None else now
    if m := _RELATIVE.fullmatch(t):
        if not m.group(1):
            return now
        delta = parse_duration_us(m.group(2))
        return now - delta if m.group(1) == "-" else now + delta
    if m := _EPOCH_NUMBER.fullmatch(t):
        return _epoch_us(m.group(1), m.group(2) or "")
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadTimeRange(f"invalid time {text!r}: expected RFC 3339, epoch seconds or now-15m") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH          # integer arithmetic: exact to the microsecond
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


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
    start_us = parse_time_us(start, now=now) if start else end_us - parse_duration_us(default_span)
    if end_us < start_us:
        raise BadTimeRange("end is before start")
    return start_us, end_us


def format_us(us: int) -> str:
    """RFC 3339 with microseconds and Z."""
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
