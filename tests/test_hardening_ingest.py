"""Issue 19, ingest and broker hardening: pinned topic tenants, empty-record frames, the broker's bind.

End-to-end tests run the real ``loglake ingest`` against the real tansu broker
(the ``broker`` fixture) with a real SQLite catalog; messages are produced with
librdkafka as a third-party producer would. The broker-address tests run the
real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import lz4.block
import numpy as np
import orjson
import pytest

from loglake.core.config import Config, ConfigError, load_config
from loglake.core.frame import (
    FLAG_LZ4,
    MAGIC,
    VERSION,
    FrameError,
    FrameMeta,
    decode_frame,
    encode_frame,
    record_offsets,
)
from storage.catalog import Catalog
from tests.helpers.kafka import Msg, create_topics, produce, read_topic
from tests.helpers.processes import Stack, free_port, running
from tests.helpers.stored import open_catalog, wait_rows

pytestmark = pytest.mark.timeout(90)


# -- Kafka and catalog helpers (kept here: test files do not import each other) -----


def messages_of(stack: Stack, catalog: Catalog, tenant: str) -> list[str]:
    """The stored messages of ``tenant``, sorted, read from the catalog's live segments."""
    segments = catalog.segments(tenant, 0, 2**62)
    if not segments:
        return []
    con = duckdb.connect()
    try:
        rows = con.execute("SELECT message FROM read_parquet(?)",
                           [[str(stack.data_root / s.path) for s in segments]]).fetchall()
    finally:
        con.close()
    return sorted(r[0] for r in rows)


def shipper_frame(lines: list[str], *, tenant: str, source_id: str, first: int = 0) -> bytes:
    """A frame as ``loglake ship`` builds it."""
    data = "".join(line + "\n" for line in lines).encode()
    meta = FrameMeta(source_id=source_id, source="/var/log/app.log", host="shiphost", service="app",
                     tenant=tenant, first_offset=first, end_offset=first + len(data),
                     observed_us=time.time_ns() // 1000, count=len(lines))
    return encode_frame(meta, data, record_offsets(data))


def crafted_frame(offsets: np.ndarray, data: bytes, *, tenant: str = "default") -> bytes:
    """A frame with any offsets at all (``encode_frame`` would check them), lz4-compressed."""
    n = len(offsets) - 1
    raw = offsets.astype("<u4").tobytes() + data
    meta = orjson.dumps({"sid": f"attacker:{time.time_ns()}", "src": "/x", "host": "h", "svc": "s",
                         "tenant": tenant, "first": 0, "end": len(data), "obs": time.time_ns() // 1000,
                         "n": n, "raw": len(raw)})
    return (MAGIC + bytes([VERSION, FLAG_LZ4]) + len(meta).to_bytes(2, "little") + meta
            + lz4.block.compress(raw, store_size=False))


def zero_offsets_frame() -> bytes:
    """The attack: 8 MiB of zero offsets (2,097,151 empty records) in about 33 kB."""
    return crafted_frame(np.zeros((8 << 20) // 4, dtype="<u4"), b"")


# -- item 1: a pinned topic's tenant wins, for frames too ----------------------------


def test_pinned_topic_tenant_wins_over_a_frames_tenant(stack: Stack) -> None:
    edge = f"{stack.topic}.edge"
    create_topics(stack.bootstrap, stack.topic, edge)
    port = free_port()
    stack.start("ingest", LOGLAKE_INGEST__TOPICS=f'[{{name="{edge}", tenant="team-a", service="edge"}}]',
                LOGLAKE_INGEST__METRICS_LISTEN=f"127.0.0.1:{port}")
    catalog = open_catalog(stack)

    # A producer of the pinned topic writes a loglake frame naming tenant B (in its meta and header).
    spoof = shipper_frame(["spoofed frame id=1", "spoofed frame id=2"], tenant="team-b", source_id="evil:1")
    produce(stack.bootstrap, edge, [
        Msg(spoof, [("tenant", b"team-b")]),
        Msg(b"plain message id=3", [("tenant", b"team-b")]),
    ])
    # The shipper's topic is not pinned: there a frame's tenant is the tenant, as before.
    produce(stack.bootstrap, stack.topic, [
        Msg(shipper_frame(["shipped id=4"], tenant="team-f", source_id="ship:1"), [("tenant", b"team-f")]),
    ])

    wait_rows(stack, catalog, 4)
    time.sleep(1.0)        # anything late would show up by now
    assert messages_of(stack, catalog, "team-b") == []
    assert messages_of(stack, catalog, "team-a") == ["plain message id=3", "spoofed frame id=1",
                                                     "spoofed frame id=2"]
    assert messages_of(stack, catalog, "team-f") == ["shipped id=4"]
    assert catalog.totals()["rows"] == 4
    running(stack)()
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "loglake_ingest_tenant_overridden_records_total 2.0" in metrics


# -- item 12b: a frame of empty records ------------------------------------------------


def test_decoder_refuses_the_zero_offsets_frame() -> None:
    value = zero_offsets_frame()
    assert len(value) < 40_000        # the attack's size: tiny on the wire
    with pytest.raises(FrameError, match="empty record"):
        decode_frame(value)


def test_decoder_refuses_one_empty_record_among_others() -> None:
    data = b"a\nb\n"
    with pytest.raises(FrameError, match="empty record"):
        decode_frame(crafted_frame(np.array([0, 2, 2, 4]), data))


def test_decoder_takes_blank_lines_which_hold_their_terminator() -> None:
    """The smallest real record, a blank line, is one byte: still a frame."""
    data = b"\n" * 1000
    frame = decode_frame(crafted_frame(record_offsets(data), data))
    assert len(frame.records) == 1000 and frame.records[0].as_py() == b"\n"


def test_zero_offsets_frame_goes_to_dead_letters_and_stores_nothing(stack: Stack) -> None:
    dlq = f"{stack.topic}.dlq"
    create_topics(stack.bootstrap, stack.topic, dlq)
    stack.start("ingest", LOGLAKE_INGEST__DEAD_LETTER_TOPIC=dlq)
    catalog = open_catalog(stack)

    attack = zero_offsets_frame()
    sent = produce(stack.bootstrap, stack.topic, [
        Msg(attack, [("tenant", b"default")]),
        Msg(shipper_frame(["good id=1"], tenant="default", source_id="ship:2"), [("tenant", b"default")]),
    ])

    letters = read_topic(stack.bootstrap, dlq, expect=1, check=running(stack))
    assert len(letters) == 1, [letter.headers for letter in letters]
    value, headers = letters[0].value, letters[0].headers
    assert headers["reason"] == "corrupt_frame"
    assert "empty record" in headers["detail"]
    assert (headers["topic"], headers["offset"]) == (stack.topic, str(sent[0].offset))
    assert value == attack

    wait_rows(stack, catalog, 1)
    time.sleep(1.0)
    assert catalog.totals()["rows"] == 1
    assert messages_of(stack, catalog, "default") == ["good id=1"]


# -- item 12a: the embedded broker listens on loopback unless told otherwise ---------


def config_with(tmp_path: Path, **env: str) -> Config:
    """The configuration of an empty file plus ``env`` (never the working directory's loglake.toml)."""
    file = tmp_path / "loglake.toml"
    file.write_text("")
    return load_config(file, environ=env)


@pytest.mark.parametrize("listen", ["0.0.0.0:9092", "[::]:9092", "10.1.2.3:9092", "broker.example.com:9092"])
def test_config_refuses_a_remote_broker_address(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match=r"broker\.listen \(env LOGLAKE_BROKER__LISTEN\).*allow_remote"):
        config_with(tmp_path, LOGLAKE_BROKER__LISTEN=listen)


@pytest.mark.parametrize("listen", ["127.0.0.1:9092", "127.0.0.53:19092", "localhost:9092", "[::1]:9092"])
def test_config_takes_a_loopback_broker_address(tmp_path: Path, listen: str) -> None:
    assert config_with(tmp_path, LOGLAKE_BROKER__LISTEN=listen).broker.listen == listen


def test_config_takes_a_remote_broker_address_when_allowed(tmp_path: Path) -> None:
    cfg = config_with(tmp_path, LOGLAKE_BROKER__LISTEN="0.0.0.0:9092", LOGLAKE_BROKER__ALLOW_REMOTE="true")
    assert cfg.broker.listen == "0.0.0.0:9092" and cfg.broker.allow_remote is True


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:", ":9092", "127.0.0.1:99999"])
def test_config_refuses_a_broker_address_that_is_not_host_port(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match=r"broker\.listen .*host:port"):
        config_with(tmp_path, LOGLAKE_BROKER__LISTEN=listen)


def test_broker_command_refuses_a_remote_address_with_exit_2(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    env.update(LOGLAKE_BROKER__LISTEN=f"0.0.0.0:{port}", LOGLAKE_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}")
    proc = subprocess.Popen([sys.executable, "-m", "loglake", "broker"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()            # the old code started a broker reachable from the network
        proc.communicate()
        pytest.fail("loglake broker started on 0.0.0.0 instead of refusing the address")
    assert proc.returncode == 2, (out, err)
    text = err.decode()
    assert "broker.listen" in text and "LOGLAKE_BROKER__LISTEN" in text and "allow_remote" in text, text
