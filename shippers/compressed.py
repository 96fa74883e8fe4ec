"""Rotated files compressed with gzip: read through a decompressed copy.

A ``.gz`` file is decompressed into an unlinked temporary file in the state
directory, and that copy is tailed like any file: its fingerprint is taken
from the decompressed bytes, so a rotated file that was already read before
it was compressed is recognised as the same file and resumes its checkpoint.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from pathlib import Path


class CompressedFileError(Exception):
    """A ``.gz`` file cannot be read (yet): still being written, or not gzip at all."""


def decompressed(path: str, state_dir: Path) -> int:
    """A read-only descriptor of ``path``'s decompressed content, in a file no name refers to."""
    fd, tmp = tempfile.mkstemp(prefix=".gz-", dir=state_dir)
    os.unlink(tmp)            # gone when the descriptor is closed, even after a crash
    try:
        with gzip.open(path, "rb") as src, open(fd, "wb", closefd=False) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (EOFError, OSError, zlib.error) as e:     # BadGzipFile is an OSError; so is a full disk
        os.close(fd)
        raise CompressedFileError(f"{type(e).__name__}: {e}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd
