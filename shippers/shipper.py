"""The shipper loop: discover files, read complete lines, send frames, checkpoint on ack.

Delivery: a frame is produced with acks=all, keyed by the file's source id so
one file's frames stay ordered in one partition. A file's checkpoint moves
only past frames the broker acknowledged, so a restarted shipper re-sends at
most its unacknowledged tail; ingest drops the records it already stored
(per-source high-water marks in the catalog), so nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import TypeVar

from aiokafka import AIOKafkaProducer

from loglake.core.config import Config, InputConfig
from loglake.core.frame import FrameMeta, encode_frame
from loglake.core.kafka_client import client_kwargs, on_connection_broken
from loglake.core.topics import ensure_topic, note_partitions
from shippers.checkpoint import CheckpointStore, FileCheckpoint
from shippers.compressed import CompressedFileError, decompressed
from shippers.discovery import discover
from shippers.fingerprint import fingerprint, head_hash, inode_key
from shippers.metrics import serve as metrics_server
from shippers.multiline import LineJoiner
from shippers.watcher import FileWatcher

log = logging.getLogger("loglake.shipper")

T = TypeVar("T")

#: Checkpoints of files let go are kept this long (and at most this many) while compressed files
#: are read: a rotated file may be compressed as late as its next rotation.
RELEASED_KEEP_S = 7 * 86400
RELEASED_KEEP_MAX = 1000
#: Compressed files read at once, each through a decompressed copy on disk.
MAX_OPEN_COMPRESSED = 2


class StartupError(Exception):
    """The broker could not be reached within ``shipper.startup_timeout_s``."""


@dataclass(frozen=True, slots=True)
class _Compressed:
    """What is known of a .gz file at a given size and mtime: read (or a copy of a file being read)
    under checkpoint ``key``, or unreadable then (``key`` None) until it changes."""

    size: int
    mtime_ns: int
    key: str | None


@dataclass(slots=True)
class InFlight:
    watcher: FileWatcher
    source_id: str               # the acks of a file read again (truncated) belong to its old self
    end_offset: int
    size: int
    future: asyncio.Future


_POD_LOG = re.compile(r"/(?P<namespace>[^/_]+)_(?P<pod>[^/_]+)_(?P<uid>[0-9a-fA-F-]{8,})/(?P<container>[^/]+)/\d+\.log$")
_CONTAINER_LOG = re.compile(r"/(?P<pod>[^/_]+)_(?P<namespace>[^/_]+)_(?P<container>[^/_]+)-(?P<id>[0-9a-f]{64})\.log$")


def kubernetes_labels(path: str) -> dict[str, str]:
    """Namespace, pod and container from a kubelet log path (/var/log/pods or /var/log/containers)."""
    if m := _POD_LOG.search(path):
        return {"k8s.namespace.name": m["namespace"], "k8s.pod.name": m["pod"], "k8s.pod.uid": m["uid"],
                "k8s.container.name": m["container"]}
    if m := _CONTAINER_LOG.search(path):
        return {"k8s.namespace.name": m["namespace"], "k8s.pod.name": m["pod"], "k8s.container.name": m["container"]}
    return {}


def wrapper_for(path: str, fmt: str) -> str:
    """The container runtime wrapping of a file's lines: "", "cri" or "docker"."""
    if fmt != "auto":
        return "" if fmt == "plain" else fmt
    if path.endswith("-json.log"):
        return "docker"
    if "/var/log/pods/" in path or "/var/log/containers/" in path or _POD_LOG.search(path):
        return "cri"
    return ""


@dataclass(frozen=True, slots=True)
class Input:
    """An input's settings, compiled."""

    cfg: InputConfig
    joiner: LineJoiner | None
    service_re: re.Pattern[str] | None


class Shipper:
    """Tail every configured input into ``cfg.kafka.topic``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.sc = cfg.shipper
        self.inputs = [Input(i, LineJoiner.from_config(i.multiline) if i.multiline else None,
                             re.compile(i.service_from_path) if i.service_from_path else None)
                       for i in self.sc.resolved_inputs()]
        self.store = CheckpointStore(self.sc.state_dir)
        self.checkpoints = self.store.load()
        self.watchers: dict[str, FileWatcher] = {}     # by device:inode
        self.inflight: deque[InFlight] = deque()
        self.inflight_bytes = 0
        self.max_inflight_bytes = self.sc.max_inflight_bytes
        self.producer: AIOKafkaProducer | None = None
        self._dirty = False
        self.stats = {"lines": 0, "bytes": 0, "frames": 0, "frame_bytes": 0, "send_errors": 0,
                      "retries": 0, "truncated_lines": 0}
        self.last_loop = time.monotonic()
        self._outage_since: float | None = None
        #: Why the topic is not as configured (its partition count), while it is not: /readyz says so.
        self.topic_fault: str | None = None
        # A broker connection broke: make sure of the topic before sending more.
        self._check_topic = False
        #: .gz files not being read now, by device:inode of the .gz file.
        self._compressed: dict[str, _Compressed] = {}
        self._compressed_waiting = False       # a .gz file waits for one being read to finish
        self._keep_released = any(i.cfg.include_compressed for i in self.inputs)
        self._shared_warned: set[str] = set()
        for reason in self.sc.ignored_settings():
            log.warning("setting ignored", extra={"reason": reason})

    # -- files ---------------------------------------------------------------

    def _new_source_id(self, key: str) -> str:
        return f"{self.sc.host}:{key}:{time.time_ns()}"

    def _identify(self, fd: int, st: os.stat_result) -> str:
        return fingerprint(fd, st.st_size, self.sc.fingerprint_bytes) or inode_key(st)

    def scan(self, *, first: bool = False) -> None:
        """Pick up new files; notice renames out of the globs."""
        seen: dict[str, int] = {}          # device:inode -> the input that has it
        self._compressed_waiting = False
        for index, inp in enumerate(self.inputs):
            exclude = list(inp.cfg.exclude) + ([] if inp.cfg.include_compressed else ["*.gz"])
            for path in discover(inp.cfg.include, exclude):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                inode = f"{st.st_dev}:{st.st_ino}"
                if inode in seen:
                    self._warn_shared(path, seen[inode], index)
                    continue                 # an earlier input has it
                seen[inode] = index
                w = self.watchers.get(inode)
                if w is not None:
                    w.path, w.in_glob = path, True
                    continue
                if path.endswith(".gz"):     # only when the input reads compressed files
                    self._watch_compressed(path, st, index, first)
                else:
                    self._watch(path, index, first)
        for inode, w in self.watchers.items():
            w.in_glob = inode in seen
        for inode in [i for i in self._compressed if i not in seen]:
            gone = self._compressed.pop(inode)
            if gone.key is not None:
                self._retire(gone.key)
        if self._keep_released:
            self._expire_released()

    def _warn_shared(self, path: str, owner: int, other: int) -> None:
        """A file several inputs match is read with the first one's settings only: say so, once."""
        if path in self._shared_warned or len(self._shared_warned) > 10_000:
            return
        self._shared_warned.add(path)
        log.warning("file matched by more than one input; the later input's settings are ignored for it",
                    extra={"path": path, "input": self._input_name(owner), "ignored": self._input_name(other)})

    def _input_name(self, index: int) -> str:
        return f"shipper.inputs.{index}" if index < len(self.sc.inputs) else "shipper"

    def _watch_compressed(self, path: str, st: os.stat_result, index: int, first: bool) -> None:
        """Read a .gz file through its decompressed copy, unless what it holds was read already."""
        inode = f"{st.st_dev}:{st.st_ino}"
        known = self._compressed.get(inode)
        if known is not None and (known.size, known.mtime_ns) == (st.st_size, st.st_mtime_ns):
            return                           # decided at this size: read, a copy, or unreadable
        if sum(w.compressed is not None for w in self.watchers.values()) >= MAX_OPEN_COMPRESSED:
            self._compressed_waiting = True  # each open one holds a decompressed copy on disk
            return
        try:
            fd = decompressed(path, self.sc.state_dir)
        except CompressedFileError as e:     # most often still being written by the rotation
            self._compressed[inode] = _Compressed(st.st_size, st.st_mtime_ns, None)
            log.warning("compressed file not readable (yet); tried again when it changes",
                        extra={"path": path, "reason": str(e)})
            return
        self._watch(path, index, first, fd=fd, compressed=(inode, st.st_size, st.st_mtime_ns))

    def _content_match(self, fd: int, size: int) -> str | None:
        """The key of the checkpoint whose sent bytes this content begins with (the longest), for
        content too short to fingerprint."""
        best: tuple[int, str] | None = None
        hashes: dict[int, str] = {}
        for k, cp in self.checkpoints.items():
            if not 0 < cp.head_len <= size or (best is not None and cp.head_len <= best[0]):
                continue
            if cp.head_len not in hashes:
                hashes[cp.head_len] = head_hash(fd, cp.head_len)
            if hashes[cp.head_len] == cp.head_hash:
                best = (cp.head_len, k)
        return None if best is None else best[1]

    def _retire(self, key: str) -> None:
        """A file was let go: forget its checkpoint, or keep it a while if compressed files are read."""
        cp = self.checkpoints.get(key)
        if cp is None or any(w.key == key for w in self.watchers.values()):
            return
        if self._keep_released:
            if not cp.released_at:
                self.checkpoints[key] = replace(cp, released_at=time.time())
        else:
            del self.checkpoints[key]
        self._dirty = True

    def _expire_released(self) -> None:
        held = {w.key for w in self.watchers.values()} | {c.key for c in self._compressed.values() if c.key}
        released = sorted(((cp.released_at, k) for k, cp in self.checkpoints.items()
                           if cp.released_at and k not in held), reverse=True)
        cutoff = time.time() - RELEASED_KEEP_S
        for i, (at, key) in enumerate(released):
            if at < cutoff or i >= RELEASED_KEEP_MAX:
                del self.checkpoints[key]
                self._dirty = True

    def _watch(self, path: str, index: int, first: bool, *, fd: int | None = None,
               compressed: tuple[str, int, int] | None = None) -> None:
        """Start reading ``path`` (or, for a .gz file, ``fd``, its decompressed copy, with
        ``compressed`` the .gz file's device:inode, size and mtime)."""
        inp = self.inputs[index]
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)    # one descriptor: identified, checked, then read
            except FileNotFoundError:
                return
        st = os.fstat(fd)
        key = self._identify(fd, st)
        if compressed is None:
            cp = self.checkpoints.get(key) or self.checkpoints.get(inode_key(st))
        else:
            # The copy's inode means nothing: a short file is known by the bytes sent of it.
            if key.startswith("ino:"):
                key = self._content_match(fd, st.st_size) or f"gz:{compressed[0]}"
            cp = self.checkpoints.get(key)
        if any(w.key == key for w in self.watchers.values()):
            os.close(fd)
            if compressed is not None:       # the file it was compressed from, still being read
                self._compressed[compressed[0]] = _Compressed(compressed[1], compressed[2], key)
            return                           # a copy of a file we already read (same first bytes)
        # The checkpoint is this file's only if the file still begins with every byte that
        # was sent under its source id (up to the fingerprint size): a file deleted and made
        # again in the same inode while we were down must not inherit the old source id, or
        # ingest drops its first lines as the old file's, already stored.
        if cp is not None and max(cp.offset, cp.head_len) <= st.st_size \
                and head_hash(fd, cp.head_len) == cp.head_hash:
            source_id, offset, sent_end = cp.source_id, cp.offset, cp.head_len
            if compressed is None:
                self.checkpoints.pop(inode_key(st), None)
        else:
            source_id, sent_end = self._new_source_id(key), 0
            offset = st.st_size if (inp.cfg.start_at == "end" and first and cp is None) else 0
        wrapper = wrapper_for(path, inp.cfg.format)
        joiner = (LineJoiner.for_wrapper(wrapper, self.sc.max_frame_bytes - 1, self.sc.partial_line_timeout_s)
                  if wrapper else inp.joiner)
        w = FileWatcher(path, key=key, source_id=source_id, offset=offset, input_index=index,
                        partial_timeout_s=self.sc.partial_line_timeout_s, joiner=joiner,
                        max_line_bytes=self.sc.max_line_bytes, fd=fd, sent_end=sent_end)
        w.wrapper = wrapper
        if compressed is not None:
            w.inode, w.compressed = compressed[0], compressed[1:]   # known by the .gz file's inode
        self.watchers[w.inode] = w
        self.checkpoints[key] = self._checkpoint(w)
        self._dirty = True
        log.info("watching file", extra={"path": path, "offset": offset, "key": key})

    def _checkpoint(self, w: FileWatcher) -> FileCheckpoint:
        # The hash of the bytes sent, not just acknowledged (up to the fingerprint size),
        # tells a resumed file from a new one that took its inode while we were down: the
        # broker may have stored frames whose acks were lost, and a new file matching only
        # the acknowledged bytes (none, at offset 0) would have those offsets deduplicated away.
        n = min(w.sent_end, self.sc.fingerprint_bytes)
        return FileCheckpoint(w.source_id, w.path, w.acked, w.head_hash(n), n)

    def _claim(self, w: FileWatcher, end: int) -> bool:
        """Note that bytes up to ``end`` will be sent under ``w.source_id``; True if the
        checkpoint's head grew and must be saved before they are."""
        if end <= w.sent_end:
            return False
        head_grows = w.sent_end < self.sc.fingerprint_bytes
        w.sent_end = end
        if head_grows:
            self.checkpoints[w.key] = self._checkpoint(w)
            self._dirty = True
        return head_grows

    def prune_checkpoints(self) -> None:
        """Forget checkpoints of files that are gone (after the first scan); while compressed files
        are read, keep them a while instead, since they may come back compressed."""
        live = {w.key for w in self.watchers.values()} | {c.key for c in self._compressed.values() if c.key}
        for key in [k for k in self.checkpoints if k not in live]:
            self._retire(key)

    def _rekey(self, w: FileWatcher) -> None:
        """A file known by its inode grew long enough for a fingerprint."""
        if not w.key.startswith("ino:"):
            return
        fp = fingerprint(w.fd, w.size(), self.sc.fingerprint_bytes)
        if fp is None:
            return
        cp = self.checkpoints.pop(w.key, None)
        w.key = fp
        if cp is not None:
            self.checkpoints[fp] = cp
        self._dirty = True

    def _release_drained(self) -> None:
        for inode, w in list(self.watchers.items()):
            if (w.in_glob and w.compressed is None) or not w.at_end() or w.acked != w.offset:
                continue
            if w.compressed is not None and w.in_glob:
                # Read to its end: the decompressed copy goes, the checkpoint stays while the .gz does.
                self._compressed[inode] = _Compressed(*w.compressed, w.key)
                w.close()
                del self.watchers[inode]
                log.info("compressed file read", extra={"path": w.path, "offset": w.offset})
            elif not w.in_glob:
                w.close()
                del self.watchers[inode]
                self._retire(w.key)
                self._dirty = True
                log.info("released file", extra={"path": w.path, "offset": w.offset})

    def service_for(self, w: FileWatcher) -> str:
        inp = self.inputs[w.input_index]
        if inp.cfg.service:
            return inp.cfg.service
        if inp.service_re is not None and (m := inp.service_re.search(w.path)) and m.group("service"):
            return m.group("service")
        if container := kubernetes_labels(w.path).get("k8s.container.name"):
            return container
        return os.path.basename(w.path).split(".", 1)[0] or "unknown"

    def labels_for(self, w: FileWatcher) -> dict[str, str]:
        inp = self.inputs[w.input_index].cfg
        return {**kubernetes_labels(w.path), **({"env": inp.env} if inp.env else {}), **inp.labels}

    # -- sending -------------------------------------------------------------

    async def _send_available(self) -> int:
        assert self.producer is not None
        frames: list[tuple[FileWatcher, FrameMeta, bytes, int, int]] = []
        reserved = self.inflight_bytes
        claimed = False
        for w in list(self.watchers.values()):
            if w.truncated():
                log.warning("file truncated; reading it again from the start", extra={"path": w.path})
                self.checkpoints.pop(w.key, None)
                st = os.fstat(w.fd)
                key = self._identify(w.fd, st)
                w.restart(key, self._new_source_id(key))
                self.checkpoints[w.key] = self._checkpoint(w)
                self._dirty = True
            self._rekey(w)
            while reserved < self.max_inflight_bytes:
                chunk = w.read(self.sc.max_frame_bytes)
                if chunk is None:
                    break
                n = len(chunk.offsets) - 1
                meta = FrameMeta(
                    source_id=w.source_id, source=w.path, host=self.sc.host,
                    service=self.service_for(w), tenant=self.inputs[w.input_index].cfg.tenant,
                    first_offset=chunk.first_offset, end_offset=chunk.end_offset,
                    observed_us=time.time_ns() // 1000, count=n, labels=self.labels_for(w),
                    truncated_from=chunk.truncated_from, wrapper=w.wrapper)
                if chunk.truncated_from:
                    self.stats["truncated_lines"] += 1
                    log.warning("line longer than max_line_bytes truncated",
                                extra={"path": w.path, "offset": chunk.first_offset, "length": chunk.truncated_from})
                value = encode_frame(meta, chunk.data, chunk.offsets, compress=self.sc.frame_compression == "lz4")
                claimed |= self._claim(w, chunk.end_offset)
                frames.append((w, meta, value, n, len(chunk.data)))
                reserved += len(value)
        if claimed:
            # Durable before the sends: after a crash the broker may hold these frames without
            # our having seen their acks, and the checkpoint must already vouch for their bytes.
            # Only a file's first fingerprint_bytes need this, so it is one save per pass, and rare.
            self._save()
        for w, meta, value, n, nbytes in frames:
            fut = await self.producer.send(
                self.cfg.kafka.topic, value, key=meta.source_id.encode(),
                headers=[(self.cfg.kafka.tenant_header, meta.tenant.encode())])
            self.inflight.append(InFlight(w, meta.source_id, meta.end_offset, len(value), fut))
            self.inflight_bytes += len(value)
            self.stats["lines"] += n
            self.stats["bytes"] += nbytes
            self.stats["frames"] += 1
            self.stats["frame_bytes"] += len(value)
        return len(frames)

    async def _collect_acks(self, wait: bool) -> None:
        """Advance checkpoints past acknowledged frames, in order."""
        while self.inflight:
            head = self.inflight[0]
            if not head.future.done():
                if not wait:
                    return
                await asyncio.wait([head.future])
            self.inflight.popleft()
            self.inflight_bytes -= head.size
            head.future.result()   # raises the send error, handled by the caller
            w = head.watcher
            if head.source_id != w.source_id:
                continue           # sent before the file was truncated; its offsets mean nothing now
            w.acked = head.end_offset
            if w.key in self.checkpoints and self.watchers.get(w.inode) is w:
                self.checkpoints[w.key] = self._checkpoint(w)
                self._dirty = True

    def _rewind_all(self) -> None:
        """After a send error: drop what is in flight and re-read from the acks."""
        for item in self.inflight:
            item.future.cancel()
        self.inflight.clear()
        self.inflight_bytes = 0
        for w in self.watchers.values():
            w.rewind()

    def _save(self) -> None:
        if self._dirty:
            self.store.save(self.checkpoints)
            self._dirty = False

    async def _start_producer(self) -> AIOKafkaProducer:
        k = self.cfg.kafka
        producer = AIOKafkaProducer(
            **client_kwargs(k), client_id=f"{k.client_id}-shipper",
            acks="all" if self.sc.acks == "all" else int(self.sc.acks), linger_ms=self.sc.linger_ms,
            max_batch_size=self.sc.max_batch_bytes, enable_idempotence=self.sc.idempotence,
            max_request_size=max(self.sc.max_batch_bytes, self.sc.max_frame_bytes + (64 << 10)),
            request_timeout_ms=15_000,
            # Frames are lz4 already; with frame compression off, let Kafka compress.
            compression_type=None if self.sc.frame_compression == "lz4" else "lz4",
        )
        on_connection_broken(producer, self._connection_broken)
        try:
            await producer.start()
        except BaseException:              # failed, or cancelled by a stop: close what it opened
            try:
                await producer.stop()
            except Exception:
                pass
            raise
        return producer

    def _connection_broken(self) -> None:
        """The broker may be gone, and come back without the topic (the embedded one keeps it in memory)."""
        self._check_topic = True

    async def _ensure_topic(self) -> None:
        """Create the topic if the broker does not have it, before a new producer asks for it.

        Runs before every producer this shipper starts (the first, and the one after a failed
        delivery) and before sending more once a connection of its producer broke. The embedded
        broker loses its topics when it restarts, and loglake's clients do not let it auto-create
        them (it would with 4 partitions, not ``kafka.partitions``). Raises while the broker is away."""
        self._check_topic = False           # first: a connection that breaks meanwhile asks again
        self.topic_fault = note_partitions(self.cfg.kafka, await ensure_topic(self.cfg.kafka, attempts=1),
                                           self.topic_fault)

    def outage_seconds(self) -> float:
        return 0.0 if self._outage_since is None else time.monotonic() - self._outage_since

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        """Ship until ``stop`` is set (or, with ``once``, until every file is read and acked)."""
        server = await metrics_server(self.sc.metrics_listen, self) if self.sc.metrics_listen else None
        try:
            await self._run(stop, once=once)
        finally:
            if server is not None:
                server.close()

    async def _run(self, stop: asyncio.Event, *, once: bool) -> None:
        backoff = 0.5
        next_scan = 0.0
        first = True
        while not stop.is_set():
            self.last_loop = time.monotonic()
            try:
                if self.producer is None:
                    await _until_stopped(self._ensure_topic(), stop)
                    if stop.is_set():
                        break
                    producer = await _until_stopped(self._start_producer(), stop)
                    if producer is None:
                        break
                    self.producer = producer
                    if self._outage_since is not None:
                        log.info("broker reachable again", extra={"outage_s": round(self.outage_seconds(), 1)})
                        self._outage_since = None
                    backoff = 0.5
                elif self._check_topic:
                    await self._ensure_topic()      # the broker away: an outage, handled below
                if time.monotonic() >= next_scan:
                    self.scan(first=first)
                    if first:
                        self.prune_checkpoints()
                    first = False
                    next_scan = time.monotonic() + self.sc.rescan_interval_s
                sent = await self._send_available()
                if (known := self.producer.client.cluster.partitions_for_topic(self.cfg.kafka.topic)) is not None:
                    # The producer's metadata may show a change.
                    self.topic_fault = note_partitions(self.cfg.kafka, len(known), self.topic_fault)
                await self._collect_acks(wait=self.inflight_bytes >= self.max_inflight_bytes or once)
                self._save()
                self._release_drained()
                if once and not self.inflight and all(w.at_end() for w in self.watchers.values()):
                    if not self._compressed_waiting:
                        break
                    next_scan = 0.0            # the .gz files that waited for these to finish
                if not sent:
                    await asyncio.sleep(self.sc.poll_interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # broker unreachable, timeouts: back off and retry, lose nothing
                self.stats["send_errors"] += 1
                self.stats["retries"] += 1
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    log.warning("cannot deliver to the broker; retrying", extra={"reason": repr(e)})
                self._rewind_all()
                if self.producer is not None:
                    try:
                        await self.producer.stop()
                    except Exception:
                        pass
                    self.producer = None
                await _until_stopped(asyncio.sleep(backoff * (0.5 + random.random()), True), stop)
                backoff = min(backoff * 2, 10.0)
        try:
            if self.producer is not None:
                await self.producer.flush()
                await self._collect_acks(wait=True)
        except Exception as e:
            log.warning("unacknowledged frames at shutdown will be re-sent", extra={"reason": repr(e)})
        finally:
            self._save()
            if self.producer is not None:
                await self.producer.stop()
            for w in self.watchers.values():
                w.close()
            log.info("shipper stopped", extra=self.stats)


async def _until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None once ``stop`` is set first (``work`` is then cancelled): a signal
    must not wait for a connection attempt or a back-off to run out."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:         # our caller gave up (a timeout): so does the work
        task.cancel()
        raise
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:                      # it failed as it was cancelled: moot, we are stopping
        pass
    return None


def describe_error(e: BaseException) -> str:
    """An exception as its type and message (aiokafka's messages often start with the type already)."""
    name, text = type(e).__name__, str(e)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


async def reach_broker(cfg: Config, stop: asyncio.Event) -> int | None:
    """Make sure of the log topic at start, retrying until ``shipper.startup_timeout_s`` runs out
    (``StartupError``, with the last cause) or ``stop`` is set (None); its partition count otherwise."""
    deadline = time.monotonic() + cfg.shipper.startup_timeout_s
    delay = 0.5
    cause = ""
    errors = _ConnectionErrors()
    aiokafka_log = logging.getLogger("aiokafka")    # its client logs as "aiokafka"
    aiokafka_log.addFilter(errors)
    try:
        while True:
            left = deadline - time.monotonic()
            errors.last = None
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    found = await _until_stopped(ensure_topic(cfg.kafka, attempts=1), stop)
                return found
            except TimeoutError:           # an attempt that got no answer (a TLS or SASL mismatch, say)
                cause = cause or "TimeoutError: no answer from the broker"
            except RuntimeError as e:      # ensure_topic's, chained to what went wrong
                cause = describe_error(e.__cause__ or e)
                if errors.last is not None:
                    cause += f" ({describe_error(errors.last)})"
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartupError(f"cannot reach the broker at {cfg.kafka.bootstrap_servers} within "
                                   f"shipper.startup_timeout_s={cfg.shipper.startup_timeout_s:g}: {cause}")
            log.warning("broker not reachable yet; retrying",
                        extra={"bootstrap_servers": cfg.kafka.bootstrap_servers, "reason": cause,
                               "gives_up_in_s": round(left, 1)})
            if await _until_stopped(asyncio.sleep(min(delay, left), True), stop) is None:
                return None
            delay = min(delay * 2, 5.0)
    finally:
        aiokafka_log.removeFilter(errors)


class _ConnectionErrors(logging.Filter):
    """Keeps the error of aiokafka's last failed connection: its client logs the cause (often with an
    empty message) and raises a bare "Unable to bootstrap"."""

    last: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args and isinstance(record.args[-1], BaseException):
            self.last = record.args[-1]
        return True
