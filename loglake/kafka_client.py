"""Connection settings shared by every Kafka client loglake makes (producer, consumer, admin)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from loglake.config import ConfigError, KafkaConfig


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
