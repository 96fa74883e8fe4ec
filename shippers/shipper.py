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
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from loglake.core.config import Config, InputConfig
from loglake.core.frame import FrameMeta, encode_frame
from loglake.core.kafka_client import client_kwargs, on_connection_broken
from loglake.core.topics import ensure_topic, note_partitions
from shippers.checkpoint import CheckpointStore, FileCheckpoint
from shippers.discovery import discover
from shippers.fingerprint import fingerprint, head_hash, inode_key
from shippers.metrics import serve as metrics_server
from shippers.multiline import LineJoiner
from shippers.watcher import FileWatcher

log = logging.getLogger("loglake.shipper")


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

    # -- files ---------------------------------------------------------------

    def _new_source_id(self, key: str) -> str:
        return f"{self.sc.host}:{key}:{time.time_ns()}"

    def _identify(self, fd: int, st: os.stat_result) -> str:
        return fingerprint(fd, st.st_size, self.sc.fingerprint_bytes) or inode_key(st)

    def scan(self, *, first: bool = False) -> None:
        """Pick up new files; notice renames out of the globs."""
        seen: set[str] = set()
        for index, inp in enumerate(self.inputs):
            exclude = list(inp.cfg.exclude) + ([] if inp.cfg.include_compressed else ["*.gz"])
            for path in discover(inp.cfg.include, exclude):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                inode = f"{st.st_dev}:{st.st_ino}"
                if inode in seen:
                    continue                 # an earlier input has it
                seen.add(inode)
                w = self.watchers.get(inode)
                if w is not None:
                    w.path, w.in_glob = path, True
                    continue
                self._watch(path, index, first)
        for inode, w in self.watchers.items():
            w.in_glob = inode in seen

    def _watch(self, path: str, index: int, first: bool) -> None:
        inp = self.inputs[index]
        try:
            fd = os.open(path, os.O_RDONLY)        # one descriptor: identified, checked, then read
        except FileNotFoundError:
            return
        st = os.fstat(fd)
        key = self._identify(fd, st)
        cp = self.checkpoints.get(key) or self.checkpoints.get(inode_key(st))
        if any(w.key == key for w in self.watchers.values()):
            os.close(fd)
            return                           # a copy of a file we already read (same first bytes)
        # The checkpoint is this file's only if the file still begins with every byte that
        # was sent under its source id (up to the fingerprint size): a file deleted and made
        # again in the same inode while we were down must not inherit the old source id, or
        # ingest drops its first lines as the old file's, already stored.
        if cp is not None and max(cp.offset, cp.head_len) <= st.st_size \
                and head_hash(fd, cp.head_len) == cp.head_hash:
            source_id, offset, sent_end = cp.source_id, cp.offset, cp.head_len
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
        """Forget checkpoints of files that are gone (after the first scan)."""
        live = {w.key for w in self.watchers.values()}
        for key in [k for k in self.checkpoints if k not in live]:
            del self.checkpoints[key]
            self._dirty = True

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
            if not w.in_glob and w.at_end() and w.acked == w.offset:
                w.close()
                del self.watchers[inode]
                self.checkpoints.pop(w.key, None)
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
        await producer.start()
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
                    await self._ensure_topic()
                    self.producer = await self._start_producer()
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
                    break
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
                await asyncio.sleep(backoff * (0.5 + random.random()))
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
