"""The frame: how a shipper hands a run of records from one file to Kafka.

One Kafka message value is one frame (layout in ``docs/design.md``)::

    0   4  magic  b"LLKF"
    4   1  version (1)
    5   1  flags  (bit 0: payload is an lz4 block)
    6   2  meta length M, little-endian
    8   M  meta: a JSON object (source id, path, host, service, byte range, ...)
    8+M    payload: u32 offsets[n+1] little-endian, then data

``data`` is the verbatim byte range ``[first, end)`` of the source file, line
terminators included (so no record is empty); record ``i`` is
``data[offsets[i]:offsets[i+1]]`` and starts at file offset ``first + offsets[i]``. Because the offsets are an Arrow
binary array's offsets buffer, the ingest side turns a frame into an Arrow
array of records without a Python loop per line.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import lz4.block
import numpy as np
import orjson
import pyarrow as pa

MAGIC = b"LLKF"
VERSION = 1
FLAG_LZ4 = 0x01
_PREFIX = struct.Struct("<4sBBH")
#: Largest uncompressed payload a frame may declare (offsets are u32; memory is finite).
MAX_RAW_BYTES = 256 << 20


#: The source ids of requests pushed over HTTP (``receive/records.py``) start with this (no host
#: name has an "@", so no shipper's source id does): each
#: request is a source of its own, remembered by ingest only for ``receive.dedup_window_s``.
PUSHED_SOURCE_PREFIX = "@push:"


class FrameError(ValueError):
    """The bytes are not a frame this version can read."""


@dataclass(frozen=True, slots=True)
class FrameMeta:
    source_id: str          # stable identity of the file (not its path)
    source: str             # the path it was read from
    host: str
    service: str
    tenant: str
    first_offset: int       # file offset of the first record
    end_offset: int         # file offset just past the last record
    observed_us: int        # when the shipper read it (epoch microseconds)
    count: int              # number of records
    #: Labels from the shipper's input (env, extra labels), added to every record's attrs.
    labels: dict[str, str] = field(default_factory=dict)
    #: A line cut at max_line_bytes: the frame holds that one record, and this is
    #: its original length in the file (the byte range covers all of it).
    truncated_from: int = 0
    #: The container runtime wrapping the file's name or place suggests: "" (none), "cri" or
    #: "docker". Only a hint: ingest unwraps a line only if it has that runtime's shape.
    wrapper: str = ""
    #: The zone of the times these lines write without one (the shipper input's); "": not set.
    timezone: str = ""

    def to_json(self, raw_len: int) -> bytes:
        meta = {
            "sid": self.source_id, "src": self.source, "host": self.host,
            "svc": self.service, "tenant": self.tenant, "first": self.first_offset,
            "end": self.end_offset, "obs": self.observed_us, "n": self.count, "raw": raw_len,
        }
        if self.labels:
            meta["labels"] = self.labels
        if self.truncated_from:
            meta["trunc"] = self.truncated_from
        if self.wrapper:
            meta["wrap"] = self.wrapper
        if self.timezone:
            meta["tz"] = self.timezone
        return orjson.dumps(meta)

    def check_range(self, data_len: int) -> None:
        """The byte range must match the data (or, for a truncated line, hold it)."""
        span = self.end_offset - self.first_offset
        if self.truncated_from:
            if self.count != 1 or span != self.truncated_from or data_len > span:
                raise FrameError("a truncated frame holds one record within its original length")
        elif span != data_len:
            raise FrameError("byte range does not match the data length")


@dataclass(frozen=True, slots=True)
class Frame:
    meta: FrameMeta
    #: Records as an Arrow binary array (terminators included), zero-copy over the payload.
    records: pa.BinaryArray


def record_offsets(data: bytes | memoryview) -> np.ndarray:
    """Offsets (n+1, uint32) of the newline-terminated records in ``data``.

    ``data`` must end with a newline; a trailing partial line is the caller's.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 0x0A) + 1
    out = np.empty(len(ends) + 1, dtype="<u4")
    out[0] = 0
    out[1:] = ends
    return out


def encode_frame(meta: FrameMeta, data: bytes, offsets: np.ndarray, *, compress: bool = True) -> bytes:
    """Build a frame from a verbatim byte range and its record offsets."""
    if len(offsets) != meta.count + 1 or int(offsets[-1]) != len(data):
        raise FrameError("offsets do not match the data")
    meta.check_range(len(data))
    raw = offsets.astype("<u4", copy=False).tobytes() + bytes(data)
    payload = lz4.block.compress(raw, store_size=False) if compress else raw
    head = meta.to_json(len(raw))
    return _PREFIX.pack(MAGIC, VERSION, FLAG_LZ4 if compress else 0, len(head)) + head + payload


#: Offsets, counts and lengths stay below this: they are stored as signed 64-bit numbers, with room.
MAX_WHOLE = 1 << 62
#: Microseconds at the end of year 9999: later times have no calendar date.
MAX_OBSERVED_US = 253_402_300_800_000_000

_NO_DEFAULT = object()


def _text(m: dict[str, object], key: str, default: object = _NO_DEFAULT) -> str:
    v = m.get(key, default)
    if v is _NO_DEFAULT:
        raise KeyError(key)
    if not isinstance(v, str):      # never str() a nested value: that recursion can be made deep
        raise TypeError(f"{key} is not text")
    return v


def _whole(m: dict[str, object], key: str, limit: int = MAX_WHOLE, default: object = _NO_DEFAULT) -> int:
    v = m.get(key, default)
    if v is _NO_DEFAULT:
        raise KeyError(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{key} is not a whole number")
    if not 0 <= v < limit:
        raise ValueError(f"{key}={v} is outside 0..{limit - 1}")
    return v


def decode_frame(value: bytes, max_raw_bytes: int = MAX_RAW_BYTES) -> Frame:
    """Parse a frame; raises :class:`FrameError` on anything malformed.

    A frame declaring more than ``max_raw_bytes`` uncompressed is refused before
    anything is decompressed: lz4 reaches 255:1, so a small message could otherwise
    claim hundreds of megabytes.
    """
    if len(value) < _PREFIX.size:
        raise FrameError("too short for a frame header")
    magic, version, flags, mlen = _PREFIX.unpack_from(value)
    if magic != MAGIC:
        raise FrameError("bad magic: not a loglake frame")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}")
    try:
        m = orjson.loads(value[_PREFIX.size:_PREFIX.size + mlen])
        labels = m.get("labels") or {}
        if not isinstance(labels, dict):
            raise TypeError("labels is not an object")
        meta = FrameMeta(
            source_id=_text(m, "sid"), source=_text(m, "src"), host=_text(m, "host"),
            service=_text(m, "svc"), tenant=_text(m, "tenant"), first_offset=_whole(m, "first"),
            end_offset=_whole(m, "end"), observed_us=_whole(m, "obs", MAX_OBSERVED_US), count=_whole(m, "n"),
            labels={str(k): _text(labels, k) for k in labels},
            truncated_from=_whole(m, "trunc", default=0), wrapper=_text(m, "wrap", default=""),
            timezone=_text(m, "tz", default=""),
        )
        raw_len = _whole(m, "raw")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise FrameError(f"bad frame meta: {e}") from None
    if meta.count < 0:
        raise FrameError(f"negative record count {meta.count}")
    limit = min(max_raw_bytes, MAX_RAW_BYTES)
    if not 0 <= raw_len <= limit:
        raise FrameError(f"payload length {raw_len} outside 0..{limit}")
    n = meta.count
    off_len = 4 * (n + 1)
    data_len = raw_len - off_len
    if data_len < 0:
        raise FrameError("payload length does not match the header")
    # Every record holds at least one byte (its line terminator; a cut line its head), so a
    # frame holds at most one record per byte of data, and one declaring more is refused
    # before anything is decompressed: 8 MiB of zero offsets, 33 kB once compressed, would
    # otherwise be two million empty rows.
    if n > data_len:
        raise FrameError(f"{n} records in {data_len} bytes of data: an empty record")
    body = value[_PREFIX.size + mlen:]
    if flags & FLAG_LZ4:
        try:
            raw = lz4.block.decompress(body, uncompressed_size=raw_len)
        except (lz4.block.LZ4BlockError, OverflowError, MemoryError) as e:
            raise FrameError(f"bad lz4 payload: {e}") from None
    else:
        raw = bytes(body)
    if len(raw) != raw_len:
        raise FrameError("payload length does not match the header")
    offsets = np.frombuffer(raw, dtype="<u4", count=n + 1)
    if offsets[0] != 0 or int(offsets[-1]) != data_len:
        raise FrameError("record offsets do not span the data")
    if n:
        steps = np.diff(offsets.astype(np.int64))
        if bool(np.any(steps < 0)):
            raise FrameError("record offsets are not monotonic within the data")
        if bool(np.any(steps == 0)):
            raise FrameError(f"an empty record at index {int(np.argmax(steps == 0))}: each holds at least one byte")
    meta.check_range(data_len)
    if meta.wrapper not in ("", "cri", "docker"):
        raise FrameError(f"unknown wrapper {meta.wrapper!r}")
    buf = pa.py_buffer(raw)
    records = pa.Array.from_buffers(
        pa.binary(), n, [None, buf.slice(0, off_len), buf.slice(off_len)]
    )
    return Frame(meta=meta, records=records)
