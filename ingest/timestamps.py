"""Turning timestamp text into instants: SQL pieces shared by every parser.

Parsers hand the final stage up to three things: an instant (``ts_tz``) when
the text carries a zone or is an epoch; a wall-clock time (``ts_local``) to be
read in the configured default zone; and ``ts_noyear`` when the format has no
year (syslog, Android, klog), in which case ``ts_local`` carries the year
2000 (a leap year, so 29 February survives) and the final stage puts in the
observed year, or the year before when that would be more than a day ahead.
Two-digit years are 20yy, or 19yy when that would be in the future.
"""

from __future__ import annotations

#: ISO 8601 / RFC 3339 and the ``YYYY-MM-DD HH:MM:SS,mmm`` family, with an optional zone.
ISO = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?: ?(?:Z|[+-]\d{2}:?\d{2}|UTC|GMT))?"
_ZONED = r"(?:Z|[+-]\d{2}:?\d{2}|UTC|GMT)$"

#: strptime formats tried, in order, for zone-less text that is not ISO.
LOCAL_FORMATS: tuple[str, ...] = (
    "%y/%m/%d %H:%M:%S",                                    # Spark (first: %Y would take "17" as a year)
    "%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S",            # Go's log package, nginx error log
    "%y%m%d %H%M%S",                                        # HDFS
    "%Y%m%d-%H:%M:%S:%g", "%Y%m%d-%H:%M:%S.%g",             # HealthApp
    "%a %b %d %H:%M:%S.%f %Y", "%a %b %d %H:%M:%S %Y",      # ctime, Apache error log
    "%d/%b/%Y:%H:%M:%S",                                     # common log format without its zone
    "%d-%b-%Y %H:%M:%S.%g", "%d-%b-%Y %H:%M:%S",             # Tomcat
)
#: Formats without a year; parsed as year 2000.
NOYEAR_FORMATS: tuple[str, ...] = (
    "%m-%d %H:%M:%S.%g",                                     # Android logcat
    "%m%d %H:%M:%S.%f",                                      # klog / glog (after the level letter)
    "%b %d %H:%M:%S",                                        # BSD syslog
)


def _list(formats: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{f}'" for f in formats) + "]"


def macros() -> list[str]:
    """``CREATE MACRO`` statements for a normalising connection."""
    return [
        # Epoch numbers by magnitude: seconds, milliseconds, microseconds, nanoseconds.
        """CREATE OR REPLACE MACRO ll_epoch(x) AS
           CASE WHEN x IS NULL OR NOT isfinite(x) OR abs(x) >= 9.2e18 THEN NULL
                ELSE make_timestamptz(CAST(CASE WHEN abs(x) < 1e11 THEN x * 1e6 WHEN abs(x) < 1e14 THEN x * 1e3
                                                WHEN abs(x) < 1e17 THEN x ELSE x / 1e3 END AS BIGINT)) END""",
        # Timestamp text with a zone (or an epoch in a string) -> instant.
        f"""CREATE OR REPLACE MACRO ll_ts_tz(s) AS
           CASE WHEN regexp_matches(s, '{_ZONED}')
                     THEN try_cast(CASE WHEN ends_with(s, 'Z') AND NOT contains(s, ',') THEN s
                                        ELSE regexp_replace(regexp_replace(replace(s, ',', '.'), ' ?(?:UTC|GMT)$', 'Z'),
                                                            ' ([+-]\\d)', '\\1') END
                                   AS TIMESTAMPTZ)
                WHEN regexp_full_match(s, '-?\\d+(?:\\.\\d+)?(?:[eE][+-]?\\d+)?')
                     THEN ll_epoch(try_cast(s AS DOUBLE)) END""",
        # Zone-less timestamp text -> wall-clock time.
        f"""CREATE OR REPLACE MACRO ll_ts_local(s) AS
           CASE WHEN regexp_matches(s, '^\\d{{4}}-\\d') THEN try_cast(replace(s, ',', '.') AS TIMESTAMP)
                ELSE try_strptime(s, {_list(LOCAL_FORMATS)}) END""",
        f"""CREATE OR REPLACE MACRO ll_ts_noyear(s) AS
           try_strptime('2000 ' || regexp_replace(s, ' +', ' ', 'g'),
                        {_list(tuple('%Y ' + f for f in NOYEAR_FORMATS))})""",
    ]
