"""Connection settings shared by every Kafka client loglake makes (producer, consumer, admin), and the
places loglake reaches into aiokafka (pinned in pyproject.toml): topic auto-creation, metadata
refreshes, and noticing a broken broker connection.

No loglake client lets a broker auto-create a topic. aiokafka asks for it in every metadata request
that names a topic (``allow_auto_topic_creation`` is always true), and a broker that allows it
creates the topic with its own default partition count: tansu, the embedded broker, makes 4 where
loglake is configured for ``kafka.partitions`` (3). The embedded broker keeps topics in memory, so
after it restarts the first metadata request of any client — a shipper's new producer, the ingest
consumer's refresh — would create the log topic again that way, and frames would go to a partition
the configuration does not know. Topics are created by ``loglake.topics.ensure_topic`` only: at
start-up, and again whenever a shipper or worker comes back from losing the broker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiokafka.admin.client
import aiokafka.client
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import CloseReason
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from loglake.core.config import ConfigError, KafkaConfig


def sasl_password(k: KafkaConfig) -> str:
    """The SASL password from its environment variable or file."""
    if k.sasl_password_env:
        value = os.environ.get(k.sasl_password_env)
        if value is None:
            raise ConfigError(f"kafka.sasl_password_env: ${k.sasl_password_env} is not set")
        return value
    if k.sasl_password_file:
        try:
            return Path(k.sasl_password_file).read_text().rstrip("\n")
        except OSError as e:
            raise ConfigError(f"kafka.sasl_password_file: {e.strerror}") from None
    raise ConfigError("kafka.sasl_password_env or kafka.sasl_password_file is needed for SASL")


def client_kwargs(k: KafkaConfig) -> dict[str, Any]:
    """aiokafka keyword arguments for bootstrap servers, TLS and SASL."""
    out: dict[str, Any] = {"bootstrap_servers": k.bootstrap_servers, "security_protocol": k.security_protocol}
    if k.security_protocol in ("SSL", "SASL_SSL"):
        ctx = create_ssl_context(cafile=k.ssl_cafile or None, certfile=k.ssl_certfile or None,
                                 keyfile=k.ssl_keyfile or None)
        ctx.check_hostname = k.ssl_check_hostname
        out["ssl_context"] = ctx
    if k.security_protocol.startswith("SASL"):
        out.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                   sasl_plain_password=sasl_password(k))
    return out


class _MetadataRequestNoAutoCreate(MetadataRequest):
    """A metadata request that does not ask the broker to create the topics it names (v4 and later:
    the flag does not exist before; brokers that old create topics by their own setting)."""

    def __init__(self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False) -> None:
        super().__init__(topics, allow_auto_topic_creation)


# aiokafka builds its metadata requests in these two modules (the client's refreshes, the admin's
# describe). Every aiokafka client of a process that imports this module is affected, which is
# the point: all of loglake's take their settings from client_kwargs above.
aiokafka.client.MetadataRequest = _MetadataRequestNoAutoCreate
aiokafka.admin.client.MetadataRequest = _MetadataRequestNoAutoCreate


def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Make ``consumer`` fetch cluster metadata now rather than at its next periodic refresh (5 minutes).

    For a topic created again after the consumer saw it vanish: until its metadata shows the topic it
    holds no partition of it, and aiokafka has no public call for a refresh."""
    consumer._client.force_metadata_update()


def on_connection_broken(client: AIOKafkaProducer | AIOKafkaConsumer, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever a broker connection of ``client`` breaks (not when one is closed at
    shutdown or for being idle). Set it before the client starts.

    aiokafka reconnects and retries by itself, so a broker that went away and came back is otherwise
    invisible to the caller, and the embedded broker comes back without topics, groups or records:
    this is when to make sure of the topic before producing more, or of the log before taking more.
    The connection breaks before anything can listen on the broker's address again."""
    inner = client.client if isinstance(client, AIOKafkaProducer) else client._client
    closed = inner._on_connection_closed

    def hook(conn: object, reason: CloseReason | None) -> None:
        if reason in (CloseReason.CONNECTION_BROKEN, CloseReason.CONNECTION_TIMEOUT):
            callback()
        closed(conn, reason)

    inner._on_connection_closed = hook
