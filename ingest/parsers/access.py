"""Web server access logs: the common and combined log formats (nginx, Apache httpd).

The level comes from the status class: 5xx error, 4xx warn, anything else info.

Lines of the usual shape (no spaces in the request's three parts, no escaped
quotes, nothing after the user agent) are split by compiled code
(``_native.clf_fields``); the regex below takes every other line, and gives
the same fields on those.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ingest import _native
from ingest.parsers import Parser, attrs_sql

# A quoted field with backslash escapes, in the unrolled form RE2 runs fastest.
_QUOTED = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
REGEX = (r'^(\S+) (\S+) (\S+) \[([^\]]+)\] "(?:(\S+) (\S+)(?: ([^"]*))?|[^"]*)" (\d{3}) (\d+|-)'
         rf'(?: {_QUOTED} {_QUOTED})?')
GROUPS = ("ip", "ident", "user", "time", "method", "path", "protocol", "status", "bytes", "referer", "agent")

_FIELDS = pa.struct([(g, pa.string()) for g in GROUPS])


def native_fields(lines: pa.StringArray, selected: np.ndarray) -> dict[str, pa.Array]:
    """The compiled split of the ``selected`` lines: ``status`` (1 split) and the fields ``f``."""
    status, fields = _native.clf_fields(lines.buffers()[1], lines.buffers()[2], selected.view(np.uint8),
                                        lines.offset, len(lines))
    n = len(lines)
    st = np.frombuffer(status, np.int8)
    arrays = [pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(off), pa.py_buffer(data)])
              for off, data in fields]
    return {"status": pa.array(st), "f": pa.StructArray.from_arrays(arrays, fields=list(_FIELDS),
                                                                    mask=pa.array(st != 1))}


PARSER = Parser(
    name="clf",
    detect=r"regexp_matches(line, '^\S+ \S+ \S+ \[\d')",
    steps=(("m", f"CASE WHEN {{p}}_status = 1 THEN {{p}}_f ELSE regexp_extract(line, '{REGEX}', {list(GROUPS)}) END"),),
    ok="{p}_m.status <> ''",
    native=native_fields,
    out={
        "ts_tz": "try_strptime({p}_m.time, '%d/%b/%Y:%H:%M:%S %z')",
        # Only for a time written without its zone (with one, the format above has it).
        "ts_local": "CASE WHEN NOT contains({p}_m.time, ' ') THEN try_strptime({p}_m.time, '%d/%b/%Y:%H:%M:%S') END",
        "lvl": "CASE WHEN {p}_m.status >= '500' THEN 'error' WHEN {p}_m.status >= '400' THEN 'warn' ELSE 'info' END",
        "attrs": attrs_sql([
            ("client.ip", "{p}_m.ip"),
            ("http.user", "nullif({p}_m.user, '-')"),
            ("http.method", "{p}_m.method"),
            ("http.path", "{p}_m.path"),
            ("http.status", "{p}_m.status"),
            ("http.bytes", "nullif({p}_m.bytes, '-')"),
            ("http.referer", "nullif({p}_m.referer, '-')"),
            ("http.user_agent", "nullif({p}_m.agent, '-')"),
        ]),
    },
)
