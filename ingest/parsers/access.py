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
from ingest.parsers import Parser, attrs_sql, native_args, strings

# A quoted field with backslash escapes, in the unrolled form RE2 runs fastest.
_QUOTED = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
REGEX = (r'^(\S+) (\S+) (\S+) \[([^\]]+)\] "(?:(\S+) (\S+)(?: ([^"]*))?|[^"]*)" (\d{3}) (\d+|-)'
         rf'(?: {_QUOTED} {_QUOTED})?')
GROUPS = ("ip", "ident", "user", "time", "method", "path", "protocol", "status", "bytes", "referer", "agent")

#: The attributes of an access line: (key, field, whether a lone "-" means absent); an empty
#: value is absent too. The SQL below and the compiled split both make them from this.
ATTRS = (("client.ip", "ip", False), ("http.user", "user", True), ("http.method", "method", False),
         ("http.path", "path", False), ("http.status", "status", False), ("http.bytes", "bytes", True),
         ("http.referer", "referer", True), ("http.user_agent", "agent", True))

_FIELDS = pa.struct([(g, pa.string()) for g in GROUPS])
_ATTR_KEYS = pa.array([key for key, _, _ in ATTRS], pa.string())
_ATTR_SPEC = [(GROUPS.index(field), dash) for _, field, dash in ATTRS]


def native_fields(lines: pa.StringArray, selected: np.ndarray) -> dict[str, pa.Array]:
    """The compiled split of the ``selected`` lines: ``status`` (1 split), the fields ``f`` and
    the attributes ``attrs`` of the lines split."""
    status, fields, (attr_off, keys, val_off, vals) = _native.clf_fields(*native_args(lines, selected), _ATTR_SPEC)
    n, m = len(lines), len(keys)
    st = np.frombuffer(status, np.int8)
    split = pa.array(st != 1)
    arrays = [strings(n, off, data) for off, data in fields]
    entries = pa.StructArray.from_arrays(
        [pa.DictionaryArray.from_arrays(pa.Array.from_buffers(pa.int8(), m, [None, pa.py_buffer(keys)]), _ATTR_KEYS),
         strings(m, val_off, vals)],
        names=["key", "value"])
    attrs = pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), n + 1, [None, pa.py_buffer(attr_off)]),
                                     entries, mask=split)
    return {"status": pa.array(st), "f": pa.StructArray.from_arrays(arrays, fields=list(_FIELDS), mask=split),
            "attrs": attrs}


PARSER = Parser(
    name="clf",
    detect=r"regexp_matches(line, '^\S+ \S+ \S+ \[\d{2}/\w{3}/\d{4}:')",
    steps=(("m", f"CASE WHEN {{p}}_status = 1 THEN {{p}}_f ELSE regexp_extract(line, '{REGEX}', {list(GROUPS)}) END"),),
    ok="{p}_m.status <> ''",
    native=native_fields,
    out={
        "ts_tz": "try_strptime({p}_m.time, '%d/%b/%Y:%H:%M:%S %z')",
        # Only for a time written without its zone (with one, the format above has it).
        "ts_local": "CASE WHEN NOT contains({p}_m.time, ' ') THEN try_strptime({p}_m.time, '%d/%b/%Y:%H:%M:%S') END",
        "lvl": "CASE WHEN {p}_m.status >= '500' THEN 'error' WHEN {p}_m.status >= '400' THEN 'warn' ELSE 'info' END",
        "attrs": "CASE WHEN {p}_status = 1 THEN {p}_attrs ELSE "
                 + attrs_sql([(key, f"nullif({{p}}_m.{field}, '-')" if dash else f"{{p}}_m.{field}")
                              for key, field, dash in ATTRS]) + " END",
    },
)
