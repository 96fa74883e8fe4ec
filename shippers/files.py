"""The files a shipper reads: found by its inputs' globs, each read by a watcher from its checkpoint.

Which file is which (its fingerprint, or its inode while it is short), where a
file found again resumes, when one is let go, and rotated ``.gz`` files read
through a decompressed copy. Checkpoints change only through the
:class:`~shippers.checkpoint.Checkpointer`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from loglake.core.config import ShipperConfig
from shippers.checkpoint import Checkpointer, FileCheckpoint
from shippers.compressed import CompressedFileError, decompressed
from shippers.discovery import discover
from shippers.fingerprint import fingerprint, head_hash, inode_key
from shippers.inputs import Input, wrapper_for
from shippers.multiline import LineJoiner
from shippers.watcher import FileWatcher

log = logging.getLogger("loglake.shipper")

#: Compressed files read at once, each through a decompressed copy on disk.
MAX_OPEN_COMPRESSED = 2


@dataclass(frozen=True, slots=True)
class _Compressed:
    """What is known of a .gz file at a given size and mtime: read (or a copy of a file being read)
    under checkpoint ``key``, or unreadable then (``key`` None) until it changes."""

    size: int
    mtime_ns: int
    key: str | None


class TailedFiles:
    """The watchers of the files ``inputs`` find, by device:inode, and their checkpoints."""

    def __init__(self, sc: ShipperConfig, inputs: list[Input], checkpoints: Checkpointer) -> None:
        self.sc = sc
        self.inputs = inputs
        self.checkpoints = checkpoints
        self.watchers: dict[str, FileWatcher] = {}     # by device:inode
        #: .gz files not being read now, by device:inode of the .gz file.
        self._compressed: dict[str, _Compressed] = {}
        #: A .gz file waits for one being read to finish (a scan after that reads it).
        self.compressed_waiting = False
        self._shared_warned: set[str] = set()

    def _new_source_id(self, key: str) -> str:
        return f"{self.sc.host}:{key}:{time.time_ns()}"

    def _identify(self, fd: int, st: os.stat_result) -> str:
        return fingerprint(fd, st.st_size, self.sc.fingerprint_bytes) or inode_key(st)

    def _held(self) -> set[str]:
        """Checkpoint keys of files read now, or known as read (.gz files still there)."""
        return {w.key for w in self.watchers.values()} | {c.key for c in self._compressed.values() if c.key}

    # -- finding files -----------------------------------------------------------------

    def scan(self, *, first: bool = False) -> None:
        """Pick up new files; notice renames out of the globs."""
        seen: dict[str, int] = {}          # device:inode -> the input that has it
        self.compressed_waiting = False
        for index, inp in enumerate(self.inputs):
            exclude = list(inp.cfg.exclude) + ([] if inp.cfg.include_compressed else ["*.gz"])
            for path in discover(inp.cfg.include, exclude):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                inode = f"{st.st_dev}:{st.st_ino}"
                if inode in seen:
                    self._warn_shared(path, seen[inode], index)
                    continue                 # an earlier input has it
                seen[inode] = index
                w = self.watchers.get(inode)
                if w is not None:
                    w.path, w.in_glob = path, True
                    continue
                if path.endswith(".gz"):     # only when the input reads compressed files
                    self._watch_compressed(path, st, index, first)
                else:
                    self._watch(path, index, first)
        for inode, w in self.watchers.items():
            w.in_glob = inode in seen
        for inode in [i for i in self._compressed if i not in seen]:
            gone = self._compressed.pop(inode)
            if gone.key is not None:
                self._retire(gone.key)
        self.checkpoints.expire(self._held())

    def prune_checkpoints(self) -> None:
        """Forget checkpoints of files that are gone (after the first scan); while compressed files
        are read, keep them a while instead, since they may come back compressed."""
        self.checkpoints.prune(self._held())

    def _warn_shared(self, path: str, owner: int, other: int) -> None:
        """A file several inputs match is read with the first one's settings only: say so, once."""
        if path in self._shared_warned or len(self._shared_warned) > 10_000:
            return
        self._shared_warned.add(path)
        log.warning("file matched by more than one input; the later input's settings are ignored for it",
                    extra={"path": path, "input": _input_name(self.sc, owner), "ignored": _input_name(self.sc, other)})

    def _watch_compressed(self, path: str, st: os.stat_result, index: int, first: bool) -> None:
        """Read a .gz file through its decompressed copy, unless what it holds was read already."""
        inode = f"{st.st_dev}:{st.st_ino}"
        known = self._compressed.get(inode)
        if known is not None and (known.size, known.mtime_ns) == (st.st_size, st.st_mtime_ns):
            return                           # decided at this size: read, a copy, or unreadable
        if sum(w.compressed is not None for w in self.watchers.values()) >= MAX_OPEN_COMPRESSED:
            self.compressed_waiting = True   # each open one holds a decompressed copy on disk
            return
        try:
            fd = decompressed(path, self.sc.state_dir)
        except CompressedFileError as e:     # most often still being written by the rotation
            self._compressed[inode] = _Compressed(st.st_size, st.st_mtime_ns, None)
            log.warning("compressed file not readable (yet); tried again when it changes",
                        extra={"path": path, "reason": str(e)})
            return
        self._watch(path, index, first, fd=fd, compressed=(inode, st.st_size, st.st_mtime_ns))

    def _watch(self, path: str, index: int, first: bool, *, fd: int | None = None,
               compressed: tuple[str, int, int] | None = None) -> None:
        """Start reading ``path`` (or, for a .gz file, ``fd``, its decompressed copy, with
        ``compressed`` the .gz file's device:inode, size and mtime)."""
        inp = self.inputs[index]
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)    # one descriptor: identified, checked, then read
            except FileNotFoundError:
                return
        st = os.fstat(fd)
        key = self._identify(fd, st)
        known = self.checkpoints.view
        if compressed is None:
            cp = known.get(key) or known.get(inode_key(st))
        else:
            # The copy's inode means nothing: a short file is known by the bytes sent of it.
            if key.startswith("ino:"):
                key = self.checkpoints.head_match(fd, st.st_size) or f"gz:{compressed[0]}"
            cp = known.get(key)
        if any(w.key == key for w in self.watchers.values()):
            os.close(fd)
            if compressed is not None:       # the file it was compressed from, still being read
                self._compressed[compressed[0]] = _Compressed(compressed[1], compressed[2], key)
            return                           # a copy of a file we already read (same first bytes)
        # The checkpoint is this file's only if the file still begins with every byte that
        # was sent under its source id (up to the fingerprint size): a file deleted and made
        # again in the same inode while we were down must not inherit the old source id, or
        # ingest drops its first lines as the old file's, already stored.
        if cp is not None and max(cp.offset, cp.head_len) <= st.st_size \
                and head_hash(fd, cp.head_len) == cp.head_hash:
            source_id, offset, sent_end, partition = cp.source_id, cp.offset, cp.head_len, cp.partition
            if compressed is None:
                self.checkpoints.forget(inode_key(st))
        else:
            source_id, sent_end, partition = self._new_source_id(key), 0, None
            offset = st.st_size if (inp.cfg.start_at == "end" and first and cp is None) else 0
        wrapper = wrapper_for(path, inp.cfg.format)
        joiner = (LineJoiner.for_wrapper(wrapper, self.sc.max_frame_bytes - 1, self.sc.partial_line_timeout_s)
                  if wrapper else inp.joiner)
        w = FileWatcher(path, key=key, source_id=source_id, offset=offset, input_index=index,
                        partial_timeout_s=self.sc.partial_line_timeout_s, joiner=joiner,
                        max_line_bytes=self.sc.max_line_bytes, fd=fd, sent_end=sent_end, partition=partition)
        w.wrapper = wrapper
        if compressed is not None:
            w.inode, w.compressed = compressed[0], compressed[1:]   # known by the .gz file's inode
        self.watchers[w.inode] = w
        self.checkpoints.update(key, _checkpoint(w, self.sc.fingerprint_bytes))
        log.info("watching file", extra={"path": path, "offset": offset, "key": key})

    # -- while reading -----------------------------------------------------------------

    def refresh(self, w: FileWatcher) -> None:
        """Before reading more of ``w``: start it over if it was truncated, give it its fingerprint
        once it is long enough."""
        if w.truncated():
            log.warning("file truncated; reading it again from the start", extra={"path": w.path})
            self.checkpoints.forget(w.key)
            key = self._identify(w.fd, os.fstat(w.fd))
            w.restart(key, self._new_source_id(key))
            self.checkpoints.update(w.key, _checkpoint(w, self.sc.fingerprint_bytes))
        self._rekey(w)

    def _rekey(self, w: FileWatcher) -> None:
        """A file known by its inode grew long enough for a fingerprint."""
        if not w.key.startswith("ino:"):
            return
        fp = fingerprint(w.fd, w.size(), self.sc.fingerprint_bytes)
        if fp is None:
            return
        old, w.key = w.key, fp
        self.checkpoints.rekey(old, fp)

    def claim(self, w: FileWatcher, end: int) -> bool:
        """Note that bytes up to ``end`` will be sent under ``w.source_id``; True if the
        checkpoint's head grew and must be saved before they are."""
        if end <= w.sent_end:
            return False
        head_grows = w.sent_end < self.sc.fingerprint_bytes
        w.sent_end = end
        if head_grows:
            self.checkpoints.update(w.key, _checkpoint(w, self.sc.fingerprint_bytes))
        return head_grows

    def placed(self, w: FileWatcher, partition: int) -> None:
        """``w``'s frames go to ``partition`` from now on (saved before any is sent)."""
        w.partition = partition
        if w.key in self.checkpoints.view and self.watchers.get(w.inode) is w:
            self.checkpoints.update(w.key, _checkpoint(w, self.sc.fingerprint_bytes))

    def acked(self, w: FileWatcher, source_id: str, end: int) -> None:
        """The broker acknowledged ``w``'s records up to ``end``, sent under ``source_id``."""
        if source_id != w.source_id:
            return                 # sent before the file was truncated; its offsets mean nothing now
        w.acked = end
        if w.key in self.checkpoints.view and self.watchers.get(w.inode) is w:
            self.checkpoints.update(w.key, _checkpoint(w, self.sc.fingerprint_bytes))

    # -- letting go --------------------------------------------------------------------

    def release_drained(self) -> None:
        """Let go of files read and acknowledged to their end that left the globs (and of the
        decompressed copies of .gz files read to their end)."""
        for inode, w in list(self.watchers.items()):
            if (w.in_glob and w.compressed is None) or not w.at_end() or w.acked != w.offset:
                continue
            if w.compressed is not None and w.in_glob:
                # Read to its end: the decompressed copy goes, the checkpoint stays while the .gz does.
                self._compressed[inode] = _Compressed(*w.compressed, w.key)
                w.close()
                del self.watchers[inode]
                log.info("compressed file read", extra={"path": w.path, "offset": w.offset})
            elif not w.in_glob:
                w.close()
                del self.watchers[inode]
                self._retire(w.key)
                log.info("released file", extra={"path": w.path, "offset": w.offset})

    def _retire(self, key: str) -> None:
        """A file was let go: its checkpoint is released, unless another watcher reads under it."""
        if not any(w.key == key for w in self.watchers.values()):
            self.checkpoints.release(key)

    def close(self) -> None:
        for w in self.watchers.values():
            w.close()


def _checkpoint(w: FileWatcher, fingerprint_bytes: int) -> FileCheckpoint:
    # The hash of the bytes sent, not just acknowledged (up to the fingerprint size),
    # tells a resumed file from a new one that took its inode while we were down: the
    # broker may have stored frames whose acks were lost, and a new file matching only
    # the acknowledged bytes (none, at offset 0) would have those offsets deduplicated away.
    n = min(w.sent_end, fingerprint_bytes)
    return FileCheckpoint(w.source_id, w.path, w.acked, w.head_hash(n), n, partition=w.partition)


def _input_name(sc: ShipperConfig, index: int) -> str:
    return f"shipper.inputs.{index}" if index < len(sc.inputs) else "shipper"
