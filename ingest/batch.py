"""Frames to one Arrow table of raw lines, without a Python loop per line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest import _native
from ingest.normalise import RAW_SCHEMA
from loglake.core.frame import FrameMeta


@dataclass(frozen=True, slots=True)
class RecordRun:
    """Records from one frame (or from a run of third-party messages) and where they came from."""

    meta: FrameMeta
    records: pa.BinaryArray      # terminators included
    #: The parsing format configured for the source ("" to detect it per line).
    format: str = ""
    #: Per-record observed times (µs) when they differ, as for third-party messages; else meta's.
    observed_us: np.ndarray | None = None
    #: The zone of the source's zone-less times ("": ingest's default).
    zone: str = ""


def _decode_utf8(records: pa.Array) -> tuple[pa.StringArray, list[int]]:
    """Records as text, and the indexes of those that were not valid UTF-8 (now replaced)."""
    try:
        return records.cast(pa.string()), []
    except pa.ArrowInvalid:
        # Rare path: invalid UTF-8 somewhere in the batch; replace per record and say which.
        out, bad = [], []
        for i, b in enumerate(records.to_pylist()):
            try:
                out.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(b.decode("utf-8", "replace"))
                bad.append(i)
        return pa.array(out, pa.string()), bad


def _strip_terminator(lines: pa.StringArray) -> pa.StringArray:
    """Drop each record's line terminator: its trailing newlines (a shipped record has one; a
    third-party message may carry blank lines after its text) and one "\\r" before them."""
    lines = pc.utf8_rtrim(lines, characters="\n")
    return pc.if_else(pc.ends_with(lines, "\r"), pc.utf8_slice_codeunits(lines, 0, -1), lines)


def _per_run(values: Sequence[str], counts: np.ndarray) -> pa.DictionaryArray:
    indices = np.repeat(np.arange(len(values), dtype=np.int32), counts)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(values, pa.string()))


def raw_table(runs: Sequence[RecordRun]) -> pa.Table:
    """One ``RAW_SCHEMA`` table holding every record of ``runs``, in order."""
    runs = [r for r in runs if len(r.records)]
    if not runs:
        return RAW_SCHEMA.empty_table()
    lines, invalid = _lines(runs)
    counts = np.fromiter((len(r.records) for r in runs), dtype=np.int64, count=len(runs))
    if any(r.observed_us is not None for r in runs):
        observed = np.concatenate([r.observed_us if r.observed_us is not None
                                   else np.full(len(r.records), r.meta.observed_us, np.int64) for r in runs])
    else:
        observed = np.repeat(np.fromiter((r.meta.observed_us for r in runs), dtype=np.int64, count=len(runs)),
                             counts)
    return pa.table([
        lines,
        pa.array(observed, pa.timestamp("us", tz="UTC")),
        _per_run([r.meta.service for r in runs], counts),
        _per_run([r.meta.host for r in runs], counts),
        _per_run([r.meta.source for r in runs], counts),
        _labels(runs, counts, invalid),
        _per_run([r.meta.wrapper for r in runs], counts),
        _per_run([r.format for r in runs], counts),
        _per_run([r.zone for r in runs], counts),
    ], schema=RAW_SCHEMA)


def _lines(runs: Sequence[RecordRun]) -> tuple[pa.StringArray, list[int]]:
    """Every record of ``runs`` as one array of text lines, and the indexes of those that were
    not valid UTF-8 (now with replacement characters)."""
    if all(r.records.type == pa.binary() and not r.records.null_count for r in runs):
        try:
            # One compiled pass: each record copied once, without its terminator.
            offsets, data = _native.join_lines([(r.records.buffers()[1], r.records.buffers()[2], r.records.offset,
                                                 len(r.records)) for r in runs])
            joined = pa.Array.from_buffers(pa.binary(), len(offsets) // 4 - 1,
                                           [None, pa.py_buffer(offsets), pa.py_buffer(data)])
            return joined.cast(pa.string()), []
        except (pa.ArrowInvalid, OverflowError):
            pass          # invalid UTF-8 somewhere (or 2 GiB of lines): the per-run path says where
    # Per run, then one concatenation: small intermediate arrays stay in the allocator's
    # reuse pool (whole-batch ones cost a page fault per 4 KiB, several times over).
    parts: list[pa.Array] = []
    invalid: list[int] = []
    first = 0
    for r in runs:
        text, bad = _decode_utf8(r.records)
        parts.append(_strip_terminator(text))
        invalid += [first + i for i in bad]
        first += len(r.records)
    return pa.concat_arrays(parts), invalid


def _labels(runs: Sequence[RecordRun], counts: np.ndarray, invalid: list[int]) -> pa.MapArray:
    """Each run's labels repeated for its records (null where a run has none), plus flags."""
    map_type = RAW_SCHEMA.field("labels").type
    total = int(counts.sum())
    if invalid:
        # Rare path: per-record flags, built record by record.
        per_run = np.repeat(np.arange(len(runs)), counts)
        rows: list[list[tuple[str, str]] | None] = [list(runs[r].meta.labels.items()) or None
                                                     for r in per_run.tolist()]
        for i in invalid:
            rows[i] = [*(rows[i] or []), ("invalid_utf8", "true")]
        return pa.array(rows, map_type)
    if not any(r.meta.labels for r in runs):
        return pa.nulls(total, map_type)
    keys = [list(r.meta.labels) for r in runs]
    values = [list(r.meta.labels.values()) for r in runs]
    sizes = np.repeat(np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(runs)), counts)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    # The flat key/value lists: run r's labels, once per record of run r.
    flat_run = np.repeat(np.arange(len(runs)), counts)
    flat_run = np.repeat(flat_run, sizes)
    first_label = np.concatenate([[0], np.cumsum([len(k) for k in keys])])[:-1]
    within = np.arange(len(flat_run)) - np.repeat(offsets[:-1].astype(np.int64), sizes)
    all_keys = pa.array([k for ks in keys for k in ks], pa.string())
    all_values = pa.array([v for vs in values for v in vs], pa.string())
    pick = pa.array(first_label[flat_run] + within, pa.int64())
    return pa.MapArray.from_arrays(pa.array(offsets), all_keys.take(pick), all_values.take(pick))
