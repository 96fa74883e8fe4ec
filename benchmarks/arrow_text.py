"""Vectorised string assembly for the benchmark corpora: whole columns at a time, no loop per line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def decimal(values: np.ndarray) -> pa.Array:
    """Integers to decimal strings."""
    return pc.cast(pa.array(values), pa.string())


def pick(choices: tuple[str, ...], idx: np.ndarray) -> pa.Array:
    """``choices[idx[i]]`` for each i."""
    return pa.array(choices, pa.string()).take(pa.array(idx))


def hex_strings(rng: np.random.Generator, m: int, nbytes: int) -> pa.Array:
    """``m`` random lowercase hex strings of ``2 * nbytes`` characters."""
    raw = np.frombuffer(rng.bytes(m * nbytes), dtype=np.uint8)
    chars = np.empty(raw.size * 2, dtype=np.uint8)
    chars[0::2] = _HEX[raw >> 4]
    chars[1::2] = _HEX[raw & 0xF]
    return pa.array(chars.view(f"S{2 * nbytes}")).cast(pa.string())


def join(*parts: object) -> pa.Array:
    """Concatenate string arrays and literals element-wise."""
    return pc.binary_join_element_wise(*parts, "")
