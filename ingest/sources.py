"""What ingest knows about each text source: its learned layout, and how well it reads.

A source is a (service, source path or stream) pair. Its layout is learned
(:func:`ingest.layouts.learn`) from its first lines, learned again as more of
them arrive (a layout from three lines is a guess; from two hundred it is
not), and again when it stops matching, and is otherwise kept, so one
source's rows are cut the same way batch after batch. Applying a layout is
one RE2 pass (``pyarrow.compute.extract_regex``) over the source's lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.layouts import (
    CONTINUATION,
    FIELD_PARTS,
    MIN_LINES_FOR_COLUMNS,
    TIME_PARTS,
    SourceLayout,
    learn,
    time_pattern,
)

#: Lines kept per source to learn from.
SAMPLE_LINES = 200
#: A source is learned again when its sample has grown to each of these sizes...
RELEARN_AT = (8, 50, SAMPLE_LINES)
#: ...or when fewer than this share of a batch's lines (of at least MIN_BATCH) read with its layout.
RELEARN_BELOW = 0.5
MIN_BATCH = 20
#: Columns :meth:`SourceBook.columns` returns, each named ``l_<part>``.
PARTS: tuple[str, ...] = (*TIME_PARTS, *FIELD_PARTS)
#: Between the tenant, service and source of a source's key (a byte no name holds).
KEY_SEPARATOR = "\x1f"
#: The type of the times carried from one batch to the next (``l_before``).
TS_TYPE = pa.timestamp("us", tz="UTC")


@dataclass
class SourceState:
    """One source's layout and counts."""

    layout: SourceLayout | None = None
    sample: list[str] = field(default_factory=list)
    #: Sample size the layout was learned from.
    learned_from: int = 0
    learned_at: float = 0.0
    #: Lines seen; read by the whole layout; by its time alone; by neither.
    lines: int = 0
    matched: int = 0
    time_only: int = 0
    unmatched: int = 0
    #: Lines of the last batch the whole layout read; its time read; that continue a record.
    matched_batch: int = 0
    read_batch: int = 0
    continued_batch: int = 0
    #: The time read from the source's last line that had one (None if that time was not believed):
    #: what a continuation line at the start of its next batch takes. One field per source, next to
    #: the sample of lines the state keeps anyway: it adds no entries of its own. Only in memory, as
    #: the layout is: a restarted worker starts without it, and such lines then get the observed time.
    last_ts: datetime | None = None


#: Sources a book keeps. Past it, the one whose lines came longest ago is forgotten (and learned
#: again if it writes again): each holds a sample of up to SAMPLE_LINES lines, and files named by
#: date or pod make new sources for as long as a worker runs.
MAX_SOURCES = 10_000


def source_key(tenant: str, service: str, source: str) -> str:
    """The key a :class:`SourceBook` files a source under (the normaliser builds the same per line)."""
    return KEY_SEPARATOR.join((tenant, service, source))


class SourceBook:
    """Learned layouts per source, applied to batches of text lines."""

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        #: In the order their lines last came, the oldest first.
        self.sources: dict[str, SourceState] = {}
        self.max_sources = max_sources

    def __iter__(self) -> Iterator[tuple[str, SourceState]]:
        return iter(self.sources.items())

    def columns(self, lines: pa.Array, keys: pa.Array, selected: np.ndarray) -> dict[str, pa.Array]:
        """Per line, the parts its source's layout reads (``l_<part>``; NULL where it has none or none read),
        ``l_layout``, the name of its source's time layout (NULL where it has none), ``l_timeonly``
        (true where only the layout's time read the line: its header is another shape), and
        ``l_before``, the time its source's last line in earlier batches had (:meth:`carry`).

        ``keys`` names each line's source; only the ``selected`` lines are read.
        """
        n = len(lines)
        rows = np.flatnonzero(selected)
        if rows.size == 0:
            return {}
        encoded = pc.dictionary_encode(keys.take(pa.array(rows))).combine_chunks() \
            if isinstance(keys, pa.ChunkedArray) else pc.dictionary_encode(keys.take(pa.array(rows)))
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        names = encoded.dictionary.to_pylist()
        order: list[np.ndarray] = []
        parts: dict[str, list[pa.Array]] = {p: [] for p in PARTS}
        layouts: list[pa.Array] = []
        timeonly: list[pa.Array] = []
        few: list[pa.Array] = []
        before: list[pa.Array] = []
        for code, name in enumerate(names):
            at = rows[codes == code]
            state = self._touch(name)
            text = lines.take(pa.array(at))
            self._learn(state, text)
            if state.layout is None:
                state.lines += len(at)
                state.unmatched += len(at)
                continue
            got = self._read(state, text)
            if len(at) >= MIN_BATCH and state.read_batch < RELEARN_BELOW * (len(at) - state.continued_batch):
                # The source now writes differently: learn it again from these lines.
                state.sample = text.slice(0, SAMPLE_LINES).to_pylist()
                state.sample = [s for s in state.sample if s is not None]
                self._relearn(state)
                if state.layout is not None:
                    got = self._read(state, text)
            order.append(at)
            for p in PARTS:
                parts[p].append(got[p])
            layouts.append(pa.array([state.layout.time.name] * len(at), pa.string()))
            timeonly.append(got["timeonly"])
            few.append(pa.array(np.full(len(at), state.learned_from < MIN_LINES_FOR_COLUMNS)))
            before.append(pa.repeat(pa.scalar(state.last_ts, TS_TYPE), len(at)))
        if not order:
            return {}
        where = np.concatenate(order)
        inverse = np.full(n, -1, dtype=np.int64)
        inverse[where] = np.arange(where.size)
        index = pa.array(inverse, mask=inverse < 0)
        out = {f"l_{p}": pc.take(pa.concat_arrays(parts[p]), index) for p in PARTS}
        out["l_layout"] = pc.take(pa.concat_arrays(layouts), index)
        out["l_timeonly"] = pc.take(pa.concat_arrays(timeonly), index)
        out["l_few"] = pc.take(pa.concat_arrays(few), index)
        out["l_before"] = pc.take(pa.concat_arrays(before), index)
        return out

    def _touch(self, name: str) -> SourceState:
        """``name``'s state, now the most recently seen (a new one if it had none, the oldest
        forgotten when there are too many)."""
        state = self.sources.pop(name, None) or SourceState()
        self.sources[name] = state
        while len(self.sources) > self.max_sources:
            del self.sources[next(iter(self.sources))]
        return state

    def carry(self, last: Iterable[tuple[str, datetime | None]]) -> None:
        """Remember, per (key, time) of ``last``, the time of the source's last line that had one, for
        the continuation lines its next batch may start with (a flush can end inside a stack trace)."""
        for key, ts in last:
            state = self.sources.get(key)
            if state is not None and state.layout is not None:
                state.last_ts = ts

    def _learn(self, state: SourceState, text: pa.Array) -> None:
        if len(state.sample) >= SAMPLE_LINES:
            return
        more = [s for s in text.slice(0, SAMPLE_LINES - len(state.sample)).to_pylist() if s is not None]
        state.sample.extend(more)
        due = [t for t in RELEARN_AT if state.learned_from < t <= len(state.sample)]
        if state.learned_from == 0 or due:
            self._relearn(state)

    @staticmethod
    def _relearn(state: SourceState) -> None:
        state.layout = learn(state.sample)
        state.learned_from = len(state.sample)
        state.learned_at = time.time()

    @staticmethod
    def _read(state: SourceState, text: pa.Array) -> dict[str, pa.Array]:
        """The parts of ``text`` read by the layout, then by its time alone where the header differs."""
        assert state.layout is not None
        full = pc.extract_regex(text, state.layout.pattern)
        out = {p: _part(full, p) for p in PARTS}
        missed = full.is_null()
        n_missed = pc.sum(missed).as_py() or 0
        state.matched_batch = len(text) - n_missed
        state.lines += len(text)
        state.matched += state.matched_batch
        if n_missed:
            alone = pc.extract_regex(text, time_pattern(state.layout.time, state.layout.token))
            for p in PARTS:
                fallback = _part(alone, p)
                out[p] = pc.if_else(missed, fallback, out[p])
            n_alone = pc.sum(pc.and_(missed, pc.invert(alone.is_null()))).as_py() or 0
            state.time_only += n_alone
            state.unmatched += n_missed - n_alone
            unread = pc.and_(missed, alone.is_null())
            state.continued_batch = pc.sum(pc.and_(unread, pc.match_substring_regex(text, CONTINUATION))).as_py() or 0
        else:
            n_alone = 0
            state.continued_batch = 0
        state.read_batch = state.matched_batch + n_alone
        out["timeonly"] = pc.and_(missed, pc.is_valid(out["msg"])) if n_missed else \
            pa.array(np.zeros(len(text), dtype=bool))
        return out


def _part(struct: pa.Array, name: str) -> pa.Array:
    """A part of the matches: NULL where the line did not match, "" where the layout has no such part."""
    if struct.type.get_field_index(name) >= 0:
        return pc.struct_field(struct, name)
    return pc.if_else(struct.is_valid(), pa.scalar(""), pa.scalar(None, pa.string()))
