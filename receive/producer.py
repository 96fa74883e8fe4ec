"""Frames to the log topic, answered only once the broker acknowledged them (acks=all).

The producer starts in the background and keeps trying while the broker is away, so the receiver
answers 503 (the clients' cue to retry) rather than failing to start. When a connection to the
broker breaks, the topic is made sure of before the next send: the embedded broker loses its topics
when it restarts, and loglake never lets a broker create one itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from loglake.core.config import Config
from loglake.core.kafka_client import client_kwargs, on_connection_broken
from loglake.core.topics import ensure_topic
from receive.errors import BrokerUnavailable

log = logging.getLogger("loglake.receive")


class FrameProducer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.producer: AIOKafkaProducer | None = None
        self.fault = "starting: the broker has not been reached yet"
        self._topic_unsure = True
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return not self.fault

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        delay = 0.2
        while self.producer is None:
            producer = AIOKafkaProducer(
                **client_kwargs(self.cfg.kafka), client_id=f"{self.cfg.kafka.client_id}-receive", acks="all",
                linger_ms=2, max_batch_size=max(self.cfg.shipper.max_batch_bytes, 1 << 20),
                max_request_size=max(self.cfg.shipper.max_batch_bytes, self.cfg.shipper.max_frame_bytes + (64 << 10)),
                request_timeout_ms=15_000, enable_idempotence=self.cfg.shipper.idempotence)
            on_connection_broken(producer, self._connection_broken)
            try:
                await ensure_topic(self.cfg.kafka, attempts=1)
                await producer.start()
            except (TimeoutError, KafkaError, OSError, RuntimeError) as e:
                try:
                    await producer.stop()
                except Exception:
                    pass
                self.fault = f"broker unreachable: {type(e).__name__}: {e}"
                log.warning("receive: cannot reach the broker yet (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            self.producer, self._topic_unsure, self.fault = producer, False, ""
            log.info("receive: producing to %s", self.cfg.kafka.topic)

    def _connection_broken(self) -> None:
        self._topic_unsure = True

    async def send(self, frames: Sequence[bytes], key: str, tenant: str) -> None:
        """Produce ``frames`` and wait for every acknowledgement, or raise :class:`BrokerUnavailable`."""
        timeout = self.cfg.receive.ack_timeout_s
        if self.producer is None:
            raise BrokerUnavailable(f"the broker is not reachable ({self.fault}); retry later", retry_after_s=2)
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._send(frames, key, tenant), timeout)
        except (TimeoutError, KafkaError, OSError, RuntimeError) as e:
            self.fault = f"broker did not acknowledge: {type(e).__name__}: {e}"
            raise BrokerUnavailable(f"the broker did not acknowledge within {timeout:g} s; send the same "
                                    "request again (it will not be stored twice)", retry_after_s=2) from None
        if self.fault and time.monotonic() - started < timeout:
            log.info("receive: the broker acknowledges again")
        self.fault = ""

    async def _send(self, frames: Sequence[bytes], key: str, tenant: str) -> None:
        assert self.producer is not None
        if self._topic_unsure:
            await ensure_topic(self.cfg.kafka, attempts=1)
            self._topic_unsure = False
        k = key.encode()
        header = [(self.cfg.kafka.tenant_header, tenant.encode())]
        futures = [await self.producer.send(self.cfg.kafka.topic, f, key=k, headers=header) for f in frames]
        await asyncio.gather(*futures)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.producer is not None:
            await self.producer.stop()
