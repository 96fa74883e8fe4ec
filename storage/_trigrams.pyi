"""Types of the compiled trigram bitmaps in ``_trigrams.c`` (what mypy sees)."""

from typing import Any, TypeAlias

import numpy as np
from _typeshed import ReadableBuffer

# Anything with the buffer protocol; numpy's stubs declare it on ndarray only from Python 3.12.
_Buffer: TypeAlias = ReadableBuffer | np.ndarray[Any, Any]

def bitmaps(data: _Buffer, bounds: _Buffer, table: _Buffer, /) -> bytes:
    """The packed trigram bitmap of each byte range ``data[bounds[g]:bounds[g + 1]]``
    (``bounds``: int64), symbols by the 256-byte ``table``; 6,332 bytes each, back to back."""
