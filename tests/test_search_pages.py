"""Search pages as the search service builds them (query/search.py): each row's JSON rendered by
DuckDB, the cursor after a page, and which files are read by name.

The lake is written by the real storage code into a real SQLite catalog and searched by the real
``SearchService`` (DuckDB); the HTTP layer over it is tested in test_query_features.py.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from loglake.core.config import Config
from query.language import parse
from query.runner import QueryRunner
from query.service import SearchService
from query.timerange import format_us
from storage.catalog import Catalog, PartitionCommit
from storage.root import DataRoot
from storage.schema import ORIGINAL_COLUMNS
from storage.segments import describe, hour_dir
from tests.helpers.lake import Segment, arrow_table, original_line, record, write_lake

T0 = 1_714_557_600_000_000          # 2024-05-01T10:00:00Z
SEC = 1_000_000
START, END = format_us(T0), format_us(T0 + 3600 * SEC)
#: Strings JSON must escape or carry as they are.
ODD = ["quote \" and back\\slash", "control \x00\x01\x08\x0b\x1f\x7f", "tab\tnewline\nreturn\r",
       "naïve ☕ 𝄞 \u2028\u2029 \ufeff", "</script>", ""]


def _rows(rng: random.Random) -> list[dict[str, Any]]:
    """80 records over 6 timestamps (runs of equal times for the cursor), odd strings among them; one more
    record, alone at its time and without attributes."""
    rows = []
    for i in range(80):
        ts = T0 + rng.choice([1, 2, 2, 3, 5, 8, 8, 8, 13]) * SEC
        attrs = [("id", f"r{i:02d}")] + ([("odd", ODD[i % len(ODD)])] if i % 3 == 0 else [])
        message = f"row {i} " + ODD[i % len(ODD)]
        rows.append(record(ts, rng.choice(["api", "db"]), rng.choice(["info", "error"]), message, attrs=attrs,
                           trace_id=None if i % 2 else f"{i:032x}",
                           head="2024-05-01 10:00:00 INFO " if i % 5 == 0 else None))
    rows.append(record(T0 + 21 * SEC, "api", "info", "no attributes at all", attrs=[]))
    rows[-1]["attrs"] = None
    return rows


@pytest.fixture
def lake(tmp_path: Path) -> tuple[SearchService, list[dict[str, Any]]]:
    rows = _rows(random.Random(5))
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    # Row groups of 4 rows in two files, so that a page spans row groups and files.
    write_lake(tmp_path / "data", catalog, [Segment("default", "a.parquet", rows[:41], row_group_rows=4),
                                            Segment("default", "b.parquet", rows[41:], row_group_rows=4)])
    cfg = Config.model_validate({"storage": {"data_root": str(tmp_path / "data"),
                                             "catalog_url": f"sqlite:///{tmp_path / 'catalog.sqlite'}"}})
    return SearchService(cfg, catalog), rows


def expected_row(r: dict[str, Any]) -> dict[str, Any]:
    """A row as the search API returns it, by the rules of the record model."""
    return {"ts": format_us(r["ts"]), "observed_ts": format_us(r["observed_ts"]), "service": r["service"],
            "host": r["host"], "source": r["source"], "level": r["level"], "severity": r["severity"],
            "message": r["message"], "attrs": dict(r["attrs"] or ()), "trace_id": r["trace_id"],
            "span_id": r["span_id"], "line": original_line(r)}


def _cursor(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return data


def test_rows_are_the_records_as_json_whatever_their_characters(lake: tuple[SearchService, list[dict[str, Any]]],
                                                                ) -> None:
    svc, rows = lake
    r = svc.search("", START, END, limit=1000)
    assert r.cursor is None
    got = {row["attrs"].get("id", row["message"]): row for row in r.rows}
    want = {(x["attrs"] and dict(x["attrs"]).get("id")) or x["message"]: expected_row(x) for x in rows}
    assert got == want
    # The texts are JSON objects with the fields in the API's order, and what `rows` decodes.
    assert [json.loads(t) for t in r.json_rows] == r.rows
    assert all(list(json.loads(t)) == list(expected_row(rows[0])) for t in r.json_rows)
    assert [row["ts"] for row in r.rows] == sorted((row["ts"] for row in r.rows), reverse=True)


def test_a_projection_renders_only_its_fields(lake: tuple[SearchService, list[dict[str, Any]]]) -> None:
    svc, rows = lake
    r = svc.search("odd:*", START, END, limit=1000, fields=["odd", "observed_ts", "attrs", "line", "nope"])
    want = [x for x in rows if x["attrs"] and "odd" in dict(x["attrs"])]
    assert len(r.rows) == len(want)
    for row in r.rows:
        assert list(row) == ["ts", "odd", "observed_ts", "attrs", "line", "nope"]
        x = next(x for x in want if dict(x["attrs"])["id"] == row["attrs"]["id"])
        assert row == {"ts": format_us(x["ts"]), "odd": dict(x["attrs"])["odd"],
                       "observed_ts": format_us(x["observed_ts"]), "attrs": dict(x["attrs"]),
                       "line": original_line(x), "nope": None}


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 9, 10, 11, 27, 80, 81])
def test_pages_walk_every_row_once_in_order(lake: tuple[SearchService, list[dict[str, Any]]], k: int,
                                            order: str) -> None:
    svc, rows = lake
    whole = svc.search("", START, END, limit=1000, order=order).rows      # type: ignore[arg-type]
    walked: list[dict[str, Any]] = []
    cursor = None
    forms = set()
    for _ in range(200):
        page = svc.search("", START, END, limit=k, order=order, cursor=cursor)     # type: ignore[arg-type]
        assert len(page.rows) <= k
        walked += page.rows
        cursor = page.cursor
        if cursor is None:
            break
        forms.add("between" if "d" in _cursor(cursor) else "hashed")
    assert cursor is None
    assert len(walked) == len(rows)
    assert sorted(json.dumps(r, sort_keys=True) for r in walked) == \
        sorted(json.dumps(r, sort_keys=True) for r in whole)
    assert [r["ts"] for r in walked] == sorted((r["ts"] for r in walked), reverse=order == "desc")
    if k < 9:
        # Some page ends inside a run of equal times (the longest runs hold far more than 8 rows).
        assert "hashed" in forms


def test_a_page_holding_the_last_rows_has_no_cursor(lake: tuple[SearchService, list[dict[str, Any]]]) -> None:
    svc, rows = lake
    n = len(rows)
    assert svc.search("", START, END, limit=n).cursor is None
    assert svc.search("", START, END, limit=n - 1).cursor is not None
    # The first page ends between two times: the cursor says every row at that time was returned.
    latest = max(r["ts"] for r in rows)
    at_latest = sum(r["ts"] == latest for r in rows)
    page = svc.search("", START, END, limit=at_latest)
    assert page.cursor is not None and _cursor(page.cursor) == {"v": 1, "t": latest, "d": 1, "o": "desc"}
    rest = svc.search("", START, END, limit=1000, cursor=page.cursor)
    assert len(rest.rows) == n - at_latest and rest.cursor is None


def _write_old(root: DataRoot, catalog: Catalog, rows: list[dict[str, Any]]) -> None:
    """A segment as written before ``head`` and ``raw`` existed."""
    table = arrow_table(rows).drop_columns(list(ORIGINAL_COLUMNS))
    rel = f"{hour_dir('default', T0)}/old.parquet"
    size = root.write_parquet(rel, table, row_group_rows=4)
    catalog.commit([PartitionCommit(topic="old", partition=0, epoch=0, expected_next=0, new_next=len(rows),
                                    segments=[describe("default", rel, table, size, 3)])])


def test_files_are_read_by_name_only_when_one_lacks_the_original_columns(
        lake: tuple[SearchService, list[dict[str, Any]]], tmp_path: Path) -> None:
    svc, rows = lake
    plan = svc.runner.plan(parse("row"), "default", T0, T0 + 3600 * SEC)
    assert "union_by_name" not in plan.relation(original=True).sql
    old = [record(T0 + 4 * SEC + i, "old", "info", f"legacy row {i}", attrs=[("id", f"old{i}")]) for i in range(6)]
    _write_old(svc.root, svc.catalog, old)
    plan = svc.runner.plan(parse("row"), "default", T0, T0 + 3600 * SEC)
    assert "union_by_name" in plan.relation(original=True).sql
    assert "union_by_name" not in plan.relation().sql      # nothing names head or raw
    only_old = svc.runner.plan(parse("service:old"), "default", T0, T0 + 3600 * SEC)
    assert "union_by_name" in only_old.relation(original=True).sql
    got = {r["attrs"]["id"]: r for r in svc.search("legacy", START, END, limit=100).rows}
    assert got == {x["attrs"][0][1]: expected_row(x) for x in old}
    everything = svc.search("", START, END, limit=1000).rows
    assert len(everything) == len(rows) + len(old)


def _explain(svc: SearchService, source_sql: str, params: list[Any]) -> str:
    table = svc.runner.run(f"EXPLAIN SELECT * FROM {source_sql}", params)
    return "\n".join(table.column(1).to_pylist())


@pytest.mark.parametrize(("q", "inside"), [
    ("row", True), ("row AND NOT timeout", True), ("row -timeout \"row 1\"", True), ("msg:row* OR timeout", True),
    ("row AND service:api", True), ("(row OR x) AND host:web-1 AND -zz AND level:info", True),
    # another expression may be the selective condition: all of it stays above, for DuckDB to order
    ("row AND NOT attrs.id:r3", False), ("row AND -level:error", False)])
def test_the_condition_is_evaluated_inside_each_files_parquet_scan(
        lake: tuple[SearchService, list[dict[str, Any]]], q: str, inside: bool) -> None:
    svc, rows = lake
    plan = svc.runner.plan(parse(q), "default", T0, T0 + 3600 * SEC)
    source, rest = plan.filtered(original=True)
    text = _explain(svc, f"{source.sql} AS logs WHERE ({rest.sql})", [*source.params, *rest.params])
    # DuckDB shows a condition it evaluates in the scan among the READ_PARQUET's filters; one left
    # above the scan is a FILTER operator of its own.
    assert ("FILTER" not in text.replace("Filters:", "")) == inside, text
    assert (rest.sql == "TRUE" or "regexp_matches" not in rest.sql) == inside
    # And the rows are those of the whole condition applied above the scan.
    whole = plan.relation(original=True)
    above = svc.runner.run(f"SELECT count(*) FROM {whole.sql} AS logs WHERE {plan.where.sql}",
                           [*whole.params, *plan.where.params]).column(0)[0].as_py()
    split = svc.runner.run(f"SELECT count(*) FROM {source.sql} AS logs WHERE {rest.sql}",
                           [*source.params, *rest.params]).column(0)[0].as_py()
    assert len(svc.search(q, START, END, limit=1000).rows) == split == above


def test_a_condition_on_the_original_line_stays_above_files_written_before_it(
        lake: tuple[SearchService, list[dict[str, Any]]]) -> None:
    svc, _ = lake
    old = [record(T0 + 4 * SEC + i, "old", "info", f"legacy row {i}", attrs=[("id", f"old{i}")]) for i in range(3)]
    _write_old(svc.root, svc.catalog, old)
    plan = svc.runner.plan(parse("line:legacy*"), "default", T0, T0 + 3600 * SEC)
    source, rest = plan.filtered(original=True)
    assert rest == plan.where          # an old file has no head or raw to test inside its scan
    assert {r["attrs"]["id"] for r in svc.search("line:legacy*", START, END, limit=100).rows} == \
        {"old0", "old1", "old2"}
    plan = svc.runner.plan(parse("legacy"), "default", T0, T0 + 3600 * SEC)
    assert plan.filtered(original=True)[1].sql == "TRUE"     # the message is in every file


# -- the time limit's watchdog ----------------------------------------------------------------


def test_watchdog_calls_what_is_due_in_order_again_until_disarmed_and_never_what_was_disarmed() -> None:
    from query.runner import Watchdog

    dog = Watchdog()
    called: list[str] = []
    late = threading.Event()
    early = dog.arm(0.05, lambda: called.append("early"))
    dog.arm(0.3, lambda: (called.append("late"), late.set()))
    kept = dog.arm(0.1, lambda: called.append("disarmed"))
    dog.disarm(kept)
    assert late.wait(5)
    # Past its deadline a function is called again and again (an interrupt can be lost while DuckDB
    # binds a statement), until it is disarmed; then never again.
    assert called[0] == "early" and called.count("early") >= 3 and "disarmed" not in called
    dog.disarm(early)
    n = called.count("early")
    time.sleep(0.3)
    assert called.count("early") == n
    # Armed again after an idle spell, it still fires.
    again = threading.Event()
    token = dog.arm(0.01, again.set)
    assert again.wait(5)
    dog.disarm(token)


def _runner(tmp_path: Path, *, timeout_s: float) -> QueryRunner:
    """A runner over an empty lake with ``query.timeout_s``."""
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    cfg = Config.model_validate({"storage": {"data_root": str(tmp_path / "data"),
                                             "catalog_url": f"sqlite:///{tmp_path / 'catalog.sqlite'}"},
                                 "query": {"timeout_s": timeout_s}})
    (tmp_path / "data").mkdir()
    return SearchService(cfg, catalog).runner


def test_the_time_limit_is_the_requests_not_each_statements(tmp_path: Path) -> None:
    """Inside a slot every statement shares the request's limit: time spent before a statement (a plan,
    an earlier statement, Python) counts, and a statement that starts past the limit never runs."""
    from query.errors import QueryTimeout

    runner = _runner(tmp_path, timeout_s=0.3)
    with runner.slot():
        assert runner.run("SELECT 1 AS x", [])["x"].to_pylist() == [1]
        time.sleep(0.35)
        with pytest.raises(QueryTimeout):
            runner.run("SELECT 2 AS x", [])
        with pytest.raises(QueryTimeout):
            runner.in_time()
    # The next request has the whole limit again.
    with runner.slot():
        assert runner.in_time() > 0.2
        assert runner.run("SELECT 3 AS x", [])["x"].to_pylist() == [3]


def test_a_regex_is_compiled_once_and_a_bad_one_refused_every_time(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from query.errors import QueryError

    runner = _runner(tmp_path, timeout_s=5)
    statements: list[str] = []
    run = runner.run
    monkeypatch.setattr(runner, "run", lambda sql, params: (statements.append(sql), run(sql, params))[1])
    good = parse("message:/ab+c/ OR message:/x[0-9]+/")
    runner.check_regexes(good)
    assert len(statements) == 1             # both in one statement
    runner.check_regexes(good)
    runner.check_regexes(parse("message:/x[0-9]+/"))
    assert len(statements) == 1             # known to compile: no statement
    for _ in range(2):
        with pytest.raises(QueryError, match=r"invalid regular expression /\(unclosed/"):
            runner.check_regexes(parse("message:/ab+c/ OR message:/(unclosed/"))
    assert len(statements) == 3


def test_a_statement_past_the_time_limit_is_interrupted(tmp_path: Path) -> None:
    from query.errors import QueryTimeout

    runner = _runner(tmp_path, timeout_s=0.2)
    t0 = time.monotonic()
    with pytest.raises(QueryTimeout):
        runner.run("SELECT count(*) FROM range(100000000000) a WHERE a.range % 7 = 3", [])
    assert time.monotonic() - t0 < 10
    # The next statement on the same cursor runs to its end.
    assert runner.run("SELECT 42 AS x", [])["x"].to_pylist() == [42]


# -- many small segments: a page read first from the segments nearest its start --------------------


@pytest.fixture
def many_small(tmp_path: Path) -> tuple[SearchService, list[dict[str, Any]]]:
    """60 segments of 12 rows, as ingest writes them when it keeps up: each a few seconds of time,
    neighbours overlapping, runs of equal times across segments, and an error in every fourth row."""
    rng = random.Random(11)
    rows = []
    for s in range(60):
        for i in range(12):
            ts = T0 + (s * 4 + rng.choice([0, 1, 2, 5])) * SEC          # overlaps the next segment's
            n = s * 12 + i
            rows.append(record(ts, rng.choice(["api", "db"]), "error" if n % 4 == 0 else "info",
                               f"row {n}",
                               attrs=[("id", f"r{n:03d}")]))
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    write_lake(tmp_path / "data", catalog,
               [Segment("default", f"s{s:02d}.parquet", rows[s * 12:(s + 1) * 12]) for s in range(60)])
    cfg = Config.model_validate({"storage": {"data_root": str(tmp_path / "data"),
                                             "catalog_url": f"sqlite:///{tmp_path / 'catalog.sqlite'}"}})
    return SearchService(cfg, catalog), rows


def _walk(svc: SearchService, q: str, k: int, order: str) -> tuple[list[dict[str, Any]], set[int]]:
    walked: list[dict[str, Any]] = []
    windows: set[int] = set()
    cursor = None
    for _ in range(1000):
        page = svc.search(q, START, END, limit=k, order=order, cursor=cursor)     # type: ignore[arg-type]
        walked += page.rows
        windows.add(int(page.stats.get("windows", 0)))
        cursor = page.cursor
        if cursor is None:
            return walked, windows
    raise AssertionError("the pages never ended")


@pytest.mark.parametrize("order", ["desc", "asc"])
# (Pages of one row walk a quarter of the rows, the errors: every row of the range one page at a
# time, both ways, cost two minutes of the suite.)
@pytest.mark.parametrize(("q", "k"), [("level:error", 1), ("", 7), ("", 100), ("level:error", 5), ("level:error", 40),
                                      ("id:r007 OR id:r300 OR id:r301 OR id:r650", 1),
                                      ("id:r007 OR id:r300 OR id:r301 OR id:r650", 3),
                                      ("service:db level:error", 13)])
def test_pages_over_many_segments_are_the_pages_of_one_scan(many_small: tuple[SearchService, list[dict[str, Any]]],
                                                            q: str, k: int, order: str) -> None:
    svc, rows = many_small
    windowed, windows = _walk(svc, q, k, order)
    assert windows != {0}, "the pages were read over the whole range, not in windows"
    # One scan of the whole range, every matching row in one page: the pages hold the same rows in
    # the same time order (rows of one time may come in any order within a page), each row once.
    whole = svc.search(q, START, END, limit=1000, order=order).rows     # type: ignore[arg-type]
    assert len(whole) < 1000
    assert [r["ts"] for r in windowed] == [r["ts"] for r in whole]
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, windowed)) == sorted(map(key, whole))
    truth = _FIELDS_QUERIES.get(q)
    if truth is not None:       # the written rows say which match
        assert sorted(r["attrs"]["id"] for r in windowed) == sorted(r["attrs"][0][1] for r in rows if truth(r))
    assert [r["ts"] for r in windowed] == sorted((r["ts"] for r in windowed), reverse=order == "desc")


def test_a_window_short_of_a_page_grows_to_the_whole_range(many_small: tuple[SearchService, list[dict[str, Any]]],
                                                           ) -> None:
    svc, rows = many_small
    # Four rows match, in segments far apart (and no index leaves out the others): the first windows
    # hold too few, the last is the whole range.
    page = svc.search("id:r007 OR id:r300 OR id:r301 OR id:r650", START, END, limit=4)
    assert sorted(r["attrs"]["id"] for r in page.rows) == ["r007", "r300", "r301", "r650"]
    assert [r["ts"] for r in page.rows] == sorted((r["ts"] for r in page.rows), reverse=True)
    assert page.cursor is None
    assert page.stats["windows"] > 1


_FIELDS_QUERIES: dict[str, Any] = {
    "": lambda r: True, "level:error": lambda r: r["level"] == "error",
    "service:db level:error": lambda r: r["service"] == "db" and r["level"] == "error",
    "id:r007 OR id:r300 OR id:r650": lambda r: r["attrs"][0][1] in ("r007", "r300", "r650")}


@pytest.mark.parametrize("q", list(_FIELDS_QUERIES))
def test_fields_sample_the_newest_rows_from_the_newest_segments_first(
        many_small: tuple[SearchService, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, q: str) -> None:
    svc, rows = many_small
    # A sample size whose last row's time no other matching row shares, so that "the newest n" is one set.
    times = sorted((r["ts"] for r in rows if _FIELDS_QUERIES[q](r)), reverse=True)
    n = next((k for k in range(60, 0, -1) if k >= len(times) or times[k - 1] != times[k]), 1)
    cfg = svc.cfg.model_copy(update={"query": svc.cfg.query.model_copy(update={"fields_sample_rows": n})})
    small = SearchService(cfg, svc.catalog)
    windowed, stats = small.fields(q, START, END)
    monkeypatch.setattr("query.fields.nearest_segments", lambda segments, rows: None)
    whole, whole_stats = small.fields(q, START, END)
    assert [vars(f) for f in windowed] == [vars(f) for f in whole]
    assert stats["sampled_rows"] == whole_stats["sampled_rows"] == min(n, len(times))
    assert whole_stats["windows"] == 0
    if q == "":             # the newest segments that hold n rows hold n matching rows
        assert stats["windows"] == 1


def test_a_query_of_the_most_terms_allowed_runs(lake: tuple[SearchService, list[dict[str, Any]]]) -> None:
    svc, rows = lake
    n = svc.cfg.query.max_query_terms
    q = " ".join(["row"] * (n - 1) + ["-zzz"])
    assert len(svc.search(q, START, END, limit=1000).rows) == len(svc.search("row", START, END, limit=1000).rows)
    assert svc.aggregate(q, START, END, interval="1h").series


def test_a_lake_of_old_and_new_segments_is_read_whole_and_by_row_ranges_together(
        lake: tuple[SearchService, list[dict[str, Any]]]) -> None:
    svc, rows = lake
    old = [record(T0 + 4 * SEC + i, "old", "info", f"legacy row 1{i}", attrs=[("id", f"old{i}")]) for i in range(6)]
    _write_old(svc.root, svc.catalog, old)
    # "row 1" is in every row of the old file (read whole) and in some row groups of the others (read
    # by row ranges): the count and the sidebar read both kinds in one UNION, without head and raw.
    q = '"row 1"'
    plan = svc.runner.plan(parse(q), "default", T0, T0 + 3600 * SEC)
    assert plan.scan.partial and plan.scan.whole
    expected = sum("row 1" in r["message"] for r in [*rows, *old])
    got = svc.aggregate(q, START, END, interval="1h")
    assert sum(s.total or 0 for s in got.series) == expected > len(old)
    assert svc.fields(q, START, END)[1]["sampled_rows"] == expected
