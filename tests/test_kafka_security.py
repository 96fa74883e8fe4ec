"""Kafka security: the real shipper and ingest worker over TLS and SASL (PLAIN, SCRAM-SHA-256/512).

A broker of its own per test advertises the security proxy (tests/helpers/kafka_proxy.py),
which terminates TLS and checks credentials before passing bytes to tansu. The
settings are the ones an operator writes: ``[kafka] security_protocol``,
``sasl_mechanism``, ``sasl_username``, the password from a variable or a file, and
``ssl_cafile``.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from loglake.broker import broker_binary, stop_process, wait_for_port
from loglake.core.config import load_config
from loglake.core.kafka_client import client_kwargs
from loglake.core.topics import ensure_topic
from tests.helpers.kafka_proxy import SecurityProxy
from tests.helpers.processes import Stack, free_port, running, wait_until
from tests.helpers.stored import open_catalog, stored, wait_rows
from tests.helpers.tls import self_signed

PASSWORD = "s3cret-Pa55word-never-logged"


@dataclass
class Secured:
    bootstrap: str
    proxy: SecurityProxy
    cafile: Path
    protocol: str
    mechanism: str | None


@pytest.fixture
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Secured]:
    protocol, mechanism = request.param
    broker_port, proxy_port = free_port(), free_port()
    broker = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}", "--storage-engine", "memory://tansu/"],
        stdout=open(tmp_path / "broker.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    wait_for_port("127.0.0.1", broker_port)
    cert, key = self_signed(tmp_path)
    tls = None
    if protocol.endswith("SSL"):
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
    proxy = SecurityProxy(upstream=("127.0.0.1", broker_port), listen=("127.0.0.1", proxy_port),
                          mechanism=mechanism, users={"loglake": PASSWORD}, tls=tls)
    proxy.start()
    try:
        yield Secured(f"127.0.0.1:{proxy_port}", proxy, cert, protocol, mechanism)
    finally:
        proxy.stop()
        stop_process(broker)


MODES = [("SSL", None), ("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512")]
#: The whole pipeline (shipper and worker processes) runs over the strictest; the clients over each.
FULL = [("SASL_SSL", "SCRAM-SHA-512")]


def _security_env(secured: Secured, tmp_path: Path, password: str = PASSWORD) -> dict[str, str]:
    protocol, mechanism = secured.protocol, secured.mechanism
    env = {"LOGLAKE_KAFKA__SECURITY_PROTOCOL": protocol}
    if protocol.endswith("SSL"):
        env["LOGLAKE_KAFKA__SSL_CAFILE"] = str(secured.cafile)
    if mechanism:
        env.update(LOGLAKE_KAFKA__SASL_MECHANISM=mechanism, LOGLAKE_KAFKA__SASL_USERNAME="loglake")
        if mechanism == "SCRAM-SHA-512":        # one from a file, the others from a variable
            secret = tmp_path / "kafka-password"
            secret.write_text(password + "\n")
            env["LOGLAKE_KAFKA__SASL_PASSWORD_FILE"] = str(secret)
        else:
            env.update(LOGLAKE_KAFKA__SASL_PASSWORD_ENV="KAFKA_PASSWORD", KAFKA_PASSWORD=password)
    return env


@pytest.mark.parametrize("secured", MODES, indirect=True, ids=[m[1] or m[0] for m in MODES])
def test_loglakes_kafka_clients_connect_with_each_protocol_and_mechanism(secured: Secured, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings every loglake client is built from (``client_kwargs``): topic admin, producer and
    consumer, over each protocol and mechanism, against the proxy's real TLS and SASL."""
    env = _security_env(secured, tmp_path)
    for name, value in env.items():
        if not name.startswith("LOGLAKE_"):
            monkeypatch.setenv(name, value)
    cfg = load_config(environ={"LOGLAKE_CONFIG": str(_empty(tmp_path)), "LOGLAKE_KAFKA__BOOTSTRAP_SERVERS":
                               secured.bootstrap, "LOGLAKE_KAFKA__TOPIC": "secure.clients", **env})

    async def round_trip() -> bytes:
        await ensure_topic(cfg.kafka)
        producer = AIOKafkaProducer(**client_kwargs(cfg.kafka))
        await producer.start()
        try:
            await producer.send_and_wait(cfg.kafka.topic, b"over " + cfg.kafka.security_protocol.encode(),
                                         partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(**client_kwargs(cfg.kafka), auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(cfg.kafka.topic, 0)])
            message = await asyncio.wait_for(consumer.getone(), 30)
            return message.value or b""
        finally:
            await consumer.stop()

    assert asyncio.run(round_trip()) == b"over " + secured.protocol.encode()
    if secured.mechanism:
        assert {who for what, who in secured.proxy.events if what == "auth-ok"} == {"loglake"}
        assert not [e for e in secured.proxy.events if e[0] != "auth-ok"], secured.proxy.events


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path


@pytest.mark.parametrize("secured", FULL, indirect=True, ids=[m[1] or m[0] for m in FULL])
def test_shipper_and_ingest_work_over_tls_and_sasl(secured: Secured, tmp_path: Path) -> None:
    stack = Stack(root=tmp_path / "stack", bootstrap=secured.bootstrap, topic="secure.logs")
    env = _security_env(secured, tmp_path)
    try:
        log = stack.input_dir / "app.log"
        log.write_text("".join(f"secure line {i} level=info\n" for i in range(50)))
        stack.start("ingest", **env)
        stack.start("ship", **env)
        catalog = open_catalog(stack)
        wait_rows(stack, catalog, 50, timeout_s=60)
        running(stack, "ship")()
        rows = stored(stack, catalog, "default")
        assert sorted(r["message"] for r in rows) == sorted(f"secure line {i} level=info" for i in range(50))
    finally:
        stack.stop_all()
    if secured.mechanism:
        users = {who for what, who in secured.proxy.events if what == "auth-ok"}
        assert users == {"loglake"}, secured.proxy.events
        assert not [e for e in secured.proxy.events if e[0] != "auth-ok"], secured.proxy.events
    for name in ("ship", "ingest"):
        assert PASSWORD not in stack.log_text(name), f"the password is in the {name} log"


@pytest.mark.parametrize("secured", [("SASL_SSL", "SCRAM-SHA-512")], indirect=True)
def test_a_wrong_password_stops_ingest_with_a_clear_error_and_is_not_logged(secured: Secured,
                                                                            tmp_path: Path) -> None:
    stack = Stack(root=tmp_path / "stack", bootstrap=secured.bootstrap, topic="secure.logs")
    wrong = "not-the-password-either"
    env = _security_env(secured, tmp_path, password=wrong)
    try:
        proc = stack.start("ingest", **env)
        wait_until(lambda: proc.poll() is not None, 90, what="ingest to give up on bad credentials")
        text = stack.log_text("ingest")
        assert proc.returncode != 0
        assert "authentication" in text.lower(), text[-2000:]
        assert wrong not in text and PASSWORD not in text
        assert ("auth-failed", "loglake") in secured.proxy.events
        assert not any(e[0] == "auth-ok" for e in secured.proxy.events)
    finally:
        stack.stop_all()


@pytest.mark.parametrize("secured", [("SSL", None)], indirect=True)
def test_tls_with_an_untrusted_certificate_is_refused(secured: Secured, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other_ca, _ = self_signed(tmp_path / "other")      # a CA that did not sign the broker's certificate
    stack = Stack(root=tmp_path / "stack", bootstrap=secured.bootstrap, topic="secure.logs")
    env = {"LOGLAKE_KAFKA__SECURITY_PROTOCOL": "SSL", "LOGLAKE_KAFKA__SSL_CAFILE": str(other_ca)}
    try:
        proc = stack.start("ingest", **env)
        t0 = time.monotonic()
        wait_until(lambda: proc.poll() is not None, 90, what="ingest to give up on an untrusted broker")
        assert proc.returncode != 0
        text = stack.log_text("ingest")
        assert "certificate" in text.lower() or "ssl" in text.lower(), text[-2000:]
        assert time.monotonic() - t0 < 90
    finally:
        stack.stop_all()
