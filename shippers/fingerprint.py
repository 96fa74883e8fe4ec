"""Which file is which: a hash of its first bytes, not its path or inode.

A renamed file keeps its fingerprint, so it keeps its checkpoint; a new file
written at the same path, or into a reused inode, gets a new one. A file
shorter than the fingerprint size is known by device and inode until it grows.
"""

from __future__ import annotations

import hashlib
import os


def fingerprint(fd: int, size: int, nbytes: int) -> str | None:
    """``fp:<hash>`` of the first ``nbytes`` bytes, or None while the file is shorter."""
    if size < nbytes:
        return None
    head = os.pread(fd, nbytes, 0)
    return None if len(head) < nbytes else "fp:" + _digest(head)


def inode_key(st: os.stat_result) -> str:
    return f"ino:{st.st_dev}:{st.st_ino}"


def head_hash(fd: int, nbytes: int) -> str:
    """Hash of the first ``nbytes`` bytes (of fewer, if the file is shorter now); "" for none."""
    return _digest(os.pread(fd, nbytes, 0)) if nbytes > 0 else ""


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()
