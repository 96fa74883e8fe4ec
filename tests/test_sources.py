"""Honesty about parsing, per source: the ingest worker's per-source metrics, the catalog's source_layouts
table, GET /api/v1/sources, `loglake sources`, and `loglake formats suggest` (its rule pasted back in)."""

from __future__ import annotations

import gzip
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from ingest.normalise import RAW_SCHEMA, Normaliser, ParseSettings
from loglake.cli import main
from loglake.commands.formats import suggest
from loglake.core.config import Config, load_config
from storage.catalog import MIGRATIONS, Catalog, PartitionCommit, SourceLayoutRow
from storage.segments import SegmentInfo
from tests.helpers.kafka import Shipper, produce
from tests.helpers.metrics import scrape
from tests.helpers.processes import Stack, free_port, running, wait_until
from tests.helpers.server import config_for, serve
from tests.helpers.stored import open_catalog, wait_rows

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"
BASE = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def _iso_lines(n: int, levels: bool = True) -> list[str]:
    return [f"{(BASE + timedelta(seconds=i)).strftime('%Y-%m-%d %H:%M:%S')},{i % 1000:03d} "
            + (f"{('INFO', 'WARN', 'ERROR')[i % 3]} " if levels else "") + f"job {i} finished" for i in range(n)]


# What each source of the pipeline gets, and how many of its rows must be counted as what.
SOURCES: dict[tuple[str, str, str], tuple[list[str], dict[str, int]]] = {
    ("default", "app", "/var/log/app.log"): (_iso_lines(30), {"rows": 30}),
    ("default", "app", "/var/log/notime.log"): ([f"just words number {i}" for i in range(20)],
                                                {"rows": 20, "observed_time": 20, "unknown_format": 20,
                                                 "unknown_level": 20}),
    ("default", "batch", "/var/log/nolevel.log"): (_iso_lines(25, levels=False), {"rows": 25, "unknown_level": 25}),
    ("acme", "api", "/var/log/api.json"): (
        [orjson.dumps({"msg": f"request {i}", "status": 200}).decode() for i in range(12)],
        {"rows": 12, "observed_time": 12, "unknown_level": 12}),
    ("acme", "api", "/var/log/api2.log"): (_iso_lines(9), {"rows": 9}),
}
COUNTS = ("rows", "observed_time", "unknown_format", "unknown_level")
MAX_SOURCES = 3
_METRIC = {"rows": "loglake_ingest_source_rows_total",
           "observed_time": "loglake_ingest_source_observed_time_rows_total",
           "unknown_format": "loglake_ingest_source_unknown_format_rows_total",
           "unknown_level": "loglake_ingest_source_unknown_level_rows_total"}


class Pipeline:
    def __init__(self, stack: Stack, catalog: Catalog, metrics_port: int) -> None:
        self.stack, self.catalog, self.metrics_port = stack, catalog, metrics_port


@pytest.fixture(scope="module")
def pipeline(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """A real `loglake ingest` that has stored every line of SOURCES (received just now)."""
    root = tmp_path_factory.mktemp("sources")
    stack = Stack(root=root, bootstrap=broker, topic=f"test.sources.{root.name}"[:200])
    port = free_port()
    try:
        stack.start("ingest", LOGLAKE_INGEST__METRICS_LISTEN=f"127.0.0.1:{port}",
                    LOGLAKE_INGEST__METRICS_MAX_SOURCES=str(MAX_SOURCES))
        catalog = open_catalog(stack)
        produce(broker, stack.topic, [Shipper(tenant, service, source).frame(lines)
                                      for (tenant, service, source), (lines, _) in SOURCES.items()])
        wait_rows(stack, catalog, sum(len(lines) for lines, _ in SOURCES.values()))
        alive = running(stack)

        def recorded() -> bool:
            alive()
            return len(catalog.source_layouts()) == len(SOURCES)

        wait_until(recorded, 20, what="every source recorded in source_layouts")
        yield Pipeline(stack, catalog, port)
        catalog.close()
    finally:
        stack.stop_all()


def test_per_source_counters_count_the_rows_whose_time_format_or_level_was_not_read(pipeline: Pipeline) -> None:
    samples = scrape(pipeline.metrics_port)
    series: dict[tuple[str, str, str], dict[str, float]] = {}
    for (name, labels), value in samples.items():
        for count, metric in _METRIC.items():
            if name == metric:
                d = dict(labels)
                series.setdefault((d["tenant"], d["service"], d["source"]), {})[count] = value
    named = [k for k in series if k[2] != "other"]
    assert len(named) == MAX_SOURCES, series          # the first three sources seen; the others summed
    expected = {k: Counter(v) for k, (_, v) in SOURCES.items()}
    for key in named:
        assert {c: series[key][c] for c in COUNTS} == {c: expected[key][c] for c in COUNTS}, key
    others: dict[tuple[str, str, str], Counter[str]] = {}
    for key, want in expected.items():
        if key not in named:
            others.setdefault((key[0], key[1], "other"), Counter()).update(want)
    assert {k: {c: series[k][c] for c in COUNTS} for k in series if k[2] == "other"} == \
        {k: {c: v[c] for c in COUNTS} for k, v in others.items()}


def test_the_catalog_holds_each_sources_format_layout_and_zone(pipeline: Pipeline) -> None:
    rows = {(r.tenant, r.service, r.source): r for r in pipeline.catalog.source_layouts()}
    app = rows[("default", "app", "/var/log/app.log")]
    assert (app.format, app.zone, app.detail["time"], app.detail["strptime"]) == \
        ("text", "UTC", "iso8601", "%Y-%m-%d %H:%M:%S,%f")
    assert app.layout.startswith("iso8601") and app.detail["lines"] == 30
    notime = rows[("default", "app", "/var/log/notime.log")]
    assert (notime.format, notime.layout, notime.zone) == ("text", "", "")
    assert rows[("acme", "api", "/var/log/api.json")].format == "json"
    assert [r.source for r in pipeline.catalog.source_layouts("acme")] == ["/var/log/api.json", "/var/log/api2.log"]


def test_sources_route_lists_each_source_with_the_shares_of_its_last_hour(pipeline: Pipeline,
                                                                          tmp_path: Path) -> None:
    with serve(config_for(tmp_path, pipeline.stack.data_root)) as server:
        body = server.ok("/api/v1/sources")
        acme = server.ok("/api/v1/sources", tenant="acme")
    by_source = {s["source"]: s for s in body["sources"]}
    assert body["tenant"] == "default" and set(by_source) == {"/var/log/app.log", "/var/log/notime.log",
                                                               "/var/log/nolevel.log"}
    app, notime, nolevel = (by_source[p] for p in ("/var/log/app.log", "/var/log/notime.log", "/var/log/nolevel.log"))
    assert (app["format"], app["zone"], app["rows_last_hour"], app["time_parsed"], app["level_parsed"]) == \
        ("text", "UTC", 30, 1.0, 1.0)
    assert "iso8601" in app["layout"]
    assert (notime["rows_last_hour"], notime["time_parsed"], notime["level_parsed"], notime["unknown_format"]) == \
        (20, 0.0, 0.0, 1.0)
    assert (nolevel["time_parsed"], nolevel["level_parsed"]) == (1.0, 0.0)
    assert {s["source"]: s["format"] for s in acme["sources"]} == {"/var/log/api.json": "json",
                                                                   "/var/log/api2.log": "text"}


def test_sources_route_counts_only_rows_received_in_the_last_hour(tmp_path: Path) -> None:
    """Rows received two hours ago (in a segment written then) are not in the shares."""
    cfg = config_for(tmp_path, tmp_path / "data")
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    from storage.root import DataRoot
    from storage.segments import write_segments
    from tests.helpers.normalising import raw

    n = Normaliser()
    now = datetime.now(UTC)
    old = n(raw(["words only"] * 4, observed=now - timedelta(hours=2), service="s", source="/x"))
    new = n(raw(_iso_lines(6), observed=now, service="s", source="/x"))
    root = DataRoot(str(tmp_path / "data"))
    segs: list[SegmentInfo] = []
    for i, table in enumerate((old, new)):
        segs += write_segments(root, "default", table, f"seg{i}")
    catalog.commit([PartitionCommit("t", 0, 0, 0, 2, segs)])
    catalog.close()
    with serve(cfg) as server:
        [s] = server.ok("/api/v1/sources")["sources"]
    assert (s["rows_last_hour"], s["time_parsed"], s["format"]) == (6, 1.0, None)
    n.close()


def test_loglake_sources_prints_every_source(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in pipeline.stack.env(COLUMNS="250").items():
        monkeypatch.setenv(k, v)
    assert main(["sources", "--json"]) == 0
    listed = {(s["tenant"], s["service"], s["source"]): s for s in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(SOURCES)
    assert listed[("default", "app", "/var/log/notime.log")]["time_parsed"] == 0.0
    assert main(["sources", "--tenant", "acme"]) == 0
    table = capsys.readouterr().out
    assert "/var/log/api.json" in table and "app.log" not in table and "iso8601" in table


# -- the catalog table on both databases ----------------------------------------------------------

def test_source_layouts_table_upserts_and_reads_back(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    try:
        assert cat.schema_version() == len(MIGRATIONS)
        cat.record_source_layouts([SourceLayoutRow("a", "svc", "/x.log", "text", "iso8601 ...", "UTC", {"n": 1}),
                                   SourceLayoutRow("b", "svc", "/y.log", "json", "", "UTC")])
        cat.record_source_layouts([SourceLayoutRow("a", "svc", "/x.log", "text", "syslog ...", "in the line",
                                                   {"n": 2})])
        [a] = cat.source_layouts("a")
        assert (a.format, a.layout, a.zone, a.detail) == ("text", "syslog ...", "in the line", {"n": 2})
        assert a.updated_us > 0 and [r.tenant for r in cat.source_layouts()] == ["a", "b"]
        seg = SegmentInfo("a", "a/2024/seg.parquet", 1, 2, 3, 4, {"svc": 3}, {"info": 3})
        before = time.time_ns() // 1000
        cat.commit([PartitionCommit("t", 0, 0, 0, 1, [seg])])
        assert [s.path for s in cat.segments_created_since("a", before)] == [seg.path]
        assert cat.segments_created_since("a", time.time_ns() // 1000 + 10**6) == []
    finally:
        cat.close()


# -- formats suggest --------------------------------------------------------------------------------

def _config(tmp: Path, rule: str = "") -> Config:
    path = tmp / "loglake.toml"
    path.write_text(rule)
    return load_config(str(path), environ={})


def _parse_with_rule(tmp: Path, rule: str, lines: list[str]) -> list[dict[str, Any]]:
    """``lines`` parsed by ingest configured with ``rule`` (as pasted into loglake.toml)."""
    cfg = _config(tmp, rule)
    name, zone = "", ""
    for fmt in cfg.ingest.formats:
        name = "pattern0" if fmt.format == "pattern" else fmt.format
        zone = fmt.timezone
    n = Normaliser(ParseSettings(patterns=cfg.ingest.patterns(),
                                 pattern_ts_formats=cfg.ingest.pattern_ts_formats()))
    t = pa.table({"line": lines, "observed_ts": [datetime.now(UTC)] * len(lines), "service": ["s"] * len(lines),
                  "host": ["h"] * len(lines), "source": ["/f"] * len(lines), "labels": [None] * len(lines),
                  "wrapper": [""] * len(lines), "format": [name] * len(lines),
                  "zone": [zone] * len(lines)},
                    schema=RAW_SCHEMA)
    try:
        rows = n(t).to_pylist()
    finally:
        n.close()
    for r in rows:
        r["attrs"] = dict(r["attrs"] or [])
    return rows


LAYOUT_CASES = {
    # name: (line of i, time of i, level of i, the message's tail (the learned header may take a word more),
    #        whether this version's pattern rules read the time)
    "iso8601": (lambda i: f"{(BASE + timedelta(seconds=i)).isoformat(sep=' ')[:19]}.{i:03d} "
                          f"{('INFO', 'ERROR')[i % 2]} [main] Worker: task {i} done",
                lambda i: BASE + timedelta(seconds=i, milliseconds=i), lambda i: ("info", "error")[i % 2],
                lambda i: f"task {i} done", True),
    "ymd_slash": (lambda i: f"{(BASE + timedelta(minutes=i)).strftime('%Y/%m/%d %H:%M:%S')} [warn] upstream {i} slow",
                  lambda i: BASE + timedelta(minutes=i), lambda i: "warn", lambda i: f"upstream {i} slow", True),
    "md_dot": (lambda i: f"[{(BASE + timedelta(seconds=7 * i)).strftime('%m.%d %H:%M:%S')}] chrome.exe - "
                         f"proxy{i}.example.org:5070 open through proxy",
               lambda i: BASE + timedelta(seconds=7 * i), lambda i: "unknown",
               lambda i: f"proxy{i}.example.org:5070 open through proxy", False),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_CASES))
def test_formats_suggest_learns_a_text_layout_and_its_rule_parses_the_file(name: str, tmp_path: Path) -> None:
    line, when, level, message, time_readable = LAYOUT_CASES[name]
    lines = [line(i) for i in range(120)]
    path = tmp_path / f"{name}.log.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    answer = suggest(_config(tmp_path), path, 100)
    assert (answer["format"], answer["lines_sampled"], answer["time"]["layout"]) == ("text", 100, name)
    assert answer["rule_reads"] == 1.0 and len(answer["preview"]) == 5
    written = answer["time"]["example"]
    assert datetime.strptime(written, answer["time"]["strptime"]).replace(year=BASE.year, tzinfo=UTC) == when(0)
    rows = _parse_with_rule(tmp_path, answer["rule"], lines)
    # The rule cuts each line where ingest with no rule does (the learned header), and shows it in the preview.
    auto = _parse_with_rule(tmp_path, "", lines)
    assert [r["message"] for r in rows] == [r["message"] for r in auto]
    assert [r["message"] for r in answer["preview"]] == [r["message"] for r in auto[:5]]
    assert all(line(i).endswith(r["message"]) and message(i).endswith(r["message"]) for i, r in enumerate(rows))
    assert [r["level"] for r in rows] == [level(i) for i in range(len(lines))]
    if time_readable or "ts_format" in answer["rule"].replace("# ts_format", ""):
        # (a layout without a year takes the observed one)
        got = [r["ts"] if time_readable else r["ts"].replace(year=BASE.year) for r in rows]
        assert got == [when(i) for i in range(len(lines))]
        assert not any("ts_parse" in r["attrs"] for r in rows)


def test_formats_suggest_names_a_structured_format_and_its_fields(tmp_path: Path) -> None:
    path = tmp_path / "api.log"
    records = [{"time": (BASE + timedelta(seconds=i)).isoformat(), "severity": "warning", "msg": f"hi {i}",
                "ctx": {"user": f"u{i}"}} for i in range(30)]
    path.write_text("".join(orjson.dumps(r).decode() + "\n" for r in records))
    answer = suggest(_config(tmp_path), path)
    assert (answer["format"], answer["level"], answer["time"]["layout"]) == ("json", "key severity", "key time")
    assert set(answer["fields"]) == {"time", "severity", "msg", "ctx.user"}
    rows = _parse_with_rule(tmp_path, answer["rule"], [orjson.dumps(r).decode() for r in records])
    assert [(r["ts"], r["level"], r["message"]) for r in rows] == \
        [(BASE + timedelta(seconds=i), "warn", f"hi {i}") for i in range(30)]


def test_formats_suggest_says_when_no_time_can_be_read(tmp_path: Path) -> None:
    path = tmp_path / "words.log"
    path.write_text("".join(f"plain words {i}\n" for i in range(40)))
    answer = suggest(_config(tmp_path), path)
    assert (answer["format"], answer["time"], answer["time_read"]) == ("text", None, 0.0)
    assert any("ts_parse=observed" in n for n in answer["notes"])
    assert _config(tmp_path, answer["rule"]).ingest.formats[0].format == "text"


def test_formats_suggest_command_prints_a_rule_that_pastes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "app.log"
    path.write_text("\n".join(LAYOUT_CASES["iso8601"][0](i) for i in range(50)) + "\n")
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("COLUMNS", "80")
    config = ["--config", str(tmp_path / "empty.toml")]
    assert main([*config, "formats", "suggest", str(path)]) == 0
    out = capsys.readouterr().out
    rule = out[out.index("[[ingest.formats]]"):out.index("its pattern reads")]
    assert _config(tmp_path, rule).ingest.formats[0].format == "pattern"      # not wrapped, not styled
    assert main([*config, "formats", "suggest", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["rule"] == rule
    assert main([*config, "formats", "suggest", str(tmp_path / "nope.log")]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_formats_suggest_on_the_loghub_samples(tmp_path: Path) -> None:
    files = sorted(LOGHUB.glob("*/*_2k.log")) if LOGHUB.is_dir() else []
    if not files:
        print(f"\nSKIP: no Loghub samples under {LOGHUB}", file=sys.__stderr__)
        pytest.skip(f"no Loghub samples under {LOGHUB}")
    cfg = _config(tmp_path)
    for path in files:
        answer = suggest(cfg, path, 200)
        assert answer["time"] is not None and answer["time_read"] >= 0.99, (path.name, answer["time"])
        lines = path.read_text(errors="replace").splitlines()[:200]
        rows = _parse_with_rule(tmp_path, answer["rule"], lines)
        assert len(rows) == len(lines)
        if "rule_reads" in answer:
            assert answer["rule_reads"] >= 0.99, (path.name, answer["layout"])
            # The rule's message is the learned one: what ingest with no rule stores.
            assert [r["message"] for r in rows[:5]] == [r["message"] for r in answer["preview"]], path.name
