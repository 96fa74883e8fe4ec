"""The shipper loop: read complete lines from the files found, send frames, checkpoint on ack.

Delivery: a frame is produced with acks=all, keyed by the file's source id, to
the partition the file was placed on (:mod:`shippers.placement`), so one
file's frames stay ordered in one partition. A file's checkpoint moves
only past frames the broker acknowledged, so a restarted shipper re-sends at
most its unacknowledged tail; ingest keeps the byte ranges it stored of each
source and drops records that start inside them, so nothing is stored twice.
The files themselves (finding, identifying, resuming, letting go) are
:mod:`shippers.files`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from aiokafka import AIOKafkaProducer

from loglake.core.config import Config
from loglake.core.frame import FrameMeta, encode_frame
from loglake.core.kafka_client import client_kwargs, on_connection_broken
from loglake.core.topics import ensure_topic, note_partitions
from shippers.checkpoint import Checkpointer
from shippers.files import TailedFiles
from shippers.inputs import Input, kubernetes_labels
from shippers.metrics import ShipperSnapshot
from shippers.metrics import serve as metrics_server
from shippers.placement import PartitionLoad, place
from shippers.watcher import FileWatcher

log = logging.getLogger("loglake.shipper")

T = TypeVar("T")


class StartupError(Exception):
    """The broker could not be reached within ``shipper.startup_timeout_s``."""


@dataclass(slots=True)
class InFlight:
    watcher: FileWatcher
    source_id: str               # the acks of a file read again (truncated) belong to its old self
    end_offset: int
    size: int                    # the frame's bytes
    future: asyncio.Future       # resolves to the record's metadata: its partition
    #: The file's bytes it carries: what a partition's load counts, as it counts the unread ones.
    file_bytes: int = 0


class Shipper:
    """Tail every configured input into ``cfg.kafka.topic``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.sc = cfg.shipper
        inputs = [Input.compile(i) for i in self.sc.resolved_inputs()]
        self.checkpoints = Checkpointer(self.sc.state_dir,
                                        keep_released=any(i.cfg.include_compressed for i in inputs))
        self.files = TailedFiles(self.sc, inputs, self.checkpoints)
        self.inflight: deque[InFlight] = deque()
        self.inflight_bytes = 0
        self.max_inflight_bytes = self.sc.max_inflight_bytes
        self.producer: AIOKafkaProducer | None = None
        self.stats = {"lines": 0, "bytes": 0, "frames": 0, "frame_bytes": 0, "send_errors": 0,
                      "retries": 0, "truncated_lines": 0}
        self.last_loop = time.monotonic()
        self._outage_since: float | None = None
        #: Why the topic is not as configured (its partition count), while it is not: /readyz says so.
        self.topic_fault: str | None = None
        #: The topic's partition count as last seen (None before the broker was reached).
        self.partitions: int | None = None
        self.partition_load = PartitionLoad()
        # A broker connection broke: make sure of the topic before sending more.
        self._check_topic = False
        for reason in self.sc.ignored_settings():
            log.warning("setting ignored", extra={"reason": reason})

    def snapshot(self, *, file_lag: bool = True) -> ShipperSnapshot:
        """The figures /metrics and the health checks report, as of now (with each file's lag
        unless ``file_lag`` is False: that costs a stat per file)."""
        lag: list[tuple[str, int]] = []
        for w in list(self.files.watchers.values()) if file_lag else ():
            try:
                lag.append((w.path, max(0, w.size() - w.acked)))
            except OSError:
                continue
        return ShipperSnapshot(stats=MappingProxyType(dict(self.stats)), files_watched=len(self.files.watchers),
                               inflight_bytes=self.inflight_bytes, file_lag=tuple(lag),
                               outage_seconds=self.outage_seconds(), topic_fault=self.topic_fault,
                               last_loop=self.last_loop)

    # -- frames --------------------------------------------------------------

    def service_for(self, w: FileWatcher) -> str:
        inp = self.files.inputs[w.input_index]
        if inp.cfg.service:
            return inp.cfg.service
        if inp.service_re is not None and (m := inp.service_re.search(w.path)) and m.group("service"):
            return m.group("service")
        if container := kubernetes_labels(w.path).get("k8s.container.name"):
            return container
        return os.path.basename(w.path).split(".", 1)[0] or "unknown"

    def labels_for(self, w: FileWatcher) -> dict[str, str]:
        inp = self.files.inputs[w.input_index].cfg
        return {**kubernetes_labels(w.path), **({"env": inp.env} if inp.env else {}), **inp.labels}

    # -- sending -------------------------------------------------------------

    def _place_new(self) -> bool:
        """Give each file not placed yet its partition; True if any was (its checkpoint changed)."""
        n = self._partition_count()
        new = [w for w in self.files.watchers.values() if w.partition is None]
        if not new:
            return False
        load = self.partition_load.recent(n)
        for w in self.files.watchers.values():
            if w.partition is not None and 0 <= w.partition < n:
                load[w.partition] += w.unread()
        chosen = place([(w.source_id, w.unread()) for w in new], load)
        for w, p in zip(new, chosen, strict=True):
            self.files.placed(w, p)
        return True

    def _partition_of(self, w: FileWatcher) -> int | None:
        """Where ``w``'s frames go: its placed partition, or None for Kafka's hash of the key (a
        file checkpointed before placement, or placed on a partition the topic no longer has)."""
        p = w.partition
        return p if p is not None and 0 <= p < self._partition_count() else None

    def _partition_count(self) -> int:
        # (the topic's, known before the first send; the configured one until then)
        return self.partitions or self.cfg.kafka.partitions

    async def _send_available(self) -> int:
        assert self.producer is not None
        frames: list[tuple[FileWatcher, FrameMeta, bytes, int, int]] = []
        reserved = self.inflight_bytes
        watchers = list(self.files.watchers.values())
        for w in watchers:
            self.files.refresh(w)           # (a file read again from its start is a new source)
        # Every file is placed before its first frame goes: one sent keyed to Kafka's hash and the
        # next to a placed partition would be out of order.
        claimed = self._place_new()
        for w in watchers:
            while reserved < self.max_inflight_bytes:
                chunk = w.read(self.sc.max_frame_bytes)
                if chunk is None:
                    break
                n = len(chunk.offsets) - 1
                meta = FrameMeta(
                    source_id=w.source_id, source=w.path, host=self.sc.host,
                    service=self.service_for(w), tenant=self.files.inputs[w.input_index].cfg.tenant,
                    first_offset=chunk.first_offset, end_offset=chunk.end_offset,
                    observed_us=time.time_ns() // 1000, count=n, labels=self.labels_for(w),
                    truncated_from=chunk.truncated_from, wrapper=w.wrapper,
                    timezone=self.files.inputs[w.input_index].cfg.timezone)
                if chunk.truncated_from:
                    self.stats["truncated_lines"] += 1
                    log.warning("line longer than max_line_bytes truncated",
                                extra={"path": w.path, "offset": chunk.first_offset, "length": chunk.truncated_from})
                value = encode_frame(meta, chunk.data, chunk.offsets, compress=self.sc.frame_compression == "lz4")
                claimed |= self.files.claim(w, chunk.end_offset)
                frames.append((w, meta, value, n, len(chunk.data)))
                reserved += len(value)
        if claimed:
            # Durable before the sends: after a crash the broker may hold these frames without
            # our having seen their acks, and the checkpoint must already vouch for their bytes.
            # Only a file's first fingerprint_bytes need this, so it is one save per pass, and rare.
            self.checkpoints.save()
        for w, meta, value, n, nbytes in frames:
            fut = await self.producer.send(
                self.cfg.kafka.topic, value, key=meta.source_id.encode(), partition=self._partition_of(w),
                headers=[(self.cfg.kafka.tenant_header, meta.tenant.encode())])
            self.inflight.append(InFlight(w, meta.source_id, meta.end_offset, len(value), fut, nbytes))
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
            record = head.future.result()   # raises the send error, handled by the caller
            self.partition_load.sent(record.partition, head.file_bytes)
            self.files.acked(head.watcher, head.source_id, head.end_offset)

    def _rewind_all(self) -> None:
        """After a send error: drop what is in flight and re-read from the acks."""
        for item in self.inflight:
            item.future.cancel()
        self.inflight.clear()
        self.inflight_bytes = 0
        for w in self.files.watchers.values():
            w.rewind()

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
        self.partitions = await ensure_topic(self.cfg.kafka, attempts=1)
        self.topic_fault = note_partitions(self.cfg.kafka, self.partitions, self.topic_fault)

    def outage_seconds(self) -> float:
        return 0.0 if self._outage_since is None else time.monotonic() - self._outage_since

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        """Ship until ``stop`` is set (or, with ``once``, until every file is read and acked)."""
        server = await metrics_server(self.sc.metrics_listen, self.snapshot) if self.sc.metrics_listen else None
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
                    self.files.scan(first=first)
                    if first:
                        self.files.prune_checkpoints()
                    first = False
                    next_scan = time.monotonic() + self.sc.rescan_interval_s
                sent = await self._send_available()
                if (known := self.producer.client.cluster.partitions_for_topic(self.cfg.kafka.topic)) is not None:
                    # The producer's metadata may show a change.
                    self.partitions = len(known)
                    self.topic_fault = note_partitions(self.cfg.kafka, len(known), self.topic_fault)
                await self._collect_acks(wait=self.inflight_bytes >= self.max_inflight_bytes or once)
                self.checkpoints.save()
                self.files.release_drained()
                if once and not self.inflight and all(w.at_end() for w in self.files.watchers.values()):
                    if not self.files.compressed_waiting:
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
            self.checkpoints.save()
            if self.producer is not None:
                await self.producer.stop()
            self.files.close()
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
