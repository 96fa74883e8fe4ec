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
from ingest.parsers import Parser
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

PARSER = Parser(
    name="text",
    detect=None,
    steps=(
        ("m", f"regexp_extract(line, '{LEADING}', {list(LEADING_GROUPS)})"),
        ("iso", "coalesce(nullif({p}_m.iso, ''), "
                f"CASE WHEN {{p}}_m.other = '' AND {{p}}_m.android = '' AND {{p}}_m.klog = '' AND {{p}}_m.bsd = '' "
                f"THEN nullif(regexp_extract(left(line, 160), '{EMBEDDED}', 1), '') END)"),
        ("w", f"regexp_extract(left(line, 160), '{LEVEL_REGEX}', ['upper', 'lower'])"),
    ),
    ok="TRUE",
    out={
        "ts_tz": "ll_ts_tz({p}_iso)",
        "ts_local": "coalesce(ll_ts_local({p}_iso), ll_ts_local(nullif({p}_m.other, '')))",
        "ts_noyear": "coalesce(ll_ts_noyear(nullif({p}_m.android, '')), ll_ts_noyear(nullif({p}_m.klog, '')), "
                     "ll_ts_noyear(nullif({p}_m.bsd, '')))",
        "lvl": "coalesce(nullif({p}_m.android_lvl, ''), nullif({p}_m.klog_lvl, ''), nullif({p}_w.upper, ''), "
               "nullif({p}_w.lower, ''))",
    },
)
