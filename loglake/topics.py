"""Creating the log topic when it does not exist."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from loglake.config import KafkaConfig
from loglake.kafka_client import client_kwargs

log = logging.getLogger("loglake.topics")


async def ensure_topic(kafka: KafkaConfig, *, attempts: int = 30) -> None:
    """Create ``kafka.topic`` with ``kafka.partitions`` unless it exists; retry while the broker starts."""
    last: Exception | None = None
    connection = client_kwargs(kafka)      # a bad security setting fails here, not in the retries
    for _ in range(attempts):
        admin = AIOKafkaAdminClient(**connection, client_id=f"{kafka.client_id}-admin")
        try:
            await admin.start()
            if kafka.topic in await admin.list_topics():
                return
            await admin.create_topics([NewTopic(kafka.topic, kafka.partitions, 1)])
            log.info("topic created", extra={"topic": kafka.topic, "partitions": kafka.partitions})
            return
        except TopicAlreadyExistsError:
            return
        except Exception as e:  # broker not up yet
            last = e
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise RuntimeError(f"cannot create topic {kafka.topic!r} at {kafka.bootstrap_servers}: {last!r}")
