"""Which partitions a worker owns, and from where it reads them.

On assignment each partition's buffer starts at the catalog's offset. Where the log may
not be the one the catalog stored from (a recreated topic, a restarted in-memory broker),
reading starts one record early: that record is compared with the fingerprint of the last
one stored (a probe), and ``ingest.on_topic_recreated`` decides what follows a mismatch.
After a broken broker connection, nothing more of a partition is taken until its log is
checked the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from ingest.buffers import IngestState, Key, PartitionBuffer, fingerprint
from ingest.flush_policy import FlushPolicy
from ingest.flusher import Flusher, FlushFailed
from loglake.core.config import Config
from loglake.core.kafka_client import refresh_metadata
from loglake.core.topics import ensure_topic, note_partitions
from storage.catalog import Catalog, PartitionState

log = logging.getLogger("loglake.ingest")


class TopicRecreated(RuntimeError):
    """The catalog is ahead of the log and the policy is to stop."""


class PartitionGuard:
    """Keeps ``state.buffers`` to the partitions this worker owns, each read from where the catalog
    says, and refuses records of a log that is not the one stored from."""

    def __init__(self, cfg: Config, catalog: Catalog, state: IngestState, flusher: Flusher,
                 policy: FlushPolicy) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.state = state
        self.flusher = flusher
        self.policy = policy
        self.third_party = list(dict.fromkeys(t.name for t in cfg.ingest.topics))
        self.topics = [cfg.kafka.topic, *(t for t in self.third_party if t != cfg.kafka.topic)]
        #: Set while the worker runs.
        self.consumer: AIOKafkaConsumer | None = None
        #: Why the log topic is not as configured (its partition count), while it is not.
        self.topic_fault: str | None = None
        # Partitions being checked for a recreated topic: offset expected next.
        self._probes: dict[Key, int] = {}
        # Each probed partition's log start when it was assigned.
        self._log_starts: dict[Key, int] = {}
        # Partitions whose log is to be checked since a broker connection broke, and when it broke
        # (epoch ms, the clock of the consumer's poll timestamps).
        self._unverified: dict[Key, int] = {}

    # -- topics ----------------------------------------------------------------

    async def ensure_topics(self, attempts: int) -> None:
        """Create the log topic, the dead-letter topic and the third-party topics unless they exist."""
        k = self.cfg.kafka
        self.topic_fault = note_partitions(k, await ensure_topic(k, attempts=attempts), self.topic_fault)
        await ensure_topic(k, topic=self.cfg.ingest.dead_letter_topic, partitions=1, attempts=attempts)
        for t in self.third_party:
            await ensure_topic(k, topic=t, attempts=attempts)

    async def _topics_again(self) -> None:
        """On a rebalance, before reading: create any topic the broker lost, and show it to the consumer.

        A rebalance is what a worker sees of a broker that went away and came back: the embedded
        broker loses its consumer groups along with its topics, so the member joins again. The
        topics must exist before the consumer asks for their offsets, since loglake's clients never
        let a broker auto-create one (tansu would, with 4 partitions rather than ``kafka.partitions``)."""
        assert self.consumer is not None
        try:
            await self.ensure_topics(attempts=3)
        except Exception as e:
            log.warning("cannot check the topics on rebalance; reading on", extra={"reason": str(e)})
            return
        if any(self.consumer.partitions_for_topic(t) is None for t in self.topics):
            # Its metadata saw a topic vanish (it then holds no partition of it): let it see the topic
            # again now, not at its next periodic refresh; the group rebalances once more.
            refresh_metadata(self.consumer)

    # -- ownership -------------------------------------------------------------

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        await self._topics_again()
        if not partitions:
            return
        await self._position(partitions)
        log.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)})

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        buffers = self.state.buffers
        mine = [(tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) in buffers]
        if mine:
            try:
                await self.flusher.flush(mine)
            except Exception as e:
                # Abandoning is safe: the catalog did not move, so the next owner re-reads it all.
                log.warning("flush on revocation failed; abandoning the buffer", extra={"reason": str(e)})
        for key in mine:
            buffers.pop(key, None)
            self._unverified.pop(key, None)
        log.info("partitions revoked", extra={"partitions": sorted(f"{t}/{p}" for t, p in mine)})

    def open(self, keys: Iterable[Key]) -> dict[Key, PartitionState]:
        """Start an empty buffer for each of ``keys`` at the catalog's position (and take the stored
        byte ranges from the catalog again); the positions."""
        keys = list(keys)
        self.state.reload_ranges(self.catalog)
        states = {t: self.catalog.partition_states(t) for t in {t for t, _ in keys}}
        opened = {}
        for key in keys:
            state = opened[key] = states[key[0]].get(key[1], PartitionState(0, 0))
            self.state.buffers[key] = PartitionBuffer(state)
            self._probes.pop(key, None)
            self._unverified.pop(key, None)
        return opened

    async def _position(self, partitions: set[TopicPartition]) -> None:
        """Start each partition's buffer at the catalog's offset, probing the log where it may be new."""
        assert self.consumer is not None
        ends = await self.consumer.end_offsets(list(partitions))
        starts = await self.consumer.beginning_offsets(list(partitions))
        opened = self.open((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            state = opened[key]
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

    def _owned(self, key: Key) -> bool:
        """Whether ``key`` is assigned to this worker (and has its buffer)."""
        assert self.consumer is not None
        return key in self.state.buffers and TopicPartition(*key) in self.consumer.assignment()

    # -- a broken broker connection ----------------------------------------------

    def connection_broken(self) -> None:
        """A broker connection broke. The broker may come back with new, shorter logs (the embedded one
        keeps them in memory), and the consumer would go on reading them from its old positions,
        taking records that are not the ones after those it took. Until each partition's log is
        checked (``verify``), nothing fetched from it after this moment is taken."""
        now_ms = int(time.time() * 1000)
        for key in self.state.buffers:
            self._unverified.setdefault(key, now_ms)

    async def verify(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
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
                    await self.ensure_topics(attempts=1)
                except Exception as e:     # the log can be checked all the same
                    log.warning("cannot check the topics after a broken broker connection", extra={"reason": str(e)})
            await self._recheck(key, tp)

    async def _recheck(self, key: Key, tp: TopicPartition) -> None:
        """Flush what ``key`` took before the break, then position it as on assignment."""
        assert self.consumer is not None
        try:
            if self.policy.retrying(time.monotonic()):
                raise FlushFailed("flushes are failing")
            await self.flusher.flush([key])
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

    def _resume_offset(self, key: Key) -> int:
        """Where reading ``key`` goes on: its probe's record, past what its buffer holds, or the catalog's offset."""
        if key in self._probes:
            return self._probes[key] - 1
        buf = self.state.buffers[key]
        return buf.last_offset + 1 if buf.last_offset is not None else buf.state.next_offset

    # -- probes ----------------------------------------------------------------

    def admit(self, tp: TopicPartition, messages: Sequence[Any]) -> Sequence[Any]:
        """Which of the messages fetched from ``tp`` to take: none of a partition not owned, none of a
        log found recreated, and never a probe's record (it is stored already)."""
        key = (tp.topic, tp.partition)
        if key not in self.state.buffers or not messages:
            return []
        if key not in self._probes:
            return messages
        first = messages[0]
        if not self._probed(tp, first.offset, fingerprint(first.timestamp, first.value)):
            return []
        stored = self.state.buffers[key].state.next_offset
        return [m for m in messages if m.offset >= stored]

    def _probed(self, tp: TopicPartition, first_offset: int, first_record: str) -> bool:
        """Settle a probe with the first record read; whether to take the batch's records."""
        expected = self._probes.pop((tp.topic, tp.partition))
        stored = self.state.buffers[(tp.topic, tp.partition)].state.last_record
        if first_offset > expected - 1 or (first_offset == expected - 1 and stored in (None, first_record)):
            return True              # our last stored record is there (or retention took it): carry on
        # Reading restarted at the earliest offset (the log is shorter than the catalog), or the
        # record at our offset is another one (a new log that has grown past it).
        start = min(first_offset, self._log_starts.get((tp.topic, tp.partition), first_offset))
        return self._recreated(tp, expected, start)

    async def settle_probes(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
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
        self.state.buffers[(tp.topic, tp.partition)] = PartitionBuffer(
            self.catalog.reset_partition(tp.topic, tp.partition, first))
        self.consumer.seek(tp, first)
        return False
