"""Durable per-file checkpoints: where each file's acknowledged records end.

``Checkpointer`` holds them and makes every change to them; ``CheckpointStore``
is their file on disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType

import orjson

from shippers.fingerprint import head_hash

#: Checkpoints of files let go are kept this long (and at most this many) while compressed files
#: are read: a rotated file may be compressed as late as its next rotation.
RELEASED_KEEP_S = 7 * 86400
RELEASED_KEEP_MAX = 1000


@dataclass(slots=True)
class FileCheckpoint:
    source_id: str     # the identity ingest deduplicates by; fixed for the file's life
    path: str          # last path the file was seen at (informational)
    offset: int        # file offset just past the last acknowledged record
    # Hash of the file's first head_len bytes: all it ever sent under source_id, acknowledged
    # or not, up to the fingerprint size; a file must begin with them to resume this checkpoint.
    head_hash: str = ""
    head_len: int = 0
    # When the file was let go (Unix time; 0 while it is read). Kept a while when compressed
    # files are read, so the .gz a rotated file becomes is known as what was already sent.
    released_at: float = 0.0
    # The partition the file's frames go to (None: not placed yet); -1, as in checkpoints of
    # version 3, for frames keyed to Kafka's hash of the source id.
    partition: int | None = -1


class CheckpointStore:
    """A JSON file of ``{key: FileCheckpoint}`` (key: fingerprint or inode), replaced atomically."""

    VERSION = 4
    #: Versions it reads: 3 is 4 without placed partitions.
    READS = (3, 4)

    def __init__(self, state_dir: Path) -> None:
        self.file = state_dir / "checkpoints.json"
        state_dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, FileCheckpoint]:
        try:
            data = orjson.loads(self.file.read_bytes())
        except FileNotFoundError:
            return {}
        if data.get("version") not in self.READS:
            raise ValueError(f"{self.file}: checkpoint version {data.get('version')} is not one of {self.READS}")
        return {k: FileCheckpoint(**v) for k, v in data.get("files", {}).items()}

    def save(self, files: Mapping[str, FileCheckpoint]) -> None:
        tmp = self.file.with_name(f".{self.file.name}.tmp")
        body = orjson.dumps({"version": self.VERSION, "files": {k: asdict(v) for k, v in files.items()}})
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)
        fd = os.open(self.file.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Checkpointer:
    """A shipper's checkpoints, loaded from ``state_dir``: every change to them is made here, and
    each marks them to be saved by the next :meth:`save`.

    With ``keep_released`` (compressed files are read), the checkpoint of a file let go is kept a
    while, marked released, instead of forgotten: the .gz file it may become is then known."""

    def __init__(self, state_dir: Path, *, keep_released: bool = False,
                 keep_s: float = RELEASED_KEEP_S, keep_max: int = RELEASED_KEEP_MAX) -> None:
        self.store = CheckpointStore(state_dir)
        self._files = self.store.load()
        self.keep_released = keep_released
        self.keep_s = keep_s
        self.keep_max = keep_max
        self._dirty = False
        #: The checkpoints by key, read-only (it follows every change).
        self.view: Mapping[str, FileCheckpoint] = MappingProxyType(self._files)

    @property
    def dirty(self) -> bool:
        """Changed since loaded or last saved."""
        return self._dirty

    def update(self, key: str, checkpoint: FileCheckpoint) -> None:
        """A file read under ``key`` is now at ``checkpoint`` (its first, or a later one)."""
        self._files[key] = checkpoint
        self._dirty = True

    def forget(self, key: str) -> None:
        """Drop ``key``'s checkpoint at once, released or not (it no longer names the file)."""
        if self._files.pop(key, None) is not None:
            self._dirty = True

    def rekey(self, old: str, new: str) -> None:
        """The file known by ``old`` is known by ``new`` from now on, keeping its checkpoint."""
        cp = self._files.pop(old, None)
        if cp is not None:
            self._files[new] = cp
            self._dirty = True

    def release(self, key: str, *, now: float | None = None) -> None:
        """The file under ``key`` was let go: forget its checkpoint, or mark it released (once)."""
        cp = self._files.get(key)
        if cp is None:
            return
        if not self.keep_released:
            del self._files[key]
        elif not cp.released_at:
            self._files[key] = replace(cp, released_at=time.time() if now is None else now)
        else:
            return
        self._dirty = True

    def prune(self, live: Iterable[str]) -> None:
        """Release every checkpoint but those of ``live`` keys (the files found at start)."""
        keep = set(live)
        for key in [k for k in self._files if k not in keep]:
            self.release(key)

    def expire(self, held: Iterable[str], *, now: float | None = None) -> None:
        """Forget released checkpoints older than ``keep_s``, and all but the newest ``keep_max``;
        never those of ``held`` keys (files read again meanwhile)."""
        if not self.keep_released:
            return
        keep = set(held)
        released = sorted(((cp.released_at, k) for k, cp in self._files.items()
                           if cp.released_at and k not in keep), reverse=True)
        cutoff = (time.time() if now is None else now) - self.keep_s
        for i, (at, key) in enumerate(released):
            if at < cutoff or i >= self.keep_max:
                del self._files[key]
                self._dirty = True

    def head_match(self, fd: int, size: int) -> str | None:
        """The key of the checkpoint whose sent head the ``size`` bytes open at ``fd`` begin with
        (the longest): how content too short to fingerprint is known."""
        best: tuple[int, str] | None = None
        hashes: dict[int, str] = {}
        for k, cp in self._files.items():
            if not 0 < cp.head_len <= size or (best is not None and cp.head_len <= best[0]):
                continue
            if cp.head_len not in hashes:
                hashes[cp.head_len] = head_hash(fd, cp.head_len)
            if hashes[cp.head_len] == cp.head_hash:
                best = (cp.head_len, k)
        return None if best is None else best[1]

    def save(self) -> None:
        """Write the checkpoints to disk (atomically, fsynced) if they changed since last written."""
        if self._dirty:
            self.store.save(self._files)
            self._dirty = False
