"""The ingest worker: a consumer-group member that turns frames into segments.

Per partition it buffers records from the catalog's next offset on; a flush
(by rows, bytes or age) normalises the buffer in DuckDB, writes one segment
per tenant and hour, and commits segments, the partition's new offset and the
per-source stored byte ranges in one catalog transaction. Kafka's committed
offsets are updated afterwards, for monitoring only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ingest.batch import RecordRun, raw_table
from ingest.marks import Ranges, add_range, drop_stored
from ingest.normalise import new_connection, normalise
from loglake.config import Config
from loglake.frame import FrameError, FrameMeta, decode_frame
from loglake.kafka_client import client_kwargs
from storage.catalog import Catalog, PartitionCommit, PartitionState
from storage.errors import CatalogConflict
from storage.segments import SegmentInfo, check_tenant, segment_name, write_segments

log = logging.getLogger("loglake.ingest")


@dataclass
class PartitionBuffer:
    state: PartitionState                  # the catalog's position when the buffer began
    last_offset: int | None = None         # last Kafka offset taken into the buffer
    runs: list[tuple[str, RecordRun]] = field(default_factory=list)   # (tenant, run)
    rows: int = 0
    bytes: int = 0
    ranges: dict[tuple[str, str], Ranges] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


class IngestWorker:
    """Consume ``cfg.kafka.topic`` in group ``cfg.ingest.group_id`` into the catalog."""

    def __init__(self, cfg: Config, catalog: Catalog) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.topic = cfg.kafka.topic
        self.root = cfg.storage.data_root
        self.buffers: dict[int, PartitionBuffer] = {}
        self.ranges: dict[tuple[str, str], Ranges] = {}    # stored byte ranges per source
        self.duck = new_connection()
        self.consumer: AIOKafkaConsumer | None = None
        # A rebalance callback may flush while the loop is flushing; one at a time.
        self._flush_lock = asyncio.Lock()
        self.stats = {"records": 0, "segments": 0, "flushes": 0, "bad_frames": 0, "deduplicated": 0}

    # -- partition ownership -------------------------------------------------

    async def _assigned(self, partitions: set[TopicPartition]) -> None:
        assert self.consumer is not None
        if not partitions:
            return
        states = self.catalog.partition_states(self.topic)
        ends = await self.consumer.end_offsets(list(partitions))
        starts = await self.consumer.beginning_offsets(list(partitions))
        self.ranges = self.catalog.source_ranges()
        for tp in partitions:
            state = states.get(tp.partition, PartitionState(0, 0))
            if state.next_offset > ends[tp]:
                # The log is shorter than what we stored: the topic was recreated
                # (always so after restarting the in-memory embedded broker).
                log.warning("topic recreated: catalog offset beyond log end; starting a new epoch",
                            extra={"partition": tp.partition, "catalog_offset": state.next_offset,
                                   "log_end": ends[tp]})
                state = self.catalog.reset_partition(self.topic, tp.partition, starts[tp])
            self.buffers[tp.partition] = PartitionBuffer(state)
            self.consumer.seek(tp, max(state.next_offset, starts[tp]))
        log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in partitions)})

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        mine = [tp.partition for tp in partitions if tp.partition in self.buffers]
        if mine:
            await self.flush(mine)
        for p in mine:
            self.buffers.pop(p, None)
        log.info("partitions revoked", extra={"partitions": sorted(mine)})

    # -- consuming -----------------------------------------------------------

    def _take(self, partition: int, offset: int, value: bytes | None,
              headers: list[tuple[str, bytes]], timestamp_ms: int) -> None:
        buf = self.buffers[partition]
        if buf.last_offset is None:
            buf.started = time.monotonic()
        buf.last_offset = offset
        if not value:
            return
        tenant = self.cfg.ingest.default_tenant
        for k, v in headers or ():
            if k == self.cfg.kafka.tenant_header and v:
                tenant = v.decode("utf-8", "replace")
        if value[:4] == b"LLKF":
            try:
                frame = decode_frame(value)
            except FrameError as e:
                self.stats["bad_frames"] += 1
                log.error("corrupt frame skipped", extra={"partition": partition, "offset": offset,
                                                           "reason": str(e)})
                return
            meta, records = frame.meta, frame.records
            tenant = meta.tenant or tenant
            key = (tenant, meta.source_id)
            ranges = self.ranges.get(key, [])
            kept = drop_stored(records, meta.first_offset, ranges)
            self.stats["deduplicated"] += len(records) - len(kept)
            records = kept
            self.ranges[key] = buf.ranges[key] = add_range(ranges, meta.first_offset, meta.end_offset)
            if not len(records):
                return
            if meta.truncated_from:
                meta = replace(meta, labels={**meta.labels, "truncated": "true",
                                             "original_length": str(meta.truncated_from)})
        else:
            # A third-party producer: one record per message.
            meta = FrameMeta(source_id="", source=f"kafka:{self.topic}", host="", service="unknown",
                             tenant=tenant, first_offset=0, end_offset=len(value),
                             observed_us=timestamp_ms * 1000, count=1)
            records = pa.array([value], pa.binary())
        try:
            check_tenant(tenant)
        except Exception:
            log.error("record with invalid tenant skipped", extra={"partition": partition, "offset": offset,
                                                                  "tenant": tenant[:80]})
            return
        buf.runs.append((tenant, RecordRun(meta, records)))
        buf.rows += len(records)
        buf.bytes += records.nbytes

    def _due(self) -> bool:
        ing = self.cfg.ingest
        rows = sum(b.rows for b in self.buffers.values())
        size = sum(b.bytes for b in self.buffers.values())
        oldest = min((b.started for b in self.buffers.values() if b.last_offset is not None), default=None)
        return (rows >= ing.flush_rows or size >= ing.flush_bytes
                or (oldest is not None and time.monotonic() - oldest >= ing.flush_interval_s))

    # -- flushing ------------------------------------------------------------

    def _write(self, partition: int, buf: PartitionBuffer) -> PartitionCommit:
        assert buf.last_offset is not None
        segments: list[SegmentInfo] = []
        by_tenant: dict[str, list[RecordRun]] = defaultdict(list)
        for tenant, run in buf.runs:
            by_tenant[tenant].append(run)
        name = segment_name(self.topic, partition, buf.state.epoch, buf.state.next_offset, buf.last_offset)
        for tenant, runs in by_tenant.items():
            raw = raw_table(runs)
            if raw.num_rows == 0:
                continue
            records = normalise(self.duck, raw)
            segments += write_segments(self.root, tenant, records, name,
                                       zstd_level=self.cfg.storage.zstd_level,
                                       row_group_rows=self.cfg.storage.row_group_rows)
        return PartitionCommit(self.topic, partition, buf.state.epoch, buf.state.next_offset,
                               buf.last_offset + 1, segments,
                               source_ranges={k: list(v) for k, v in buf.ranges.items()})

    async def flush(self, partitions: list[int] | None = None) -> None:
        """Write and commit every non-empty buffer (or those of ``partitions``)."""
        async with self._flush_lock:
            await self._flush(partitions)

    async def _flush(self, partitions: list[int] | None) -> None:
        todo = {p: b for p, b in self.buffers.items()
                if b.last_offset is not None and (partitions is None or p in partitions)}
        if not todo:
            return
        started = time.monotonic()
        commits = await asyncio.to_thread(lambda: [self._write(p, b) for p, b in todo.items()])
        try:
            await asyncio.to_thread(self.catalog.commit, commits)
        except CatalogConflict as e:
            # Someone else stored these offsets (we lost the partition meanwhile):
            # drop ours and resume from what the catalog says.
            log.warning("commit conflict; discarding batch and re-reading", extra={"reason": str(e)})
            self._rewind(list(todo))
            return
        rows = sum(s.rows for c in commits for s in c.segments)
        self.stats["records"] += rows
        self.stats["segments"] += sum(len(c.segments) for c in commits)
        self.stats["flushes"] += 1
        for p, c in zip(todo, commits, strict=True):
            self.buffers[p] = PartitionBuffer(PartitionState(c.epoch, c.new_next))
        log.info("flushed", extra={"rows": rows, "segments": sum(len(c.segments) for c in commits),
                                   "partitions": sorted(todo), "seconds": round(time.monotonic() - started, 3)})
        if self.consumer is not None:
            try:
                await self.consumer.commit({TopicPartition(self.topic, c.partition): OffsetAndMetadata(c.new_next, "")
                                            for c in commits})
            except Exception as e:  # advisory only: the catalog is the truth
                log.debug("kafka offset commit failed", extra={"reason": str(e)})

    def _rewind(self, partitions: list[int]) -> None:
        states = self.catalog.partition_states(self.topic)
        self.ranges = self.catalog.source_ranges()
        for p in partitions:
            state = states.get(p, PartitionState(0, 0))
            self.buffers[p] = PartitionBuffer(state)
            if self.consumer is not None:
                self.consumer.seek(TopicPartition(self.topic, p), state.next_offset)

    # -- the loop ------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        k = self.cfg.kafka
        worker = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                await worker._revoked(set(revoked))

            async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                await worker._assigned(set(assigned))

        self.consumer = AIOKafkaConsumer(
            **client_kwargs(k), client_id=f"{k.client_id}-ingest",
            group_id=self.cfg.ingest.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
        )
        self.consumer.subscribe([self.topic], listener=Listener())
        await self.consumer.start()
        log.info("ingest worker started", extra={"topic": self.topic, "group": self.cfg.ingest.group_id})
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=50_000)
                for tp, messages in batch.items():
                    if tp.partition not in self.buffers:
                        continue
                    for m in messages:
                        self._take(tp.partition, m.offset, m.value, list(m.headers or ()), m.timestamp)
                if self._due():
                    await self.flush()
            await self.flush()
        finally:
            await self.consumer.stop()
            log.info("ingest worker stopped", extra=self.stats)
