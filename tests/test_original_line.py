"""The original line: kept byte for byte in ``head``/``raw`` and returned everywhere a record is shown.

A record's original line is ``raw`` (a JSON line's skeleton with its slots filled: storage/lines.py), else
``coalesce(head, '') || message``. The lake here is written through the storage package (records carrying
``head``/``raw``, lines through the real normaliser as ingest stores them, and one segment written before
the columns existed); a real ``loglake serve`` on loopback answers the native search
API, the Loki API (streams, parsers, live tail) and the CLI. Compaction and a retention rewrite run
in-process on a lake of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ingest.normalise import Normaliser
from loglake.core.config import CompactionConfig, RetentionPolicy, load_config
from query.timerange import parse_time_us
from storage import retention
from storage.catalog import Catalog, PartitionCommit
from storage.compaction import compact
from storage.lines import LITERAL, SLOT
from storage.root import DataRoot
from storage.schema import ORIGINAL_COLUMNS, RECORD_SCHEMA
from storage.segments import describe, hour_dir, write_segments
from tests.helpers.browser import Served, loglake_serve, write_config
from tests.helpers.lake import Segment, arrow_table, original_line, record, write_lake
from tests.helpers.normalising import raw

T0 = parse_time_us("2024-05-01T10:00:00Z")
SEC = 1_000_000
RANGE = {"start": "2024-05-01T10:00:00Z", "end": "2024-05-01T11:00:00Z"}

JSON_LINE = ('{"ts":"2024-05-01T10:00:01Z","level":"info","msg":"hi","user_id":"u1",'
             '"req":{"path":"/a"},"note":"caf\\u00e9  \\t"}')
LOGFMT_LINE = 'ts=2024-05-01T10:00:02Z level=info msg="request done" path=/api dur=12ms'
TEXT_HEAD = "2024-01-01 12:00:00,123 INFO [main] c.Foo: "


def _rec(i: int, service: str, message: str, **kw: Any) -> dict[str, Any]:
    attrs = [("id", f"r{i}"), *kw.pop("attrs", [])]
    return record(T0 + i * SEC, service, kw.pop("level", "info"), message, attrs=attrs, **kw)


#: Records as ingest stores them: a text line (head + message), structured lines (raw), plain lines (neither).
NEW_ROWS = [
    _rec(0, "text", "started", head=TEXT_HEAD),
    _rec(1, "json", "hi", raw=JSON_LINE),
    _rec(2, "logfmt", "request done", raw=LOGFMT_LINE),
    _rec(3, "plain", "plain line without a header", attrs=[("line", "42")]),
    # Non-ASCII, two spaces, a tab, a carriage return, a no-break space and trailing blanks, kept as they came.
    _rec(4, "text", "naïve café ☕\tdone \r\u00a0 ", head="2024-01-01 12:00:01,000 WARN  [wörker-1] c.Bär: ",
         level="warn"),
    # A multi-line record: its head belongs to the first line only.
    _rec(5, "text", "boom\n\tat c.Foo.run(Foo.java:1)\n\tat c.Main.main(Main.java:9)",
         head="2024-01-01 12:00:02,000 ERROR [main] c.Foo: ", level="error"),
    _rec(6, "json", "bye", raw='{"msg":"bye\u2028",  "user_id":"u2"}\t '),
]
#: Lines stored as ingest stores them (through the real normaliser): JSON as skeletons, whose slots
#: name the time, the columns and the attributes, and a line holding a slot byte of its own.
INGESTED = {
    "i1": '{"time":"2024-05-01T10:00:20.144Z","level":"info","service":"ingested","host":"h-7","msg":"order placed",'
          '"id":"i1","trace_id":"4bf92f3577b34da6","duration_ms":4.799,"region":"eu-west-1","ok":true}',
    "i2": '{"ts": "2024-05-01T10:00:21.144123Z", "msg": "paid",  "id": "i2", "n": 1.50, "e": 1e3, "z": -0, '
          '"http": {"method": "GET", "status": 200}, "tags": ["a", "b"], "note": "caf\\u00e9 \\"q\\""}',
    "i3": '{"@timestamp":"2024-05-01T10:00:22Z","msg":"dup","id":"i3","a":"1","a":"2","region":"eu-west-1"}',
    "i4": 'level=info ts=2024-05-01T10:00:23Z msg="bell \x07 rang" id=i4 region=eu-west-1',
}


def ingested_table() -> pa.Table:
    lines = list(INGESTED.values())
    normaliser = Normaliser()
    try:
        return normaliser(raw(lines, observed=datetime.fromtimestamp((T0 + 60 * SEC) / 1e6, UTC), service="ingested",
                              source="/var/log/ingested.log"))
    finally:
        normaliser.close()


#: A segment from before the columns existed: its line is its message.
OLD_ROWS = [_rec(10 + i, "old", f"legacy line {i} needleword" if i == 7 else f"legacy line {i}") for i in range(12)]


def write_old_segment(root: DataRoot, catalog: Catalog, rows: list[dict[str, Any]], name: str, *,
                      row_group_rows: int = 4, topic: str = "old") -> None:
    """``rows`` as a segment without ``head`` and ``raw`` (as written before them), committed."""
    table = arrow_table(rows).drop_columns(list(ORIGINAL_COLUMNS))
    hour = rows[0]["ts"] // 3_600_000_000 * 3_600_000_000
    rel = f"{hour_dir('default', hour)}/{name}"
    size = root.write_parquet(rel, table, row_group_rows=row_group_rows)
    assert "head" not in root.read_parquet(rel).column_names
    catalog.commit([PartitionCommit(topic=topic, partition=0, epoch=0, expected_next=0, new_next=len(rows),
                                    segments=[describe("default", rel, table, size, 3)])])


@dataclass
class Lake:
    root: Path
    config: Path
    server: Served

    def get(self, path: str, **params: Any) -> Any:
        resp = httpx.get(self.server.url + path, params=params, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def search(self, q: str = "", **params: Any) -> list[dict[str, Any]]:
        return self.get("/api/v1/search", q=q, **{**RANGE, "limit": 100, **params})["rows"]

    def loki(self, query: str) -> list[dict[str, Any]]:
        body = self.get("/loki/api/v1/query_range", query=query, start=str(T0 * 1000),
                        end=str((T0 + 3600 * SEC) * 1000), limit=100, direction="forward")
        return body["data"]["result"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    root = tmp_path_factory.mktemp("original-line")
    config = write_config(root)
    cfg = load_config(config, environ={})
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    try:
        # Row groups of 2 rows, so that a searched word reads some row groups of a segment, not all.
        write_lake(root / "data", catalog, [Segment("default", "new.parquet", NEW_ROWS, row_group_rows=2)])
        write_old_segment(DataRoot(str(root / "data")), catalog, OLD_ROWS, "old.parquet")
        segments = write_segments(root / "data", "default", ingested_table(), "ingested.parquet")
        catalog.commit([PartitionCommit(topic="ingested", partition=0, epoch=0, expected_next=0,
                                        new_next=len(INGESTED), segments=segments)])
    finally:
        catalog.close()
    with loglake_serve(config) as served:
        yield Lake(root, config, served)


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["attrs"]["id"]: r for r in rows}


# -- the native search API ------------------------------------------------------------------------


def test_search_returns_each_original_line_byte_for_byte(lake: Lake) -> None:
    got = by_id(lake.search())
    want = {r["attrs"][0][1]: original_line(r) for r in NEW_ROWS + OLD_ROWS} | INGESTED
    assert {k: v["line"] for k, v in got.items()} == want
    assert got["r0"]["line"] == TEXT_HEAD + "started" and got["r0"]["message"] == "started"
    assert got["r1"]["line"] == JSON_LINE and "\\u00e9" in got["r1"]["line"]
    # The stored parts are not row fields unless asked for.
    assert not set(ORIGINAL_COLUMNS) & set(got["r0"])


def test_ndjson_rows_carry_the_line_too(lake: Lake) -> None:
    resp = httpx.get(lake.server.url + "/api/v1/search", params={**RANGE, "q": "service:text", "limit": 10},
                     headers={"Accept": "application/x-ndjson"}, timeout=30)
    assert resp.status_code == 200, resp.text
    lines = [json.loads(x)["line"] for x in resp.content.splitlines()]
    assert lines == [original_line(r) for r in reversed(NEW_ROWS) if r["service"] == "text"]


def test_fields_name_the_line_and_its_stored_parts(lake: Lake) -> None:
    rows = {r["id"]: r for r in lake.search("service:text OR service:json OR service:old", fields="id,line,head,raw")}
    assert rows["r0"] == {"ts": rows["r0"]["ts"], "id": "r0", "line": TEXT_HEAD + "started", "head": TEXT_HEAD,
                          "raw": None}
    assert (rows["r1"]["head"], rows["r1"]["raw"], rows["r1"]["line"]) == (None, JSON_LINE, JSON_LINE)
    assert (rows["r17"]["head"], rows["r17"]["raw"], rows["r17"]["line"]) == (None, None, "legacy line 7 needleword")


def test_bare_words_search_the_message_and_line_searches_the_original(lake: Lake) -> None:
    assert lake.search('"[main]"') == []                              # in the head, not the message
    assert sorted(by_id(lake.search('line:"[main]"'))) == ["r0", "r5"]
    assert sorted(by_id(lake.search('line:"\\"user_id\\":\\"u1\\""'))) == ["r1"]
    assert sorted(by_id(lake.search("line:/^ts=\\S+ level=info/"))) == ["r2"]
    assert sorted(by_id(lake.search("_exists_:raw"))) == ["i1", "i2", "i3", "i4", "r1", "r2", "r6"]
    assert sorted(by_id(lake.search("_exists_:head"))) == ["r0", "r4", "r5"]
    assert sorted(by_id(lake.search("attrs.line:42"))) == ["r3"]        # an attribute named line
    assert by_id(lake.search("legacy AND line:legacy*"))["r10"]["line"] == "legacy line 0"


def test_old_segments_answer_with_their_message_as_the_line(lake: Lake) -> None:
    # Only the old segment, whole; then one row group of it (the word is in one), beside new row groups.
    assert [r["line"] for r in lake.search("service:old", order="asc")] == [r["message"] for r in OLD_ROWS]
    hits = by_id(lake.search("needleword OR naïve"))
    assert {k: v["line"] for k, v in hits.items()} == {"r17": "legacy line 7 needleword",
                                                       "r4": original_line(NEW_ROWS[4])}
    # Every page of a cursor walk over both kinds holds the line.
    seen, cursor = [], None
    while True:
        body = lake.get("/api/v1/search", **RANGE, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [r["line"] for r in body["rows"]]
        cursor = body["cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([original_line(r) for r in NEW_ROWS + OLD_ROWS] + list(INGESTED.values()))


def test_ingested_lines_come_back_from_their_skeletons(lake: Lake) -> None:
    rows = {r["id"]: r for r in lake.search("service:ingested", fields="id,line,raw")}
    assert {k: r["line"] for k, r in rows.items()} == INGESTED
    # Stored as skeletons: the values kept elsewhere are slots (and a line with a slot byte of its own is marked).
    for name in ("\x0e", "\x03", "\x06", "\x02", "\x04", "id", "duration_ms", "region", "ok"):
        assert SLOT + name + SLOT in rows["i1"]["raw"], name
    for name in ("\x0f", "id", "n", "e", "z"):
        assert SLOT + name + SLOT in rows["i2"]["raw"], name
    assert '"method": "GET"' in rows["i2"]["raw"] and '"tags": ["a", "b"]' in rows["i2"]["raw"]
    assert SLOT + "\x10" + SLOT in rows["i3"]["raw"]
    assert rows["i4"]["raw"] == LITERAL + INGESTED["i4"]
    # Searches of the line see the values put back.
    assert sorted(by_id(lake.search('line:"\\"region\\":\\"eu-west-1\\""'))) == ["i1", "i3"]
    assert sorted(by_id(lake.search('line:"2024-05-01T10:00:21.144123Z"'))) == ["i2"]


def test_loki_json_parses_the_ingested_lines(lake: Lake) -> None:
    [stream] = lake.loki('{service="ingested"} | json | region="eu-west-1" | ok="true"')
    assert stream["values"][0][1] == INGESTED["i1"]
    assert stream["stream"]["region"] == "eu-west-1" and stream["stream"]["time"] == "2024-05-01T10:00:20.144Z"
    assert lines_of(lake.loki('{service="ingested"} |= "\\"n\\": 1.50"')) == [INGESTED["i2"]]


def test_values_and_aggregations_of_the_line(lake: Lake) -> None:
    values = lake.get("/api/v1/values/line", q="service:json", **RANGE)["values"]
    assert sorted(v["value"] for v in values) == sorted(r["raw"] for r in NEW_ROWS if r["service"] == "json")
    body = lake.get("/api/v1/aggregate", q="line:main", interval="1h", **RANGE)
    assert [s["total"] for s in body["series"]] == [2]


# -- the CLI ----------------------------------------------------------------------------------------


def test_cli_prints_the_original_lines(lake: Lake) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    proc = subprocess.run([sys.executable, "-m", "loglake", "--config", str(lake.config), "search",
                           "--url", lake.server.url, "--start", RANGE["start"], "--end", RANGE["end"],
                           "--order", "asc", "-o", "raw", "service:text OR service:json"],
                          capture_output=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    want = [original_line(r) for r in NEW_ROWS if r["service"] in ("text", "json")]
    assert proc.stdout == "".join(f"{x}\n" for x in want).encode()


# -- the Loki API -----------------------------------------------------------------------------------


def lines_of(result: list[dict[str, Any]]) -> list[str]:
    return [v[1] for s in result for v in s["values"]]


def test_loki_returns_the_original_lines(lake: Lake) -> None:
    assert lines_of(lake.loki('{service="json"}')) == [JSON_LINE, NEW_ROWS[6]["raw"]]
    assert lines_of(lake.loki('{service="text"}')) == [original_line(r) for r in NEW_ROWS if r["service"] == "text"]
    assert lines_of(lake.loki('{service="old"} |= "line 3"')) == ["legacy line 3"]


def test_loki_line_filters_see_the_whole_line(lake: Lake) -> None:
    assert lines_of(lake.loki('{service="text"} |= "[main]"')) == [original_line(NEW_ROWS[0]),
                                                                   original_line(NEW_ROWS[5])]
    assert lines_of(lake.loki('{service=~".+"} |~ "\\"user_id\\":\\"u2\\""')) == [NEW_ROWS[6]["raw"]]


def test_loki_json_parses_the_original_json_line(lake: Lake) -> None:
    [stream] = lake.loki('{service="json"} | json | user_id="u1"')
    assert stream["values"][0][1] == JSON_LINE
    assert stream["stream"]["user_id"] == "u1" and stream["stream"]["req_path"] == "/a"
    assert stream["stream"]["note"] == "café  \t"
    formatted = lake.loki('{service="json"} | json | line_format "{{.user_id}} {{.msg}}"')
    assert lines_of(formatted) == ["u1 hi", "u2 bye\u2028"]


def test_loki_logfmt_and_regexp_parse_the_original_line(lake: Lake) -> None:
    [stream] = lake.loki('{service="logfmt"} | logfmt | path="/api"')
    assert stream["values"][0][1] == LOGFMT_LINE and stream["stream"]["dur"] == "12ms"
    [stream] = lake.loki('{service="logfmt"} | regexp "dur=(?P<took>\\\\S+)"')
    assert stream["stream"]["took"] == "12ms"


def test_loki_pattern_parses_a_text_line(lake: Lake) -> None:
    result = lake.loki('{service="text"} | pattern "<day> <time> <lvl> [<thread>] <class>: <_>" | thread="main"')
    assert sorted(lines_of(result)) == sorted([original_line(NEW_ROWS[0]), original_line(NEW_ROWS[5])])
    assert {s["stream"]["lvl"] for s in result} == {"INFO", "ERROR"}


def test_loki_bytes_over_time_counts_the_original_bytes(lake: Lake) -> None:
    body = lake.get("/loki/api/v1/query", query='sum(bytes_over_time({service="json"}[1h]))',
                    time=str((T0 + 3600 * SEC) * 1000))
    [sample] = body["data"]["result"]
    assert float(sample["value"][1]) == sum(len(r["raw"].encode()) for r in NEW_ROWS if r["service"] == "json")


@pytest.mark.timeout(60)
def test_loki_live_tail_sends_the_original_lines(lake: Lake) -> None:
    from websockets.sync.client import connect

    query = httpx.QueryParams({"query": '{service="text"}', "start": str(T0 * 1000), "limit": "100"})
    with connect(lake.server.url.replace("http", "ws", 1) + f"/loki/api/v1/tail?{query}", open_timeout=10) as ws:
        message = json.loads(ws.recv(timeout=20))
    assert lines_of(message["streams"]) == [original_line(r) for r in NEW_ROWS if r["service"] == "text"]


# -- storage: compaction and a retention rewrite keep both columns ---------------------------------


def stored(root: DataRoot, catalog: Catalog) -> dict[str, tuple[str | None, str | None, str]]:
    """``id`` -> (head, raw, message) over the live segments (old ones read as NULL)."""
    out = {}
    for seg in catalog.live_segments():
        table = root.read_parquet(seg.path)
        assert table.schema.names == RECORD_SCHEMA.names, f"{seg.path} lacks the original line's columns"
        for r in table.to_pylist():
            out[dict(r["attrs"])["id"]] = (r["head"], r["raw"], r["message"])
    return out


def test_compaction_and_a_retention_rewrite_keep_the_line_byte_for_byte(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path / "data"))
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        half = len(NEW_ROWS) // 2
        write_lake(tmp_path / "data", catalog, [Segment("default", "a.parquet", NEW_ROWS[:half]),
                                                Segment("default", "b.parquet", NEW_ROWS[half:])])
        write_old_segment(root, catalog, OLD_ROWS, "old.parquet")
        want = {r["attrs"][0][1]: (r["head"], r["raw"], r["message"]) for r in NEW_ROWS + OLD_ROWS}

        report = compact(root, catalog, CompactionConfig(min_age_s=0, settle_s=1e12))
        assert (report.inputs, report.outputs) == (3, 1)
        assert stored(root, catalog) == want

        # Rows before 10:00:05 are past a 1-hour age at 11:00:05: the segment straddles it and is rewritten.
        rules = retention.Rules((RetentionPolicy(max_age="1h"),), ())
        done = retention.run(root, catalog, rules, now_us=T0 + 3605 * SEC)
        assert sum(r.rows for r in done.removed) == 5
        [seg] = catalog.live_segments()
        assert seg.path.rsplit("/", 1)[-1].startswith("rewritten-")
        assert stored(root, catalog) == {k: v for k, v in want.items() if k not in {f"r{i}" for i in range(5)}}
    finally:
        catalog.close()


def test_a_segment_without_the_columns_reads_them_as_null(tmp_path: Path) -> None:
    from storage.schema import conform

    table = arrow_table(OLD_ROWS[:2]).drop_columns(list(ORIGINAL_COLUMNS))
    full = conform(table)
    assert full.schema == RECORD_SCHEMA
    assert full["head"].null_count == full["raw"].null_count == 2
    with pytest.raises(pa.ArrowInvalid, match="not record columns: extra"):
        conform(table.append_column("extra", pa.array(["x", "y"])))
    assert pc.all(pc.equal(full["message"], table["message"])).as_py()
