"""Kafka connection settings: what every client is handed for TLS and SASL.

Only the translation into aiokafka's arguments is checked here: the embedded
broker build this project pins does not serve TLS or SASL, so no real
handshake can be made in these tests.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from loglake.core.config import ConfigError, KafkaConfig
from loglake.core.kafka_client import client_kwargs


def test_plaintext_is_just_the_bootstrap_servers() -> None:
    assert client_kwargs(KafkaConfig(bootstrap_servers="k1:9092,k2:9092")) == {
        "bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}


def test_ssl_builds_a_context_that_verifies_the_broker(tmp_path: Path) -> None:
    out = client_kwargs(KafkaConfig(security_protocol="SSL"))
    ctx = out["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_ssl_hostname_check_can_be_turned_off() -> None:
    ctx = client_kwargs(KafkaConfig(security_protocol="SSL", ssl_check_hostname=False))["ssl_context"]
    assert ctx.check_hostname is False


def test_sasl_password_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PW", "s3cret")
    out = client_kwargs(KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                    sasl_username="loglake", sasl_password_env="KAFKA_PW"))
    assert (out["sasl_mechanism"], out["sasl_plain_username"], out["sasl_plain_password"]) == \
        ("SCRAM-SHA-512", "loglake", "s3cret")
    assert isinstance(out["ssl_context"], ssl.SSLContext)


def test_sasl_password_comes_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    out = client_kwargs(KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_username="u",
                                    sasl_password_file=str(secret)))
    assert out["sasl_plain_password"] == "from-file" and "ssl_context" not in out


def test_sasl_without_a_password_source_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ConfigError, match="sasl_password_env or kafka.sasl_password_file"):
        client_kwargs(KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_username="u"))
    with pytest.raises(ConfigError, match=r"\$NOPE is not set"):
        client_kwargs(KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_password_env="NOPE"))


def test_the_password_never_appears_in_the_config_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PW", "s3cret")
    cfg = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_password_env="KAFKA_PW")
    assert "s3cret" not in repr(cfg) and "s3cret" not in cfg.model_dump_json()
