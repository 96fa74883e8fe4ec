"""Reading one file: complete records from an offset, following truncation.

A watcher holds its file open, so a renamed or deleted file is still read to
its end through the same descriptor before it is let go.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from shippers.multiline import LineJoiner, line_starts


@dataclass(frozen=True, slots=True)
class Chunk:
    first_offset: int
    data: bytes
    offsets: np.ndarray          # record boundaries (n+1) within data


class FileWatcher:
    """Tails one file from ``offset``; ``key`` is its checkpoint key, ``source_id`` its identity."""

    def __init__(self, path: str, *, key: str, source_id: str, offset: int, input_index: int,
                 partial_timeout_s: float, joiner: LineJoiner | None = None) -> None:
        self.path = path
        self.key = key
        self.source_id = source_id
        self.offset = offset          # next byte to read
        self.acked = offset           # end of the last acknowledged record
        self.input_index = input_index
        self.partial_timeout_s = partial_timeout_s
        self.joiner = joiner
        self.in_glob = True
        self._waiting_since: float | None = None
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (held for the watcher's life)
        st = os.fstat(self._file.fileno())
        self.inode = f"{st.st_dev}:{st.st_ino}"

    @property
    def fd(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()

    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def truncated(self) -> bool:
        """The file shrank below what we read: copytruncate or a rewrite."""
        return self.size() < self.offset

    def restart(self, key: str, source_id: str) -> None:
        """Read the file again from its start, as a new source."""
        self.key, self.source_id = key, source_id
        self.offset = self.acked = 0
        self._waiting_since = None

    def at_end(self) -> bool:
        return self.offset >= self.size()

    def _waited(self, timeout_s: float) -> bool:
        """True once something has waited ``timeout_s`` (the clock starts at the first call)."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        return now - self._waiting_since >= timeout_s

    def read(self, max_bytes: int) -> Chunk | None:
        """The next run of complete records, at most ``max_bytes`` (one longer line whole)."""
        size = self.size()
        if size <= self.offset:
            return None
        want = min(size - self.offset, max_bytes)
        data = os.pread(self.fd, want, self.offset)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) >= max_bytes:
                cut = len(data)          # a line longer than a frame: ship it as its own piece
            elif not self._waited(self.partial_timeout_s):
                return None
            else:
                cut = len(data)          # waited long enough: ship the partial line
        data = data[:cut]
        starts = line_starts(data)
        if self.joiner is not None:
            starts = self.joiner.record_starts(data, starts)
            # The last record may go on in lines not written yet: hold it back
            # until a new record starts after it, or the rule's timeout passes.
            held = int(starts[-1])
            if held > 0:
                data, starts = data[:held], starts[:-1]
            elif len(data) < max_bytes and not self._waited(self.joiner.timeout_s):
                return None
        self._waiting_since = None
        offsets = np.append(starts, len(data)).astype("<u4")
        chunk = Chunk(self.offset, data, offsets)
        self.offset += len(data)
        return chunk
