"""What `loglake up` changes when it runs the embedded broker, and what it leaves as configured."""

from __future__ import annotations

import pytest

from loglake.core.config import Config, load_config
from loglake.supervisor import EMBEDDED_SESSION_S, embedded_settings, even_partitions


@pytest.mark.parametrize(("partitions", "workers", "expected"), [(3, 2, 4), (3, 3, 3), (3, 1, 3), (6, 4, 8), (3, 5, 5)])
def test_the_topic_gets_a_partition_count_its_workers_share_evenly(partitions: int, workers: int,
                                                                   expected: int) -> None:
    cfg = Config.model_validate({"kafka": {"partitions": partitions}, "ingest": {"workers": workers}})
    got = even_partitions(cfg)
    assert got == expected and got % cfg.ingest.worker_count(got) == 0


def test_children_are_told_the_partitions_and_the_shorter_session() -> None:
    cfg = load_config(None, {"LOGLAKE_CONFIG": "/dev/null", "LOGLAKE_INGEST__WORKERS": "2"})
    up, env = embedded_settings(cfg)
    assert env == {"LOGLAKE_KAFKA__PARTITIONS": "4", "LOGLAKE_INGEST__SESSION_TIMEOUT_S": str(EMBEDDED_SESSION_S)}
    assert (up.kafka.partitions, up.ingest.session_timeout_s) == (4, EMBEDDED_SESSION_S)
    # What a child reads with those variables is what the supervisor runs with.
    child = load_config(None, {"LOGLAKE_CONFIG": "/dev/null", "LOGLAKE_INGEST__WORKERS": "2", **env})
    assert child.kafka == up.kafka and child.ingest == up.ingest


def test_a_configured_session_and_an_even_count_are_left_alone() -> None:
    cfg = load_config(None, {"LOGLAKE_CONFIG": "/dev/null", "LOGLAKE_INGEST__WORKERS": "3",
                             "LOGLAKE_INGEST__SESSION_TIMEOUT_S": "10"})
    up, env = embedded_settings(cfg)
    assert env == {} and up == cfg
