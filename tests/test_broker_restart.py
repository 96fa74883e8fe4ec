"""The embedded broker restarted under a running shipper and worker: the topic comes back as configured.

tansu keeps topics in memory and, asked for the metadata of a topic it does not have, creates it
with 4 partitions. loglake's clients never ask it to (``loglake.core.kafka_client``); the shipper
creates the topic again with ``kafka.partitions`` before it produces after a broken connection,
and the worker before it reads, checking each partition's new log from the catalog's offset.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from loglake.broker import start_broker, stop_process
from loglake.core.config import KafkaConfig
from loglake.core.kafka_client import client_kwargs
from loglake.core.topics import ensure_topic
from tests.helpers.kafka import create_topics
from tests.helpers.processes import Stack, free_port, running, wait_until
from tests.helpers.stored import open_catalog, stored, wait_rows


def partition_counts(bootstrap: str) -> dict[str, int]:
    """Every topic's partition count (a metadata request for all topics: it never creates one)."""

    async def go() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics() if not t["error_code"]}
        finally:
            await admin.close()

    return asyncio.run(go())


def _ready(port: int) -> tuple[int, dict[str, object]]:
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    except httpx.HTTPError:
        return 0, {}
    return resp.status_code, resp.json()


def test_after_a_broker_restart_the_topic_has_the_configured_partitions_and_every_line_is_stored_once(
        tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    broker = start_broker(address, log_file=tmp_path / "broker.log")
    stack = Stack(root=tmp_path / "stack", bootstrap=address, topic="restart.logs")
    env = {"LOGLAKE_KAFKA__PARTITIONS": "3"}
    port = free_port()
    try:
        log = stack.input_dir / "app.log"
        log.write_text("".join(f"before id=b{i}\n" for i in range(20)))
        stack.start("ingest", **env)
        stack.start("ship", LOGLAKE_SHIPPER__METRICS_LISTEN=f"127.0.0.1:{port}", **env)
        catalog = open_catalog(stack)
        wait_rows(stack, catalog, 20, timeout_s=30)
        assert partition_counts(address)[stack.topic] == 3

        stop_process(broker)                         # in memory: the topic is gone with it
        with open(log, "a") as f:
            f.write("".join(f"during id=d{i}\n" for i in range(20)))
        # The shipper's connection breaks: it makes sure of the topic, which fails while the broker is away.
        body = wait_until(lambda: _ready(port)[1] if _ready(port)[0] == 503 else None, 60,
                          what="shipper /readyz to report the broker")
        assert body["status"] == "broker unreachable", body

        broker = start_broker(address, log_file=tmp_path / "broker.log")
        with open(log, "a") as f:
            f.write("".join(f"after id=a{i}\n" for i in range(20)))
        wait_until(lambda: _ready(port)[0] == 200, 60, what="shipper ready again")

        want = sorted([f"before id=b{i}" for i in range(20)] + [f"during id=d{i}" for i in range(20)] +
                      [f"after id=a{i}" for i in range(20)])
        alive = running(stack)

        def all_stored() -> bool:
            alive()
            return set(want) <= {r["message"] for r in stored(stack, catalog, "default")}

        wait_until(all_stored, 60, 0.5, "every line from before, during and after the restart stored")
        assert partition_counts(address)[stack.topic] == 3, "the topic came back with the broker's default count"
        time.sleep(1.0)                              # give a duplicate the chance to show up
        messages = sorted(r["message"] for r in stored(stack, catalog, "default"))
        assert messages == want, "a line lost or stored twice"
        logs = stack.log_text("ship") + stack.log_text("ingest")
        assert logs.count('"msg":"topic created","topic":"restart.logs"') >= 2, "not created again by loglake"
        assert "partition count differs" not in logs
        catalog.close()
    finally:
        stack.stop_all()
        stop_process(broker)


def test_a_topic_with_another_partition_count_makes_the_shipper_unready_and_is_logged(stack: Stack) -> None:
    create_topics(stack.bootstrap, stack.topic, partitions=4)
    port = free_port()
    (stack.input_dir / "app.log").write_text("one line\n")
    stack.start("ship", LOGLAKE_SHIPPER__METRICS_LISTEN=f"127.0.0.1:{port}", LOGLAKE_KAFKA__PARTITIONS="3")
    body = wait_until(lambda: _ready(port)[1] if _ready(port)[0] == 503 else None, 30,
                      what="shipper /readyz to report the partition count")
    assert body["status"] == "topic partitions differ", body
    assert "has 4 partitions but kafka.partitions is 3" in str(body["fault"]), body
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "loglake_shipper_ready 0.0" in metrics
    text = stack.log_text("ship")
    assert text.count("topic partition count differs from the configuration") == 1, text[-3000:]
    assert partition_counts(stack.bootstrap)[stack.topic] == 4     # left as it is: not loglake's to change


def test_loglake_clients_never_let_the_broker_create_a_topic(broker: str) -> None:
    """A producer built on loglake's client settings, sending to a topic nobody created, does not
    create it (tansu would, with 4 partitions); ensure_topic creates it with the configured count."""
    kafka = KafkaConfig(bootstrap_servers=broker, topic=f"never.created.{time.time_ns()}", partitions=3)

    async def send() -> None:
        producer = AIOKafkaProducer(**client_kwargs(kafka), request_timeout_ms=2_000)
        await producer.start()
        try:
            await producer.send_and_wait(kafka.topic, b"x")
        finally:
            await producer.stop()

    with pytest.raises(Exception, match="UnknownTopicOrPartition|KafkaTimeout"):
        asyncio.run(send())
    assert kafka.topic not in partition_counts(broker)
    assert asyncio.run(ensure_topic(kafka)) == 3
    assert partition_counts(broker)[kafka.topic] == 3
    assert asyncio.run(ensure_topic(kafka, partitions=5)) == 3, "an existing topic keeps its count"
