"""Ingest with real processes: third-party producers, dead letters, formats, recreated topics.

Every test runs the real ``loglake ingest`` against the real tansu broker and
a real SQLite catalog; third-party messages are produced with librdkafka
(``confluent_kafka``), as Vector, Fluent Bit or rsyslog would. Stored rows are
read with DuckDB from exactly the Parquet files the catalog lists as live,
handed over as Arrow (times as epoch microseconds); dead letters are read back
from their topic.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import confluent_kafka
import httpx
import pytest

from storage.catalog import Catalog, PartitionState
from tests.helpers.kafka import (
    Delivered,
    Letter,
    Msg,
    Shipper,
    create_topics,
    delete_topic,
    produce,
    read_topic,
    topics_env,
)
from tests.helpers.metrics import scrape
from tests.helpers.processes import Stack, free_port, running, wait_until
from tests.helpers.stored import open_catalog, stored, wait_rows

pytestmark = pytest.mark.timeout(90)


# -- reading what was stored -----------------------------------------------------


def by_message(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        assert r["message"] not in out, f"stored twice: {r['message']!r}"
        out[r["message"]] = r
    return out


def us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def log_records(stack: Stack, name: str) -> list[dict[str, Any]]:
    out = []
    for line in stack.log_text(name).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# -- 1. third-party producers ---------------------------------------------------


def test_third_party_records_from_librdkafka_land_with_topic_tenant_and_service(stack: Stack) -> None:
    edge, shared = f"{stack.topic}.edge", f"{stack.topic}.shared"
    create_topics(stack.bootstrap, stack.topic, edge, shared)
    stack.start("ingest", LOGLAKE_INGEST__TOPICS=topics_env(
        f'{{name="{edge}", tenant="team-a", service="edge"}}', f'{{name="{shared}"}}'))
    catalog = open_catalog(stack)

    now = datetime.now(UTC).replace(microsecond=0)
    event = now - timedelta(minutes=7, milliseconds=-123)
    kafka_ts = us(now - timedelta(seconds=30)) // 1000       # explicit message timestamps (ms)
    text = f"{iso(event)} ERROR gateway upstream timed out after 3000ms id=edge-1"
    js = {"ts": iso(event + timedelta(seconds=1)), "level": "warn", "message": "disk almost full id=edge-2",
          "user": "bob", "disk": {"mount": "/var", "free_pct": 3}}
    js_service = {"time": iso(event + timedelta(seconds=2)), "level": "info", "service": "billing",
                  "msg": "invoice sent id=edge-3", "invoice": "INV-7"}
    js_no_time = {"level": "debug", "message": "cache warm id=edge-4"}
    sent = produce(stack.bootstrap, edge, [
        Msg(text.encode(), timestamp_ms=kafka_ts),
        Msg(json.dumps(js).encode(), timestamp_ms=kafka_ts + 1),
        # a trailing newline, as rsyslog sends
        Msg(json.dumps(js_service).encode() + b"\n", timestamp_ms=kafka_ts + 2),
        Msg(json.dumps(js_no_time).encode(), timestamp_ms=kafka_ts + 3,
            headers=[("tenant", b"team-z")]),    # the topic's fixed tenant wins over a header
    ])
    shared_sent = produce(stack.bootstrap, shared, [
        Msg(b'{"level":"error","message":"payment declined id=shared-1","card":"visa"}',
            headers=[("tenant", b"team-b")]),
        Msg(f"{iso(event)} INFO started id=shared-2".encode(), headers=[("tenant", b"team-c")]),
        Msg(b"no header at all id=shared-3 INFO"),
        Msg(b"empty header id=shared-4 WARN", headers=[("tenant", b"")]),
        Msg(b"other header id=shared-5 WARN", headers=[("x-tenant", b"team-b")]),
    ])
    main = Shipper(tenant="team-f", service="checkout")
    produce(stack.bootstrap, stack.topic, [main.frame([f"{iso(event)} INFO shipped by a loglake shipper id=main-1"])])

    wait_rows(stack, catalog, 10)
    time.sleep(1.0)       # anything late (a duplicate) would show up by now
    assert catalog.totals()["rows"] == 10

    rows = by_message(stored(stack, catalog, "team-a"))
    text_message = "gateway upstream timed out after 3000ms id=edge-1"     # after its header
    assert set(rows) == {text_message, "disk almost full id=edge-2", "invoice sent id=edge-3", "cache warm id=edge-4"}

    r = rows[text_message]
    assert r["line"] == text
    assert (r["service"], r["level"], r["severity"]) == ("edge", "error", 17)
    assert r["ts"] == us(event)
    assert r["observed_ts"] == kafka_ts * 1000 == sent[0].timestamp_ms * 1000
    assert r["source"] == f"kafka:{edge}" and r["host"] == ""
    assert "format" not in r["attrs"]

    r = rows["disk almost full id=edge-2"]
    assert (r["service"], r["level"]) == ("edge", "warn")
    assert r["ts"] == us(event + timedelta(seconds=1))
    assert r["observed_ts"] == (kafka_ts + 1) * 1000
    assert r["attrs"] == {"user": "bob", "disk.mount": "/var", "disk.free_pct": "3"}

    r = rows["invoice sent id=edge-3"]
    assert (r["service"], r["level"]) == ("billing", "info"), "a service named in the record wins"
    assert r["ts"] == us(event + timedelta(seconds=2))
    assert r["attrs"] == {"invoice": "INV-7"}

    r = rows["cache warm id=edge-4"]
    assert (r["service"], r["level"]) == ("edge", "debug")
    assert r["ts"] == r["observed_ts"] == (kafka_ts + 3) * 1000, "no time in the record: the message timestamp"

    # (b) no fixed tenant: the `tenant` header, else the default tenant.
    b = by_message(stored(stack, catalog, "team-b"))
    assert list(b) == ["payment declined id=shared-1"]
    assert (b["payment declined id=shared-1"]["service"], b["payment declined id=shared-1"]["level"]) == (
        "unknown", "error")
    assert b["payment declined id=shared-1"]["attrs"] == {"card": "visa", "ts_parse": "observed"}
    assert b["payment declined id=shared-1"]["observed_ts"] == shared_sent[0].timestamp_ms * 1000
    c = by_message(stored(stack, catalog, "team-c"))
    assert list(c) == ["started id=shared-2"]
    assert c["started id=shared-2"]["line"] == f"{iso(event)} INFO started id=shared-2"
    assert c["started id=shared-2"]["ts"] == us(event)
    d = by_message(stored(stack, catalog, "default"))
    assert set(d) == {"no header at all id=shared-3 INFO", "empty header id=shared-4 WARN",
                      "other header id=shared-5 WARN"}
    assert {r["source"] for r in d.values()} == {f"kafka:{shared}"}
    assert not stored(stack, catalog, "team-z")

    # The shipper's frames on the main topic, in the same worker and group.
    f = by_message(stored(stack, catalog, "team-f"))
    assert list(f) == ["shipped by a loglake shipper id=main-1"]
    assert f["shipped by a loglake shipper id=main-1"]["line"] == \
        f"{iso(event)} INFO shipped by a loglake shipper id=main-1"
    assert f["shipped by a loglake shipper id=main-1"]["service"] == "checkout"

    started = [r for r in log_records(stack, "ingest") if r.get("msg") == "ingest worker started"]
    assert len(started) == 1 and started[0]["topics"] == [stack.topic, edge, shared]
    assert started[0]["group"] == f"{stack.topic}-ingest"
    assigned = {p for r in log_records(stack, "ingest") if r.get("msg") == "partitions assigned"
                for p in r["partitions"]}
    assert {f"{stack.topic}/0", f"{edge}/0", f"{shared}/0"} <= assigned
    assert stack.procs["ingest"].poll() is None


def test_tenant_header_name_comes_from_kafka_tenant_header(stack: Stack) -> None:
    shared = f"{stack.topic}.shared"
    create_topics(stack.bootstrap, stack.topic, shared)
    stack.start("ingest", LOGLAKE_INGEST__TOPICS=topics_env(f'{{name="{shared}", service="svc"}}'),
                LOGLAKE_KAFKA__TENANT_HEADER="x-org", LOGLAKE_INGEST__DEFAULT_TENANT="fallback")
    catalog = open_catalog(stack)
    produce(stack.bootstrap, shared, [
        Msg(b"named by x-org id=1", headers=[("x-org", b"org-1")]),
        Msg(b"tenant header is not the configured one id=2", headers=[("tenant", b"org-2")]),
        Msg(b"no header id=3"),
    ])
    wait_rows(stack, catalog, 3)
    assert [r["message"] for r in stored(stack, catalog, "org-1")] == ["named by x-org id=1"]
    assert sorted(r["message"] for r in stored(stack, catalog, "fallback")) == [
        "no header id=3", "tenant header is not the configured one id=2"]
    assert not stored(stack, catalog, "org-2")


# -- 2. dead letters ----------------------------------------------------------------


def _check_letter(letter: Letter, reason: str, topic: str, where: Delivered, value: bytes) -> None:
    assert letter.headers["reason"] == reason
    assert letter.headers["topic"] == topic
    assert letter.headers["partition"] == str(where.partition)
    assert letter.headers["offset"] == str(where.offset)
    assert letter.value == value


def test_corrupt_frames_and_oversized_records_go_to_the_dead_letter_topic(stack: Stack) -> None:
    edge, dlq = f"{stack.topic}.edge", f"{stack.topic}.dlq"
    # The dead-letter topic exists before the reader assigns it (the worker creates it too, later).
    create_topics(stack.bootstrap, stack.topic, edge, dlq)
    port = free_port()
    stack.start("ingest", LOGLAKE_INGEST__TOPICS=topics_env(f'{{name="{edge}", tenant="team-a", service="edge"}}'),
                LOGLAKE_INGEST__MAX_RECORD_BYTES="2048", LOGLAKE_INGEST__DEAD_LETTER_TOPIC=dlq,
                LOGLAKE_INGEST__METRICS_LISTEN=f"127.0.0.1:{port}")
    catalog = open_catalog(stack)

    ship = Shipper(tenant="default", service="app")
    corrupt = b"LLKF" + bytes(range(256)) * 4
    huge_corrupt = b"LLKF\x01\x01" + b"\xff" * (950 << 10)          # over the 900 KiB a dead letter keeps
    big_line = "x" * 4000 + " id=big-in-frame"
    big_message = b"A" * 4985 + b" id=big-message"                 # 5,000 bytes
    assert len(big_message) == 5000
    main_sent = produce(stack.bootstrap, stack.topic, [
        ship.frame(["good id=m1", "good id=m2"]),
        Msg(corrupt, headers=[("tenant", b"default")]),
        ship.frame(["good id=m3"]),
        ship.frame(["good id=m4", big_line, "good id=m5"]),            # one record in a frame over the limit
        Msg(huge_corrupt),
        ship.frame(["good id=m6"]),
    ])
    edge_sent = produce(stack.bootstrap, edge, [
        Msg(b"good id=e1"),
        Msg(big_message),
        Msg(b"good id=e2"),
    ])

    letters = read_topic(stack.bootstrap, dlq, expect=4, check=running(stack))
    reasons = Counter(x.headers["reason"] for x in letters)
    assert reasons == {"corrupt_frame": 2, "oversized_record": 2}, [x.headers for x in letters]
    by_value = {x.value[:64]: x for x in letters}
    _check_letter(by_value[corrupt[:64]], "corrupt_frame", stack.topic, main_sent[1], corrupt)
    _check_letter(by_value[big_line.encode()[:64]], "oversized_record", stack.topic, main_sent[3],
                  big_line.encode() + b"\n")
    _check_letter(by_value[big_message[:64]], "oversized_record", edge, edge_sent[1], big_message)
    cut = by_value[huge_corrupt[:64]]
    _check_letter(cut, "corrupt_frame", stack.topic, main_sent[4], huge_corrupt[:900 << 10])
    assert cut.headers["original_bytes"] == str(len(huge_corrupt))
    assert by_value[big_message[:64]].headers["tenant"] == "team-a"

    # The good records around them: each stored exactly once.
    wait_rows(stack, catalog, 8)
    time.sleep(1.0)
    main_rows = [r["message"] for r in stored(stack, catalog, "default")]
    edge_rows = [r["message"] for r in stored(stack, catalog, "team-a")]
    assert sorted(main_rows) == [f"good id=m{i}" for i in range(1, 7)]
    assert sorted(edge_rows) == ["good id=e1", "good id=e2"]
    assert catalog.totals()["rows"] == 8

    # The worker keeps running and keeps storing.
    produce(stack.bootstrap, edge, [Msg(b"after id=e3")])
    wait_rows(stack, catalog, 9)
    assert stack.procs["ingest"].poll() is None

    m = scrape(port)
    dead = {dict(k[1])["reason"]: v for k, v in m.items() if k[0] == "loglake_ingest_dead_letters_total"}
    assert dead == {"corrupt_frame": 2, "oversized_record": 2}
    assert m[("loglake_ingest_records_total", ())] == 9
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=5).status_code == 404


@pytest.mark.parametrize("via", ["frame", "message"])
def test_invalid_tenant_goes_to_the_dead_letter_topic(stack: Stack, via: str) -> None:
    """A shipper's frame naming an invalid tenant, or a third-party message whose tenant header is invalid."""
    shared, dlq = f"{stack.topic}.shared", f"{stack.topic}.dlq"
    # The dead-letter topic exists before the reader assigns it (the worker creates it too, later).
    create_topics(stack.bootstrap, stack.topic, shared, dlq)
    port = free_port()
    stack.start("ingest", LOGLAKE_INGEST__TOPICS=topics_env(f'{{name="{shared}"}}'),
                LOGLAKE_INGEST__DEAD_LETTER_TOPIC=dlq, LOGLAKE_INGEST__METRICS_LISTEN=f"127.0.0.1:{port}")
    catalog = open_catalog(stack)

    if via == "frame":
        topic, tenant, ship = stack.topic, "../etc", Shipper(tenant="team-b")
        bad = Shipper(tenant=tenant).frame(["a frame of an invalid tenant"])
        sent = produce(stack.bootstrap, topic, [ship.frame(["good id=1"]), bad, ship.frame(["good id=2"])])
    else:
        topic, tenant = shared, "team b/../x"
        bad = Msg(b"a message of an invalid tenant", headers=[("tenant", tenant.encode())])
        sent = produce(stack.bootstrap, topic, [Msg(b"good id=1", headers=[("tenant", b"team-b")]), bad,
                                                Msg(b"good id=2", headers=[("tenant", b"team-b")])])

    letters = read_topic(stack.bootstrap, dlq, expect=1, check=running(stack))
    assert [x.headers["reason"] for x in letters] == ["invalid_tenant"], [x.headers for x in letters]
    _check_letter(letters[0], "invalid_tenant", topic, sent[1], bad.value)
    assert letters[0].headers["tenant"] == tenant

    wait_rows(stack, catalog, 2)
    time.sleep(1.0)
    assert sorted(r["message"] for r in stored(stack, catalog, "team-b")) == ["good id=1", "good id=2"]
    assert catalog.totals()["rows"] == 2
    running(stack)()
    assert not [p for p in stack.root.rglob("*") if "etc" in p.parts or "x" in p.parts]
    dead = {dict(k[1])["reason"]: v for k, v in scrape(port).items()
            if k[0] == "loglake_ingest_dead_letters_total"}
    assert dead == {"invalid_tenant": 1}


# -- 3. plain text nothing understands ---------------------------------------------


def test_text_no_format_understands_is_stored_whole_as_unknown(stack: Stack) -> None:
    edge, dlq = f"{stack.topic}.edge", f"{stack.topic}.dlq"
    create_topics(stack.bootstrap, stack.topic, edge)
    stack.start("ingest", LOGLAKE_INGEST__TOPICS=topics_env(f'{{name="{edge}", tenant="team-a", service="edge"}}'),
                LOGLAKE_INGEST__DEAD_LETTER_TOPIC=dlq)
    catalog = open_catalog(stack)
    lines = [
        "just some words, no time and no level",
        '{"truncated": "json object',
        "<<< ??? >>> 12:34 but not a time ~~~",
        "key=value but then = nothing &&& fields",
        "  leading spaces and trailing\ttab\t",
    ]
    ship = Shipper(tenant="team-a", service="filebeat")
    sent = produce(stack.bootstrap, edge, [Msg(line.encode()) for line in lines])
    produce(stack.bootstrap, stack.topic, [ship.frame(["a framed line nothing understands"])])
    wait_rows(stack, catalog, len(lines) + 1)
    time.sleep(1.0)

    rows = by_message(stored(stack, catalog, "team-a"))
    assert set(rows) == {*lines, "a framed line nothing understands"}
    for i, line in enumerate(lines):
        r = rows[line]
        assert r["attrs"] == {"ts_parse": "observed", "format": "unknown"}, (line, r["attrs"])
        assert (r["level"], r["severity"]) == ("unknown", 0)
        assert r["ts"] == r["observed_ts"] == sent[i].timestamp_ms * 1000
        assert r["service"] == "edge"
    assert rows["a framed line nothing understands"]["attrs"] == {"ts_parse": "observed", "format": "unknown"}
    assert catalog.totals()["rows"] == len(lines) + 1
    assert read_topic(stack.bootstrap, dlq, expect=0, timeout_s=1) == [], "nothing was dead-lettered"


# -- 4. per-source formats -------------------------------------------------------


PATTERN = r"(?P<level>[A-Z]+) (?P<user>\w+) (?P<message>.*)"


def test_pattern_format_configured_per_topic(stack: Stack) -> None:
    patterned, other = f"{stack.topic}.pat", f"{stack.topic}.other"
    create_topics(stack.bootstrap, stack.topic, patterned, other)
    stack.start("ingest",
                LOGLAKE_INGEST__TOPICS=topics_env(f'{{name="{patterned}", tenant="team-p", service="pat"}}',
                                                  f'{{name="{other}", tenant="team-o", service="other"}}'),
                LOGLAKE_INGEST__FORMATS=f"[{{topic=\"{patterned}\", format=\"pattern\", pattern='{PATTERN}'}}]")
    catalog = open_catalog(stack)
    sent = produce(stack.bootstrap, patterned, [
        Msg(b"ERROR alice payment failed: card expired"),
        Msg(b"WARN bob_2 quota at 91%"),
        Msg(b"lowercase does not match the pattern"),
    ])
    produce(stack.bootstrap, other, [Msg(b"ERROR alice payment failed: card expired")])
    wait_rows(stack, catalog, 4)

    rows = by_message(stored(stack, catalog, "team-p"))
    assert set(rows) == {"payment failed: card expired", "quota at 91%", "lowercase does not match the pattern"}
    r = rows["payment failed: card expired"]
    assert (r["level"], r["severity"], r["service"]) == ("error", 17, "pat")
    assert r["attrs"] == {"user": "alice", "ts_parse": "observed"}
    assert r["ts"] == sent[0].timestamp_ms * 1000
    r = rows["quota at 91%"]
    assert (r["level"], r["attrs"]) == ("warn", {"user": "bob_2", "ts_parse": "observed"})
    # A line the pattern does not match falls back to plain text (whole line, nothing parsed).
    r = rows["lowercase does not match the pattern"]
    assert r["level"] == "unknown" and "user" not in r["attrs"]

    # The rule names one topic; the same line elsewhere is detected as plain text.
    o = stored(stack, catalog, "team-o")
    assert [(r["message"], r["level"]) for r in o] == [("ERROR alice payment failed: card expired", "error")]
    assert "user" not in o[0]["attrs"]


@pytest.mark.parametrize("pattern", [
    r"(?P<x>a)(b)",              # a group without a name
    r"no groups at all",
    r"(?P<x>a",                  # not a regular expression
    r"(?P<x>a(?=b))",            # Python's re takes it; RE2 (DuckDB) has no lookahead
], ids=["unnamed-group", "no-named-group", "unbalanced", "re2-lookahead"])
def test_invalid_pattern_stops_ingest_with_usage_error(stack: Stack, pattern: str) -> None:
    env = stack.env(LOGLAKE_INGEST__FORMATS=f"[{{topic=\"x\", format=\"pattern\", pattern='{pattern}'}}]")
    proc = subprocess.run([sys.executable, "-m", "loglake", "ingest"], cwd=stack.root, env=env,
                          capture_output=True, timeout=60)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr:\n{err[-2000:]}"
    assert "ingest.formats" in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]


# -- 5. a topic recreated under the catalog ---------------------------------------
#
# A restarted worker joins under a new group id: the catalog, not the group's
# committed offsets, decides where it resumes, and tansu keeps a group that lost
# a member rebalancing for ~18 s, longer than these tests should take.


def _stop(stack: Stack, name: str) -> None:
    stack.kill(name, signal.SIGINT)
    assert stack.procs[name].returncode == 0, stack.log_text(name)[-3000:]


def _restart(stack: Stack, env: dict[str, str], **extra: str) -> subprocess.Popen[bytes]:
    return stack.start("ingest", name="ingest-2", LOGLAKE_INGEST__GROUP_ID=f"{stack.topic}-ingest-2", **env, **extra)


def _assigned(stack: Stack, name: str) -> bool:
    return any(r.get("msg") == "partitions assigned" for r in log_records(stack, name))


def _ingest_then_recreate(stack: Stack, topic: str, env: dict[str, str]) -> Catalog:
    """Store 8 records of ``topic``, stop the worker, delete and recreate the topic with 3 records on it."""
    create_topics(stack.bootstrap, stack.topic, topic)
    stack.start("ingest", **env)
    catalog = open_catalog(stack)
    produce(stack.bootstrap, topic, [Msg(f"first life id=a{i}".encode()) for i in range(8)], one_batch_each=True)
    wait_rows(stack, catalog, 8)
    wait_until(lambda: catalog.partition_states(topic).get(0) == PartitionState(0, 8), 10,
               what="catalog offset 8")
    _stop(stack, "ingest")
    delete_topic(stack.bootstrap, topic)
    create_topics(stack.bootstrap, topic)
    # One message per batch, so that the broker's listed log end is the true one (3).
    produce(stack.bootstrap, topic, [Msg(f"second life id=b{i}".encode()) for i in range(3)], one_batch_each=True)
    return catalog


def test_topic_recreated_earliest_reads_the_new_topic_from_its_start(stack: Stack) -> None:
    topic = f"{stack.topic}.recreated"
    env = {"LOGLAKE_INGEST__TOPICS": topics_env(f'{{name="{topic}", tenant="team-r"}}')}
    catalog = _ingest_then_recreate(stack, topic, env)
    _restart(stack, env)
    wait_rows(stack, catalog, 11, proc="ingest-2")
    time.sleep(1.0)
    messages = sorted(r["message"] for r in stored(stack, catalog, "team-r"))
    assert messages == sorted([f"first life id=a{i}" for i in range(8)] + [f"second life id=b{i}" for i in range(3)])
    assert catalog.partition_states(topic)[0] == PartitionState(1, 3), "a new epoch from the new log's start"
    warned = [r for r in log_records(stack, "ingest-2") if "topic recreated" in r.get("msg", "")]
    assert len(warned) == 1, stack.log_text("ingest-2")[-3000:]
    assert (warned[0]["topic"], warned[0]["partition"], warned[0]["catalog_offset"], warned[0]["log_end"],
            warned[0]["policy"]) == (topic, 0, 8, 3, "earliest")
    # It goes on storing the new topic's records.
    produce(stack.bootstrap, topic, [Msg(b"second life id=b3")])
    wait_rows(stack, catalog, 12, proc="ingest-2")
    assert catalog.partition_states(topic)[0] == PartitionState(1, 4)


def test_topic_recreated_and_grown_past_the_catalog_offset_is_still_noticed(stack: Stack) -> None:
    """The new log already holds more records than the catalog's offset (a busy producer while the
    worker was away): the record at the catalog's last offset is another one, so nothing is skipped."""
    topic = f"{stack.topic}.recreated"
    env = {"LOGLAKE_INGEST__TOPICS": topics_env(f'{{name="{topic}", tenant="team-r"}}')}
    catalog = _ingest_then_recreate(stack, topic, env)
    produce(stack.bootstrap, topic, [Msg(f"second life id=b{i}".encode()) for i in range(3, 12)],
            one_batch_each=True)                             # 12 records now, past offset 8
    _restart(stack, env)
    wait_rows(stack, catalog, 20, proc="ingest-2")
    time.sleep(1.0)
    messages = sorted(r["message"] for r in stored(stack, catalog, "team-r"))
    assert messages == sorted([f"first life id=a{i}" for i in range(8)] +
                              [f"second life id=b{i}" for i in range(12)])
    assert catalog.partition_states(topic)[0] == PartitionState(1, 12)
    warned = [r for r in log_records(stack, "ingest-2") if "topic recreated" in r.get("msg", "")]
    assert len(warned) == 1 and warned[0]["catalog_offset"] == 8 and warned[0]["log_start"] == 0, warned


def test_topic_recreated_with_policy_fail_stops_the_worker(stack: Stack) -> None:
    topic = f"{stack.topic}.recreated"
    env = {"LOGLAKE_INGEST__TOPICS": topics_env(f'{{name="{topic}", tenant="team-r"}}')}
    catalog = _ingest_then_recreate(stack, topic, env)
    proc = _restart(stack, env, LOGLAKE_INGEST__ON_TOPIC_RECREATED="fail")
    wait_until(lambda: "topic recreated" in stack.log_text("ingest-2") or proc.poll() is not None, 15,
               what="the restarted worker to notice the recreated topic")
    try:
        code = proc.wait(5)
    except subprocess.TimeoutExpired:
        code = None
    log = stack.log_text("ingest-2")
    assert "topic recreated" in log, log[-3000:]
    assert code not in (None, 0), f"the worker should stop (exit {code}); log tail:\n{log[-3000:]}"
    assert catalog.partition_states(topic)[0] == PartitionState(0, 8), "the catalog is left as it was"
    assert catalog.totals()["rows"] == 8


def test_worker_restart_on_an_unchanged_topic_is_not_a_recreation(stack: Stack) -> None:
    """Records produced in one batch (as librdkafka does), then a plain restart: nothing re-read, no new epoch."""
    topic = f"{stack.topic}.batched"
    env = {"LOGLAKE_INGEST__TOPICS": topics_env(f'{{name="{topic}", tenant="team-r"}}')}
    create_topics(stack.bootstrap, stack.topic, topic)
    stack.start("ingest", **env)
    catalog = open_catalog(stack)
    produce(stack.bootstrap, topic, [Msg(f"batched id={i}".encode()) for i in range(10)])    # one batch
    wait_rows(stack, catalog, 10)
    _stop(stack, "ingest")
    assert catalog.partition_states(topic)[0] == PartitionState(0, 10)

    _restart(stack, env)
    # The topic is idle while the worker takes its partitions (as after any restart at night).
    wait_until(lambda: _assigned(stack, "ingest-2"), 20, what="partitions assigned to the restarted worker")
    time.sleep(1.5)
    produce(stack.bootstrap, topic, [Msg(b"after restart id=10")])
    wait_rows(stack, catalog, 11, proc="ingest-2")
    time.sleep(1.5)
    recreated = [r for r in log_records(stack, "ingest-2") if "topic recreated" in r.get("msg", "")]
    counts = Counter(r["message"] for r in stored(stack, catalog, "team-r"))
    state = catalog.partition_states(topic)[0]
    twice = sorted(m for m, c in counts.items() if c > 1)
    assert not recreated and not twice and state == PartitionState(0, 11), (
        f"{len(twice)} records stored twice {twice[:3]}...; catalog state {state}; "
        f"'topic recreated' logged: {recreated}")
    assert len(counts) == 11


# -- 6. flushing under a steady flow ---------------------------------------------


def test_a_worker_that_keeps_up_with_a_steady_flow_flushes_after_caught_up_s(stack: Stack) -> None:
    """Records every 20 ms, so a read seldom comes back empty: the worker still knows it is at the
    log's end (each fetch's high watermark) and flushes after flush_caught_up_s, long before the
    interval, while the flow goes on."""
    create_topics(stack.bootstrap, stack.topic)
    stack.start("ingest", LOGLAKE_INGEST__FLUSH_INTERVAL_S="120", LOGLAKE_INGEST__FLUSH_CAUGHT_UP_S="0.3")
    catalog = open_catalog(stack)
    wait_until(lambda: _assigned(stack, "ingest"), 20, what="partitions assigned to the worker")
    producer = confluent_kafka.Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 0, "acks": "all"})
    sent = 0
    first_rows_at: float | None = None
    started = time.monotonic()
    while time.monotonic() - started < 20 and (first_rows_at is None or time.monotonic() - first_rows_at < 3):
        producer.produce(stack.topic, f"steady id={sent}".encode())
        producer.poll(0)
        sent += 1
        time.sleep(0.02)
        if first_rows_at is None and catalog.totals()["rows"]:
            first_rows_at = time.monotonic()
    producer.flush(10)
    running(stack)()
    assert first_rows_at is not None, f"nothing stored in 20 s of a steady flow of {sent} records"
    # A flush every flush_caught_up_s or so while records kept coming, not one batch at the end.
    assert len(catalog.live_segments()) >= 3, catalog.live_segments()
    wait_rows(stack, catalog, sent)
    assert sorted(r["message"] for r in stored(stack, catalog, "default")) == \
        sorted(f"steady id={i}" for i in range(sent))
