"""Level words to OpenTelemetry severity numbers, and severity numbers to the record's level.

One table covers syslog priorities, Log4j, Python logging, Go/zap, Java
util.logging, Android's and klog's single letters, and the words HTTP status
classes are given (5xx error, 4xx warn). The level is the OpenTelemetry range
the severity falls in: 1-4 trace, 5-8 debug, 9-12 info, 13-16 warn, 17-20
error, 21-24 fatal, 0 unknown.
"""

from __future__ import annotations

#: Lower-case level word (or letter) -> OpenTelemetry severity number.
SEVERITY_OF: dict[str, int] = {
    # trace
    "trace": 1, "finest": 1, "verbose": 1, "v": 1, "finer": 2,
    # debug
    "debug": 5, "dbg": 5, "fine": 5, "d": 5, "config": 7,
    # info
    "info": 9, "information": 9, "informational": 9, "i": 9, "notice": 10, "note": 10, "system": 9,
    # warn
    "warn": 13, "warning": 13, "w": 13,
    # error
    "error": 17, "err": 17, "e": 17, "severe": 17, "dpanic": 19,
    # fatal
    "fatal": 21, "critical": 21, "crit": 21, "f": 21, "a": 21, "assert": 21, "panic": 21,
    "alert": 22, "emerg": 23, "emergency": 23,
}

#: OpenTelemetry's short names of the severity numbers within each range ("warn2" is 14): what
#: pushed OTLP records carry as their level (receive/otlp.py), so their exact severity is kept.
OTEL_SHORT_NAMES: dict[str, int] = {f"{w}{i}": base + i - 1 for w, base in (
    ("trace", 1), ("debug", 5), ("info", 9), ("warn", 13), ("error", 17), ("fatal", 21)) for i in (2, 3, 4)}
SEVERITY_OF.update(OTEL_SHORT_NAMES)

#: Syslog severity (priority mod 8) -> level word.
SYSLOG_SEVERITY: tuple[str, ...] = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

#: Numeric levels in JSON records: pino/bunyan (10-60) and GELF's syslog severities (0-7).
NUMERIC_LEVEL: dict[int, str] = {
    10: "trace", 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal",
    **dict(enumerate(SYSLOG_SEVERITY)),
}

#: Level words that count in plain text only in upper case or in brackets (see parsers/text.py).
TEXT_LEVEL_WORDS: tuple[str, ...] = (
    "TRACE", "DEBUG", "INFO", "NOTICE", "WARN", "WARNING", "ERROR", "ERR", "FATAL", "CRITICAL", "CRIT",
    "SEVERE", "PANIC", "DPANIC", "FINE", "FINER", "FINEST", "CONFIG", "VERBOSE", "EMERG", "ALERT",
)


def level_of(severity: int) -> str:
    """The record's level for an OpenTelemetry severity number."""
    if severity <= 0:
        return "unknown"
    return ("trace", "debug", "info", "warn", "error", "fatal")[min(severity - 1, 23) // 4]


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def severity_sql(word: str) -> str:
    """SQL: the severity number of the level word expression ``word`` (0 when unknown)."""
    cases = " ".join(f"WHEN {_sql_str(k)} THEN {v}" for k, v in SEVERITY_OF.items())
    return f"CAST(CASE lower(trim({word})) {cases} ELSE 0 END AS TINYINT)"


def level_sql(severity: str) -> str:
    """SQL: the level name for the severity number expression ``severity``."""
    return (f"CASE WHEN {severity} <= 0 THEN 'unknown' ELSE "
            f"['trace', 'debug', 'info', 'warn', 'error', 'fatal'][least(({severity} - 1) // 4, 5) + 1] END")


def syslog_word_sql(pri: str) -> str:
    """SQL: the level word of syslog priority expression ``pri`` (NULL when NULL)."""
    words = ", ".join(_sql_str(w) for w in SYSLOG_SEVERITY)
    return f"[{words}][{pri} % 8 + 1]"


def numeric_word_sql(number: str) -> str:
    """SQL: the level word of a numeric JSON level (pino/bunyan or GELF), NULL otherwise."""
    cases = " ".join(f"WHEN {k} THEN {_sql_str(v)}" for k, v in NUMERIC_LEVEL.items())
    return f"CASE {number} {cases} END"
