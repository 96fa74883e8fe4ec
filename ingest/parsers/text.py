"""Plain text with a timestamp near the start, and a level word: the fallback for every line.

Covers the ``YYYY-MM-DD HH:MM:SS,mmm LEVEL logger - message`` family (Python
logging, Log4j, Logback, Zookeeper, Hadoop), ISO 8601 with or without a zone,
Go's ``2009/11/10 23:00:00``, HDFS ``081109 203615``, Spark ``17/06/09
20:10:40``, Android logcat ``03-17 16:13:38.811  pid  tid D Tag:``, klog
``I1126 17:55:35.123456``, HealthApp ``20171223-22:15:29:606``, ctime, and a
line that starts with a name and then an ISO timestamp (OpenStack's
``nova-api.log.1... 2017-05-16 00:00:00.008``). The message is the whole line.
A line with neither a timestamp nor a level is stored as it is, flagged
``format=unknown``.
"""

from __future__ import annotations

from ingest.levels import TEXT_LEVEL_WORDS
from ingest.parsers import Parser, attrs_sql, body_sql
from ingest.timestamps import ISO

_WORDS = "|".join(TEXT_LEVEL_WORDS)
_LOWER = "|".join(sorted({w.lower() for w in TEXT_LEVEL_WORDS}))
#: A level word: upper case between separators, or lower case in brackets (``[error]``).
LEVEL_REGEX = rf"(?:^|[\s\[|:(<-])({_WORDS})(?:$|[\s\]|:>),-])|\[({_LOWER})\]"

_OTHER = (r"\d{2}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}"                       # Spark
          r"|\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?"       # Go, nginx error log
          r"|\d{6} \d{6}"                                               # HDFS
          r"|\d{8}-\d{1,2}:\d{1,2}:\d{1,2}[:.]\d{1,3}"                  # HealthApp
          r"|[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}(?:\.\d+)? \d{4}"   # ctime
          r"|\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}(?:\.\d+)?")    # Tomcat
LEADING = (rf"^\[?(?:({ISO})|({_OTHER})"
           r"|(\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3})\s+\d+\s+\d+\s+([VDIWEFA])"    # Android
           r"|([IWEF])(\d{4} \d{2}:\d{2}:\d{2}\.\d{6})"                           # klog
           r"|([A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}))(?:$|[\s\],|:-])")          # BSD, no host
LEADING_GROUPS = ("iso", "other", "android", "android_lvl", "klog_lvl", "klog", "bsd")
EMBEDDED = rf"(?:^|\s)({ISO})(?:$|\s)"

# What the source's learned layout read (columns l_*, from ingest.sources; NULL where it read nothing).
_LEARNED = "l_msg IS NOT NULL"
_MONTH_NAMES = "['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec']"
_YEAR = ("CASE WHEN l_t_year <> '' THEN CAST(l_t_year AS BIGINT) "
         "WHEN l_t_yy <> '' THEN CASE WHEN 2000 + CAST(l_t_yy AS BIGINT) > year(observed_ts) + 1 "
         "THEN 1900 + CAST(l_t_yy AS BIGINT) ELSE 2000 + CAST(l_t_yy AS BIGINT) END ELSE 2000 END")
_HOUR = ("CASE WHEN coalesce(l_t_ampm, '') = '' THEN CAST(trim(l_t_hour) AS BIGINT) "
         "ELSE CAST(trim(l_t_hour) AS BIGINT) % 12 + CASE WHEN lower(l_t_ampm) = 'pm' THEN 12 ELSE 0 END END")
#: The learned wall-clock time (year 2000 when the layout writes none).
_WALL = (f"CASE WHEN {_LEARNED} AND coalesce(l_t_epoch, '') = '' AND coalesce(l_t_day, '') <> '' "
         "THEN try(make_timestamp("
         f"{_YEAR}, CASE WHEN l_t_mon <> '' THEN CAST(l_t_mon AS BIGINT) "
         f"ELSE list_position({_MONTH_NAMES}, lower(left(l_t_monname, 3))) END, CAST(l_t_day AS BIGINT), "
         f"{_HOUR}, CAST(l_t_min AS BIGINT), CAST(l_t_sec AS DOUBLE))) "
         # The fraction to the microsecond, cut (not rounded: .9999999 stays in its second).
         "+ to_microseconds(coalesce(CAST(rpad(left(nullif(l_t_frac, ''), 6), 6, '0') AS BIGINT), 0)) END")
#: Minutes east of UTC of a learned zone.
_OFFSET = ("CASE WHEN l_t_zone IN ('Z', 'UTC', 'GMT') THEN 0 "
           "ELSE (CASE WHEN starts_with(l_t_zone, '-') THEN -1 ELSE 1 END) "
           "* (CAST(substr(replace(l_t_zone, ':', ''), 2, 2) AS BIGINT) * 60 "
           "+ CAST(substr(replace(l_t_zone, ':', ''), 4, 2) AS BIGINT)) END")
_HAS_YEAR = "(l_t_year <> '' OR l_t_yy <> '')"


def _learned_or(learned: str, generic: str) -> str:
    return f"CASE WHEN {_LEARNED} THEN {learned} ELSE {generic} END"


PARSER = Parser(
    name="text",
    detect=None,
    steps=(
        ("m", f"regexp_extract(line, '{LEADING}', {list(LEADING_GROUPS)})"),
        ("iso", "coalesce(nullif({p}_m.iso, ''), "
                f"CASE WHEN {{p}}_m.other = '' AND {{p}}_m.android = '' AND {{p}}_m.klog = '' AND {{p}}_m.bsd = '' "
                f"THEN nullif(regexp_extract(left(line, 160), '{EMBEDDED}', 1), '') END)"),
        ("w", f"regexp_extract(left(line, 160), '{LEVEL_REGEX}', ['upper', 'lower'])"),
        ("lw", _WALL),
    ),
    ok="TRUE",
    out={
        "ts_tz": _learned_or(
            "CASE WHEN l_t_epoch <> '' THEN ll_epoch(try_cast(l_t_epoch AS DOUBLE)) "
            f"WHEN l_t_zone <> '' THEN timezone('UTC', {{p}}_lw) - to_minutes({_OFFSET}) END",
            "ll_ts_tz({p}_iso)"),
        "ts_local": _learned_or(
            f"CASE WHEN l_t_epoch = '' AND l_t_zone = '' AND {_HAS_YEAR} THEN {{p}}_lw END",
            "coalesce(ll_ts_local({p}_iso), ll_ts_local(nullif({p}_m.other, '')))"),
        "ts_noyear": _learned_or(
            f"CASE WHEN l_t_epoch = '' AND NOT {_HAS_YEAR} THEN {{p}}_lw END",
            "coalesce(ll_ts_noyear(nullif({p}_m.android, '')), ll_ts_noyear(nullif({p}_m.klog, '')), "
            "ll_ts_noyear(nullif({p}_m.bsd, '')))"),
        "lvl": _learned_or(
            # A line only the layout's time read (another logger's shape): a level word right after it.
            # (and a layout learned from a line or two, which proves no position: a level word, upper
            # case or in brackets, near the start of what follows the time)
            f"coalesce(nullif(l_lvl, ''), nullif(l_t_lvl, ''), CASE WHEN l_timeonly OR l_few THEN coalesce("
            f"nullif(regexp_extract(left(l_msg, 48), '{LEVEL_REGEX}', 1), ''), "
            f"nullif(regexp_extract(left(l_msg, 48), '{LEVEL_REGEX}', 2), '')) END)",
            "coalesce(nullif({p}_m.android_lvl, ''), nullif({p}_m.klog_lvl, ''), nullif({p}_w.upper, ''), "
            "nullif({p}_w.lower, ''))"),
        "message": _learned_or(body_sql("l_msg"), "line"),
        "host": "nullif(split_part(split_part(l_host, '/', 1), '@', -1), '')",
        "attrs": attrs_sql([("component", "l_comp"), ("pid", "l_pid")]),
    },
)
