"""The per-row-group trigram index that lets a search skip text it cannot match.

For every row group of a segment we keep one bit per possible trigram of the
lower-cased message, over a 37-symbol alphabet (``a-z``, ``0-9`` and one
symbol for every other byte): 37**3 = 50,653 bits, 6.2 KiB before zlib. The
set is exact, not a Bloom filter, so a trigram missing from the bitmap is
missing from every message of the row group; a substring search whose own
trigrams are not all present skips the row group, and a segment with no
candidate row group is not opened at all. Bitmaps are written into the
segment's own Parquet footer (key-value metadata), so they are created,
replaced and deleted with the segment and need no lifecycle of their own.

Case is folded as the search ignores it (RE2's ``(?i)``): ASCII letters in
the translation table, anything else through Arrow's ``utf8_lower`` plus the
two non-ASCII letters that fold to ASCII ones (KELVIN SIGN, LONG S). Query
text goes through the same folding, so a row group is only skipped when no
message in it can match. Trigrams that cross from
one message into the next are recorded too: they can only make the index
less selective, never wrong.
"""

from __future__ import annotations

import base64
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import _trigrams

KEY = b"loglake.trigrams.v1"
ROWS_KEY = b"loglake.trigrams.rows"
SYMBOLS = 37
TRIGRAMS = SYMBOLS ** 3
_BYTES = (TRIGRAMS + 7) // 8

_LUT = np.full(256, SYMBOLS - 1, dtype=np.uint8)
_LUT[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)] = np.arange(26)
_LUT[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)] = np.arange(26)
_LUT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(26, 36)
_TRANSLATE = _LUT.tobytes()


def _trigram_ids(data: bytes) -> np.ndarray:
    """Trigram ids of ``data``; ASCII letters fold to lower case in the table itself. (A query's
    few; a segment's are set by ``_trigrams.bitmaps``, in C, with the same table.)"""
    codes = np.frombuffer(data.translate(_TRANSLATE), np.uint8).astype(np.uint16)
    ids = codes[:-2] * np.uint16(SYMBOLS * SYMBOLS)
    ids += codes[1:-1] * np.uint16(SYMBOLS)
    ids += codes[2:]
    return ids


def _text(messages: pa.Array | pa.ChunkedArray, lowered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The messages' UTF-8 bytes back to back, case folded where not plain ASCII, and where each
    message starts in them (``len(messages) + 1`` int64 offsets)."""
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.chunk(0) if messages.num_chunks == 1 else messages.combine_chunks()
    if len(messages) == 0 or messages.buffers()[2] is None:
        return np.zeros(0, np.uint8), np.zeros(len(messages) + 1, np.int64)
    width = np.int64 if messages.type == pa.large_string() else np.int32
    offsets = np.frombuffer(messages.buffers()[1], width)[messages.offset:messages.offset + len(messages) + 1]
    raw = np.frombuffer(messages.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    if not lowered and raw.size and raw.max() >= 0x80:
        # Some non-ASCII letters match ASCII ones ignoring case (KELVIN SIGN and 'k', LONG S and 's').
        return _text(fold(messages), lowered=True)
    return raw, offsets.astype(np.int64) - offsets[0]


def fold(text: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Lower case, with the non-ASCII letters that case-fold to ASCII ones made ASCII."""
    return pc.replace_substring(pc.utf8_lower(text), "\u017f", "s")


def _bitmaps(messages: pa.Array | pa.ChunkedArray, starts: list[int]) -> bytes:
    """The packed trigram bitmaps of the messages from each of ``starts`` to the next (or the end)."""
    data, offsets = _text(messages)
    bounds = offsets[np.array([*starts, len(messages)], np.int64)]
    return _trigrams.bitmaps(data, bounds, _TRANSLATE)


def bitmap(messages: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The packed trigram bitmap (``_BYTES`` uint8) of some messages."""
    return np.frombuffer(_bitmaps(messages, [0]), np.uint8)


def metadata(messages: pa.ChunkedArray | pa.Array, row_group_rows: int) -> dict[bytes, bytes]:
    """Footer key-values indexing ``messages`` as written in row groups of ``row_group_rows``."""
    n = len(messages)
    starts = list(range(0, n, row_group_rows)) or [0]
    rows = [min(row_group_rows, n - start) for start in starts]
    packed = zlib.compress(_bitmaps(messages, starts), 6)
    return {KEY: base64.b64encode(packed), ROWS_KEY: ",".join(map(str, rows)).encode()}


@dataclass(frozen=True, slots=True)
class SegmentIndex:
    """One segment's row groups: their row counts and packed trigram bitmaps."""

    rows: tuple[int, ...]
    bits: np.ndarray          # (row groups, _BYTES) uint8

    @classmethod
    def from_metadata(cls, kv: dict[bytes, bytes] | None, row_group_rows: list[int]) -> SegmentIndex | None:
        """The index in a footer, or None if absent or not matching the file's row groups."""
        if not kv or KEY not in kv or ROWS_KEY not in kv:
            return None
        try:
            rows = tuple(int(x) for x in kv[ROWS_KEY].split(b","))
            bits = np.frombuffer(zlib.decompress(base64.b64decode(kv[KEY])), np.uint8)
        except (ValueError, zlib.error):
            return None
        if list(rows) != row_group_rows or bits.size != len(rows) * _BYTES:
            return None
        return cls(rows, bits.reshape(len(rows), _BYTES))

    def has_all(self, ids: np.ndarray) -> np.ndarray:
        """Per row group: whether every trigram in ``ids`` occurs in it."""
        if ids.size == 0:
            return np.ones(len(self.rows), dtype=bool)
        masks = (0x80 >> (ids & 7)).astype(np.uint8)
        return ((self.bits[:, ids >> 3] & masks) != 0).all(axis=1)

    def row_ranges(self, keep: np.ndarray) -> list[tuple[int, int]]:
        """Half-open row-number ranges covering the kept row groups, adjacent ones merged."""
        out: list[tuple[int, int]] = []
        start = 0
        for n, k in zip(self.rows, keep.tolist(), strict=True):
            if k:
                if out and out[-1][1] == start:
                    out[-1] = (out[-1][0], start + n)
                else:
                    out.append((start, start + n))
            start += n
        return out


def required(text: str) -> np.ndarray:
    """Trigram ids that any message containing ``text``, ignoring case, must hold."""
    data = fold(pa.array([text], pa.string()))[0].as_py().encode("utf-8")
    if len(data) < 3:
        return np.zeros(0, dtype=np.int64)
    return np.unique(_trigram_ids(data)).astype(np.int64)


V = TypeVar("V")


class FooterCache(Generic[V]):
    """Something read from each segment's footer, by path; segments are immutable, so an entry
    never goes stale."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> tuple[bool, V | None]:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return True, self._items[path]
            return False, None

    def put(self, path: str, value: V) -> None:
        with self._lock:
            self._items[path] = value
            self._items.move_to_end(path)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
