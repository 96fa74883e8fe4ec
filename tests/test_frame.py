"""The frame codec (loglake/frame.py) and frames -> raw Arrow lines (ingest/batch.py)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import _native, batch
from ingest.batch import RecordRun, raw_table
from ingest.marks import drop_stored
from ingest.normalise import RAW_SCHEMA
from loglake.core.frame import (
    FLAG_LZ4,
    MAGIC,
    MAX_OBSERVED_US,
    VERSION,
    FrameError,
    FrameMeta,
    decode_frame,
    encode_frame,
    record_offsets,
)
from tests.helpers.fuzz_targets import FrameParts

# -- helpers -----------------------------------------------------------------

#: One line's content (no terminator): any bytes but '\n', so '\r', NUL and invalid UTF-8 occur.
line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))
#: Text orjson can encode (no lone surrogates).
json_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


def join_lines(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def make_meta(data: bytes, *, first: int = 1000, count: int | None = None, service: str = "svc",
              host: str = "host-a", source: str = "/var/log/a.log", observed_us: int = 1_700_000_000_000_000,
              source_id: str = "sid-1", tenant: str = "default") -> FrameMeta:
    return FrameMeta(source_id=source_id, source=source, host=host, service=service, tenant=tenant,
                     first_offset=first, end_offset=first + len(data), observed_us=observed_us,
                     count=data.count(b"\n") if count is None else count)


def frame_of(lines: list[bytes], *, compress: bool, **meta: Any) -> bytes:
    data = join_lines(lines)
    return encode_frame(make_meta(data, **meta), data, record_offsets(data), compress=compress)


def raw_frame(meta: dict[str, Any], payload: bytes, *, flags: int = 0, magic: bytes = MAGIC,
              version: int = VERSION) -> bytes:
    """A frame assembled by hand, so every header field can be wrong on purpose."""
    head = orjson.dumps(meta)
    return struct.pack("<4sBBH", magic, version, flags, len(head)) + head + payload


def good_parts(lines: list[bytes]) -> tuple[dict[str, Any], bytes]:
    """A valid uncompressed frame's meta dict and payload, to corrupt one field at a time."""
    data = join_lines(lines)
    offsets = record_offsets(data)
    payload = offsets.astype("<u4").tobytes() + data
    meta = {"sid": "s", "src": "/a.log", "host": "h", "svc": "v", "tenant": "t", "first": 0,
            "end": len(data), "obs": 1, "n": len(lines), "raw": len(payload)}
    return meta, payload


# -- record_offsets / encode / decode round trip ------------------------------


def test_record_offsets_are_the_line_ends() -> None:
    data = b"a\r\n\nbc\n"
    assert record_offsets(data).tolist() == [0, 3, 4, 7]
    assert record_offsets(data).dtype == np.dtype("<u4")


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(line_bytes, max_size=30), compress=st.booleans(),
       service=json_text, host=json_text, source=json_text, source_id=json_text, tenant=json_text,
       first=st.integers(0, 2**53), observed_us=st.integers(0, MAX_OBSERVED_US - 1))
def test_round_trip_returns_every_record_and_the_meta(
        lines: list[bytes], compress: bool, service: str, host: str, source: str, source_id: str,
        tenant: str, first: int, observed_us: int) -> None:
    data = join_lines(lines)
    meta = make_meta(data, first=first, service=service, host=host, source=source,
                     source_id=source_id, tenant=tenant, observed_us=observed_us)
    frame = decode_frame(encode_frame(meta, data, record_offsets(data), compress=compress))
    assert frame.meta == meta
    assert frame.records.type == pa.binary()
    assert frame.records.to_pylist() == [line + b"\n" for line in lines]


def test_compressed_frame_sets_the_lz4_flag_and_is_smaller_for_repetitive_data() -> None:
    lines = [b"2024-01-01 00:00:00 INFO the same line again and again"] * 200
    packed, plain = frame_of(lines, compress=True), frame_of(lines, compress=False)
    assert packed[5] & FLAG_LZ4 and not plain[5] & FLAG_LZ4
    assert len(packed) < len(plain) // 4


def test_encode_rejects_offsets_that_do_not_match_the_data() -> None:
    data = b"one\ntwo\n"
    with pytest.raises(FrameError, match="offsets do not match"):
        encode_frame(make_meta(data), data, np.array([0, 4], dtype="<u4"))   # count says 2 records
    with pytest.raises(FrameError, match="offsets do not match"):
        encode_frame(make_meta(data), data, np.array([0, 4, 7], dtype="<u4"))  # last != len(data)


def test_encode_rejects_a_byte_range_that_does_not_match_the_data() -> None:
    data = b"one\ntwo\n"
    meta = FrameMeta(source_id="s", source="p", host="h", service="v", tenant="t",
                     first_offset=10, end_offset=11, observed_us=0, count=2)
    with pytest.raises(FrameError, match="byte range"):
        encode_frame(meta, data, record_offsets(data))


# -- corrupt input -------------------------------------------------------------


@pytest.mark.parametrize("value", [b"", b"LLKF", b"LLKF\x01\x00\x00"])
def test_decode_too_short_raises(value: bytes) -> None:
    with pytest.raises(FrameError, match="too short"):
        decode_frame(value)


def test_decode_bad_magic_raises() -> None:
    good = frame_of([b"x"], compress=False)
    with pytest.raises(FrameError, match="bad magic"):
        decode_frame(b"KFLL" + good[4:])


@pytest.mark.parametrize("version", [0, 2, 255])
def test_decode_unknown_version_raises(version: int) -> None:
    good = frame_of([b"x"], compress=True)
    with pytest.raises(FrameError, match=f"unsupported frame version {version}"):
        decode_frame(good[:4] + bytes([version]) + good[5:])


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_decode_truncated_uncompressed_payload_raises(cut: int) -> None:
    good = frame_of([b"hello", b"world"], compress=False)
    with pytest.raises(FrameError, match="payload length does not match"):
        decode_frame(good[:-cut])


@pytest.mark.parametrize("cut", [1, 3])
def test_decode_truncated_compressed_payload_raises(cut: int) -> None:
    good = frame_of([b"hello world %d" % i for i in range(50)], compress=True)
    with pytest.raises(FrameError, match="lz4|payload length"):
        decode_frame(good[:-cut])


@pytest.mark.parametrize("lines", [[b"abc", b"def"], [b"x"] * 50, [b"hello world %d" % i for i in range(50)]])
@pytest.mark.parametrize("mask", [0x10, 0x80, 0xF0])
def test_decode_lz4_payload_with_a_flipped_literal_length_raises(lines: list[bytes], mask: int) -> None:
    good = frame_of(lines, compress=True)
    start = 8 + struct.unpack_from("<H", good, 6)[0]   # the first lz4 token
    broken = bytearray(good)
    broken[start] ^= mask                                # high nibble: the literal run's length
    with pytest.raises(FrameError, match="bad lz4 payload"):
        decode_frame(bytes(broken))


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(line_bytes, min_size=1, max_size=8), data=st.data())
def test_decode_flipped_lz4_bytes_raise_only_frame_error(lines: list[bytes], data: st.DataObject) -> None:
    """An lz4 block has no checksum, so a flip may still decode; but it never escapes as another error."""
    good = frame_of(lines, compress=True)
    mlen = struct.unpack_from("<H", good, 6)[0]
    pos = data.draw(st.integers(8 + mlen, len(good) - 1), label="pos")
    mask = data.draw(st.integers(1, 255), label="mask")
    broken = bytearray(good)
    broken[pos] ^= mask
    try:
        frame = decode_frame(bytes(broken))
    except FrameError:
        return
    # It decoded: then it must be self-consistent.
    assert len(frame.records) == frame.meta.count
    assert sum(len(r) for r in frame.records.to_pylist()) == frame.meta.end_offset - frame.meta.first_offset


@pytest.mark.parametrize("head", [b"{not json", b"[1, 2, 3]", b'"text"', b"\xff\xfe"])
def test_decode_meta_not_a_json_object_raises(head: bytes) -> None:
    _, payload = good_parts([b"a"])
    value = struct.pack("<4sBBH", MAGIC, VERSION, 0, len(head)) + head + payload
    with pytest.raises(FrameError, match="bad frame meta"):
        decode_frame(value)


@pytest.mark.parametrize("field", ["sid", "src", "host", "svc", "tenant", "first", "end", "obs", "n", "raw"])
def test_decode_meta_missing_a_field_raises(field: str) -> None:
    meta, payload = good_parts([b"a", b"b"])
    del meta[field]
    with pytest.raises(FrameError, match="bad frame meta"):
        decode_frame(raw_frame(meta, payload))


def test_decode_meta_with_a_non_integer_offset_raises() -> None:
    meta, payload = good_parts([b"a"])
    meta["first"] = "zero"
    with pytest.raises(FrameError, match="bad frame meta"):
        decode_frame(raw_frame(meta, payload))


def test_decode_record_count_larger_than_the_payload_raises() -> None:
    meta, payload = good_parts([b"a", b"b"])
    meta["n"] = 1000
    with pytest.raises(FrameError, match="payload length does not match"):
        decode_frame(raw_frame(meta, payload))


@pytest.mark.parametrize("count", [-1, -2, -3])
def test_decode_negative_record_count_raises_frame_error(count: int) -> None:
    meta, payload = good_parts([b"a", b"b"])
    meta["n"] = count
    with pytest.raises(FrameError):
        decode_frame(raw_frame(meta, payload))


def test_decode_raw_length_not_matching_the_payload_raises() -> None:
    meta, payload = good_parts([b"a", b"b"])
    meta["raw"] = len(payload) + 1
    with pytest.raises(FrameError, match="payload length does not match"):
        decode_frame(raw_frame(meta, payload))


def test_decode_huge_raw_length_on_compressed_frame_raises_frame_error() -> None:
    good = frame_of([b"a", b"b"], compress=True, first=0)
    mlen = struct.unpack_from("<H", good, 6)[0]
    meta = orjson.loads(good[8:8 + mlen])
    meta["raw"] = 1 << 40
    with pytest.raises(FrameError):
        decode_frame(raw_frame(meta, good[8 + mlen:], flags=FLAG_LZ4))


def test_decode_non_monotonic_offsets_raise() -> None:
    meta, payload = good_parts([b"aaa", b"b", b"cc"])
    offsets = np.frombuffer(payload[:16], dtype="<u4").copy()
    offsets[1], offsets[2] = offsets[2], offsets[1]           # 0, 6, 4, 9: goes backwards
    with pytest.raises(FrameError, match="offsets"):
        decode_frame(raw_frame(meta, offsets.tobytes() + payload[16:]))


@pytest.mark.parametrize("bad", [("first", 1), ("last", 1), ("last", -1)])
def test_decode_offsets_not_spanning_the_data_raise(bad: tuple[str, int]) -> None:
    meta, payload = good_parts([b"aaa", b"b"])
    offsets = np.frombuffer(payload[:12], dtype="<u4").copy()
    which, delta = bad
    i = 0 if which == "first" else -1
    offsets[i] = int(offsets[i]) + delta
    with pytest.raises(FrameError, match="offsets"):
        decode_frame(raw_frame(meta, offsets.tobytes() + payload[12:]))


@pytest.mark.parametrize("end_delta", [-1, 1, 100])
def test_decode_byte_range_mismatch_raises(end_delta: int) -> None:
    meta, payload = good_parts([b"aaa", b"b"])
    meta["end"] += end_delta
    with pytest.raises(FrameError, match="byte range does not match"):
        decode_frame(raw_frame(meta, payload))


# -- raw_table ------------------------------------------------------------------


def run_of(lines: list[bytes], *, service: str, host: str, source: str, observed_us: int) -> RecordRun:
    frame = decode_frame(frame_of(lines, compress=True, service=service, host=host, source=source,
                                  observed_us=observed_us))
    return RecordRun(meta=frame.meta, records=frame.records)


def test_raw_table_strips_terminators_including_crlf() -> None:
    run = run_of([b"plain", b"windows\r", b"", b"\r", b"mid\rdle"], service="s", host="h", source="f",
                 observed_us=0)
    table = raw_table([run])
    assert table.schema == RAW_SCHEMA
    assert table["line"].to_pylist() == ["plain", "windows", "", "", "mid\rdle"]


def test_raw_table_repeats_each_frames_labels_for_its_lines() -> None:
    runs = [
        run_of([b"a1", b"a2", b"a3"], service="api", host="h1", source="/a.log", observed_us=1_000_000),
        run_of([], service="empty", host="h0", source="/e.log", observed_us=5),
        run_of([b"b1"], service="db", host="h2", source="/b.log", observed_us=2_000_000),
        run_of([b"c1", b"c2"], service="api", host="h3", source="/c.log", observed_us=3_500_000),
    ]
    table = raw_table(runs)
    assert table.schema == RAW_SCHEMA
    assert table["line"].to_pylist() == ["a1", "a2", "a3", "b1", "c1", "c2"]
    assert table["service"].to_pylist() == ["api"] * 3 + ["db"] + ["api"] * 2
    assert table["host"].to_pylist() == ["h1"] * 3 + ["h2"] + ["h3"] * 2
    assert table["source"].to_pylist() == ["/a.log"] * 3 + ["/b.log"] + ["/c.log"] * 2
    t = [datetime.fromtimestamp(s, UTC) for s in (1, 1, 1, 2, 3.5, 3.5)]
    assert table["observed_ts"].to_pylist() == t


def test_raw_table_of_nothing_is_empty_with_the_raw_schema() -> None:
    assert raw_table([]).num_rows == 0
    assert raw_table([]).schema == RAW_SCHEMA
    empty = run_of([], service="s", host="h", source="f", observed_us=0)
    assert raw_table([empty]).num_rows == 0


def test_raw_table_replaces_invalid_utf8_instead_of_dropping_the_line() -> None:
    good = run_of(["héllo".encode()], service="s", host="h", source="f", observed_us=0)
    bad = run_of([b"ok", b"bad \xff\xfe byte\r", b"\xc3"], service="t", host="h", source="g", observed_us=0)
    table = raw_table([good, bad])
    assert table["line"].to_pylist() == ["héllo", "ok", "bad \ufffd\ufffd byte", "\ufffd"]
    assert table["service"].to_pylist() == ["s", "t", "t", "t"]


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(st.lists(line_bytes.filter(lambda b: not b.endswith(b"\r")), max_size=6), max_size=5))
def test_raw_table_lines_are_the_decoded_records(frames: list[list[bytes]]) -> None:
    runs = [run_of(lines, service=f"svc{i}", host=f"h{i}", source=f"/f{i}", observed_us=i * 1_000_000)
            for i, lines in enumerate(frames)]
    table = raw_table(runs)
    expected = [(line.decode("utf-8", "replace"), f"svc{i}", f"h{i}", f"/f{i}")
                for i, lines in enumerate(frames) for line in lines]
    got = list(zip(table["line"].to_pylist(), table["service"].to_pylist(), table["host"].to_pylist(),
                   table["source"].to_pylist(), strict=True))
    assert got == expected


# -- dropping a stored prefix (ingest.marks.drop_stored with the range [0, mark)) ------------


def drop_stored_up_to(records: pa.BinaryArray, first: int, mark: int) -> list[bytes]:
    """The production dedup over one stored range from the file's start: record starts on real frames."""
    return drop_stored(records, first, [(0, mark)]).to_pylist()


def starts_of(lines: list[bytes], first: int) -> list[int]:
    starts, pos = [], first
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    return starts


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(line_bytes, max_size=12), first=st.integers(0, 10_000), data=st.data())
def test_drop_stored_up_to_keeps_records_starting_at_or_after_the_mark(
        lines: list[bytes], first: int, data: st.DataObject) -> None:
    total = sum(len(line) + 1 for line in lines)
    mark = data.draw(st.integers(0, first + total + 5), label="mark")
    records = pa.array([line + b"\n" for line in lines], pa.binary())
    kept = drop_stored_up_to(records, first, mark)
    expected = [line + b"\n" for line, s in zip(lines, starts_of(lines, first), strict=True) if s >= mark]
    assert kept == expected


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(line_bytes, max_size=12), first=st.integers(0, 10_000), compress=st.booleans(),
       data=st.data())
def test_drop_stored_up_to_on_a_decoded_frame(
        lines: list[bytes], first: int, compress: bool, data: st.DataObject) -> None:
    frame = decode_frame(frame_of(lines, compress=compress, first=first))
    starts = starts_of(lines, first)
    anywhere = st.integers(0, frame.meta.end_offset + 5)
    mark = data.draw(st.sampled_from(starts) | anywhere if starts else anywhere, label="mark")
    kept = drop_stored_up_to(frame.records, frame.meta.first_offset, mark)
    assert kept == [line + b"\n" for line, s in zip(lines, starts, strict=True) if s >= mark]


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(line_bytes, min_size=1, max_size=12), data=st.data())
def test_drop_stored_up_to_on_an_already_sliced_array(lines: list[bytes], data: st.DataObject) -> None:
    first = 500
    frame = decode_frame(frame_of(lines, compress=True, first=first))
    k = data.draw(st.integers(0, len(lines)), label="k")
    starts = starts_of(lines, first)
    tail = frame.records.slice(k)
    tail_first = starts[k] if k < len(lines) else frame.meta.end_offset
    mark = data.draw(st.integers(0, frame.meta.end_offset + 2), label="mark")
    kept = drop_stored_up_to(tail, tail_first, mark)
    assert kept == [line + b"\n" for line, s in list(zip(lines, starts, strict=True))[k:] if s >= mark]


def test_drop_stored_up_to_mark_inside_a_record_drops_that_record() -> None:
    records = pa.array([b"aaaa\n", b"bb\n", b"c\n"], pa.binary())
    # starts at 100, 105, 108
    assert drop_stored_up_to(records, 100, 106) == [b"c\n"]
    assert drop_stored_up_to(records, 100, 105) == [b"bb\n", b"c\n"]
    assert drop_stored_up_to(records, 100, 100) == [b"aaaa\n", b"bb\n", b"c\n"]
    assert drop_stored_up_to(records, 100, 110) == []


@pytest.mark.parametrize(("field", "value"), [
    ("obs", 253_402_300_800_000_000), ("obs", -1), ("obs", 2**64), ("first", 2**62), ("end", -5), ("n", True),
    ("obs", 1.5), ("sid", ["nested"]), ("labels", {"k": {"deep": 1}}), ("labels", ["k"]), ("wrap", 3)])
def test_meta_values_out_of_range_or_of_the_wrong_type_are_frame_errors(field: str, value: object) -> None:
    """Numbers are whole and within 0..2**62 (times: before year 10000); text is text: nothing later has
    to cope with a year without a date or an offset past int64."""
    meta = FrameMeta(source_id="s", source="/a", host="h", service="v", tenant="t", first_offset=0,
                     end_offset=2, observed_us=1, count=1)
    parts = FrameParts.split(encode_frame(meta, b"x\n", record_offsets(b"x\n"), compress=False))
    assert parts is not None and (head := parts.meta_dict()) is not None
    with pytest.raises(FrameError, match="bad frame meta"):
        decode_frame(parts.with_meta({**head, field: value}).join())


_ENDED = st.builds(lambda text, end: text.encode() + end, st.text(max_size=8),
                   st.sampled_from([b"", b"\n", b"\n\n", b"\r\n", b"\r\r\n", b"\r", b"\n\r", b"\r\n\n"]))


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.tuples(st.lists(_ENDED, max_size=6), st.integers(0, 3)), max_size=5))
def test_compiled_join_of_lines_equals_the_arrow_kernels(parts: list[tuple[list[bytes], int]]) -> None:
    # Each part a binary array of records, sliced (so its offsets do not start at 0).
    arrays = [pa.array(records, pa.binary()).slice(min(cut, len(records))) for records, cut in parts]
    offsets, data = _native.join_lines([(a.buffers()[1], a.buffers()[2], a.offset, len(a)) for a in arrays])
    joined = pa.Array.from_buffers(pa.binary(), len(offsets) // 4 - 1, [None, pa.py_buffer(offsets),
                                                                          pa.py_buffer(data)]).cast(pa.string())
    kernels = [batch._strip_terminator(a.cast(pa.string())) for a in arrays]
    assert joined.to_pylist() == [line for k in kernels for line in k.to_pylist()]


def test_compiled_join_checks_its_buffers() -> None:
    a = pa.array([b"x\n"], pa.binary())
    with pytest.raises(ValueError, match="shorter"):
        _native.join_lines([(a.buffers()[1], a.buffers()[2], 0, 3)])
    assert _native.join_lines([]) == (b"\x00\x00\x00\x00", b"")


def test_compiled_join_refuses_offsets_that_go_backwards() -> None:
    offsets = np.array([0, 3, 1, 4], np.int32)
    with pytest.raises(ValueError, match="backwards"):
        _native.join_lines([(offsets, b"abcd", 0, 3)])
