"""Dead letters: what ingest could not turn into rows, kept on a topic with the reason.

A corrupt frame, a record over ``max_record_bytes``, a record of an invalid
tenant, or a row the normaliser failed on goes to the dead-letter topic with
the reason and where it came from in headers. Dead letters are produced and
acknowledged before the catalog commit that moves past them, so none is
lost; a crash between the two can produce one twice (at-least-once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum

from aiokafka import AIOKafkaProducer

from loglake.core.config import Config
from loglake.core.kafka_client import client_kwargs

log = logging.getLogger("loglake.ingest")

#: A dead letter's value is cut here (Kafka's default message limit is 1 MiB); the header says so.
MAX_VALUE_BYTES = 900 << 10


class Reason(StrEnum):
    CORRUPT_FRAME = "corrupt_frame"
    OVERSIZED = "oversized_record"
    INVALID_TENANT = "invalid_tenant"
    UNPARSEABLE = "unparseable"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: Reason
    value: bytes
    topic: str
    partition: int
    offset: int
    detail: str = ""
    context: dict[str, str] = field(default_factory=dict)   # tenant, source, service, host

    def headers(self) -> list[tuple[str, bytes]]:
        h = {"reason": self.reason.value, "detail": self.detail[:1024], "topic": self.topic,
             "partition": str(self.partition), "offset": str(self.offset), **self.context}
        if len(self.value) > MAX_VALUE_BYTES:
            h["original_bytes"] = str(len(self.value))
        return [(k, v.encode("utf-8", "replace")) for k, v in h.items() if v != ""]


class DeadLetterProducer:
    """Sends dead letters to ``cfg.ingest.dead_letter_topic`` and waits for the broker's acks."""

    def __init__(self, cfg: Config) -> None:
        self.topic = cfg.ingest.dead_letter_topic
        self.cfg = cfg
        self._producer: AIOKafkaProducer | None = None

    async def send(self, letters: list[DeadLetter]) -> None:
        """Produce every letter; raises if any is not acknowledged."""
        if not letters:
            return
        if self._producer is None:
            # Created on first use, inside the running loop (aiokafka needs one).
            producer = AIOKafkaProducer(**client_kwargs(self.cfg.kafka), client_id=f"{self.cfg.kafka.client_id}-dlq",
                                        acks="all", max_request_size=1 << 20, request_timeout_ms=15_000)
            await producer.start()
            self._producer = producer
        futures = [await self._producer.send(self.topic, value=d.value[:MAX_VALUE_BYTES], headers=d.headers(),
                                             key=d.context.get("source", "").encode() or None)
                   for d in letters]
        for f in futures:
            await f
        log.warning("dead letters sent", extra={"count": len(letters), "topic": self.topic,
                                                "reasons": sorted({d.reason.value for d in letters})})

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
