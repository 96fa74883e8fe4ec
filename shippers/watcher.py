"""Reading one file: complete records from an offset, following truncation.

A watcher holds its file open, so a renamed or deleted file is still read to
its end through the same descriptor before it is let go.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from shippers.fingerprint import head_hash
from shippers.multiline import LineJoiner, line_starts


@dataclass(frozen=True, slots=True)
class Chunk:
    first_offset: int
    data: bytes
    offsets: np.ndarray          # record boundaries (n+1) within data
    truncated_from: int = 0      # a single line cut short: its original length

    @property
    def end_offset(self) -> int:
        return self.first_offset + (self.truncated_from or len(self.data))


class FileWatcher:
    """Tails one file from ``offset``; ``key`` is its checkpoint key, ``source_id`` its identity."""

    def __init__(self, path: str, *, key: str, source_id: str, offset: int, input_index: int,
                 partial_timeout_s: float, joiner: LineJoiner | None = None,
                 max_line_bytes: int = 1 << 20, fd: int | None = None, sent_end: int = 0,
                 partition: int | None = None) -> None:
        self.path = path
        self.key = key
        self.source_id = source_id
        #: The partition its frames go to (shippers/placement.py): None until placed; -1 for a
        #: file whose frames are keyed to Kafka's hash (checkpointed before files were placed).
        self.partition = partition
        self.offset = offset          # next byte to read
        self.acked = offset           # end of the last acknowledged record
        # End of everything sent (or skipped) under this source id: the broker may hold
        # records up to here even if their acks never came back, so the checkpoint's
        # head hash must cover it, or a different file could inherit the source id and
        # have its first lines dropped by ingest as already stored.
        self.sent_end = max(offset, sent_end)
        self.input_index = input_index
        self.partial_timeout_s = partial_timeout_s
        self.joiner = joiner
        self.max_line_bytes = max_line_bytes
        self.wrapper = ""                  # the container runtime's line format, if any
        #: For a .gz file read through its decompressed copy: the .gz file's (size, mtime_ns).
        self.compressed: tuple[int, int] | None = None
        self.in_glob = True
        self._long: tuple[int, bytes] | None = None    # an over-long line: its start and kept head
        self._scan = 0                                  # how far its end has been looked for
        self._waiting_since: float | None = None
        self._head: tuple[int, str] = (0, "")           # (bytes, hash) of the file's beginning
        # Held for the watcher's life; an already open descriptor is adopted.
        self._file = open(path if fd is None else fd, "rb", buffering=0)  # noqa: SIM115
        st = os.fstat(self._file.fileno())
        self.inode = f"{st.st_dev}:{st.st_ino}"

    @property
    def fd(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()

    def head_hash(self, nbytes: int) -> str:
        """Hash of the first ``nbytes`` bytes; they never change, so it is read once per length."""
        if self._head[0] != nbytes:
            self._head = (nbytes, head_hash(self.fd, nbytes))
        return self._head[1]

    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def truncated(self) -> bool:
        """The file shrank below what we read: copytruncate or a rewrite."""
        return self.size() < self.offset

    def restart(self, key: str, source_id: str) -> None:
        """Read the file again from its start, as a new source."""
        self.key, self.source_id = key, source_id
        self.partition = None                       # a new source is placed anew
        self.offset = self.acked = self.sent_end = 0
        self._waiting_since = None
        self._long = None
        self._head = (0, "")

    def rewind(self) -> None:
        """Forget what was read but not acknowledged (it will be read again)."""
        self.offset = self.acked
        self._waiting_since = None
        self._long = None

    def unread(self) -> int:
        """Bytes of the file past what was read of it."""
        return max(0, self.size() - self.offset)

    def at_end(self) -> bool:
        return self.offset >= self.size()

    def _waited(self, timeout_s: float) -> bool:
        """True once something has waited ``timeout_s`` (the clock starts at the first call)."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        return now - self._waiting_since >= timeout_s

    def read(self, max_bytes: int) -> Chunk | None:
        """The next run of complete records, at most ``max_bytes``; an over-long line alone, cut."""
        limit = min(self.max_line_bytes, max_bytes - 1)
        if self._long is not None:
            return self._read_long(max_bytes)
        size = self.size()
        if size <= self.offset:
            return None
        want = min(size - self.offset, max_bytes)
        data = os.pread(self.fd, want, self.offset)
        first_newline = data.find(b"\n")
        if first_newline > limit or (first_newline < 0 and len(data) > limit):
            # Look for its end from its newline if this read holds it, else past the read.
            self._long = (self.offset, data[:limit])
            self._scan = self.offset + (first_newline if first_newline >= 0 else len(data))
            return self._read_long(max_bytes)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if not self._waited(self.partial_timeout_s):
                return None
            cut = len(data)              # waited long enough: ship the partial line
        data = data[:cut]
        starts = line_starts(data)
        lengths = np.diff(np.append(starts, len(data)))
        over = np.flatnonzero(lengths > limit + 1)
        if len(over):                    # stop before an over-long line; it goes alone, next
            data, starts = data[:int(starts[over[0]])], starts[:int(over[0])]
        if self.joiner is not None and len(data):
            starts, complete = self.joiner.split(data, starts)
            # The last record may go on in lines not written yet: hold it back
            # until a new record starts after it, or the rule's timeout passes.
            held = int(starts[-1])
            if not complete and held > 0:
                data, starts = data[:held], starts[:-1]
            elif not complete and len(data) < max_bytes and not len(over) \
                    and not self._waited(self.joiner.timeout_s):
                return None
        self._waiting_since = None
        offsets = np.append(starts, len(data)).astype("<u4")
        chunk = Chunk(self.offset, data, offsets)
        self.offset += len(data)
        return chunk

    def _read_long(self, max_bytes: int) -> Chunk | None:
        """Find the end of an over-long line without holding it; ship its head, flagged."""
        assert self._long is not None
        start, head = self._long
        size = self.size()
        end = None
        while self._scan < size:
            data = os.pread(self.fd, min(max_bytes, size - self._scan), self._scan)
            newline = data.find(b"\n")
            if newline >= 0:
                end = self._scan + newline + 1
                break
            self._scan += len(data)
        if end is None:
            if not self._waited(self.partial_timeout_s):
                return None
            end = size                   # never terminated: ship what there is
            body = head
        else:
            body = head + b"\n"
        self._long = None
        self._waiting_since = None
        chunk = Chunk(start, body, np.array([0, len(body)], dtype="<u4"), truncated_from=end - start)
        self.offset = end
        return chunk
