"""A model test of the shipper's file handling (in the spirit of Vector's file-watcher model tests).

Random sequences of appends, partial lines, rename rotation, copytruncate,
deletion, broker faults (errors, stored frames whose acks are lost) and
shipper crash-restarts drive the real :class:`Shipper` over real files. Only
the Kafka producer is replaced, by an in-memory one whose "topic" keeps a
frame once the broker has stored it. Afterwards ingest's deduplication
(per-source stored byte ranges, ``ingest.marks``, as the worker applies them) is
applied to the topic, and every line written must come out of it exactly once.

After the machine: a restart in the middle of a file, and one small case for
each bug the machine found.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import re
import shutil
import tempfile
import time
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ingest.marks import Ranges, add_range, drop_stored
from loglake.core.config import Config
from loglake.core.frame import Frame, decode_frame
from shippers.shipper import Shipper
from tests.helpers.fuzzing import examples

TOPIC = "model.logs"
MAX_LINE = 64                   # shipper.max_line_bytes: longer lines are cut (and flagged)
FINGERPRINT = 32                # a file shorter than this is known by its inode
LINE_ID = re.compile(rb"^line-(\d{6}) ")


# -- the broker ---------------------------------------------------------------


class BrokerDown(Exception):
    """What a failed send reports (a timeout, a dropped connection)."""


class Topic:
    """The one partition every frame goes to, in the order the broker stored them."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        #: The partition each source's frames were sent to (None: Kafka's hash of the key).
        self.partition_of: dict[str, int | None] = {}


class FakeProducer:
    """aiokafka's producer surface the shipper uses; nothing is stored until the test says so.

    Frames are stored in the order they were sent (one partition, acks=all):
    the test acknowledges the oldest pending sends, or fails them.
    """

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.pending: collections.deque[tuple[asyncio.Future, Frame]] = collections.deque()
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True
        self.pending.clear()          # not yet stored: lost with the connection

    async def flush(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future:
        assert not self.stopped, "send on a stopped producer"
        assert topic == TOPIC
        frame = decode_frame(value)
        assert key == frame.meta.source_id.encode()
        assert headers == [("tenant", frame.meta.tenant.encode())]
        # One source's frames all go to one partition, across crashes and restarts, or they could
        # be read out of order.
        sent_to = self.topic.partition_of.setdefault(frame.meta.source_id, partition)
        assert partition == sent_to, f"{frame.meta.source} sent to partition {partition}, before to {sent_to}"
        assert partition is not None, "a file was not placed before its first frame"
        fut = asyncio.get_running_loop().create_future()
        # A failed send the shipper drops in its rewind is not an unretrieved error.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.pending.append((fut, frame))
        return fut

    def _live(self) -> None:
        while self.pending and self.pending[0][0].done():   # cancelled by the shipper's rewind
            self.pending.popleft()

    def ack(self, n: int) -> int:
        """The broker stores the ``n`` oldest pending frames and acknowledges them."""
        done = 0
        while done < n:
            self._live()
            if not self.pending:
                break
            fut, frame = self.pending.popleft()
            self.topic.frames.append(frame)
            fut.set_result(types.SimpleNamespace(partition=self.topic.partition_of[frame.meta.source_id]))
            done += 1
        return done

    def store_silently(self, n: int) -> None:
        """The broker stores the ``n`` oldest pending frames, but no ack reaches the shipper."""
        self._live()
        for fut, frame in list(self.pending)[:n]:
            if not fut.done():
                self.topic.frames.append(frame)

    def fail(self, stored: int = 0) -> None:
        """The connection drops: ``stored`` of the oldest were stored (acks lost), all sends fail."""
        self.store_silently(stored)
        for fut, _ in self.pending:
            if not fut.done():
                fut.set_exception(BrokerDown("connection lost"))
        self.pending.clear()

    def in_flight(self) -> int:
        self._live()
        return sum(1 for fut, _ in self.pending if not fut.done())


class ModelShipper(Shipper):
    """The real shipper, producing to a :class:`FakeProducer`."""

    def __init__(self, cfg: Config, topic: Topic) -> None:
        super().__init__(cfg)
        self.topic = topic

    async def _start_producer(self) -> FakeProducer:  # type: ignore[override]
        producer = FakeProducer(self.topic)
        await producer.start()
        return producer


# -- ingest's view of the topic -------------------------------------------------


def deduplicated(frames: Iterable[Frame], stats: collections.Counter[str] | None = None) -> list[bytes]:
    """The records ingest stores from ``frames``, in order: the worker's byte-range dedup, its own functions."""
    ranges: dict[tuple[str, str], Ranges] = {}
    out: list[bytes] = []
    stats = collections.Counter() if stats is None else stats
    for frame in frames:
        meta, records = frame.meta, frame.records
        key = (meta.tenant, meta.source_id)
        stored = ranges.get(key, [])
        kept = drop_stored(records, meta.first_offset, stored)
        if len(records) and not len(kept):
            stats["dedup: frame dropped"] += 1
        elif len(kept) < len(records):
            stats["dedup: stored records cut"] += 1
        ranges[key] = add_range(stored, meta.first_offset, meta.end_offset)
        out.extend(kept.to_pylist())
    return out


def line_id(record: bytes) -> int:
    m = LINE_ID.match(record)
    assert m is not None, f"not a line the test wrote: {record[:80]!r}"
    return int(m[1])


def all_ids(frames: Iterable[Frame]) -> collections.Counter[int]:
    return collections.Counter(line_id(r) for f in frames for r in f.records.to_pylist())


# -- driving the shipper step by step -----------------------------------------------


class Harness:
    """A directory of log files, a shipper over it, the broker's topic and one event loop."""

    def __init__(self, root: Path, **shipper: object) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        self.cfg = Config.model_validate({
            "kafka": {"topic": TOPIC},
            "shipper": {
                "include": [str(self.logs / "*.log")],
                "state_dir": str(root / "state"),
                "host": "model-host",
                "max_frame_bytes": 1024,
                "fingerprint_bytes": FINGERPRINT,
                "max_line_bytes": MAX_LINE,
                "partial_line_timeout_s": 3600,
                **shipper,
            },
        })
        self.loop = asyncio.new_event_loop()
        self.topic = Topic()
        self.shipper = ModelShipper(self.cfg, self.topic)
        self.first = True
        self.restarts = 0

    @property
    def producer(self) -> FakeProducer | None:
        return self.shipper.producer  # type: ignore[return-value]

    def step(self, *, scan: bool = True) -> None:
        """One pass of ``Shipper._run``'s loop (without its sleeps and its waiting for acks)."""
        self.loop.run_until_complete(self._iteration(scan))

    async def _iteration(self, scan: bool) -> None:
        sh = self.shipper
        try:
            if sh.producer is None:
                sh.producer = await sh._start_producer()
            if scan or self.first:
                sh.files.scan(first=self.first)
                self.first = False
            await sh._send_available()
            await sh._collect_acks(wait=False)
            sh.checkpoints.save()
            sh.files.release_drained()
        except BrokerDown:            # as in _run: rewind to the acks, new producer next time
            sh._rewind_all()
            if sh.producer is not None:
                await sh.producer.stop()
                sh.producer = None

    def ack(self, n: int) -> None:
        if self.producer is not None:
            self.producer.ack(n)

    def crash(self, stored: int = 0) -> None:
        """SIGKILL: nothing saved, in-flight frames lost unless the broker stored them already."""
        if self.producer is not None:
            self.producer.store_silently(stored)
            self.producer.pending.clear()
        self.close_files()
        self.shipper = ModelShipper(self.cfg, self.topic)
        self.first = True
        self.restarts += 1

    def close_files(self) -> None:
        for w in self.shipper.files.watchers.values():
            w.close()
        self.shipper.files.watchers.clear()

    def quiet(self) -> bool:
        sh = self.shipper
        return (not sh.inflight and (self.producer is None or self.producer.in_flight() == 0)
                and all(w.at_end() and w.acked == w.offset for w in sh.files.watchers.values()))

    def drain(self, rounds: int = 50) -> None:
        """Step and acknowledge everything until every file is read, sent and acked."""
        for _ in range(rounds):
            self.step()
            self.ack(1 << 30)
            self.step()
            for w in self.shipper.files.watchers.values():
                assert w.acked <= w.offset, f"{w.path}: acked up to {w.acked} but read only to {w.offset}"
            if self.quiet():
                return
        raise AssertionError(f"the shipper did not drain in {rounds} rounds: "
                             f"{[(w.path, w.offset, w.acked, w.size()) for w in self.shipper.files.watchers.values()]}")

    def watches(self, inode: str) -> bool:
        return inode in self.shipper.files.watchers

    def close(self) -> None:
        self.close_files()
        self.loop.close()


def inode_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


# -- the model ---------------------------------------------------------------------


@dataclass
class LogFile:
    name: str                     # app / web: what the lines say
    path: Path | None             # None once deleted
    inode: str
    ids: list[int] = field(default_factory=list)
    partial: bytes = b""          # the rest of a line written only in part


class ShipperMachine(RuleBasedStateMachine):
    """Files and a shipper against the model "every line written arrives exactly once"."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(Path(tempfile.mkdtemp(prefix="shipper-model-")))
        self.ids = itertools.count()
        self.expected: dict[int, bytes] = {}     # id -> the record ingest must store
        self.live: dict[str, LogFile] = {}       # in the glob, by file name
        self.gone: list[LogFile] = []            # renamed out of the glob, or deleted
        self.may_be_lost: set[int] = set()       # unreachable after a crash or copytruncate
        self.rotations = itertools.count(1)

    # -- files -------------------------------------------------------------

    def _line(self, name: str, pad: int) -> tuple[int, bytes]:
        uid = next(self.ids)
        line = b"line-%06d %s %s\n" % (uid, name.encode(), b"x" * pad)
        self.expected[uid] = line if len(line) - 1 <= MAX_LINE else line[:MAX_LINE] + b"\n"
        return uid, line

    def _write(self, f: LogFile, pads: list[int], cut: int | None = None) -> None:
        assert f.path is not None
        out = [f.partial]
        f.partial = b""
        for i, pad in enumerate(pads):
            uid, line = self._line(f.name, pad)
            f.ids.append(uid)
            if cut is not None and i == len(pads) - 1:
                k = 1 + cut % (len(line) - 1)     # leave at least the newline unwritten
                line, f.partial = line[:k], line[k:]
            out.append(line)
        with open(f.path, "ab") as fh:
            fh.write(b"".join(out))

    def _complete(self, f: LogFile) -> None:
        if f.partial:
            self._write(f, [])

    def _stored_ids(self) -> set[int]:
        return set(all_ids(self.h.topic.frames))

    #: Lines are ``line-NNNNNN app `` (16 bytes), 0-70 bytes of padding and a newline: a file
    #: of one or two short lines is known by its inode; with over 48 the line is longer than
    #: MAX_LINE and is cut.
    pads = st.lists(st.integers(0, 70), min_size=1, max_size=8)
    names = st.sampled_from(["app", "web"])

    @initialize(app=pads, web=pads)
    def start(self, app: list[int], web: list[int]) -> None:
        """Both files exist with a few lines when the shipper first scans."""
        for name, first_lines in (("app", app), ("web", web)):
            path = self.h.logs / f"{name}.log"
            path.touch()
            self.live[name] = LogFile(name, path, inode_of(path))
            self._write(self.live[name], first_lines)
        self.h.step()

    @rule(name=names, pads=pads, cut=st.none() | st.integers(0, 200))
    def append(self, name: str, pads: list[int], cut: int | None) -> None:
        """Append lines (the last one perhaps only in part); a missing file is created and scanned."""
        f = self.live.get(name)
        created = f is None
        if f is None:
            path = self.h.logs / f"{name}.log"
            path.touch()
            f = self.live[name] = LogFile(name, path, inode_of(path))
        self._write(f, pads, cut)
        if created:
            self.h.step()

    @precondition(lambda self: any(f.path is not None and self.h.watches(f.inode) for f in self.gone))
    @rule(data=st.data(), pads=pads)
    def append_rotated(self, data: st.DataObject, pads: list[int]) -> None:
        """The application writes a little more to the renamed file before it reopens."""
        f = data.draw(st.sampled_from([f for f in self.gone if f.path is not None and self.h.watches(f.inode)]))
        self._write(f, pads)

    @rule(name=names, create=st.booleans())
    def rotate_rename(self, name: str, create: bool) -> None:
        """``app.log`` -> ``app.log.N`` (out of the glob), then perhaps a new ``app.log``."""
        f = self.live.pop(name, None)
        if f is None:
            return
        self._complete(f)
        assert f.path is not None
        rotated = f.path.with_name(f"{f.path.name}.{next(self.rotations)}")
        os.rename(f.path, rotated)
        f.path = rotated
        self.gone.append(f)
        if create:
            path = self.h.logs / f"{name}.log"
            path.touch()
            self.live[name] = LogFile(name, path, inode_of(path))
            self.h.step()

    @rule(name=names, wait_ack=st.booleans())
    def copytruncate(self, name: str, wait_ack: bool) -> None:
        """Read (and perhaps ack) everything, copy ``app.log`` to ``app.log.N``, truncate it."""
        f = self.live.get(name)
        if f is None:
            return
        self._complete(f)
        assert f.path is not None
        for _ in range(200):
            self.h.step()
            if wait_ack:
                self.h.ack(1 << 30)
                self.h.step()
            w = self.h.shipper.files.watchers.get(f.inode)
            assert w is not None, "a file in the glob is not watched"
            if w.offset == w.size() and (w.acked == w.offset or not wait_ack):
                break
        else:
            raise AssertionError("the file was never read to its end")
        if not wait_ack:
            # In flight: lines the broker has not stored yet may fail and are gone with the truncation.
            self.may_be_lost |= set(f.ids) - self._stored_ids()
        shutil.copyfile(f.path, f.path.with_name(f"{f.path.name}.{next(self.rotations)}"))
        os.truncate(f.path, 0)
        self.gone.append(LogFile(f.name, None, f.inode, f.ids))   # the old content, now in the copy
        f.ids = []
        self.h.step()       # notice the truncation before the file grows again

    @precondition(lambda self: bool(self.live) or any(f.path is not None for f in self.gone))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        """Delete a file in the glob (read to its end through the open descriptor) or a rotated one."""
        choices = [(n, f) for n, f in self.live.items()] + [(None, f) for f in self.gone if f.path is not None]
        name, f = data.draw(st.sampled_from(choices))
        assert f.path is not None
        self._complete(f)
        os.unlink(f.path)
        f.path = None
        if name is not None:
            del self.live[name]
            self.gone.append(f)

    # -- the shipper and the broker -------------------------------------------

    @rule(scan=st.booleans())
    def step(self, scan: bool) -> None:
        self.h.step(scan=scan)

    @rule(n=st.integers(1, 4))
    def ack_some(self, n: int) -> None:
        self.h.ack(n)

    @rule()
    def broker_error(self) -> None:
        """Every pending send fails, none stored."""
        if self.h.producer is not None:
            self.h.producer.fail(stored=0)

    @rule(stored=st.integers(1, 3))
    def store_but_lose_ack(self, stored: int) -> None:
        """The broker stored the oldest pending frames, but the connection dropped before the acks."""
        if self.h.producer is not None:
            self.h.producer.fail(stored=stored)

    @rule(stored=st.integers(0, 3))
    def crash_restart(self, stored: int) -> None:
        """Kill the shipper (no save) and start a new one from the checkpoints on disk."""
        self.h.crash(stored)
        # Files out of the glob (renamed or deleted) are not found again: what was not stored
        # of them is lost. That is the design (a shipper finds files through its globs only),
        # so those lines may be missing, but must still not be stored twice.
        stored_ids = self._stored_ids()
        for f in self.gone:
            self.may_be_lost |= set(f.ids) - stored_ids
        self.h.step()

    @invariant()
    def files_in_the_glob_are_watched(self) -> None:
        for f in self.live.values():
            assert self.h.watches(f.inode), f"{f.path} is in the glob but not watched"

    @invariant()
    def nothing_acked_beyond_what_was_read(self) -> None:
        for w in self.h.shipper.files.watchers.values():
            assert w.acked <= w.offset, f"{w.path}: acked up to {w.acked} but read only to {w.offset}"

    # -- the end ------------------------------------------------------------

    def teardown(self) -> None:
        try:
            for f in self.live.values():
                self._complete(f)
            self.h.drain()
            stats: collections.Counter[str] = collections.Counter()
            stored = deduplicated(self.h.topic.frames, stats)
            for kind in stats:
                event(kind)
            event(f"restarts: {self.h.restarts if self.h.restarts < 3 else '3+'}")
            event(f"source ids: {len({f.meta.source_id for f in self.h.topic.frames})}")
            if self.may_be_lost:
                event("lines out of reach after a crash or copytruncate")
            counts = collections.Counter(line_id(r) for r in stored)
            for r in stored:
                assert r == self.expected[line_id(r)], f"record {r!r} is not the line written"
            twice = sorted(uid for uid, n in counts.items() if n > 1)
            assert not twice, f"stored more than once after dedup: {twice}"
            missing = sorted(set(self.expected) - self.may_be_lost - set(counts))
            assert not missing, f"lines never stored: {missing}"
        finally:
            self.h.close()
            shutil.rmtree(self.h.root, ignore_errors=True)


TestShipperModel = ShipperMachine.TestCase
TestShipperModel.settings = settings(
    max_examples=examples(120), stateful_step_count=40, deadline=None, report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow])


# -- a restart in the middle of a file --------------------------------------------------


def test_restart_resends_only_the_unacknowledged_tail(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        lines = [b"line-%06d app %s\n" % (i, b"y" * 30) for i in range(100)]   # 4800 bytes
        (h.logs / "app.log").write_bytes(b"".join(lines))
        h.step()
        assert h.producer is not None
        sent = [frame for _, frame in h.producer.pending]
        assert len(sent) >= 4 and sent[-1].meta.end_offset == 100 * len(lines[0])
        source_id = sent[0].meta.source_id

        h.ack(1)
        h.step()                                     # collects the ack, saves the checkpoint
        acked = sent[0].meta.end_offset
        h.crash(stored=2)                            # two more stored, their acks never arrive
        assert [f.meta.end_offset for f in h.topic.frames] == [f.meta.end_offset for f in sent[:3]]

        h.step()                                     # the new shipper resumes from the checkpoint
        assert h.producer is not None
        resent = [frame for _, frame in h.producer.pending]
        assert resent[0].meta.source_id == source_id
        assert resent[0].meta.first_offset == acked, "only the unacknowledged tail is sent again"
        h.drain()

        raw = all_ids(h.topic.frames)
        assert sorted(raw) == list(range(100))
        dups = {uid for uid, n in raw.items() if n > 1}
        assert dups == {line_id(r) for f in sent[1:3] for r in f.records.to_pylist()}, \
            "the frames stored without an ack are in the topic twice"
        stored = deduplicated(h.topic.frames)
        assert stored == lines, "after ingest's dedup every line is stored once, in order"
    finally:
        h.close()


# -- what the model found, one case each ---------------------------------------------


def _lines(first: int, n: int, text: bytes = b"") -> list[bytes]:
    return [b"line-%06d app %s\n" % (i, text) for i in range(first, first + n)]


def test_copytruncate_with_frames_in_flight_keeps_the_new_lines(tmp_path: Path) -> None:
    """A frame sent before a truncation is acknowledged after it: the ack belongs to the old content."""
    h = Harness(tmp_path)
    try:
        log = h.logs / "app.log"
        old = _lines(0, 3, b"old")
        log.write_bytes(b"".join(old))
        h.step()                                     # the old content is in flight
        os.truncate(log, 0)                          # copytruncate (the copy is out of the glob)
        h.step()                                     # noticed: the file is read again from 0
        h.ack(1)
        h.step()                                     # the old frame's ack arrives
        w = next(iter(h.shipper.files.watchers.values()))
        new = _lines(100, 5, b"new")
        with open(log, "ab") as f:
            f.write(b"".join(new))
        h.step()
        h.crash()                                    # or a broker error: both resume from w.acked
        h.drain()
        assert deduplicated(h.topic.frames) == old + new, (
            "the new content's first bytes were skipped: the stale ack set the restarted file's "
            f"acked offset (and checkpoint) to the old end ({w.acked} after the ack, offset {w.offset})")
    finally:
        h.close()


def _file_in_inode(directory: Path, ino: int, tries: int = 200) -> Path | None:
    """A new empty file in ``directory`` that the file system put in inode ``ino``, if it will."""
    for i in range(tries):
        candidate = directory / f"candidate-{i}.tmp"        # out of the glob
        candidate.touch()
        if os.stat(candidate).st_ino == ino:
            return candidate
    return None


def test_new_file_in_a_reused_inode_is_a_new_source(tmp_path: Path) -> None:
    """A deleted short file's checkpoint (keyed by inode) must not be inherited by a new file."""
    h = Harness(tmp_path)
    try:
        log = h.logs / "app.log"
        first = _lines(0, 1)
        log.write_bytes(b"".join(first))             # 17 bytes < fingerprint_bytes: known by its inode
        h.step()
        h.ack(1)
        h.step()                                     # stored and acknowledged, checkpoint saved
        ino = os.stat(log).st_ino
        os.unlink(log)                               # logrotate deletes it ...
        h.crash()                                    # ... and the shipper restarts before it saw that
        reused = _file_in_inode(h.logs, ino)
        if reused is None:
            pytest.skip("this file system did not hand out the freed inode again")
        second = _lines(1, 2)
        reused.write_bytes(b"".join(second))
        reused.rename(log)                           # a new app.log, in the old file's inode
        h.drain()
        assert deduplicated(h.topic.frames) == first + second, (
            f"the new file took over the deleted file's checkpoint: {h.shipper.checkpoints.store.load()}")
    finally:
        h.close()


def test_file_deleted_and_made_again_in_its_inode_while_down_is_a_new_source(tmp_path: Path) -> None:
    """start(app,web); append app; ack_some(1); delete app; crash_restart x2; append app.

    The broker stored app's first frame but the shipper never collected the ack, so the
    checkpoint stayed at offset 0. It must still vouch for the bytes sent: else the new
    app.log, in the freed inode, inherits the old source id and ingest drops its lines
    (offsets 0..17) as already stored.
    """
    h = Harness(tmp_path)
    try:
        log, web = h.logs / "app.log", h.logs / "web.log"
        first = _lines(0, 1)                          # 17 bytes < FINGERPRINT: known by its inode
        log.write_bytes(b"".join(first))
        web.write_bytes(b"line-000001 web \n")
        h.step()                                      # both sent, nothing acknowledged
        key = f"ino:{os.stat(log).st_dev}:{os.stat(log).st_ino}"
        assert h.shipper.checkpoints.store.load()[key].head_len == len(first[0]), \
            "the checkpoint on disk covers what was sent before the send"
        with open(log, "ab") as f:
            f.write(b"".join(_lines(2, 2)))           # never read: lost with the deletion
        h.ack(1)                                      # the broker stores app's frame; the ack is never collected
        ino = os.stat(log).st_ino
        os.unlink(log)
        h.crash()                                     # closes the old descriptor: the inode is free
        # Taken now, out of the glob: the restarts' checkpoint saves (a new file each) would take it.
        reused = _file_in_inode(h.logs, ino)
        if reused is None:
            pytest.skip("this file system did not hand out the freed inode again")
        h.step()
        h.crash()
        h.step()
        second = _lines(4, 1)
        reused.write_bytes(b"".join(second))
        reused.rename(log)                            # a new app.log, in the old file's inode
        h.step()
        h.drain()
        # Lines 2 and 3 were never read before app.log was deleted and the shipper restarted.
        assert sorted(deduplicated(h.topic.frames)) == sorted(first + [b"line-000001 web \n"] + second), (
            f"the new file took over the deleted file's checkpoint: {h.shipper.checkpoints.store.load()}")
        assert len({f.meta.source_id for f in h.topic.frames if f.meta.source == str(log)}) == 2
    finally:
        h.close()


def test_over_long_line_followed_by_lines_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    """A line over max_line_bytes whose newline is in the first read: cut, and the next lines intact."""
    h = Harness(tmp_path, partial_line_timeout_s=0.01)
    try:
        long_line = b"line-000000 app " + b"z" * 60 + b"\n"   # 77 bytes, over MAX_LINE
        rest = _lines(1, 2)
        (h.logs / "app.log").write_bytes(long_line + b"".join(rest))
        h.step()
        time.sleep(0.05)
        h.drain()
        assert deduplicated(h.topic.frames) == [long_line[:MAX_LINE] + b"\n", *rest]
        assert [(f.meta.first_offset, f.meta.end_offset, f.meta.truncated_from) for f in h.topic.frames][0] == (
            0, len(long_line), len(long_line))
    finally:
        h.close()
