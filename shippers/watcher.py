"""Reading one file: complete lines from an offset, following truncation.

A watcher holds its file open, so a renamed or deleted file is still read to
its end through the same descriptor before it is let go.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from loglake.frame import record_offsets


@dataclass(frozen=True, slots=True)
class Chunk:
    first_offset: int
    data: bytes
    offsets: np.ndarray          # record boundaries (n+1) within data


class FileWatcher:
    """Tails one file (identified by device and inode) from ``offset``."""

    def __init__(self, path: str, key: str, birth: int, offset: int, partial_timeout_s: float) -> None:
        self.path = path
        self.key = key
        self.birth = birth
        self.offset = offset          # next byte to read
        self.acked = offset           # end of the last acknowledged record
        self.partial_timeout_s = partial_timeout_s
        self.in_glob = True
        self._partial_since: float | None = None
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (held for the watcher's life)

    def close(self) -> None:
        self._file.close()

    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def truncated(self) -> bool:
        """The file shrank below what we read: copytruncate or a rewrite."""
        return self.size() < self.offset

    def restart(self, birth: int) -> None:
        self.birth, self.offset, self.acked, self._partial_since = birth, 0, 0, None

    def at_end(self) -> bool:
        return self.offset >= self.size()

    def read(self, max_bytes: int) -> Chunk | None:
        """The next run of complete lines, at most ``max_bytes`` (one longer line whole)."""
        size = self.size()
        if size <= self.offset:
            return None
        want = min(size - self.offset, max_bytes)
        data = os.pread(self._file.fileno(), want, self.offset)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) >= max_bytes:
                cut = len(data)          # a line longer than a frame: ship it as its own piece
            elif self._partial_since is None:
                self._partial_since = time.monotonic()
                return None
            elif time.monotonic() - self._partial_since < self.partial_timeout_s:
                return None
            else:
                cut = len(data)          # waited long enough: ship the partial line
        self._partial_since = None
        data = data[:cut]
        offsets = record_offsets(data)
        if offsets[-1] != len(data):     # the piece does not end with a newline
            offsets = np.append(offsets, np.uint32(len(data))).astype("<u4")
        chunk = Chunk(self.offset, data, offsets)
        self.offset += len(data)
        return chunk
