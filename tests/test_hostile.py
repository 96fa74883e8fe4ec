"""Resource abuse: each hostile input is bounded and refused or cut with a clear reason.

The issue's list, one section each: a 100 MB line, a frame that claims a huge
decompressed size (an lz4 bomb), JSON nested 10,000 levels deep, a record with
100,000 attributes, a query with 10,000 OR terms and a regex built to backtrack
catastrophically. Ingest cases go through the real broker and worker; query cases
through a real uvicorn server.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import httpx
import lz4.block
import orjson
import pyarrow as pa
import pytest

from loglake.core.config import Config, load_config
from loglake.core.frame import FrameError, FrameMeta, decode_frame, encode_frame, record_offsets
from query.api.app import create_app
from query.timerange import parse_time_us
from storage.catalog import Catalog, PartitionCommit
from storage.schema import RECORD_SCHEMA
from storage.segments import write_segments
from tests.helpers.fuzz_targets import FrameParts
from tests.helpers.kafka import Shipper, create_topics, read_topic, topics_env
from tests.helpers.processes import Stack, free_port, running, uvicorn_thread
from tests.helpers.stored import open_catalog, stored, wait_rows

MiB = 1 << 20


# == ingest ==========================================================================


def _produce_big(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """librdkafka, allowed messages of up to 128 MiB (a third-party producer with a big limit)."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 128 * MiB,
                                         "linger.ms": 5, "acks": "all", "enable.idempotence": False})
    errors: list[str] = []
    for v in values:
        producer.produce(topic, value=v, on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
        assert producer.flush(60) == 0, "librdkafka could not deliver within 60 s"
    assert not errors, errors


def _bomb_claiming(raw_len: int, payload: bytes) -> bytes:
    """A frame whose header declares ``raw_len`` uncompressed bytes, with ``payload`` after it."""
    meta = FrameMeta(source_id="bomb", source="/b.log", host="h", service="bomb", tenant="default",
                     first_offset=0, end_offset=2, observed_us=time.time_ns() // 1000, count=1)
    parts = FrameParts.split(encode_frame(meta, b"x\n", record_offsets(b"x\n")))
    assert parts is not None and (head := parts.meta_dict()) is not None
    return dataclasses.replace(parts.with_meta({**head, "raw": raw_len}), payload=payload).join()


def test_lz4_bombs_are_dead_letters_and_never_decompressed() -> None:
    # Within the hard cap but over the configured limit: refused from the header alone.
    claims = _bomb_claiming(200 * MiB, b"\x00" * 64)
    with pytest.raises(FrameError, match=r"payload length 209715200 outside 0\.\.2097152"):
        decode_frame(claims, max_raw_bytes=2 * MiB)
    # A real bomb: 64 MiB of one byte is about 250 KiB of lz4; refused, not inflated.
    data = b"a" * (64 * MiB - 1) + b"\n"
    meta = FrameMeta(source_id="bomb", source="/b.log", host="h", service="bomb", tenant="default",
                     first_offset=0, end_offset=len(data), observed_us=1, count=1)
    real = encode_frame(meta, data, record_offsets(data))
    assert len(real) < 300_000
    with pytest.raises(FrameError, match="outside"):
        decode_frame(real, max_raw_bytes=2 * MiB)
    assert decode_frame(real).records[0].as_py() == data      # under the hard cap it is a frame like any other


def test_hostile_records_are_bounded_and_the_worker_keeps_storing(stack: Stack) -> None:
    """Bombs, a 100 MB message, 10,000-deep JSON and 100,000 attributes, between good records."""
    edge, dlq = f"{stack.topic}.edge", f"{stack.topic}.dlq"
    create_topics(stack.bootstrap, stack.topic, edge, dlq)
    stack.start("ingest", LOGLAKE_INGEST__TOPICS=topics_env(f'{{name="{edge}", tenant="edge", service="edge"}}'),
                LOGLAKE_INGEST__MAX_RECORD_BYTES=str(2 * MiB), LOGLAKE_INGEST__MAX_FRAME_BYTES=str(2 * MiB),
                LOGLAKE_INGEST__DEAD_LETTER_TOPIC=dlq)
    catalog = open_catalog(stack)

    ship = Shipper(tenant="default", service="app")
    bomb = b"a" * (8 * MiB - 1) + b"\n"
    bomb_meta = FrameMeta(source_id="bomb", source="/b.log", host="h", service="bomb", tenant="default",
                          first_offset=0, end_offset=len(bomb), observed_us=time.time_ns() // 1000, count=1)
    frames = [ship.frame(["good id=f1"]).value,
              _bomb_claiming(200 * MiB, lz4.block.compress(b"\x00" * 4096, store_size=False)),
              encode_frame(bomb_meta, bomb, record_offsets(bomb)),
              ship.frame(["good id=f2"]).value]
    _produce_big(stack.bootstrap, stack.topic, frames)

    deep = '{"msg":"deep id=d1","a":' + '{"a":' * 10_000 + "1" + "}" * 10_001
    wide = orjson.dumps({"msg": "wide id=w1", **{f"k{i}": i for i in range(100_000)}})
    assert len(wide) < 2 * MiB
    huge = b"h" * (100 * 10**6)
    _produce_big(stack.bootstrap, edge, [b"good id=e1", deep.encode(), wide, huge, b"good id=e2"])

    letters = read_topic(stack.bootstrap, dlq, expect=3, timeout_s=60, check=running(stack))
    reasons = Counter(x.headers["reason"] for x in letters)
    assert reasons == {"corrupt_frame": 2, "oversized_record": 1}, [x.headers for x in letters]
    for letter in letters:
        if letter.headers["reason"] == "corrupt_frame":
            assert "outside 0..2097152" in letter.headers["detail"], letter.headers
        else:
            assert letter.headers["original_bytes"] == str(len(huge))
            assert len(letter.value) <= 900 << 10          # a dead letter keeps the head, not 100 MB

    wait_rows(stack, catalog, 6, timeout_s=60)
    rows = {r["message"]: r for r in stored(stack, catalog, "default") + stored(stack, catalog, "edge")}
    assert set(rows) == {"good id=f1", "good id=f2", "good id=e1", "good id=e2", "deep id=d1", "wide id=w1"}
    # Flattening stops at its depth limit: what is below stays one JSON text value, intact.
    deep_attrs = rows["deep id=d1"]["attrs"]
    # (besides the flag that its time was not read from the line)
    assert deep_attrs.pop("ts_parse") == "observed"
    (key, value), = deep_attrs.items()
    assert key == ".".join(["a"] * 8)
    assert value == '{"a":' * (10_000 - 7) + "1" + "}" * (10_000 - 7)
    # Attributes are cut at ingest.max_attrs (1000), and the cut is recorded.
    wide_attrs = rows["wide id=w1"]["attrs"]
    # (100,000 keys: the first 1,000 are kept, and the flag that its time was not read past the cut)
    assert len(wide_attrs) == 1002 and wide_attrs["attrs_dropped"] == str(100_000 - 1000)
    assert wide_attrs["k0"] == "0" and wide_attrs["k998"] == "998"     # the first ones are kept
    assert wide_attrs["ts_parse"] == "observed"
    assert stack.procs["ingest"].poll() is None


def test_a_100_mb_line_is_cut_by_the_shipper_with_bounded_memory(tmp_path: Path) -> None:
    """The watcher reads a 100 MB line in frame-sized steps: it ships the first max_line_bytes and
    skips the rest without ever holding the line. Run in a child so its peak memory is its own."""
    log = tmp_path / "huge.log"
    with open(log, "wb") as f:
        f.write(b"before\n")
        for _ in range(100):
            f.write(b"z" * 10**6)
        f.write(b"\nafter\n")
    script = textwrap.dedent(f"""
        import resource
        from shippers.watcher import FileWatcher
        w = FileWatcher({str(log)!r}, key="k", source_id="s", offset=0, input_index=0,
                        partial_timeout_s=1e9, joiner=None, max_line_bytes=1 << 20)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        records = []
        while (chunk := w.read(1 << 20)) is not None:
            offs = chunk.offsets.tolist()
            records += [(len(chunk.data[a:b]), chunk.truncated_from) for a, b in zip(offs[:-1], offs[1:])]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(records, (peak - base) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         check=False, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    records_text, grew_mb = out.stdout.rsplit(" ", 1)
    records = eval(records_text)                        # noqa: S307 - our own child's repr of a list
    assert records[0] == (7, 0) and records[-1] == (6, 0)
    assert records[1] == (1 << 20, 100 * 10**6 + 1)     # cut to fit the frame, newline kept, length known
    assert len(records) == 3
    assert int(grew_mb) < 64, f"reading the 100 MB line grew the process by {grew_mb} MB"


# == query ===========================================================================


@dataclass
class Server:
    url: str
    cfg: Config
    client: httpx.Client

    # POSTs: some queries here are longer than a URL may be.
    def search(self, q: str, **params: Any) -> httpx.Response:
        return self.client.post("/api/v1/search", json={"q": q, "start": "2024-03-01T00:00:00Z",
                                                        "end": "2024-03-02T00:00:00Z", **params})

    def logql(self, query: str) -> httpx.Response:
        return self.client.post("/loki/api/v1/query_range", data={
            "query": query, "start": "2024-03-01T00:00:00Z", "end": "2024-03-02T00:00:00Z", "limit": "100"})


#: A line a backtracking engine takes exponential time on for ^(a+)+$ and its kin.
EVIL = "a" * 40_000 + "!"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "empty.toml").write_text("")
    cfg = load_config(environ={"LOGLAKE_CONFIG": str(root / "empty.toml"),
                               "LOGLAKE_STORAGE__DATA_ROOT": str(root / "data"),
                               "LOGLAKE_QUERY__PORT": str(free_port()), "LOGLAKE_QUERY__TIMEOUT_S": "10",
                               "LOGLAKE_AUTH__ENABLED": "false"})
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    ts = parse_time_us("2024-03-01T10:00:00Z")
    messages = [EVIL, "a" * 30, "plain line w7"]
    table = pa.Table.from_pydict({
        "ts": [ts + i for i in range(3)], "observed_ts": [ts] * 3, "service": ["api"] * 3, "host": ["h"] * 3,
        "source": ["/s.log"] * 3, "level": ["info"] * 3, "severity": [9] * 3, "message": messages,
        "attrs": [[("id", str(i))] for i in range(3)], "trace_id": [None] * 3, "span_id": [None] * 3,
        "head": [None] * 3, "raw": [None] * 3,
    }, schema=RECORD_SCHEMA)
    written = write_segments(cfg.storage.data_root, "default", table, "hostile.parquet")
    catalog.commit([PartitionCommit(topic="t", partition=0, epoch=0, expected_next=0, new_next=1,
                                    segments=written)])
    app = create_app(cfg)
    with uvicorn_thread(app, cfg.query.port) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Server(url, cfg, client)
    catalog.close()


def _refused(resp: httpx.Response, *needles: str) -> None:
    assert resp.status_code == 400, resp.text
    message = resp.json()["message"] if "json" in resp.headers["content-type"] else resp.text
    for needle in needles:
        assert needle in message, message


def test_ten_thousand_or_terms_are_refused_with_the_limit_named(server: Server) -> None:
    q = " OR ".join(f"w{i}" for i in range(10_000))
    t0 = time.monotonic()
    _refused(server.search(q), "10000 terms", "query.max_query_terms", "1024")
    assert time.monotonic() - t0 < 5
    # The same many terms written as LogQL line filters (pushed down as one AND).
    _refused(server.logql('{service="api"}' + "".join(f' != "w{i}"' for i in range(2_000))),
             "2001 terms", "max_query_terms")      # the 2,000 filters and the selector
    # At the limit it runs, and finds what it should.
    at_limit = " OR ".join(["w7", *(f"nomatch{i}" for i in range(server.cfg.query.max_query_terms - 1))])
    resp = server.search(at_limit)
    assert resp.status_code == 200, resp.text
    assert [r["message"] for r in resp.json()["rows"]] == ["plain line w7"]


def test_query_text_over_the_length_limit_is_refused_before_parsing(server: Server) -> None:
    long = "x" * (server.cfg.query.max_query_chars + 1)
    _refused(server.search(long), "query.max_query_chars")
    _refused(server.logql('{service="api"} |= "' + long + '"'), "query.max_query_chars")


@pytest.mark.parametrize("pattern", ["^(a+)+$", "^(a|aa)+$", "^(a*)*$", "^(.*a){20}$"])
def test_catastrophic_regexes_run_in_linear_time(server: Server, pattern: str) -> None:
    """RE2 (DuckDB's regexes, and google-re2 in the Loki pipeline) has no backtracking."""
    want = sorted(m for m in [EVIL, "a" * 30, "plain line w7"] if _python_fullsearch(pattern, m))
    t0 = time.monotonic()
    native = server.search(f"message:/{pattern}/")
    loki = server.logql(f'{{service="api"}} |~ `{pattern}`')
    elapsed = time.monotonic() - t0
    assert native.status_code == 200, native.text
    assert loki.status_code == 200, loki.text
    assert sorted(r["message"] for r in native.json()["rows"]) == want
    lines = [v[1] for s in loki.json()["data"]["result"] for v in s["values"]]
    assert sorted(lines) == want
    assert elapsed < 5, f"{pattern} took {elapsed:.1f}s"


def _python_fullsearch(pattern: str, text: str) -> bool:
    """The expected answer, computed only on inputs where backtracking is cheap (no 'a...a!' runs)."""
    import re

    if text == EVIL:
        return False            # every pattern here is anchored at both ends to a's only; EVIL ends in '!'
    return re.search(pattern, text) is not None


@pytest.mark.parametrize("query", ["message:/(a)\\1/", "message:/(?<=a)b/", "message:/a{1001}/"])
def test_regexes_re2_cannot_run_are_a_400_with_the_reason(server: Server, query: str) -> None:
    _refused(server.search(query), "invalid regular expression")


def test_request_bodies_over_the_limit_are_413_declared_or_streamed(server: Server) -> None:
    limit = server.cfg.query.max_body_bytes
    big = {"q": "x", "pad": "p" * limit}
    resp = server.client.post("/api/v1/search", json=big)
    assert resp.status_code == 413, resp.text
    assert "query.max_body_bytes" in resp.json()["message"]

    def chunks() -> Iterator[bytes]:           # no Content-Length: chunked transfer encoding
        yield b'{"q": "x", "pad": "'
        for _ in range(limit // 65536 + 2):
            yield b"p" * 65536
        yield b'"}'

    resp = server.client.post("/api/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"] == "PayloadTooLarge"
    form = server.client.post("/loki/api/v1/query_range", data={"query": "{a=\"b\"}", "pad": "p" * limit})
    assert form.status_code == 413, form.text
    assert server.search("w7").status_code == 200            # and the server is fine afterwards
