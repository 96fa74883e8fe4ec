"""Fuzzing ingest with hostile input: the frame decoder, every parser, and the worker.

The property throughout: a message never crashes the worker. A frame either
decodes into records consistent with its meta or raises ``FrameError`` (and
becomes a ``corrupt_frame`` dead letter); every record becomes a row (perhaps
``format=unknown`` with the whole line as its message) or a reported failure
for the dead-letter topic, so rows plus rejects always equal the input.

Sections: (1) the frame decoder under hypothesis, (2) every configured format
through the real Normaliser, (3) atheris, coverage-guided, in a subprocess,
(4) the worker in-process (hypothesis) and through the real broker.

The inputs that once got through (meta numbers past int64 or year 9999, a
meta value nested a thousand deep, a producer's clock in year 10000) are kept
as named cases in section 4.

Everything is deterministic: hypothesis is derandomised, and the broker test
and the mutations use fixed seeds.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest.normalise import Normaliser, ParseSettings
from ingest.worker import IngestWorker
from loglake.core.config import Config
from loglake.core.frame import MAGIC, MAX_RAW_BYTES, VERSION, FrameError, decode_frame
from storage.catalog import Catalog
from storage.errors import StorageError
from storage.segments import check_tenant
from tests.helpers import fuzz_targets as ft
from tests.helpers.kafka import Msg, Shipper, create_topics, produce, read_topic, topics_env
from tests.helpers.processes import Stack, running
from tests.helpers.stored import open_catalog, stored, wait_rows

REPO = Path(__file__).resolve().parents[1]

#: Hypothesis for CI: the same examples every run, no example database, no per-example deadline.
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fuzz(max_examples: int) -> settings:
    """``FUZZ`` with a bounded number of examples (each test's share of the time budget)."""
    return settings(FUZZ, max_examples=max_examples)


# == 1. the frame decoder ==============================================================

#: Positions are drawn wide and wrapped around the frame's length (see ft.mutate_frame).
_POS = st.integers(0, 1 << 16)
#: Integers a meta field might carry: around every limit the decoder or the worker has.
_ODD_INTS = st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63,
                             2**64 - 1, 2**64, -(2**63), -(2**64), 10**30, MAX_RAW_BYTES, MAX_RAW_BYTES + 1])
_ODD_SCALARS = st.one_of(
    st.none(), st.booleans(), _ODD_INTS, st.integers(),
    st.floats(),                                        # NaN and infinities are not JSON: orjson refuses them
    st.text(max_size=12),
    st.sampled_from(["12", " 7 ", "1_000", "\u0663", "1e5", "-0", "0x10", "", "cri", "docker", "\x00", "\ufeff1"]),
)
_ODD_JSON = st.recursive(_ODD_SCALARS, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
#: Nested arrays as a meta value (the thousand-deep case has its own test below).
_NESTED = st.integers(1, 300).map(lambda d: json.loads("[" * d + "]" * d))


def _meta_text(value: Any) -> bytes:
    return json.dumps(value).encode()


#: Whole meta replacements: odd JSON of any shape, non-objects, invalid JSON and invalid UTF-8, duplicates.
_ODD_META = st.one_of(
    _ODD_JSON.map(_meta_text),
    st.dictionaries(st.sampled_from(ft.META_KEYS), _ODD_JSON, max_size=13).map(_meta_text),
    st.sampled_from([b"", b"{}", b"[]", b"null", b"1", b'"sid"', b"{", b"\xff\xfe", b'{"sid":"\\ud800"}',
                     b"[" * 2000 + b"]" * 2000, b'{"a":' * 1100 + b"1" + b"}" * 1100]),
    st.binary(max_size=64),
)
_MUTATION = st.one_of(
    st.tuples(st.just("flip"), _POS, st.integers(0, 7)),
    st.tuples(st.just("set"), _POS, st.integers(0, 255)),
    st.tuples(st.just("insert"), _POS, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), _POS, st.integers(1, 16)),
    st.tuples(st.just("truncate"), _POS, st.integers(0, 2)),
    st.tuples(st.just("mlen"), st.just(0), st.integers(0, 0xFFFF)),
    st.tuples(st.just("flags"), st.just(0), st.integers(0, 255)),
    st.tuples(st.just("version"), st.just(0), st.sampled_from([0, 1, 2, 255])),
    st.tuples(st.just("meta"), st.just(0), _ODD_META),
    st.tuples(st.just("field"), _POS, _ODD_JSON | _NESTED | st.just(ft.DELETE)),
    st.tuples(st.just("raw"), st.just(0), _ODD_INTS | st.integers(0, 1 << 20)),
    st.tuples(st.just("bomb"), st.just(0), st.sampled_from([0, 1, 4096, 1 << 20, 32 << 20])),
    st.tuples(st.just("offsets"), _POS, _ODD_INTS | st.integers(0, 64)),
)

_LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))
_LABELS = st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
                          st.text(st.characters(blacklist_categories=("Cs",)), max_size=6), max_size=3)


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    """A frame a shipper could send: any lines, compressed or not, labels, wrappers, a truncated line."""
    lines = draw(st.lists(_LINE, max_size=12))
    kw: dict[str, Any] = {"compress": draw(st.booleans()), "first": draw(st.integers(0, 2**40)),
                          "labels": draw(_LABELS), "wrapper": draw(st.sampled_from(ft.WRAPPERS))}
    if len(lines) == 1 and draw(st.booleans()):
        kw["truncated_from"] = len(lines[0]) + 1 + draw(st.integers(0, 1 << 20))
    return ft.make_frame(lines, **kw)


@fuzz(600)
@given(value=st.binary(max_size=600)
       | st.builds(lambda v, f, rest: MAGIC + bytes([v, f]) + rest,
                   st.sampled_from([VERSION, VERSION, 0, 2]), st.integers(0, 255), st.binary(max_size=600)))
def test_random_bytes_decode_or_raise_frame_error(value: bytes) -> None:
    """Random bytes (and random bytes behind a real header): FrameError, or a self-consistent frame."""
    ft.check_frame(value)


@fuzz(800)
@given(frame=valid_frames(), mutations=st.lists(_MUTATION, min_size=1, max_size=4))
@example(frame=ft.make_frame([b"a", b"b"], compress=True), mutations=[("raw", 0, MAX_RAW_BYTES)])
@example(frame=ft.make_frame([b"a"], compress=True), mutations=[("bomb", 0, MAX_RAW_BYTES)])
@example(frame=ft.make_frame([b"a"], compress=False), mutations=[("mlen", 0, 0xFFFF)])
@example(frame=ft.make_frame([b"a", b"b"], compress=False), mutations=[("field", 8, -1)])        # n = -1
@example(frame=ft.make_frame([b"a"], compress=False), mutations=[("field", 8, 2**62)])          # n huge
@example(frame=ft.make_frame([b"a"], compress=False), mutations=[("field", 11, -5)])            # trunc < 0
@example(frame=ft.make_frame([b"a"], compress=False), mutations=[("field", 10, [["k", "v"]])])  # labels a list
def test_mutated_frames_decode_consistently_or_raise_frame_error(frame: bytes, mutations: list[ft.Mutation]) -> None:
    """A valid frame, then bit flips, cuts, lying length fields, odd meta JSON, lz4 claiming huge sizes."""
    assert ft.check_frame(frame) is not None, "the unmutated frame decodes"
    ft.check_frame(ft.mutate_frame(frame, mutations))


@fuzz(400)
@given(lines=st.lists(_LINE, min_size=1, max_size=4), compress=st.booleans(),
       odd=st.dictionaries(st.sampled_from(ft.META_KEYS), _ODD_JSON | _NESTED, min_size=1, max_size=4))
def test_every_meta_field_of_any_type_or_size(lines: list[bytes], compress: bool, odd: dict[str, Any]) -> None:
    """Meta with every key present but some of any JSON type or size: the decoder's checks, not Python's, answer."""
    parts = ft.FrameParts.split(ft.make_frame(lines, compress=compress))
    assert parts is not None
    meta = parts.meta_dict()
    assert meta is not None
    ft.check_frame(parts.with_meta({**meta, **odd}).join())


def test_every_truncation_and_every_single_bit_flip_of_the_seed_frames() -> None:
    """Exhaustive for small frames: each prefix, and each bit of each byte flipped."""
    tried = 0
    for frame in ft.seed_frames():
        for cut in range(len(frame)):
            with pytest.raises(FrameError):   # a frame ends where its payload ends: any cut is short
                decode_frame(frame[:cut])
        for i in range(len(frame)):
            for bit in range(8):
                ft.check_frame(ft.mutate_frame(frame, [("flip", i, bit)]))
                tried += 1
    assert tried > 5000


@pytest.mark.parametrize("depth", [1000, 1020])
@pytest.mark.parametrize("key", ["sid", "labels"])
def test_meta_value_nested_a_thousand_deep_is_a_frame_error(key: str, depth: int) -> None:
    """A 2 KB meta whose one value is nested within orjson's limit (1024) but past Python's recursion limit
    (1000), which ``str()`` of that value needs: FrameError, or a consistent frame, but nothing else."""
    nested = "[" * depth + "]" * depth
    ft.check_frame(nested_meta_frame(key, nested if key == "sid" else '{"a":' + nested + "}"))


def nested_meta_frame(key: str, value_json: str) -> bytes:
    """An otherwise valid empty frame whose meta field ``key`` is the JSON text ``value_json``."""
    fields = {"sid": '"s"', "src": '"/a"', "host": '"h"', "svc": '"v"', "tenant": '"default"', "first": "0",
              "end": "0", "obs": "1717243200000000", "n": "0", "raw": "4"}
    fields[key] = value_json
    head = ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()
    return struct.pack("<4sBBH", MAGIC, VERSION, 0, len(head)) + head + b"\x00\x00\x00\x00"


# == 2. every parser through the real Normaliser ===========================================


@pytest.fixture(scope="module")
def normaliser() -> Iterator[Normaliser]:
    """The worker's statement, with one user pattern so ``pattern0`` is fuzzed too."""
    n = Normaliser(ParseSettings(patterns=(ft.PATTERN,)))
    yield n
    n.close()


#: Tokens that matter to some parser: quotes, escapes, brackets, separators, NUL, bad UTF-8, huge numbers.
_TOKENS = st.sampled_from([
    b'"', b"\\", b"{", b"}", b"[", b"]", b"=", b" ", b"\t", b"\r", b"\n", b"\x00", b"<", b">", b":", b"|", b"-",
    b"'", b"%", b"\\ud800", b"\\udc00", b"\\u0000", b"\\u", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    b"9" * 40, b"1e999", b"-1e308", b"NaN", b"null", b"stdout F ", b'"stream":"stdout"', b"level=", b"ERROR",
])
_LINE_OP = st.one_of(
    st.tuples(st.just("flip"), _POS, st.integers(0, 7)),
    st.tuples(st.just("insert"), _POS, _TOKENS | st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("delete"), _POS, st.integers(1, 12)),
    st.tuples(st.just("dup"), _POS, st.integers(1, 40)),
    st.tuples(st.just("cut"), _POS, st.just(0)),
)


def mutate_line(line: bytes, ops: list[tuple[str, int, Any]]) -> bytes:
    """Byte-level mutations of one line; positions wrap around its length."""
    for op, pos, arg in ops:
        n = len(line)
        i = pos % (n + 1)
        if op == "flip" and n:
            i = pos % n
            line = line[:i] + bytes([line[i] ^ (1 << arg)]) + line[i + 1:]
        elif op == "insert":
            line = line[:i] + arg + line[i:]
        elif op == "delete":
            line = line[:i] + line[i + arg:]
        elif op == "dup":
            line = line[:i + arg] + line[i:i + arg] + line[i + arg:]
        elif op == "cut":
            line = line[:i]
    return line


_TEXT = st.text(max_size=200).map(lambda s: s.encode())
_RECORD = st.one_of(
    st.binary(max_size=200),                                                 # mostly invalid UTF-8
    _TEXT,
    st.lists(st.sampled_from([b"\x00", b"a", b" ", b"=", b"\x00\x00"]), max_size=60).map(b"".join),   # NUL-laden
    st.tuples(st.sampled_from([b"", b"k=", b'{"msg":"', b"<13>", b"2024-03-04 05:06:07 "]),
              st.integers(1, 20_000), st.sampled_from([b"x", b"\xff", b"\x00", b"9"]))
      .map(lambda t: t[0] + t[2] * t[1]),                                    # very long tokens
)


@fuzz(30)
@given(records=st.lists(_RECORD, min_size=1, max_size=8))
@example(records=[b"", b"\n", b"\r\n", b"\r", b"\x00", b"\xff\n", b"a\nb\n"])
def test_random_records_under_every_format(normaliser: Normaliser, records: list[bytes]) -> None:
    """Random text and bytes, NUL bytes, long tokens: one row or one reported failure per record and format."""
    ft.check_normalised(ft.normalise_records(normaliser, records, ft.COMBOS))


@fuzz(30)
@given(picked=st.lists(st.tuples(st.sampled_from(ft.SAMPLE_LINES), st.lists(_LINE_OP, min_size=1, max_size=5)),
                       min_size=1, max_size=8))
def test_mutated_real_lines_under_every_format(normaliser: Normaliser,
                                               picked: list[tuple[str, list[tuple[str, int, Any]]]]) -> None:
    """Lines of every format, mutated at the byte level (tokens that matter to the parsers among them)."""
    records = [mutate_line(line.encode(), ops) for line, ops in picked]
    ft.check_normalised(ft.normalise_records(normaliser, records, ft.COMBOS))


_WELL_KNOWN = ["@timestamp", "timestamp", "time", "ts", "t", "level", "severity", "lvl", "msg", "message", "log",
               "service", "app", "trace_id", "spanId", "host", "hostname"]
_HUGE = ["1e308", "-1e308", "1e999", "-1e999", "123456789012345678901234567890", "-0", "0e0", "1E-400",
         "9223372036854775808", "-9223372036854775809", "18446744073709551616", "9.2e18", "1.7976931348623157e308"]
_ESCAPES = ['"\\ud800"', '"\\udc00\\ud800"', '"a\\ud83d"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\u00e9\\u4e2d"',
            '"\\"\\\\\\/\\b\\f\\n\\r\\t"', '"\\uD800\\uDFFF"', '"\\uFFFF"', '"\\x41"', '"\\u12"']


@st.composite
def odd_json_lines(draw: st.DrawFn) -> str:
    """JSON-ish lines of odd shapes: nesting, huge numbers, duplicate keys, non-objects, escapes."""
    kind = draw(st.sampled_from(["deep_obj", "deep_arr", "dup", "numbers", "escapes", "top", "wide", "mixed"]))
    key = draw(st.sampled_from(_WELL_KNOWN + ["a", "a.b", "a#2", "", "\\u006dsg"]))
    if kind == "deep_obj":
        d = draw(st.integers(1, 3000))
        leaf = draw(st.sampled_from(["1", '"x"', "[]", "{}", "null"]))
        return '{"' + key + '":' + '{"a":' * d + leaf + "}" * (d + 1)
    if kind == "deep_arr":
        d = draw(st.integers(1, 3000))
        return '{"' + key + '":' + "[" * d + "]" * d + "}"
    if kind == "dup":
        n = draw(st.integers(2, 50))
        vals = draw(st.lists(st.sampled_from(["1", '"x"', '{"b":1}', "null", "[]", '"ERROR"']),
                             min_size=n, max_size=n))
        return "{" + ",".join(f'"{key}":{v}' for v in vals) + "}"
    if kind == "numbers":
        ks = draw(st.lists(st.sampled_from(_WELL_KNOWN), min_size=1, max_size=5))
        return "{" + ",".join(f'"{k}":{draw(st.sampled_from(_HUGE))}' for k in ks) + "}"
    if kind == "escapes":
        ks = draw(st.lists(st.sampled_from(_WELL_KNOWN + ["\\ud800", "k\\u0000"]), min_size=1, max_size=5))
        return "{" + ",".join(f'"{k}":{draw(st.sampled_from(_ESCAPES))}' for k in ks) + "}"
    if kind == "top":
        return draw(st.sampled_from(["[]", "[1,2,3]", '[{"msg":"x"}]', "1", "-1e999", '"str"', "null", "true",
                                     "{}", "{ }", '{"":""}', "\ufeff{}", '{"a":1}garbage', '{"a":1}{"b":2}',
                                     '{"a":}', "{,}", '{"a" 1}', "{'a':1}", '{"a":1,}', "{" * 10]))
    if kind == "wide":
        n = draw(st.integers(100, 3000))
        return "{" + ",".join(f'"k{i}":{i}' for i in range(n)) + "}"
    obj = draw(st.dictionaries(st.sampled_from(_WELL_KNOWN), st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=10), max_size=6))
    return json.dumps(obj, allow_nan=True)     # Infinity and NaN included: not JSON, must still be stored


@fuzz(30)
@given(lines=st.lists(odd_json_lines(), min_size=1, max_size=6))
@example(lines=['"\\ud800"', '{"a":"\\ud800"}', '{"msg":"\\ud800"}', '{"level":"\\udfff","ts":"\\ud800"}'])
def test_odd_json_under_every_format(normaliser: Normaliser, lines: list[str]) -> None:
    """JSON with deep nesting, huge numbers, duplicate keys, arrays and scalars at top level, lone surrogates."""
    ft.check_normalised(ft.normalise_records(normaliser, [line.encode() for line in lines], ft.COMBOS))


@pytest.mark.parametrize("line", [
    b"a" * (1 << 20),
    b'{"msg":"' + b"x" * (1 << 20) + b'"}',
    b"k=" + b"v" * (1 << 20) + b" a=b",
    b"<13>Mar  4 05:06:07 h app: " + b"y" * (1 << 20),
    b'1.2.3.4 - - [04/Mar/2024:05:06:07 +0000] "GET /' + b"p" * (1 << 20) + b' HTTP/1.1" 200 1',
    b"[" * (1 << 19),
    b"\x00" * (1 << 20),
    b"\xff" * (1 << 20),
], ids=["word", "json", "logfmt", "syslog", "access", "brackets", "nul", "invalid-utf8"])
def test_one_megabyte_lines_under_every_format(normaliser: Normaliser, line: bytes) -> None:
    """Lines of about 1 MiB (``max_record_bytes``' default): stored or rejected, in bounded time."""
    started = time.monotonic()
    out = ft.normalise_records(normaliser, [line], ft.COMBOS)
    ft.check_normalised(out)
    assert time.monotonic() - started < 20, "a long line must not make the statement crawl"


# == 3. atheris, coverage-guided, in a subprocess ==========================================

#: Per fuzzer; the two runs are a third of this file's time budget.
ATHERIS_SECONDS = 10


@dataclass
class FuzzRun:
    returncode: int
    output: str
    crashes: list[tuple[str, bytes]]

    def executed(self) -> int:
        """Inputs run, from libFuzzer's final statistics (0 when it never got that far)."""
        stats = [line for line in self.output.splitlines() if "stat::number_of_executed_units" in line]
        return int(stats[-1].split(":")[-1]) if stats else 0


def run_atheris(target: str, tmp_path: Path, seconds: int = ATHERIS_SECONDS, max_len: int = 4096) -> FuzzRun:
    """Fuzz ``target`` for ``seconds`` in a fresh interpreter (atheris exits or aborts on a finding);
    crashing inputs are read back from libFuzzer's artifacts."""
    try:
        import atheris  # noqa: F401  only whether it imports: the fuzzing runs in a child process
    except ImportError as e:
        print(f"\nSKIP atheris: {e}", file=sys.__stderr__)
        pytest.skip(f"atheris is not importable here: {e}")
    corpus, artifacts = tmp_path / f"corpus-{target}", tmp_path / f"artifacts-{target}"
    corpus.mkdir()
    artifacts.mkdir()
    for i, seed in enumerate(ft.seeds(target)):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    cmd = [sys.executable, "-c", ft.BOOTSTRAP, target, f"-max_total_time={seconds}", "-rss_limit_mb=2048",
           "-timeout=20", f"-max_len={max_len}", "-seed=1337", f"-artifact_prefix={artifacts}/",
           "-print_final_stats=1", str(corpus)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, errors="replace", timeout=seconds + 90)
        run = FuzzRun(proc.returncode, proc.stdout + proc.stderr, [])
    except subprocess.TimeoutExpired as e:
        run = FuzzRun(-1, f"atheris did not stop within {seconds + 90}s\n{e.stdout or ''}{e.stderr or ''}", [])
    run.crashes = [(p.name, p.read_bytes()) for p in sorted(artifacts.iterdir())]
    if "INFO: Seed:" not in run.output and not run.crashes and "atheris" in run.output.lower():
        # libFuzzer never started: atheris cannot instrument or run here. Say why, loudly.
        reason = f"atheris could not start here: {run.output.strip().splitlines()[-1:]}"
        print(f"\nSKIP: {reason}", file=sys.__stderr__)
        pytest.skip(reason)
    return run


def assert_no_findings(run: FuzzRun, target: str) -> None:
    """Exit 0 and no artifacts; otherwise fail with each crashing input as a Python literal."""
    found = "\n".join(f"  {name}: {data!r}" for name, data in run.crashes)
    assert run.returncode == 0 and not run.crashes, (
        f"atheris found a failing input for {target} (exit {run.returncode}); crashing inputs:\n{found}\n"
        f"output tail:\n{run.output[-4000:]}")
    print(f"\natheris {target}: {run.executed()} inputs in {ATHERIS_SECONDS}s, no findings")


@pytest.mark.slow      # coverage-guided: it runs for its time budget, so `make test-slow`
def test_atheris_frame_decoder(tmp_path: Path) -> None:
    """libFuzzer-guided bytes into decode_frame, from valid seed frames: FrameError or a consistent frame."""
    run = run_atheris("frame", tmp_path)
    assert_no_findings(run, "frame")
    assert run.executed() > 10_000, "the frame fuzzer ran"


@pytest.mark.slow      # coverage-guided: it runs for its time budget, so `make test-slow`
def test_atheris_normaliser_single_lines(tmp_path: Path) -> None:
    """libFuzzer-guided records, seeded with a line of each format, through every configured format.

    An input is up to 16 lines, each its own record: one DuckDB statement costs ~0.1 s whatever it holds.
    """
    run = run_atheris("line", tmp_path, max_len=4096)
    assert_no_findings(run, "line")
    assert run.executed() >= len(ft.seeds("line")), "every seed was run"


# == 4. the worker ==========================================================================

def fresh_worker(root: Path) -> IngestWorker:
    """A real worker (normaliser, catalog, data root) without Kafka: messages go in through its router."""
    cfg = Config.model_validate({"kafka": {"topic": "t"}, "storage": {"data_root": str(root / "data")}})
    worker = IngestWorker(cfg, Catalog(cfg.storage.resolved_catalog_url()))
    worker.partitions.open([("t", 0)])
    return worker


@dataclass
class Taken:
    """What the in-process worker made of a run of messages."""

    rows: int
    dead: Counter[str]


def take_and_write(worker: IngestWorker, messages: list[tuple[bytes, int]]) -> Taken:
    """Take each (value, kafka timestamp ms), then a flush's write and catalog commit (no dead-letter send)."""
    for offset, (value, ts) in enumerate(messages):
        worker.router.take("t", 0, offset, value, [], ts)
    buf = worker.buffers[("t", 0)]
    commit, dead = worker.flusher.write(("t", 0), buf)
    worker.catalog.commit([commit])
    return Taken(sum(s.rows for s in commit.segments), Counter(d.reason.value for d in [*buf.dead, *dead]))


def expected_outcomes(value: bytes) -> int:
    """How many rows or dead letters one message should become, before duplicates are dropped."""
    if not value:
        return 0                    # an empty value (a tombstone) is skipped on purpose
    if value[:4] != MAGIC:
        return 1                    # a third-party message is one record
    try:
        meta = decode_frame(value).meta
    except FrameError:
        return 1                    # the whole frame is one dead letter
    try:
        check_tenant(meta.tenant or "default")
    except StorageError:
        return 1                    # so is a frame of an invalid tenant
    return meta.count


@fuzz(25)
@given(messages=st.lists(st.one_of(
    st.tuples(valid_frames(), st.lists(_MUTATION, max_size=3)).map(lambda t: ft.mutate_frame(*t)),
    _RECORD,
    st.binary(min_size=1, max_size=300).map(lambda b: MAGIC + b),
), min_size=1, max_size=12))
def test_worker_takes_any_message_without_raising(messages: list[bytes]) -> None:
    """Mutated frames, random records, garbage behind the magic: take, write and commit never raise, and
    every record is a row, a dead letter, or a duplicate of one already taken."""
    with tempfile.TemporaryDirectory() as d:
        worker = fresh_worker(Path(d))
        try:
            got = take_and_write(worker, [(m, 1_717_243_200_000) for m in messages])
            expected = sum(expected_outcomes(m) for m in messages)
            assert got.rows + sum(got.dead.values()) + worker.stats["deduplicated"] == expected, got
        finally:
            worker.flusher.normaliser.close()
            worker.catalog.close()


# -- hostile meta and timestamps, in-process: each input below is something a producer can send --------
#
# Each of these once got past decode_frame and then made a flush fail for good (stalling its
# partition) or the worker exit; decode_frame now bounds every meta number and refuses nested
# values, and an absurd Kafka timestamp counts as "observed now".


def _frame_with(**meta: Any) -> bytes:
    """A two-record uncompressed frame whose meta fields are overridden (any JSON value, any size)."""
    parts = ft.FrameParts.split(ft.make_frame([b"hello world", b"second line"], compress=False))
    assert parts is not None
    base = parts.meta_dict()
    assert base is not None
    return parts.with_meta({**base, **meta}).join()


#: (id, messages as (value, kafka timestamp ms)).
POISON: list[tuple[str, list[tuple[bytes, int]]]] = [
    ("obs-beyond-int64", [(_frame_with(obs=2**64), 0)]),
    ("obs-year-10000", [(_frame_with(obs=253_402_300_800_000_000), 0)]),
    ("obs-min-int64", [(_frame_with(obs=-(2**63)), 0)]),
    ("kafka-timestamp-year-10000", [(b"hello from a producer with a broken clock", 253_402_300_800_000)]),
    ("kafka-timestamp-2-62-ms", [(b"hello from a producer with a broken clock", 2**62)]),
    ("offsets-beyond-int64", [(_frame_with(first=2**63, end=2**63 + 24), 0)]),
    ("offsets-beyond-int64-resent", [(_frame_with(first=2**64 - 100, end=2**64 - 76), 0)] * 2),
    ("meta-nested-1000-deep", [(nested_meta_frame("sid", "[" * 1000 + "]" * 1000), 0)]),
]


@pytest.mark.parametrize("messages", [pytest.param(msgs, id=name) for name, msgs in POISON])
def test_worker_survives_hostile_meta_and_timestamps(tmp_path: Path, messages: list[tuple[bytes, int]]) -> None:
    """Each message is either stored or dead-lettered; none makes take, write or commit raise."""
    worker = fresh_worker(tmp_path)
    try:
        got = take_and_write(worker, messages)
        assert got.rows + sum(got.dead.values()) + worker.stats["deduplicated"] == \
            sum(expected_outcomes(v) for v, _ in messages)
    finally:
        worker.flusher.normaliser.close()
        worker.catalog.close()


# -- through the real broker ----------------------------------------------------------------


def _rejected_mutants(rng: random.Random, good: bytes, want: int) -> list[bytes]:
    """Seeded random mutations of ``good`` that decode_frame refuses (checked here, so expectations are exact)."""
    out: list[bytes] = []
    ops = ("flip", "set", "insert", "delete", "truncate", "mlen", "flags", "field", "raw", "offsets")
    odd = [None, -1, 2**32, "x", [], {}, {"a": {"b": []}}, 1.5, True, "", 10**30]
    while len(out) < want:
        muts = []
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(ops)
            arg: Any = {"flip": rng.randrange(8), "set": rng.randrange(256), "insert": rng.randbytes(rng.randint(1, 6)),
                        "delete": rng.randint(1, 9), "truncate": rng.randrange(3), "mlen": rng.randrange(1 << 16),
                        "flags": rng.randrange(256), "field": rng.choice([*odd, ft.DELETE]),
                        "raw": rng.choice([MAX_RAW_BYTES, MAX_RAW_BYTES + 1, 1 << 31, -1, rng.randrange(1 << 20)]),
                        "offsets": rng.randrange(1 << 32)}[op]
            muts.append((op, rng.randrange(1 << 16), arg))
        value = ft.mutate_frame(good, muts)
        if value[:4] == MAGIC and ft.check_frame(value) is None:
            out.append(value)
    return out


def test_random_mutated_frames_through_the_real_broker(stack: Stack) -> None:
    """Seeded garbage interleaved with good frames on the shipper topic and good records on a third-party topic.

    Corrupt frames (random mutations the decoder refuses, random bytes behind the magic) go to the dead-letter
    topic with their reason and position; random single-record messages, invalid UTF-8 and NUL bytes included,
    are stored once each; good records are stored exactly once; the worker keeps running.
    """
    rng = random.Random(20240601)
    edge, dlq = f"{stack.topic}.edge", f"{stack.topic}.dlq"
    create_topics(stack.bootstrap, stack.topic, edge, dlq)
    stack.start("ingest", LOGLAKE_INGEST__TOPICS=topics_env(f'{{name="{edge}", tenant="team-a", service="edge"}}'),
                LOGLAKE_INGEST__DEAD_LETTER_TOPIC=dlq)
    catalog = open_catalog(stack)

    ship = Shipper(tenant="default", service="app")
    template = ft.make_frame([b"template line one", b'{"msg":"template two"}', b"level=info msg=three k=v"])
    corrupt = _rejected_mutants(rng, template, 24) + [MAGIC + rng.randbytes(rng.randint(0, 200)) for _ in range(8)]
    rng.shuffle(corrupt)
    main: list[Msg] = []
    good_lines: list[str] = []
    kinds: list[str] = []
    for i, bad in enumerate(corrupt):
        lines = [f"good frame {i} line {j}" for j in range(rng.randint(1, 3))]
        good_lines += lines
        main += [ship.frame(lines), Msg(bad, headers=[("tenant", b"default")])]
        kinds += ["good", "corrupt"]
    # Random records from a third-party producer: marked so no parser takes them apart (stored whole).
    edge_values = [f"rnd-{i} ".encode() + rng.choice([rng.randbytes(rng.randint(0, 120)),
                                                       bytes(rng.randint(1, 40)),
                                                       "text \u2620 \ud7ff é".encode() * rng.randint(1, 4)])
                   for i in range(30)]
    main_sent = produce(stack.bootstrap, stack.topic, main)
    produce(stack.bootstrap, edge, [Msg(v) for v in edge_values])

    letters = read_topic(stack.bootstrap, dlq, expect=len(corrupt), timeout_s=30, check=running(stack))
    assert Counter(x.headers["reason"] for x in letters) == {"corrupt_frame": len(corrupt)}, \
        [x.headers for x in letters][:5]
    corrupt_at = {d.offset: m.value for m, d, k in zip(main, main_sent, kinds, strict=True) if k == "corrupt"}
    assert sorted(int(x.headers["offset"]) for x in letters) == sorted(corrupt_at)
    for x in letters:
        assert x.value == corrupt_at[int(x.headers["offset"])]
        assert x.headers["topic"] == stack.topic and x.headers["partition"] == "0"
        assert x.headers["detail"] and x.headers["tenant"] == "default"

    wait_rows(stack, catalog, len(good_lines) + len(edge_values), timeout_s=30)
    time.sleep(1.0)                                      # a duplicate would show up by now
    main_rows = sorted(r["message"] for r in stored(stack, catalog, "default"))
    assert main_rows == sorted(good_lines)
    edge_rows = stored(stack, catalog, "team-a")
    expected_edge = sorted(_as_stored(v) for v in edge_values)
    assert sorted(r["message"] for r in edge_rows) == expected_edge
    for r in edge_rows:
        # Invalid UTF-8 is stored with replacement characters and flagged, not dropped (ingest/batch.py).
        assert (r["attrs"].get("invalid_utf8") == "true") == ("\ufffd" in r["message"]), r
    assert catalog.totals()["rows"] == len(good_lines) + len(edge_values)

    # Still running, still storing.
    produce(stack.bootstrap, stack.topic, [ship.frame(["after the garbage"])])
    wait_rows(stack, catalog, len(good_lines) + len(edge_values) + 1)
    running(stack)()


def _as_stored(value: bytes) -> str:
    """A single-record message as the text parser stores it: decoded with replacement, trailing newlines
    trimmed, then one carriage return (ingest/batch.py _strip_terminator)."""
    text = value.decode("utf-8", "replace")
    text = text.rstrip("\n") if text.endswith("\n") else text
    return text[:-1] if text.endswith("\r") else text


def test_worker_survives_a_deeply_nested_meta_frame_through_the_real_broker(stack: Stack) -> None:
    """A meta nested past Python's recursion limit, end to end: a corrupt_frame dead letter, and the worker
    carries on."""
    dlq = f"{stack.topic}.dlq"
    create_topics(stack.bootstrap, stack.topic, dlq)
    stack.start("ingest", LOGLAKE_INGEST__DEAD_LETTER_TOPIC=dlq)
    catalog = open_catalog(stack)
    ship = Shipper(tenant="default", service="app")
    poison = nested_meta_frame("sid", "[" * 1000 + "]" * 1000)
    produce(stack.bootstrap, stack.topic, [ship.frame(["before"]), Msg(poison), ship.frame(["after"])])
    letters = read_topic(stack.bootstrap, dlq, expect=1, timeout_s=20, check=running(stack))
    assert [x.headers["reason"] for x in letters] == ["corrupt_frame"]
    wait_rows(stack, catalog, 2)
    assert sorted(r["message"] for r in stored(stack, catalog, "default")) == ["after", "before"]
