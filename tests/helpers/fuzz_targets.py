"""Fuzz targets for ingest: the frame decoder and the normaliser, as plain functions.

``tests/test_fuzz_ingest.py`` calls them from hypothesis, and runs them under
atheris (coverage-guided, libFuzzer) in a subprocess through :func:`main`::

    python -c "$BOOTSTRAP" frame|line [libFuzzer flags] [corpus dir]
    python -m tests.helpers.fuzz_targets frame|line [libFuzzer flags] [corpus dir]     # the same, by hand

Each ``check_*`` function states the property: it returns quietly when the
product behaved (a result consistent with the input, or the documented error),
and raises ``AssertionError`` — or lets the escaping exception through — when not.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import lz4.block
import pyarrow as pa

from ingest.batch import RecordRun, raw_table
from ingest.normalise import FORMATS, Normaliser, ParseSettings, normalise_safely
from loglake.core.frame import (
    FLAG_LZ4,
    MAX_RAW_BYTES,
    Frame,
    FrameError,
    FrameMeta,
    decode_frame,
    encode_frame,
    record_offsets,
)
from storage.schema import LEVELS, RECORD_SCHEMA

# == frames ==========================================================================

_PREFIX = struct.Struct("<4sBBH")
WRAPPERS = ("", "cri", "docker")


def check_frame(value: bytes) -> Frame | None:
    """``decode_frame(value)``: a frame consistent with its meta, or ``FrameError``; nothing else.

    Returns the frame (None when it was refused) so callers can look further.
    """
    try:
        frame = decode_frame(value)
    except FrameError:
        return None
    check_frame_consistent(frame)
    return frame


def check_frame_consistent(frame: Frame) -> None:
    """What a decoded frame promises the worker (see ``loglake/frame.py``)."""
    meta = frame.meta
    assert isinstance(meta, FrameMeta)
    for name in ("source_id", "source", "host", "service", "tenant", "wrapper"):
        assert isinstance(getattr(meta, name), str), name
    for name in ("first_offset", "end_offset", "observed_us", "count", "truncated_from"):
        assert type(getattr(meta, name)) is int, name
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.labels.items())
    assert meta.wrapper in WRAPPERS
    assert meta.count >= 0
    records = frame.records
    assert records.type == pa.binary()
    assert len(records) == meta.count
    records.validate(full=True)          # offsets monotonic and inside the data buffer
    data_len = sum(len(r) for r in records.to_pylist())
    span = meta.end_offset - meta.first_offset
    if meta.truncated_from:
        assert meta.count == 1 and span == meta.truncated_from and data_len <= span
    else:
        assert span == data_len


@dataclass(frozen=True)
class FrameParts:
    """A frame cut into its fields, so a mutation can lie about one of them."""

    magic: bytes
    version: int
    flags: int
    meta: bytes
    payload: bytes

    @staticmethod
    def split(value: bytes) -> FrameParts | None:
        if len(value) < _PREFIX.size:
            return None
        magic, version, flags, mlen = _PREFIX.unpack_from(value)
        return FrameParts(magic, version, flags, value[8:8 + mlen], value[8 + mlen:])

    def join(self, *, mlen: int | None = None) -> bytes:
        m = len(self.meta) if mlen is None else mlen
        return _PREFIX.pack(self.magic, self.version & 0xFF, self.flags & 0xFF, m & 0xFFFF) + self.meta + self.payload

    def meta_dict(self) -> dict[str, Any] | None:
        try:
            m = json.loads(self.meta)
        except ValueError:
            return None
        return m if isinstance(m, dict) else None

    def with_meta(self, meta: dict[str, Any] | bytes) -> FrameParts:
        # The stdlib encoder, not orjson: it writes integers of any size and lone surrogates (as escapes).
        head = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        return FrameParts(self.magic, self.version, self.flags, head, self.payload)


def boundaries(value: bytes) -> list[int]:
    """Offsets where a frame's fields meet: header fields, meta, offsets array, records."""
    out = [0, 1, 4, 5, 6, 7, 8, len(value)]
    parts = FrameParts.split(value)
    if parts is not None:
        meta_end = 8 + len(parts.meta)
        out += [meta_end, meta_end // 2 + 4]
        m = parts.meta_dict()
        n = m.get("n") if m else None
        if isinstance(n, int) and 0 <= n < 10_000 and not parts.flags & FLAG_LZ4:
            out += [meta_end + 4 * i for i in range(n + 2)]           # each offset, then the data start
            data = meta_end + 4 * (n + 1)
            if data <= len(value):
                out += [data + i for i, b in enumerate(value[data:]) if b == 0x0A]   # each record's end
    return sorted({b for b in out if 0 <= b <= len(value)})


#: A mutation: (operation name, position or field, argument). Built by hypothesis or a seeded Random.
Mutation = tuple[str, int, Any]
MUTATIONS = ("flip", "set", "insert", "delete", "truncate", "mlen", "flags", "version", "meta", "field",
             "raw", "bomb", "offsets")
META_KEYS = ("sid", "src", "host", "svc", "tenant", "first", "end", "obs", "n", "raw", "labels", "trunc", "wrap")


def mutate_frame(value: bytes, mutations: Iterable[Mutation]) -> bytes:
    """Apply ``mutations`` in order; positions wrap around the current length."""
    for op, pos, arg in mutations:
        value = _mutate_once(value, op, pos, arg)
    return value


def _mutate_once(value: bytes, op: str, pos: int, arg: Any) -> bytes:
    n = len(value)
    if op == "flip":
        if not n:
            return value
        i = pos % n
        return value[:i] + bytes([value[i] ^ (1 << (int(arg) % 8))]) + value[i + 1:]
    if op == "set":
        if not n:
            return value
        i = pos % n
        return value[:i] + bytes([int(arg) & 0xFF]) + value[i + 1:]
    if op == "insert":
        i = pos % (n + 1)
        return value[:i] + bytes(arg) + value[i:]
    if op == "delete":
        if not n:
            return value
        i = pos % n
        return value[:i] + value[i + max(1, int(arg)):]
    if op == "truncate":
        # At a field boundary, or one byte either side of it.
        b = boundaries(value)
        cut = b[pos % len(b)] + (int(arg) % 3) - 1
        return value[:max(0, cut)]
    parts = FrameParts.split(value)
    if parts is None:
        return value
    if op == "mlen":                        # the header's meta length lies
        return parts.join(mlen=int(arg))
    if op == "flags":
        return FrameParts(parts.magic, parts.version, int(arg), parts.meta, parts.payload).join()
    if op == "version":
        return FrameParts(parts.magic, int(arg), parts.flags, parts.meta, parts.payload).join()
    if op == "meta":                        # the whole meta replaced by odd JSON (or non-JSON)
        return parts.with_meta(arg if isinstance(arg, bytes) else json.dumps(arg).encode()).join()
    m = parts.meta_dict()
    if op == "offsets":                     # one u32 of the uncompressed offsets array rewritten
        if parts.flags & FLAG_LZ4 or len(parts.payload) < 4:
            return value
        i = 4 * (pos % (len(parts.payload) // 4))
        payload = parts.payload[:i] + struct.pack("<I", int(arg) & 0xFFFFFFFF) + parts.payload[i + 4:]
        return FrameParts(parts.magic, parts.version, parts.flags, parts.meta, payload).join()
    if m is None:
        return value
    if op == "field":                       # one meta field set to an odd value (or removed)
        key = META_KEYS[pos % len(META_KEYS)]
        if arg is DELETE:
            m.pop(key, None)
        else:
            m[key] = arg
        return parts.with_meta(m).join()
    if op == "raw":                         # the declared uncompressed size lies
        m["raw"] = int(arg)
        return parts.with_meta(m).join()
    if op == "bomb":                        # a real lz4 block of zeros that claims (and has) a big size
        size = int(arg) % (MAX_RAW_BYTES + 2)
        m["raw"] = size
        return FrameParts(parts.magic, parts.version, parts.flags | FLAG_LZ4, parts.with_meta(m).meta,
                          lz4.block.compress(bytes(size), store_size=False)).join()
    raise ValueError(f"unknown mutation {op!r}")


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: A ``field`` mutation's argument that removes the key instead of setting it.
DELETE = _Delete()


def make_frame(lines: Sequence[bytes], *, compress: bool = True, first: int = 0, tenant: str = "default",
               source_id: str = "fuzz:1:1", labels: dict[str, str] | None = None, wrapper: str = "",
               observed_us: int = 1_717_243_200_000_000, truncated_from: int = 0) -> bytes:
    """A valid frame of ``lines`` (each gets a newline), as a shipper would send it."""
    data = b"".join(line + b"\n" for line in lines)
    end = first + (truncated_from or len(data))
    meta = FrameMeta(source_id=source_id, source="/var/log/fuzz.log", host="fuzzhost", service="fuzz",
                     tenant=tenant, first_offset=first, end_offset=end, observed_us=observed_us,
                     count=len(lines), labels=labels or {}, truncated_from=truncated_from, wrapper=wrapper)
    return encode_frame(meta, data, record_offsets(data), compress=compress)


def seed_frames() -> list[bytes]:
    """Valid frames of every shape the decoder distinguishes: the fuzzers' starting points."""
    lines = [b"2024-03-04 05:06:07,123 INFO a", b'{"msg":"b"}', b"", b"\xff\xfe"]
    return [
        make_frame([]),
        make_frame([], compress=False),
        make_frame(lines),
        make_frame(lines, compress=False),
        make_frame([b"x" * 50], truncated_from=5000),
        make_frame(lines, labels={"env": "prod", "k": "v"}, wrapper="cri", compress=False),
        make_frame([b"2024-01-01T00:00:00Z stdout F hi"] * 20, wrapper="cri"),
    ]


# == lines through the normaliser ====================================================

#: The observed time of every fuzzed record (after every dated sample line).
OBSERVED_US = 1_717_243_200_000_000          # 2024-06-01T12:00:00Z
#: A user pattern, so the ``pattern0`` format is fuzzed too (from tests/test_parsers.py).
PATTERN = r"^(?P<level>[A-Z]+)\|(?P<ts>[^|]+)\|(?P<code>\d*)\|(?P<message>.*)$"
#: Every (format, wrapper) a source can be configured with: each configured format
#: unwrapped, plus auto-detection under each container wrapper and an unknown name.
COMBOS: tuple[tuple[str, str], ...] = (
    *((fmt, "") for fmt in ("", *sorted(FORMATS), "pattern0", "no-such-format")),
    ("", "cri"), ("", "docker"), ("json", "docker"), ("logfmt", "cri"),
)

#: Real-looking lines per format (shapes from tests/test_parsers.py), to mutate.
SAMPLE_LINES: tuple[str, ...] = (
    '{"level":30,"time":1709528767123,"pid":4242,"hostname":"web-1","req":{"method":"GET","url":"/a"},"msg":"ok"}',
    '{"level":"warn","ts":1709528767.25,"msg":"cache","service":"catalog","shards":[1,4],"traceId":"0af7",'
    '"spanId":"b7"}',
    '{"version":"1.1","host":"mail-2","short_message":"q","timestamp":1709528767.5,"level":3,"_queue":"out"}',
    'time=2024-03-04T05:06:07.123Z level=warn msg="slow query on \\"orders\\" table" db=pg-main took=1.5s',
    'logger=sqlstore t=2024-03-04T05:06:07.5+01:00 level=info msg="Connecting to DB" dbtype=sqlite3',
    '203.0.113.9 - carol [04/Mar/2024:05:06:07 +0100] "GET /reports/q1.pdf HTTP/1.1" 200 48213',
    '198.51.100.23 - - [04/Mar/2024:05:06:07 -0500] "POST /c?s=2 HTTP/2.0" 302 0 "https://r.example/" "Mozilla/5.0"',
    "[Mon Mar 04 05:06:07 2024] [error] [client 192.0.2.10] File does not exist: /var/www/favicon.ico",
    "[Mon Mar 04 05:06:07.123456 2024] [core:error] [pid 2841:tid 139872] [client 192.0.2.10:51234] AH00124",
    "<34>Mar  4 05:06:07 bastion-1 su[812]: 'su root' failed for alice on /dev/pts/3",
    "Mar 14 05:06:07 web01 sshd[4242]: Accepted publickey for deploy from 10.1.2.3 port 52144 ssh2",
    "<30>2024-03-04T05:06:07.123456+01:00 web01 systemd[1]: Started Daily apt upgrade and clean.",
    '<165>1 2024-03-04T05:06:07.003+02:00 app-7.example.com billing 4711 INV42 [ex@32473 iut="3"] charge failed',
    "2024-03-04 05:06:07,123 ERROR [http-nio-8080-exec-3] c.e.shop.OrderController - order 991 failed",
    "03-04 05:06:07.811  1702  2395 D WifiStateMachine: supplicant state COMPLETED",
    "I0304 05:06:07.123456    1234 main.go:42] started",
    "20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579",
    "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865049064139660",
    '2024-01-01T00:00:00.000000000Z stderr F {"level":"error","msg":"json in a pod"}',
    '{"log":"2024-03-04 05:06:07 WARN low memory\\n","stream":"stderr","time":"2024-03-04T05:06:08Z"}',
    "ERROR|2024-03-04T05:06:07Z|500|boom",
    "just some words, no time and no level",
)


_normaliser: Normaliser | None = None


def normaliser() -> Normaliser:
    """One normaliser per process (configured as a worker with one user pattern)."""
    global _normaliser
    if _normaliser is None:
        _normaliser = Normaliser(ParseSettings(patterns=(PATTERN,)))
    return _normaliser


def _meta(wrapper: str, count: int) -> FrameMeta:
    return FrameMeta(source_id="fuzz", source="/var/log/fuzz.log", host="fuzzhost", service="fuzz",
                     tenant="default", first_offset=0, end_offset=0, observed_us=OBSERVED_US, count=count,
                     wrapper=wrapper)


@dataclass
class Normalised:
    """A batch's outcome: what was fed in, the rows, and the rows set aside (index, error)."""

    raw: pa.Table
    records: pa.Table
    failed: list[tuple[int, str]]


def normalise_records(n: Normaliser, records: Sequence[bytes], combos: Sequence[tuple[str, str]]) -> Normalised:
    """Every record under every (format, wrapper), the way the worker does it: raw_table, then normalise_safely."""
    runs = [RecordRun(_meta(wrapper, len(records)), pa.array(list(records), pa.binary()), fmt)
            for fmt, wrapper in combos]
    raw = raw_table(runs)
    records_out, failed = normalise_safely(n, raw)
    return Normalised(raw, records_out, failed)


def check_normalised(out: Normalised) -> None:
    """Every input row is a record or a reported failure, in order, and the records are storable."""
    total = out.raw.num_rows
    assert out.records.num_rows + len(out.failed) == total, (out.records.num_rows, len(out.failed), total)
    assert out.records.schema == RECORD_SCHEMA
    failed = [i for i, _ in out.failed]
    assert failed == sorted(set(failed)) and all(0 <= i < total for i in failed)
    assert all(isinstance(err, str) and err for _, err in out.failed)
    for i in failed:
        # The worker turns a failed row back into Python to build its dead letter.
        out.raw.slice(i, 1).to_pylist()
    kept = [i for i in range(total) if i not in set(failed)]
    lines = out.raw.column("line").to_pylist()
    wrappers = out.raw.column("wrapper").to_pylist()
    formats = out.raw.column("format").to_pylist()
    observed = datetime.fromtimestamp(OBSERVED_US / 1e6, UTC)
    for i, row in zip(kept, out.records.to_pylist(), strict=True):
        assert isinstance(row["message"], str), row
        assert row["level"] in LEVELS, row
        assert row["observed_ts"] == observed
        # A parsed time is believed only within the window; the worker files segments by it.
        assert datetime(1900, 1, 1, tzinfo=UTC) <= row["ts"] <= datetime(2024, 6, 8, 12, tzinfo=UTC), row
        attrs = dict(row["attrs"] or [])
        if attrs.get("format") == "unknown" and wrappers[i] == "" and formats[i] in ("", "text", "no-such-format"):
            # Nothing understood it: stored whole (unless it looked like a container line and was unwrapped).
            assert row["message"] == lines[i] or _looks_wrapped(lines[i]), (lines[i], row)


_CRI = re.compile(r"^\d{4}-\d{2}-\d{2}T\S+ (?:stdout|stderr) [PF] ", re.ASCII)


def _looks_wrapped(line: str) -> bool:
    """A line the normaliser unwraps as a container runtime's even when no wrapper is configured."""
    return bool(_CRI.match(line)) or line.startswith('{"log":')


#: Lines per atheris input: a statement costs ~0.1 s whatever its size, so one input carries several.
LINES_PER_INPUT = 16


def check_lines(data: bytes) -> None:
    """Atheris' line target: the input's lines (at most ``LINES_PER_INPUT``), each a single record,
    under every configured format in one batch."""
    lines = data.split(b"\n", LINES_PER_INPUT - 1)
    check_normalised(normalise_records(normaliser(), lines, COMBOS))


# == atheris =========================================================================

TARGETS: dict[str, Callable[[bytes], object]] = {"frame": check_frame, "line": check_lines}


def seeds(target: str) -> list[bytes]:
    """The starting corpus of a target."""
    if target == "frame":
        return seed_frames()
    lines = [line.encode() for line in SAMPLE_LINES]
    return [*lines, b"\n".join(lines[:11]), b"\n".join(lines[11:]), b"", b"\xff\xfe\x00", b'{"a":"\\ud800"}']


def main(argv: list[str]) -> None:
    """``argv[1]`` names the target; the rest is for libFuzzer. Imports must already be instrumented."""
    import atheris

    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


#: What the subprocess runs: instrument the product's packages as they are imported, then fuzz.
BOOTSTRAP = """\
import sys, atheris
with atheris.instrument_imports(include=["loglake", "ingest", "storage"]):
    import tests.helpers.fuzz_targets as targets
targets.main(sys.argv)
"""

if __name__ == "__main__":  # pragma: no cover - by hand: python -m tests.helpers.fuzz_targets frame -max_total_time=60
    # This module is already imported, uninstrumented: start over in the bootstrap, which instruments first.
    os.execv(sys.executable, [sys.executable, "-c", BOOTSTRAP, *sys.argv[1:]])
