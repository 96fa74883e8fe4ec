"""The ingest worker: a consumer-group member that turns Kafka messages into segments.

It consumes the shipper's topic and any third-party topics in one group. Per
partition it buffers records from the catalog's next offset on; a flush (by
rows, bytes or age) normalises the buffer in DuckDB, writes one segment per
tenant and hour, sends what could not become rows to the dead-letter topic,
and then commits segments, the partition's new offset and the per-source
stored byte ranges in one catalog transaction. Kafka's committed offsets are
updated afterwards, for monitoring only.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from ingest.batch import RecordRun, raw_table
from ingest.deadletters import DeadLetter, DeadLetterProducer, Reason
from ingest.marks import Ranges, add_range, drop_stored
from ingest.metrics import registry_for
from ingest.normalise import Normaliser, ParseSettings, normalise_safely
from loglake.core.config import Config, SourceFormat, TopicInput
from loglake.core.frame import FrameError, FrameMeta, decode_frame
from loglake.core.kafka_client import client_kwargs, on_connection_broken, refresh_metadata
from loglake.core.metrics_server import serve as serve_metrics
from loglake.core.topics import ensure_topic, note_partitions
from storage.catalog import Catalog, PartitionCommit, PartitionState
from storage.errors import CatalogConflict, StorageError
from storage.root import DataRoot
from storage.segments import SegmentInfo, check_tenant, segment_name, write_segments

log = logging.getLogger("loglake.ingest")

Key = tuple[str, int]          # (topic, partition)


class TopicRecreated(RuntimeError):
    """The catalog is ahead of the log and the policy is to stop."""


@dataclass
class Pending:
    """Third-party messages of one tenant, gathered into one run at flush."""

    values: list[bytes] = field(default_factory=list)
    observed_ms: list[int] = field(default_factory=list)


@dataclass
class PartitionBuffer:
    state: PartitionState                  # the catalog's position when the buffer began
    last_offset: int | None = None         # last Kafka offset taken into the buffer
    runs: list[tuple[str, RecordRun]] = field(default_factory=list)   # (tenant, run)
    pending: dict[str, Pending] = field(default_factory=lambda: defaultdict(Pending))
    dead: list[DeadLetter] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    ranges: dict[tuple[str, str], Ranges] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    last_record: str | None = None         # fingerprint of the record at last_offset


#: The end of year 9999: later times have no calendar date (segments are filed by date and hour).
MAX_OBSERVED_MS = 253_402_300_800_000


def fingerprint(timestamp_ms: int, value: bytes | None) -> str:
    """What identifies one Kafka record well enough to tell a recreated topic from the stored one."""
    return f"{timestamp_ms}:{zlib.crc32(value or b''):08x}"


class IngestWorker:
    """Consume ``cfg.kafka.topic`` and ``cfg.ingest.topics`` in group ``cfg.ingest.group_id`` into the catalog."""

    def __init__(self, cfg: Config, catalog: Catalog) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.inputs: dict[str, TopicInput] = {t.name: t for t in cfg.ingest.topics}
        self.topics = [cfg.kafka.topic, *(t for t in self.inputs if t != cfg.kafka.topic)]
        self.root = DataRoot.from_config(cfg.storage)
        self.buffers: dict[Key, PartitionBuffer] = {}
        self.ranges: dict[tuple[str, str], Ranges] = {}    # stored byte ranges per source
        self.normaliser = Normaliser(ParseSettings(default_timezone=cfg.ingest.default_timezone,
                                                   max_ahead_s=cfg.ingest.max_ahead_s,
                                                   patterns=cfg.ingest.patterns(),
                                                   max_attrs=cfg.ingest.max_attrs))
        self.dead_letters = DeadLetterProducer(cfg)
        self.consumer: AIOKafkaConsumer | None = None
        # A rebalance callback may flush while the loop is flushing; one at a time.
        self._flush_lock = asyncio.Lock()
        self._retry_at = 0.0
        #: Why flushes fail, while they do (the data stays buffered): /readyz and metrics report it.
        self.fault: str | None = None
        self.fault_since: float | None = None
        self.last_flush = time.monotonic()
        self.last_loop = time.monotonic()
        self.stats: Counter[str] = Counter()
        # Flushing by size since the log was last read to its end: working through a backlog.
        self._behind = False
        self.dead_letter_counts: Counter[str] = Counter()
        self._formats: dict[tuple[str, str, str], str] = {}
        # Partitions being checked for a recreated topic: offset expected next.
        self._probes: dict[Key, int] = {}
        # Each probed partition's log start when it was assigned.
        self._log_starts: dict[Key, int] = {}
        #: Why the log topic is not as configured (its partition count), while it is not.
        self.topic_fault: str | None = None
        # Partitions whose log is to be checked since a broker connection broke, and when it broke
        # (epoch ms, the clock of the consumer's poll timestamps).
        self._unverified: dict[Key, int] = {}

    # -- configuration ---------------------------------------------------------

    def format_for(self, topic: str, service: str, source: str) -> str:
        """The configured format of a source ("" to detect per line); the first matching rule wins."""
        key = (topic, service, source)
        if key not in self._formats:
            fmt, patterns = "", 0
            for rule in self.cfg.ingest.formats:
                if _matches(rule, topic, service, source):
                    fmt = f"pattern{patterns}" if rule.format == "pattern" else rule.format
                    break
                patterns += rule.format == "pattern"
            self._formats[key] = "" if fmt == "auto" else fmt
        return self._formats[key]

    # -- topics ----------------------------------------------------------------

    async def _ensure_topics(self, attempts: int) -> None:
        """Create the log topic, the dead-letter topic and the third-party topics unless they exist."""
        k = self.cfg.kafka
        self.topic_fault = note_partitions(k, await ensure_topic(k, attempts=attempts), self.topic_fault)
        await ensure_topic(k, topic=self.cfg.ingest.dead_letter_topic, partitions=1, attempts=attempts)
        for t in self.inputs:
            await ensure_topic(k, topic=t, attempts=attempts)

    async def _topics_again(self) -> None:
        """On a rebalance, before reading: create any topic the broker lost, and show it to the consumer.

        A rebalance is what a worker sees of a broker that went away and came back: the embedded
        broker loses its consumer groups along with its topics, so the member joins again. The
        topics must exist before the consumer asks for their offsets, since loglake's clients never
        let a broker auto-create one (tansu would, with 4 partitions rather than ``kafka.partitions``)."""
        assert self.consumer is not None
        try:
            await self._ensure_topics(attempts=3)
        except Exception as e:
            log.warning("cannot check the topics on rebalance; reading on", extra={"reason": str(e)})
            return
        if any(self.consumer.partitions_for_topic(t) is None for t in self.topics):
            # Its metadata saw a topic vanish (it then holds no partition of it): let it see the topic
            # again now, not at its next periodic refresh; the group rebalances once more.
            refresh_metadata(self.consumer)

    # -- partition ownership -------------------------------------------------

    async def _assigned(self, partitions: set[TopicPartition]) -> None:
        assert self.consumer is not None
        await self._topics_again()
        if not partitions:
            return
        await self._position(partitions)
        log.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)})

    async def _position(self, partitions: set[TopicPartition]) -> None:
        """Start each partition's buffer at the catalog's offset, probing the log where it may be new."""
        assert self.consumer is not None
        ends = await self.consumer.end_offsets(list(partitions))
        starts = await self.consumer.beginning_offsets(list(partitions))
        self.ranges = self.catalog.source_ranges()
        states = {t: self.catalog.partition_states(t) for t in {tp.topic for tp in partitions}}
        for tp in partitions:
            key = (tp.topic, tp.partition)
            state = states[tp.topic].get(tp.partition, PartitionState(0, 0))
            self.buffers[key] = PartitionBuffer(state)
            self._probes.pop(key, None)
            self._unverified.pop(key, None)
            if state.next_offset > 0 and (state.next_offset > ends[tp] or state.last_record is not None):
                # The topic may have been recreated (always so after restarting the in-memory
                # embedded broker), and may even have grown past our offset since. The reported
                # end is no proof (tansu reports a batch's base offset), so read the last record
                # we stored back: if it is there, and the same, nothing was recreated.
                self._probes[key] = state.next_offset
                self._log_starts[key] = starts[tp]
                self.consumer.seek(tp, state.next_offset - 1)
            else:
                self.consumer.seek(tp, max(state.next_offset, starts[tp]))

    def _connection_broken(self) -> None:
        """A broker connection broke. The broker may come back with new, shorter logs (the embedded one
        keeps them in memory), and the consumer would go on reading them from its old positions,
        taking records that are not the ones after those it took. Until each partition's log is
        checked (``_verify``), nothing fetched from it after this moment is taken."""
        now_ms = int(time.time() * 1000)
        for key in self.buffers:
            self._unverified.setdefault(key, now_ms)

    async def _verify(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Check the log of every partition fetched from again since a broker connection broke.

        What was fetched before the break is taken as usual (the consumer fetches no more of a
        partition while it holds records of it, so a poll timestamp before the break vouches for
        them). Once a fetch after the break has come back the broker is there again: the topics are
        created if it lost them, what was taken before the break is flushed, and the partition is
        positioned as on assignment (a probe of the last stored record tells a new log). The
        records fetched meanwhile are dropped from ``batch`` and read again."""
        assert self.consumer is not None
        ensured = False
        for key, broken_ms in list(self._unverified.items()):
            tp = TopicPartition(*key)
            if not self._owned(key):
                self._unverified.pop(key, None)
                continue
            polled = self.consumer.last_poll_timestamp(tp)
            if polled is None or polled <= broken_ms:
                continue
            batch.pop(tp, None)
            if not ensured:
                ensured = True
                try:
                    await self._ensure_topics(attempts=1)
                except Exception as e:     # the log can be checked all the same
                    log.warning("cannot check the topics after a broken broker connection", extra={"reason": str(e)})
            try:
                if time.monotonic() < self._retry_at:
                    raise FlushFailed("flushes are failing")
                await self.flush([key])
                # A rebalance runs beside this loop: the partition may have been revoked meanwhile,
                # or assigned again (and positioned by that).
                if key in self._unverified and self._owned(key):
                    await self._position({tp})
                    log.info("broker connection back: log checked from the catalog's offset",
                             extra={"topic": tp.topic, "partition": tp.partition})
            except Exception as e:
                # Checked again after the next fetch; meanwhile nothing more of it is taken.
                log.warning("cannot check the log after a broken broker connection yet",
                            extra={"topic": tp.topic, "partition": tp.partition, "reason": str(e)})
                if self._owned(key):
                    self.consumer.seek(tp, self._resume_offset(key))

    def _owned(self, key: Key) -> bool:
        """Whether ``key`` is assigned to this worker (and has its buffer)."""
        assert self.consumer is not None
        return key in self.buffers and TopicPartition(*key) in self.consumer.assignment()

    def _resume_offset(self, key: Key) -> int:
        """Where reading ``key`` goes on: its probe's record, past what its buffer holds, or the catalog's offset."""
        if key in self._probes:
            return self._probes[key] - 1
        buf = self.buffers[key]
        return buf.last_offset + 1 if buf.last_offset is not None else buf.state.next_offset

    def _probed(self, tp: TopicPartition, first_offset: int, first_record: str) -> bool:
        """Settle a probe with the first record read; whether to take the batch's records."""
        expected = self._probes.pop((tp.topic, tp.partition))
        stored = self.buffers[(tp.topic, tp.partition)].state.last_record
        if first_offset > expected - 1 or (first_offset == expected - 1 and stored in (None, first_record)):
            return True              # our last stored record is there (or retention took it): carry on
        # Reading restarted at the earliest offset (the log is shorter than the catalog), or the
        # record at our offset is another one (a new log that has grown past it).
        start = min(first_offset, self._log_starts.get((tp.topic, tp.partition), first_offset))
        return self._recreated(tp, expected, start)

    async def _settle_probes(self, batch: dict[TopicPartition, list[object]]) -> None:
        """Probes that read nothing: a fetch's high watermark below our offset settles them too."""
        assert self.consumer is not None
        for topic, partition in list(self._probes):
            tp = TopicPartition(topic, partition)
            high = self.consumer.highwater(tp)
            if batch.get(tp) or high is None or high >= self._probes[(topic, partition)]:
                continue
            expected = self._probes.pop((topic, partition))
            start = (await self.consumer.beginning_offsets([tp]))[tp]
            self._recreated(tp, expected, start)

    def _recreated(self, tp: TopicPartition, expected: int, start: int) -> bool:
        """Apply ``ingest.on_topic_recreated``; whether to take the records read from ``start``."""
        assert self.consumer is not None
        end = self.consumer.highwater(tp)
        policy = self.cfg.ingest.on_topic_recreated
        details = {"topic": tp.topic, "partition": tp.partition, "catalog_offset": expected,
                   "log_start": start, "log_end": end, "policy": policy}
        if policy == "fail":
            log.error("topic recreated: the log no longer holds what the catalog stored last; stopping "
                      "(ingest.on_topic_recreated=fail)",
                      extra=details)
            raise TopicRecreated(f"{tp.topic}/{tp.partition}: the record before catalog offset {expected} is "
                                 f"not in the log (offsets {start} to {end}); the topic was recreated")
        log.warning("topic recreated: the log no longer holds what the catalog stored last; starting a new epoch",
                    extra=details)
        first = end if policy == "latest" and end is not None else start
        self.buffers[(tp.topic, tp.partition)] = PartitionBuffer(
            self.catalog.reset_partition(tp.topic, tp.partition, first))
        self.consumer.seek(tp, first)
        return False

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        mine = [(tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) in self.buffers]
        if mine:
            try:
                await self.flush(mine)
            except Exception as e:
                # Abandoning is safe: the catalog did not move, so the next owner re-reads it all.
                log.warning("flush on revocation failed; abandoning the buffer", extra={"reason": str(e)})
        for key in mine:
            self.buffers.pop(key, None)
            self._unverified.pop(key, None)
        log.info("partitions revoked", extra={"partitions": sorted(f"{t}/{p}" for t, p in mine)})

    # -- consuming -----------------------------------------------------------

    def _pinned(self, topic: str) -> str:
        """The tenant configured for ``topic`` ("" when it has none)."""
        return self.inputs[topic].tenant if topic in self.inputs else ""

    def _tenant(self, topic: str, headers: list[tuple[str, bytes]]) -> str:
        fixed = self._pinned(topic)
        if fixed:
            return fixed
        for k, v in headers or ():
            if k == self.cfg.kafka.tenant_header and v:
                return v.decode("utf-8", "replace")
        return self.cfg.ingest.default_tenant

    def _dead(self, buf: PartitionBuffer, letter: DeadLetter) -> None:
        buf.dead.append(letter)
        log.error("record set aside for the dead-letter topic",
                  extra={"reason": letter.reason.value, "detail": letter.detail[:200], "topic": letter.topic,
                         "partition": letter.partition, "offset": letter.offset})

    def _take(self, topic: str, partition: int, offset: int, value: bytes | None,
              headers: list[tuple[str, bytes]], timestamp_ms: int) -> None:
        buf = self.buffers[(topic, partition)]
        if buf.last_offset is None:
            buf.started = time.monotonic()
        buf.last_offset = offset
        if not value:
            return
        self.stats["input_bytes"] += len(value)
        tenant = self._tenant(topic, headers)
        where = {"topic": topic, "partition": partition, "offset": offset}
        if value[:4] != b"LLKF":
            self._take_message(buf, topic, tenant, value, timestamp_ms, where)
            return
        try:
            frame = decode_frame(value, self.cfg.ingest.max_frame_bytes)
        except FrameError as e:
            self._dead(buf, DeadLetter(Reason.CORRUPT_FRAME, value, detail=str(e), context={"tenant": tenant},
                                       **where))
            return
        meta, records = frame.meta, frame.records
        # A topic's configured tenant wins over the frame's, or anyone who may write to a pinned
        # third-party topic could file records under any tenant by sending a frame naming it.
        pinned = self._pinned(topic)
        if pinned and meta.tenant != pinned:
            if meta.tenant:
                self.stats["tenant_overridden"] += len(records)
            meta = replace(meta, tenant=pinned)
        tenant = meta.tenant or tenant
        context = {"tenant": tenant, "source": meta.source, "service": meta.service, "host": meta.host}
        try:
            check_tenant(tenant)
        except StorageError as e:
            self._dead(buf, DeadLetter(Reason.INVALID_TENANT, value, detail=str(e), context=context, **where))
            return
        key = (tenant, meta.source_id)
        ranges = self.ranges.get(key, [])
        kept = drop_stored(records, meta.first_offset, ranges)
        self.stats["deduplicated"] += len(records) - len(kept)
        records = kept
        self.ranges[key] = buf.ranges[key] = add_range(ranges, meta.first_offset, meta.end_offset)
        if not len(records):
            return
        records = self._drop_oversized(buf, records, context, where)
        if meta.truncated_from:
            meta = replace(meta, labels={**meta.labels, "truncated": "true",
                                         "original_length": str(meta.truncated_from)})
        buf.runs.append((tenant, RecordRun(meta, records, self.format_for(topic, meta.service, meta.source))))
        buf.rows += len(records)
        buf.bytes += records.nbytes

    def _drop_oversized(self, buf: PartitionBuffer, records: pa.BinaryArray, context: dict[str, str],
                        where: dict[str, object]) -> pa.BinaryArray:
        limit = self.cfg.ingest.max_record_bytes
        lengths = pc.binary_length(records).to_numpy(zero_copy_only=False)
        if lengths.max(initial=0) <= limit:
            return records
        big = lengths > limit
        for i in np.flatnonzero(big).tolist():
            self._dead(buf, DeadLetter(Reason.OVERSIZED, records[i].as_py(),
                                       detail=f"record of {int(lengths[i])} bytes is over max_record_bytes={limit}",
                                       context=context, **where))   # type: ignore[arg-type]
        return records.filter(pa.array(~big))

    def _take_message(self, buf: PartitionBuffer, topic: str, tenant: str, value: bytes, timestamp_ms: int,
                      where: dict[str, object]) -> None:
        """A third-party producer's message: one plain-text line or one JSON object."""
        context = {"tenant": tenant, "source": f"kafka:{topic}"}
        try:
            check_tenant(tenant)
        except StorageError as e:
            self._dead(buf, DeadLetter(Reason.INVALID_TENANT, value, detail=str(e), context=context, **where))  # type: ignore[arg-type]
            return
        if len(value) > self.cfg.ingest.max_record_bytes:
            self._dead(buf, DeadLetter(Reason.OVERSIZED, value, context=context,
                                       detail=f"record of {len(value)} bytes is over "
                                              f"max_record_bytes={self.cfg.ingest.max_record_bytes}",
                                       **where))   # type: ignore[arg-type]
            return
        pending = buf.pending[tenant]
        pending.values.append(value)
        # Old message formats carry no timestamp (-1 or None), and a producer's clock can be absurd
        # (past year 9999 a timestamp has no date): then it is observed now.
        pending.observed_ms.append(timestamp_ms if timestamp_ms and 0 < timestamp_ms < MAX_OBSERVED_MS
                                   else int(time.time() * 1000))
        buf.rows += 1
        buf.bytes += len(value)

    def _gather(self, topic: str, buf: PartitionBuffer) -> list[tuple[str, RecordRun]]:
        """The buffer's runs, with its third-party messages as one run per tenant."""
        runs = list(buf.runs)
        service = self.inputs[topic].service if topic in self.inputs else "unknown"
        source = f"kafka:{topic}"
        for tenant, p in buf.pending.items():
            if not p.values:
                continue
            meta = FrameMeta(source_id="", source=source, host="", service=service, tenant=tenant,
                             first_offset=0, end_offset=0, observed_us=0, count=len(p.values))
            runs.append((tenant, RecordRun(meta, pa.array(p.values, pa.binary()), self.format_for(topic, service, source),
                                           observed_us=np.asarray(p.observed_ms, dtype=np.int64) * 1000)))
        return runs

    def _due(self, caught_up: bool = False) -> bool:
        ing = self.cfg.ingest
        if time.monotonic() < self._retry_at:
            return False
        rows = sum(b.rows for b in self.buffers.values())
        size = sum(b.bytes for b in self.buffers.values())
        oldest = min((b.started for b in self.buffers.values() if b.last_offset is not None), default=None)
        full = rows >= ing.flush_rows or size >= ing.flush_bytes
        if full:
            self._behind = True
        elif caught_up and self._behind:
            # The end of a backlog: its last rows are not held for the interval. A steady
            # trickle never flushes by size, so its segments still grow for the interval.
            self._behind = False
            if rows:
                return True
        # Once the log is read to its end, a batch already a tenth of full is not held for
        # the interval: waiting would add latency without making segments much bigger.
        big = rows >= ing.flush_rows // 10 or size >= ing.flush_bytes // 10
        return (full or (caught_up and big)
                or (oldest is not None and time.monotonic() - oldest >= ing.flush_interval_s))

    def _backlogged(self) -> bool:
        """Flushes are failing and the buffers are full: stop reading until one succeeds."""
        size = sum(b.bytes for b in self.buffers.values())
        return self._retry_at > 0 and size >= 2 * self.cfg.ingest.flush_bytes

    # -- flushing ------------------------------------------------------------

    def _write(self, key: Key, buf: PartitionBuffer) -> tuple[PartitionCommit, list[DeadLetter]]:
        assert buf.last_offset is not None
        topic, partition = key
        segments: list[SegmentInfo] = []
        dead: list[DeadLetter] = []
        by_tenant: dict[str, list[RecordRun]] = defaultdict(list)
        for tenant, run in self._gather(topic, buf):
            by_tenant[tenant].append(run)
        name = segment_name(topic, partition, buf.state.epoch, buf.state.next_offset, buf.last_offset)
        for tenant, runs in by_tenant.items():
            raw = raw_table(runs)
            if raw.num_rows == 0:
                continue
            records, failed = normalise_safely(self.normaliser, raw)
            for i, err in failed:
                row = raw.slice(i, 1).to_pylist()[0]
                dead.append(DeadLetter(Reason.UNPARSEABLE, (row["line"] or "").encode(), topic, partition,
                                       buf.state.next_offset, detail=err,
                                       context={"tenant": tenant, "source": row["source"] or "",
                                                "service": row["service"] or "", "host": row["host"] or ""}))
            if records.num_rows:
                segments += write_segments(self.root, tenant, records, name,
                                           zstd_level=self.cfg.storage.zstd_level,
                                           row_group_rows=self.cfg.storage.row_group_rows)
        commit = PartitionCommit(topic, partition, buf.state.epoch, buf.state.next_offset, buf.last_offset + 1,
                                 segments, source_ranges={k: list(v) for k, v in buf.ranges.items()},
                                 last_record=buf.last_record)
        return commit, dead

    async def flush(self, keys: list[Key] | None = None) -> None:
        """Write and commit every non-empty buffer (or those of ``keys``)."""
        async with self._flush_lock:
            await self._flush(keys)

    async def _flush(self, keys: list[Key] | None) -> None:
        todo = {k: b for k, b in self.buffers.items()
                if b.last_offset is not None and (keys is None or k in keys)}
        if not todo:
            return
        started = time.monotonic()
        try:
            # A full disk or an unreachable object store fails here; the same names are written again
            # on the retry, so nothing is left behind twice.
            written = await asyncio.to_thread(lambda: [self._write(k, b) for k, b in todo.items()])
            commits = [c for c, _ in written]
            dead = [d for b in todo.values() for d in b.dead] + [d for _, ds in written for d in ds]
            # Dead letters first: once the catalog moves past them they exist nowhere else.
            await self.dead_letters.send(dead)
            await asyncio.to_thread(self.catalog.commit, commits)
        except CatalogConflict as e:
            # Someone else stored these offsets (we lost the partition meanwhile):
            # drop ours and resume from what the catalog says.
            self.stats["conflicts"] += 1
            log.warning("commit conflict; discarding batch and re-reading", extra={"reason": str(e)})
            self._rewind(list(todo))
            return
        except Exception as e:
            # Nothing was committed; the buffers stay and the flush is retried.
            self.stats["flush_errors"] += 1
            self._retry_at = time.monotonic() + min(30.0, 0.5 * 2 ** min(self.stats["flush_errors"], 6))
            self.fault = f"{type(e).__name__}: {e}"[:500]
            self.fault_since = self.fault_since or time.monotonic()
            log.error("flush failed; will retry", extra={"reason": self.fault})
            raise FlushFailed(str(e)) from e
        if self.fault is not None:
            log.info("flushing again", extra={"fault_s": round(time.monotonic() - (self.fault_since or 0), 1)})
        self._retry_at = 0.0
        self.fault, self.fault_since = None, None
        self.last_flush = time.monotonic()
        rows = sum(s.rows for c in commits for s in c.segments)
        self.stats["records"] += rows
        self.stats["segments"] += sum(len(c.segments) for c in commits)
        self.stats["flushes"] += 1
        self.dead_letter_counts.update(d.reason.value for d in dead)
        for k, c in zip(todo, commits, strict=True):
            self.buffers[k] = PartitionBuffer(PartitionState(c.epoch, c.new_next, c.last_record))
        log.info("flushed", extra={"rows": rows, "segments": sum(len(c.segments) for c in commits),
                                   "dead_letters": len(dead), "partitions": sorted(f"{t}/{p}" for t, p in todo),
                                   "seconds": round(time.monotonic() - started, 3)})
        if self.consumer is not None:
            try:
                await self.consumer.commit({TopicPartition(c.topic, c.partition): OffsetAndMetadata(c.new_next, "")
                                            for c in commits})
            except Exception as e:  # advisory only: the catalog is the truth
                log.debug("kafka offset commit failed", extra={"reason": str(e)})

    def _rewind(self, keys: list[Key]) -> None:
        self.ranges = self.catalog.source_ranges()
        for topic, partition in keys:
            state = self.catalog.partition_states(topic).get(partition, PartitionState(0, 0))
            self.buffers[(topic, partition)] = PartitionBuffer(state)
            if self.consumer is not None:
                self.consumer.seek(TopicPartition(topic, partition), state.next_offset)

    # -- the loop ------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, object]]:
        stalled = time.monotonic() - self.last_loop > 60
        failing = self._retry_at > 0
        return not stalled, {"status": "stalled" if stalled else "retrying" if failing else "ok",
                             "partitions": len(self.buffers),
                             "seconds_since_flush": round(time.monotonic() - self.last_flush, 1)}

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Alive and storing: not while flushes fail (a full disk, the catalog down)."""
        alive, details = self.health()
        if self.fault is not None:
            return False, {**details, "status": "flush failing", "fault": self.fault,
                           "fault_s": round(time.monotonic() - (self.fault_since or 0), 1)}
        return alive, details

    async def run(self, stop: asyncio.Event) -> None:
        k = self.cfg.kafka
        worker = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                await worker._revoked(set(revoked))

            async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                await worker._assigned(set(assigned))

        await self._ensure_topics(attempts=30)
        server = (await serve_metrics(self.cfg.ingest.metrics_listen, registry_for(self), self.health,
                                           self.ready)
                  if self.cfg.ingest.metrics_listen else None)
        self.consumer = AIOKafkaConsumer(
            **client_kwargs(k), client_id=f"{k.client_id}-ingest",
            group_id=self.cfg.ingest.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
        )
        on_connection_broken(self.consumer, self._connection_broken)
        self.consumer.subscribe(self.topics, listener=Listener())
        await self.consumer.start()
        log.info("ingest worker started", extra={"topics": self.topics, "group": self.cfg.ingest.group_id})
        try:
            while not stop.is_set():
                self.last_loop = time.monotonic()
                caught_up = False
                if self._backlogged():
                    await asyncio.sleep(0.2)
                else:
                    batch = await self.consumer.getmany(timeout_ms=200, max_records=50_000)
                    if self._unverified:
                        await self._verify(batch)
                    caught_up = not any(batch.values())
                    for tp, messages in batch.items():
                        if (tp.topic, tp.partition) not in self.buffers or not messages:
                            continue
                        if (tp.topic, tp.partition) in self._probes:
                            first = messages[0]
                            if not self._probed(tp, first.offset, fingerprint(first.timestamp, first.value)):
                                continue
                            stored = self.buffers[(tp.topic, tp.partition)].state.next_offset
                            messages = [m for m in messages if m.offset >= stored]   # the probe record
                        for m in messages:
                            try:
                                self._take(tp.topic, tp.partition, m.offset, m.value, list(m.headers or ()),
                                           m.timestamp)
                            except Exception as e:
                                # A record that breaks ingest in a way nobody foresaw must not stop
                                # the worker, nor the partition behind it: it is set aside, visibly.
                                log.exception("record failed ingest", extra={"offset": m.offset})
                                self._dead(self.buffers[(tp.topic, tp.partition)],
                                           DeadLetter(Reason.UNPARSEABLE, m.value or b"", tp.topic, tp.partition,
                                                      m.offset, detail=f"{type(e).__name__}: {e}"[:1000]))
                        if messages:
                            last = messages[-1]
                            self.buffers[(tp.topic, tp.partition)].last_record = fingerprint(last.timestamp,
                                                                                             last.value)
                    if self._probes:
                        await self._settle_probes(batch)
                if self._due(caught_up):
                    try:
                        await self.flush()
                    except FlushFailed:
                        pass
            await self.flush()
        finally:
            await self.consumer.stop()
            await self.dead_letters.stop()
            if server is not None:
                server.close()
            log.info("ingest worker stopped", extra=dict(self.stats))


class FlushFailed(RuntimeError):
    """A flush could not send its dead letters or commit; its buffers are kept for a retry."""


def _matches(rule: SourceFormat, topic: str, service: str, source: str) -> bool:
    return all(not pattern or fnmatch.fnmatchcase(value, pattern)
               for pattern, value in ((rule.topic, topic), (rule.service, service), (rule.source, source)))
