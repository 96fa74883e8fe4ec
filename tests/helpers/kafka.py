"""Kafka from a test's side: topics, producing as third parties do, reading back, frames as the shipper builds them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from loglake.core.frame import FrameMeta, encode_frame, record_offsets


def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    """Create ``names`` with ``partitions`` partitions each (replication 1)."""
    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        finally:
            await admin.close()

    asyncio.run(go())


def delete_topic(bootstrap: str, name: str) -> None:
    """Delete ``name`` and wait until the broker no longer lists it."""
    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([name])
            wait = time.monotonic() + 10
            while name in await admin.list_topics():
                assert time.monotonic() < wait, f"topic {name} still listed after deletion"
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    asyncio.run(go())


@dataclass
class Msg:
    value: bytes
    headers: list[tuple[str, bytes]] | None = None
    key: bytes | None = None
    timestamp_ms: int | None = None          # None: librdkafka stamps it (CreateTime)


@dataclass(frozen=True)
class Delivered:
    partition: int
    offset: int
    timestamp_ms: int


def produce(bootstrap: str, topic: str, messages: list[Msg], *, one_batch_each: bool = False) -> list[Delivered]:
    """Produce with librdkafka; returns where each message landed, in order. Fails on any delivery error."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                                         "enable.idempotence": False, "message.max.bytes": 2_000_000})
    results: list[Delivered | None] = [None] * len(messages)
    errors: list[str] = []

    def report(i: int):
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"message {i}: {err}")
            else:
                results[i] = Delivered(msg.partition(), msg.offset(), msg.timestamp()[1])
        return cb

    for i, m in enumerate(messages):
        kwargs: dict[str, Any] = {"value": m.value, "on_delivery": report(i)}
        if m.headers is not None:
            kwargs["headers"] = m.headers
        if m.key is not None:
            kwargs["key"] = m.key
        if m.timestamp_ms is not None:
            kwargs["timestamp"] = m.timestamp_ms
        producer.produce(topic, **kwargs)
        if one_batch_each:
            assert producer.flush(15) == 0, "librdkafka could not deliver within 15 s"
    assert producer.flush(15) == 0, "librdkafka could not deliver within 15 s"
    assert not errors, errors
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


@dataclass(frozen=True)
class Letter:
    value: bytes
    headers: dict[str, str]


def read_topic(bootstrap: str, topic: str, expect: int, timeout_s: float = 20,
               check: Callable[[], None] | None = None) -> list[Letter]:
    """Everything on partition 0 of ``topic`` once ``expect`` messages are there (and a moment more).

    ``check`` runs between polls (to fail at once when the worker died).
    """

    async def go() -> list[Letter]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20,
                                    fetch_max_bytes=16 << 20)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            out: list[Letter] = []
            deadline = time.monotonic() + timeout_s
            settle: float | None = None
            while time.monotonic() < deadline:
                if check is not None:
                    check()
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    out += [Letter(m.value or b"", {k: v.decode() for k, v in m.headers or ()}) for m in messages]
                if len(out) >= expect:
                    # Give a duplicate the chance to show up.
                    settle = settle or time.monotonic() + 1.0
                    if time.monotonic() >= settle:
                        break
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


class Shipper:
    """Builds frames the way ``loglake ship`` does: one source, consecutive byte ranges."""

    def __init__(self, tenant: str = "default", service: str = "app", source: str = "/var/log/app.log",
                 host: str = "shiphost") -> None:
        self.tenant, self.service, self.source, self.host = tenant, service, source, host
        self.source_id = f"{host}:{abs(hash(source)) % 10**9}:{time.time_ns()}"
        self.offset = 0

    def frame(self, lines: list[str], *, tenant: str | None = None, observed_us: int | None = None) -> Msg:
        data = "".join(line + "\n" for line in lines).encode()
        meta = FrameMeta(source_id=self.source_id, source=self.source, host=self.host, service=self.service,
                         tenant=self.tenant if tenant is None else tenant, first_offset=self.offset,
                         end_offset=self.offset + len(data),
                         observed_us=observed_us or time.time_ns() // 1000, count=len(lines))
        self.offset += len(data)
        value = encode_frame(meta, data, record_offsets(data))
        return Msg(value, headers=[("tenant", meta.tenant.encode())], key=self.source_id.encode())


def topics_env(*inputs: str) -> str:
    """The ``LOGLAKE_INGEST__TOPICS`` value of several inline tables."""
    return "[" + ", ".join(inputs) + "]"
