"""Creating topics (the log topic, third-party inputs, dead letters) when they do not exist.

loglake never lets a broker auto-create a topic (see ``loglake.core.kafka_client``): this is the one
place topics come from. It runs at start-up, and again whenever a shipper or an ingest worker
comes back from losing the broker, since the embedded broker loses every topic when it restarts.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from loglake.core.config import KafkaConfig
from loglake.core.kafka_client import client_kwargs

log = logging.getLogger("loglake.topics")


async def ensure_topic(kafka: KafkaConfig, *, topic: str | None = None, partitions: int | None = None,
                       attempts: int = 30) -> int:
    """Create ``topic`` (default ``kafka.topic``) with ``partitions`` (default ``kafka.partitions``)
    unless it exists; return how many partitions it has. Retry while the broker starts.

    A topic that exists keeps its partition count, whatever ``partitions`` says: see
    ``partition_fault`` for the log topic's."""
    topic = topic or kafka.topic
    partitions = partitions or kafka.partitions
    last: Exception | None = None
    connection = client_kwargs(kafka)      # a bad security setting fails here, not in the retries
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(**connection, client_id=f"{kafka.client_id}-admin")
        try:
            await admin.start()
            found = await _partition_counts(admin)
            if topic not in found:
                response = await admin.create_topics([NewTopic(topic, partitions, 1)])
                _name, code, *message = response.topic_errors[0]
                error = for_code(code)
                if error is TopicAlreadyExistsError:
                    found = await _partition_counts(admin)      # another client created it since we looked
                elif error.errno:
                    raise error(*(m for m in message if m))
                else:
                    log.info("topic created", extra={"topic": topic, "partitions": partitions})
                    return partitions
            return found[topic]
        except Exception as e:  # broker not up yet
            last = e
            if attempt + 1 < attempts:
                await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise RuntimeError(f"cannot create topic {topic!r} at {kafka.bootstrap_servers}: {last!r}") from last


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    """Every topic's partition count. Not from a request naming the topic: a broker may answer that
    by creating it, with its own partition count."""
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics() if not t["error_code"]}


def note_partitions(kafka: KafkaConfig, count: int, previous: str | None) -> str | None:
    """The log topic's fault for ``count`` partitions (see ``partition_fault``), logged when it
    differs from ``previous``, the fault last noted: once when it appears, once when it goes."""
    fault = partition_fault(kafka, count)
    if fault != previous:
        if fault is not None:
            log.error("topic partition count differs from the configuration", extra={
                "topic": kafka.topic, "partitions": count, "configured": kafka.partitions, "fault": fault})
        else:
            log.info("topic has the configured partition count", extra={"topic": kafka.topic, "partitions": count})
    return fault


def partition_fault(kafka: KafkaConfig, count: int) -> str | None:
    """Why the log topic's ``count`` partitions are a fault, or None when they are ``kafka.partitions``.

    Frames are keyed by source, and the key's partition depends on the count: producing to more or
    fewer partitions than configured moves sources to partitions nobody planned for (and a count
    that changes while shippers write splits a source's frames over two partitions)."""
    if count == kafka.partitions:
        return None
    return (f"topic {kafka.topic!r} has {count} partitions but kafka.partitions is {kafka.partitions}; "
            "make them agree (the topic must be recreated to have fewer)")
