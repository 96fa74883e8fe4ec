"""Creating topics (the log topic, third-party inputs, dead letters) when they do not exist."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from loglake.config import KafkaConfig
from loglake.kafka_client import client_kwargs

log = logging.getLogger("loglake.topics")


async def ensure_topic(kafka: KafkaConfig, *, topic: str | None = None, partitions: int | None = None,
                       attempts: int = 30) -> None:
    """Create ``topic`` (default ``kafka.topic``) unless it exists; retry while the broker starts."""
    topic = topic or kafka.topic
    partitions = partitions or kafka.partitions
    last: Exception | None = None
    connection = client_kwargs(kafka)      # a bad security setting fails here, not in the retries
    for _ in range(attempts):
        admin = AIOKafkaAdminClient(**connection, client_id=f"{kafka.client_id}-admin")
        try:
            await admin.start()
            if topic in await admin.list_topics():
                return
            await admin.create_topics([NewTopic(topic, partitions, 1)])
            log.info("topic created", extra={"topic": topic, "partitions": partitions})
            return
        except TopicAlreadyExistsError:
            return
        except Exception as e:  # broker not up yet
            last = e
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise RuntimeError(f"cannot create topic {topic!r} at {kafka.bootstrap_servers}: {last!r}")
