"""storage/_trigrams.c: the segment footer's trigram bitmaps, against a plain numpy reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import _trigrams, tokens


def _reference(messages: list[str]) -> np.ndarray:
    """What the bitmap means, spelt out: every trigram of the case-folded text, messages back to back."""
    data = tokens.fold(pa.array(messages, pa.string())).to_pylist() if messages else []
    text = "".join(data).encode()
    present = np.zeros(tokens.TRIGRAMS, dtype=bool)
    if len(text) >= 3:
        present[tokens._trigram_ids(text)] = True
    return np.packbits(present)


_MESSAGE = st.text(max_size=30) | st.sampled_from(["GET /api/v1/orders 200", "KELVIN \u212a", "ſtraße", "ÀÉÎ"])


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(_MESSAGE, max_size=40), rows=st.integers(1, 7), cut=st.integers(0, 3))
def test_bitmaps_per_row_group_equal_the_reference(messages: list[str], rows: int, cut: int) -> None:
    arr = pa.array(["x"] * cut + messages, pa.string()).slice(cut)      # offsets not starting at 0
    kv = tokens.metadata(arr, rows)
    starts = list(range(0, len(messages), rows)) or [0]
    index = tokens.SegmentIndex.from_metadata(kv, [min(rows, len(messages) - s) for s in starts])
    assert index is not None
    for g, start in enumerate(starts):
        assert (index.bits[g] == _reference(messages[start:start + rows])).all(), (g, messages)


def test_a_found_substring_always_passes_the_index() -> None:
    messages = ["Connection refused by upstream", "user KELVIN logged in", "ſession closed"]
    bits = tokens.bitmap(pa.array(messages))
    for needle in ("REFUSED", "kelvin", "session", "up"):
        ids = tokens.required(needle)
        assert np.unpackbits(bits)[ids].all(), needle
    assert not np.unpackbits(bits)[tokens.required("timeout")].all()


def test_bad_arguments_are_refused() -> None:
    table = tokens._TRANSLATE
    with pytest.raises(ValueError, match="outside"):
        _trigrams.bitmaps(b"abc", np.array([0, 4], np.int64), table)
    with pytest.raises(ValueError, match="256-byte"):
        _trigrams.bitmaps(b"abc", np.array([0, 3], np.int64), table[:10])
    with pytest.raises(ValueError, match="out of range"):
        _trigrams.bitmaps(b"abc", np.array([0, 3], np.int64), bytes(range(256)))
    assert _trigrams.bitmaps(b"", np.array([0], np.int64), table) == b""
