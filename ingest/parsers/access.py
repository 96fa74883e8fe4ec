"""Web server access logs: the common and combined log formats (nginx, Apache httpd).

The level comes from the status class: 5xx error, 4xx warn, anything else info.

Lines of the usual shape (no spaces in the request's three parts, no escaped
quotes, nothing after the user agent, no comma in the client field) are split
by compiled code (``_native.clf_fields``); the regex below takes every other
line, and gives the same fields on those. Real servers also write a leading
virtual host (Apache's ``vhost_combined``), an X-Forwarded-For list as the
client (``10.0.0.2, 10.0.0.1 - - [...]``: ``client.ip`` is its first address,
``http.forwarded_for`` the list) or after the user agent (nginx's ``main``
format), and more fields after those (kept in the message, which is the whole
line).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ingest import _native
from ingest.parsers import Parser, attrs_sql, instants, native_args, strings

# A quoted field with backslash escapes, in the unrolled form RE2 runs fastest.
_QUOTED = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
# An address in an X-Forwarded-For list: IPv4 (maybe with a port), IPv6, or "unknown".
_ADDR = r'(?:\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?|\[?[0-9A-Fa-f]*:[0-9A-Fa-f:.]*\]?(?::\d+)?|unknown)'
# From the time on, as every variant writes it; a third quoted field after the user agent that
# holds addresses is nginx's default "main" format's "$http_x_forwarded_for".
_REST = (r'\[([^\]]+)\] "(?:(\S+) (\S+)(?: ([^"]*))?|[^"]*)" (\d{3}) (\d+|-)'
         rf'(?: {_QUOTED} {_QUOTED}(?: "({_ADDR}(?:, ?{_ADDR})*|-)")?)?')
#: The usual shape: client, ident, user (the first group, a virtual host, is always empty here).
REGEX = rf'^()(\S+) (\S+) (\S+) {_REST}'
#: Tried only on lines the usual shape misses: a leading virtual host (Apache's vhost_combined,
#: "%v:%p %h ..."), and a client field that is an X-Forwarded-For list ("10.0.0.2, 10.0.0.1").
WIDE_REGEX = rf'^(?:([^\s,"]+) )?([^\s,"]+(?:, ?[^\s,"]+)*) (\S+) (\S+) {_REST}'
GROUPS = ("vhost", "ip", "ident", "user", "time", "method", "path", "protocol", "status", "bytes", "referer",
          "agent", "forwarded")
#: The fields the compiled split finds (it leaves the others empty).
NATIVE_GROUPS = GROUPS[1:12]

#: The attributes the compiled split makes: (key, field, whether a lone "-" means absent); an
#: empty value is absent too. The SQL below makes the same ones, and from a client field that
#: is an address list (the compiled split leaves those lines to it) and a virtual host, more.
ATTRS = (("client.ip", "ip", False), ("http.user", "user", True), ("http.method", "method", False),
         ("http.path", "path", False), ("http.status", "status", False), ("http.bytes", "bytes", True),
         ("http.referer", "referer", True), ("http.user_agent", "agent", True))

_FIELDS = pa.struct([(g, pa.string()) for g in GROUPS])
_ATTR_KEYS = pa.array([key for key, _, _ in ATTRS], pa.string())
_ATTR_SPEC = [(NATIVE_GROUPS.index(field), dash) for _, field, dash in ATTRS]
# A virtual host with a port: "example.com:443", "[::1]:8443".
_HOST_PORT = r'^(\[[^\]]*\]|[^:\[]*):(\d+)$'


def _attrs_sql() -> str:
    def field(name: str, dash: bool) -> str:
        return f"nullif({{p}}_m.{name}, '-')" if dash else f"{{p}}_m.{name}"
    by_key = {key: field(name, dash) for key, name, dash in ATTRS}
    # The first address of a list is the client that made the request; the list is kept whole.
    by_key["client.ip"] = "split_part({p}_m.ip, ',', 1)"
    pairs = [(key, expr) for key, expr in by_key.items()]
    pairs[1:1] = [
        ("http.forwarded_for", "CASE WHEN contains({p}_m.ip, ',') THEN {p}_m.ip ELSE nullif({p}_m.forwarded, '-') END"),
        ("server.address", f"CASE WHEN {{p}}_m.vhost <> '' THEN coalesce(nullif(regexp_extract({{p}}_m.vhost, "
                           f"'{_HOST_PORT}', 1), ''), {{p}}_m.vhost) END"),
        ("server.port", f"CASE WHEN {{p}}_m.vhost <> '' THEN regexp_extract({{p}}_m.vhost, '{_HOST_PORT}', 2) END"),
    ]
    return attrs_sql(pairs)


def native_fields(lines: pa.StringArray, selected: np.ndarray) -> dict[str, pa.Array]:
    """The compiled split of the ``selected`` lines: ``status`` (1 split), the fields ``f`` and
    the attributes ``attrs`` of the lines split, and ``at``, their time where it is written the
    usual way (what the strptime of ``ts_tz`` makes of it; the SQL reads the others)."""
    status, fields, (attr_off, keys, val_off, vals), at = _native.clf_fields(*native_args(lines, selected),
                                                                            _ATTR_SPEC)
    n, m = len(lines), len(keys)
    st = np.frombuffer(status, np.int8)
    split = pa.array(st != 1)
    empty = strings(n, np.zeros(n + 1, np.int32).tobytes(), b"")
    arrays = [empty, *(strings(n, off, data) for off, data in fields), empty]
    entries = pa.StructArray.from_arrays(
        [pa.DictionaryArray.from_arrays(pa.Array.from_buffers(pa.int8(), m, [None, pa.py_buffer(keys)]), _ATTR_KEYS),
         strings(m, val_off, vals)],
        names=["key", "value"])
    attrs = pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), n + 1, [None, pa.py_buffer(attr_off)]),
                                     entries, mask=split)
    return {"status": pa.array(st), "f": pa.StructArray.from_arrays(arrays, fields=list(_FIELDS), mask=split),
            "attrs": attrs, "at": instants(at)}


PARSER = Parser(
    name="clf",
    # The usual three fields, or (as WIDE_REGEX) a virtual host or an address list before an
    # ident that is "-", as real servers write it, then a CLF date: four words before a "[1" are not enough.
    detect=r"regexp_matches(line, '^(?:\S+ \S+|(?:[^\s,]+ )?[^\s,]+(?:, ?[^\s,]+)* -) \S+ \[\d{2}/\w{3}/\d{4}:')",
    steps=(("n", f"CASE WHEN {{p}}_status = 1 THEN {{p}}_f ELSE regexp_extract(line, '{REGEX}', {list(GROUPS)}) END"),
           ("m", f"CASE WHEN {{p}}_n.status <> '' THEN {{p}}_n "
                 f"ELSE regexp_extract(line, '{WIDE_REGEX}', {list(GROUPS)}) END")),
    ok="{p}_m.status <> ''",
    native=native_fields,
    compiled_steps=(("n", "{p}_f"), ("m", "{p}_n")),
    out={
        # (the compiled split read the usual times: a CASE runs strptime on the rest)
        "ts_tz": "CASE WHEN {p}_at IS NOT NULL THEN {p}_at "
                 "ELSE try_strptime({p}_m.time, ['%d/%b/%Y:%H:%M:%S %z', '%d/%b/%Y:%H:%M:%S.%f %z']) END",
        # Only for a time written without its zone (with one, the format above has it).
        "ts_local": "CASE WHEN NOT contains({p}_m.time, ' ') "
                    "THEN try_strptime({p}_m.time, ['%d/%b/%Y:%H:%M:%S', '%d/%b/%Y:%H:%M:%S.%f']) END",
        "lvl": "CASE WHEN {p}_m.status >= '500' THEN 'error' WHEN {p}_m.status >= '400' THEN 'warn' ELSE 'info' END",
        "attrs": "CASE WHEN {p}_status = 1 THEN {p}_attrs ELSE " + _attrs_sql() + " END",
    },
)
