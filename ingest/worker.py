"""The ingest worker: a consumer-group member that turns Kafka messages into segments.

It consumes the shipper's topic and any third-party topics in one group, and wires
four parts together around one shared state (``ingest.buffers``):

- ``PartitionGuard`` (``ingest.partitions``): which partitions it owns and from which
  offset each is read (the catalog's), with the probes that tell a recreated topic;
- ``RecordRouter`` (``ingest.router``): each message into its tenant's run of its
  partition's buffer, or a dead letter;
- ``FlushPolicy`` (``ingest.flush_policy``): when to flush (rows, bytes, age, the end
  of a backlog, back-off after a failure);
- ``Flusher`` (``ingest.flusher``): segments, dead letters and the one catalog commit
  of segments, offsets and stored byte ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from ingest.buffers import IngestState, Key, PartitionBuffer
from ingest.flush_policy import FlushPolicy
from ingest.flusher import Flusher, FlushFailed
from ingest.metrics import WorkerSnapshot, registry_for
from ingest.partitions import PartitionGuard, TopicRecreated
from ingest.router import RecordRouter
from loglake.core.config import Config
from loglake.core.kafka_client import client_kwargs, on_connection_broken
from loglake.core.metrics_server import serve as serve_metrics
from storage.catalog import Catalog

__all__ = ["FlushFailed", "IngestWorker", "TopicRecreated"]

log = logging.getLogger("loglake.ingest")


class IngestWorker:
    """Consume ``cfg.kafka.topic`` and ``cfg.ingest.topics`` in group ``cfg.ingest.group_id`` into the catalog."""

    def __init__(self, cfg: Config, catalog: Catalog) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.state = IngestState()
        ing = cfg.ingest
        self.policy = FlushPolicy(ing.flush_rows, ing.flush_bytes, ing.flush_interval_s, ing.flush_caught_up_s)
        self.router = RecordRouter(cfg, self.state)
        self.flusher = Flusher(cfg, catalog, self.state, self.router, self.policy)
        self.partitions = PartitionGuard(cfg, catalog, self.state, self.flusher, self.policy)
        self.consumer: AIOKafkaConsumer | None = None
        self.last_loop = time.monotonic()

    @property
    def buffers(self) -> dict[Key, PartitionBuffer]:
        """The buffer of each partition this worker owns."""
        return self.state.buffers

    @property
    def stats(self) -> Counter[str]:
        return self.state.stats

    async def flush(self, keys: list[Key] | None = None) -> None:
        """Write and commit every non-empty buffer (or those of ``keys``)."""
        await self.flusher.flush(keys)

    def _due(self, caught_up: bool = False) -> bool:
        return self.policy.due(self.state.buffered(), time.monotonic(), caught_up)

    # The rebalance listener's targets (a benchmark hooks into ``_assigned``).

    async def _assigned(self, partitions: set[TopicPartition]) -> None:
        await self.partitions.assigned(partitions)

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        await self.partitions.revoked(partitions)

    # -- reporting -------------------------------------------------------------

    def snapshot(self) -> WorkerSnapshot:
        """The figures /metrics reports, as of now."""
        buffered = self.state.buffered()
        return WorkerSnapshot(stats=dict(self.stats), dead_letters=dict(self.flusher.dead_letter_counts),
                              buffered_rows=buffered.rows, buffered_bytes=buffered.bytes,
                              partitions=len(self.buffers),
                              seconds_since_flush=time.monotonic() - self.flusher.last_flush,
                              fault=self.flusher.fault, sources=self.flusher.source_counts.snapshot())

    def health(self) -> tuple[bool, dict[str, object]]:
        stalled = time.monotonic() - self.last_loop > 60
        return not stalled, {"status": "stalled" if stalled else "retrying" if self.policy.failing else "ok",
                             "partitions": len(self.buffers),
                             "seconds_since_flush": round(time.monotonic() - self.flusher.last_flush, 1)}

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Alive and storing: not while flushes fail (a full disk, the catalog down)."""
        alive, details = self.health()
        fault = self.flusher.fault
        if fault is not None:
            return False, {**details, "status": "flush failing", "fault": fault,
                           "fault_s": round(time.monotonic() - (self.flusher.fault_since or 0), 1)}
        return alive, details

    # -- the loop ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Read and flush until ``stop`` is set, then flush what is buffered; raises ``TopicRecreated``
        when the log is not the one stored from and ``ingest.on_topic_recreated`` is "fail"."""
        await self.partitions.ensure_topics(attempts=30)
        listen = self.cfg.ingest.metrics_listen
        server = await serve_metrics(listen, registry_for(self.snapshot), self.health, self.ready) if listen else None
        consumer = self._subscribe()
        await consumer.start()
        log.info("ingest worker started", extra={"topics": self.partitions.topics, "group": self.cfg.ingest.group_id})
        try:
            while not stop.is_set():
                self.last_loop = time.monotonic()
                caught_up = await self._read(consumer)
                await self._flush_if_due(caught_up)
            await self.flush()
        finally:
            await consumer.stop()
            await self.flusher.stop()
            if server is not None:
                server.close()
            log.info("ingest worker stopped", extra=dict(self.stats))

    def _subscribe(self) -> AIOKafkaConsumer:
        """The group member, subscribed, and known to the parts that seek, fetch or commit with it."""
        k = self.cfg.kafka
        consumer = AIOKafkaConsumer(
            **client_kwargs(k), client_id=f"{k.client_id}-ingest",
            group_id=self.cfg.ingest.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
            # (a heartbeat a third of the session, as Kafka asks)
            session_timeout_ms=int(self.cfg.ingest.session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(self.cfg.ingest.session_timeout_s * 1000 / 3)),
            # The embedded broker (tansu) answers a fetch with nothing new only when this is up,
            # not when a record comes meanwhile: at the default 500 ms a record waited up to
            # 250 ms there, at 100 ms up to 50 ms (measured). Kafka answers at once either way.
            fetch_max_wait_ms=100,
        )
        self.consumer = self.partitions.consumer = self.flusher.consumer = consumer
        on_connection_broken(consumer, self.partitions.connection_broken)
        consumer.subscribe(self.partitions.topics, listener=_Rebalance(self))
        return consumer

    async def _read(self, consumer: AIOKafkaConsumer) -> bool:
        """Take one fetch into the buffers; whether it found every partition read to its end."""
        if self.policy.backlogged(self.state.buffered().bytes):
            # Flushes are failing and the buffers are full: read no more until one succeeds.
            await asyncio.sleep(0.2)
            return False
        batch = await consumer.getmany(timeout_ms=200, max_records=50_000)
        read_at = time.monotonic()
        await self.partitions.verify(batch)
        # At the log's end when the read found nothing, or every partition it took from was taken
        # up to the high watermark its fetch reported: under a steady flow a read seldom finds
        # nothing, and a worker that keeps up must not wait out the interval for that.
        owned = consumer.assignment()       # highwater() is asked only of assigned partitions
        caught_up = all(not messages or tp not in owned or messages[-1].offset + 1 >= (consumer.highwater(tp) or 0)
                        for tp, messages in batch.items())
        for tp, messages in batch.items():
            self.router.take_all(tp.topic, tp.partition, self.partitions.admit(tp, messages))
        await self.partitions.settle_probes(batch)
        if caught_up:
            self.state.log_end_at = read_at
        return caught_up


    async def _flush_if_due(self, caught_up: bool) -> None:
        if not self._due(caught_up):
            return
        with contextlib.suppress(FlushFailed):   # the buffers stay, and the policy backs off
            await self.flush()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker._assigned(set(assigned))
