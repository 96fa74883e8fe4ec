"""The search HTTP API, served by a real uvicorn server on a loopback port.

The data is written straight through the storage package (Parquet segments
plus catalog rows), so no broker or ingest worker is involved. Every record
carries ``attrs.id``; the tests compare the ids a search returns.

Segments (all on 2024-03-01, UTC):

    api-10      service api,     10:00-10:15   a1 a2 a3 a4
    billing-10  service billing, 10:02-10:20   b1 b2
    api-11      service api,     11:00-11:30   c1 c2
    tricky-12   service tricky,  12:00-12:04   t1 .. t5
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from query.timerange import parse_time_us
from storage.catalog import Catalog
from tests.helpers import lake
from tests.helpers.server import Server, config_for, serve

DAY = "2024-03-01"
#: Covers every record.
ALL = {"start": f"{DAY}T09:00:00Z", "end": f"{DAY}T13:00:00Z"}


def record(rid: str, clock: str, service: str, level: str, message: str, **attrs: str) -> dict[str, Any]:
    return lake.record(parse_time_us(f"{DAY}T{clock}Z"), service, level, message,
                       attrs=[("id", rid), *attrs.items()])


SEGMENTS: dict[str, list[dict[str, Any]]] = {
    "api-10": [
        record("a1", "10:00:00", "api", "info", "GET /api/users 200 OK",
               **{"http.status": "200", "http.path": "/api/users"}),
        record("a2", "10:05:00", "api", "error", "Timeout talking to database",
               **{"http.status": "500", "http.path": "/api/orders"}),
        record("a3", "10:10:00", "api", "warn", "Slow request: 1000 ms",
               **{"http.status": "200", "http.path": "/healthz"}),
        record("a4", "10:15:00", "api", "info", "connection reset by peer",
               **{"http.path": "/apiary"}),
    ],
    "billing-10": [
        record("b1", "10:02:00", "billing", "error", "payment declined for order 42",
               **{"http.status": "402", "http.path": "/billing/pay"}),
        record("b2", "10:20:00", "billing", "info", "invoice 100% paid"),
    ],
    "api-11": [
        record("c1", "11:00:00", "api", "info", "user a_b logged in"),
        record("c2", "11:30:00", "api", "error", "quota reached at 1000 units",
               **{"http.status": "500"}),
    ],
    "tricky-12": [
        record("t1", "12:00:00", "tricky", "info", 'she said "hello"'),
        record("t2", "12:01:00", "tricky", "info", "saved to C:\\temp\\new"),
        record("t3", "12:02:00", "tricky", "info", "name='; DROP TABLE segments; --"),
        record("t4", "12:03:00", "tricky", "info", "user axb logged in"),
        record("t5", "12:04:00", "tricky", "info", "clock check", note="it's 5 o'clock"),
    ],
}
NEWEST_FIRST = ["t5", "t4", "t3", "t2", "t1", "c2", "c1", "b2", "a4", "a3", "a2", "b1", "a1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("query-api")
    cfg = config_for(root, root / "data")
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    lake.write_lake(cfg.storage.data_root, catalog,
                    [lake.Segment("default", f"{name}.parquet", rows) for name, rows in SEGMENTS.items()])
    with serve(cfg, timeout_s=10, rng=ALL) as s:
        yield s
    catalog.close()


# -- health -------------------------------------------------------------------


def test_healthz_answers_ok(server: Server) -> None:
    resp = server.client.get("/healthz")
    assert (resp.status_code, resp.json()) == (200, {"status": "ok"})


def test_readyz_reports_ready_and_not_the_catalog_totals(server: Server) -> None:
    resp = server.client.get("/readyz")      # open to anyone: what is stored is not its to tell (issue 19)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready"}
    totals = server.service.catalog.totals()
    assert (totals["segments"], totals["rows"]) == (4, 13)


# -- what a search returns --------------------------------------------------------


def test_empty_query_returns_every_record_newest_first(server: Server) -> None:
    assert server.ids() == NEWEST_FIRST


def test_order_asc_returns_oldest_first(server: Server) -> None:
    assert server.ids(order="asc") == NEWEST_FIRST[::-1]


def test_unknown_order_is_rejected(server: Server) -> None:
    assert server.query("", order="sideways", **ALL).status_code == 422


def test_row_carries_every_column_with_rfc3339_times_and_attrs_as_a_dict(server: Server) -> None:
    """Every column but the stored parts of the original line, which the row holds whole as ``line``."""
    (row,) = server.search("attrs.id:a2")["rows"]
    assert row == {
        "ts": f"{DAY}T10:05:00.000000Z", "observed_ts": f"{DAY}T10:05:00.001000Z",
        "service": "api", "host": "web-1", "source": "/var/log/api.log", "level": "error",
        "severity": 17, "message": "Timeout talking to database",
        "attrs": {"id": "a2", "http.status": "500", "http.path": "/api/orders"},
        "trace_id": None, "span_id": None, "line": "Timeout talking to database",
    }


def test_stats_echo_the_range_and_count_returned_rows(server: Server) -> None:
    stats = server.search("level:error")["stats"]
    assert stats["start"] == f"{DAY}T09:00:00.000000Z"
    assert stats["end"] == f"{DAY}T13:00:00.000000Z"
    assert stats["returned"] == 3


def test_range_defaults_to_the_hour_before_end(server: Server) -> None:
    resp = server.query("", end=f"{DAY}T11:00:01Z")
    assert resp.status_code == 200
    body = resp.json()
    assert body["stats"]["start"] == f"{DAY}T10:00:01.000000Z"
    assert [r["attrs"]["id"] for r in body["rows"]] == ["c1", "b2", "a4", "a3", "a2", "b1"]


def test_range_defaults_to_the_last_hour_when_nothing_is_given(server: Server) -> None:
    resp = server.query("")
    assert resp.status_code == 200
    stats = resp.json()["stats"]
    assert parse_time_us(stats["end"]) - parse_time_us(stats["start"]) == 3_600_000_000


# -- the language against the data ----------------------------------------------


def test_word_matches_a_substring_of_the_message_case_insensitively(server: Server) -> None:
    assert server.ids("TIMEOUT") == ["a2"]
    assert server.ids("ayme") == ["b1"]


def test_words_must_all_match(server: Server) -> None:
    assert server.ids("logged user") == ["t4", "c1"]
    assert server.ids("logged a_b") == ["c1"]


def test_phrase_matches_the_words_in_order(server: Server) -> None:
    assert server.ids('"reset by peer"') == ["a4"]
    assert server.ids('"peer by reset"') == []


def test_level_matches_the_normalised_level(server: Server) -> None:
    assert server.ids("level:error") == ["c2", "a2", "b1"]
    assert server.ids("level:ERROR") == ["c2", "a2", "b1"]


def test_level_alias_warning_finds_warn_records(server: Server) -> None:
    # `level:warning` compiles to level = 'warn'; pruning must agree with that.
    assert server.ids("level:warning") == ["a3"]


def test_service_matches_exactly(server: Server) -> None:
    assert server.ids("service:billing") == ["b2", "b1"]
    assert server.ids("service:bill") == []
    assert server.ids("svc:billing") == ["b2", "b1"]


def test_attribute_by_its_key(server: Server) -> None:
    assert server.ids("http.status:500") == ["c2", "a2"]


def test_attribute_with_the_attrs_prefix(server: Server) -> None:
    assert server.ids("attrs.http.status:500") == ["c2", "a2"]


def test_wildcard_on_an_attribute(server: Server) -> None:
    assert server.ids("http.path:/api/*") == ["a2", "a1"]


def test_single_character_wildcard(server: Server) -> None:
    assert server.ids("http.status:4?2") == ["b1"]
    assert server.ids("http.status:4?") == []


def test_wildcard_on_the_message(server: Server) -> None:
    assert server.ids("conn*peer") == ["a4"]


def test_not_excludes_matches(server: Server) -> None:
    assert server.ids("service:api NOT level:info") == ["c2", "a3", "a2"]


def test_minus_excludes_matches(server: Server) -> None:
    assert server.ids("service:api -level:info") == ["c2", "a3", "a2"]


def test_not_on_a_missing_attribute_matches_records_without_it(server: Server) -> None:
    assert server.ids("service:api -http.status:200") == ["c2", "c1", "a4", "a2"]


def test_or_matches_either_side(server: Server) -> None:
    assert server.ids("level:warn OR service:billing") == ["b2", "a3", "b1"]


def test_or_binds_looser_than_and(server: Server) -> None:
    assert server.ids("service:billing level:error OR level:warn") == ["a3", "b1"]
    assert server.ids("service:billing (level:error OR level:warn)") == ["b1"]


def test_unknown_attribute_matches_nothing(server: Server) -> None:
    assert server.ids("@no.such-key:x") == []


def test_searching_a_timestamp_as_a_value_is_rejected(server: Server) -> None:
    resp = server.query("ts:5", **ALL)
    assert resp.status_code == 400
    assert resp.json()["error"] == "QueryError"


# -- time range ------------------------------------------------------------------


def test_range_includes_its_start_and_excludes_its_end(server: Server) -> None:
    # a1 is at exactly 10:00:00 and a2 at exactly 10:05:00.
    assert server.ids(start=f"{DAY}T10:00:00Z", end=f"{DAY}T10:05:00Z") == ["b1", "a1"]


def test_range_boundaries_are_exact_to_the_microsecond(server: Server) -> None:
    assert server.ids(start=f"{DAY}T10:00:00.000001Z", end=f"{DAY}T10:05:00.000001Z") == ["a2", "b1"]


def test_range_accepts_epoch_numbers(server: Server) -> None:
    start = str(parse_time_us(f"{DAY}T11:00:00Z") // 1_000_000)
    end = str(parse_time_us(f"{DAY}T12:00:00Z") // 1_000)
    assert server.ids(start=start, end=end) == ["c2", "c1"]


def test_bad_start_is_rejected(server: Server) -> None:
    resp = server.query("", start="yesterday")
    assert resp.status_code == 400
    assert resp.json()["error"] == "BadTimeRange"
    assert "yesterday" in resp.json()["message"]


def test_end_before_start_is_rejected(server: Server) -> None:
    resp = server.query("", start=f"{DAY}T12:00:00Z", end=f"{DAY}T11:00:00Z")
    assert resp.status_code == 400
    assert resp.json() == {"error": "BadTimeRange", "message": "end is before start"}


# -- limit ----------------------------------------------------------------------


def test_limit_keeps_the_newest_rows(server: Server) -> None:
    assert server.ids(limit=3) == ["t5", "t4", "t3"]


def test_limit_with_ascending_order_keeps_the_oldest_rows(server: Server) -> None:
    assert server.ids(limit=2, order="asc") == ["a1", "b1"]


def test_limit_at_the_maximum_is_accepted(server: Server) -> None:
    assert server.ids(limit=server.cfg.query.max_limit) == NEWEST_FIRST


@pytest.mark.parametrize("limit", [0, -1, "over"])
def test_limit_outside_its_bounds_is_rejected(server: Server, limit: int | str) -> None:
    value = server.cfg.query.max_limit + 1 if limit == "over" else limit
    resp = server.query("", limit=value, **ALL)
    assert resp.status_code == 400
    assert resp.json()["error"] == "QueryError"
    assert "limit" in resp.json()["message"]


# -- catalog pruning ----------------------------------------------------------------


def test_pinning_a_service_scans_only_its_segments(server: Server) -> None:
    stats = server.search("service:billing payment")["stats"]
    assert (stats["segments_total"], stats["segments_scanned"]) == (4, 1)
    assert stats["rows_scanned"] == 2


def test_pinning_one_of_two_services_scans_both(server: Server) -> None:
    stats = server.search("service:billing OR service:tricky")["stats"]
    assert (stats["segments_total"], stats["segments_scanned"]) == (4, 2)


def test_pinning_a_level_skips_segments_without_it(server: Server) -> None:
    stats = server.search("level:warn")["stats"]
    assert (stats["segments_total"], stats["segments_scanned"]) == (4, 1)


def test_negated_service_prunes_nothing(server: Server) -> None:
    stats = server.search("-service:billing")["stats"]
    assert (stats["segments_total"], stats["segments_scanned"]) == (4, 4)


def test_time_range_skips_segments_outside_it(server: Server) -> None:
    # api-10 ends at 10:15:00, billing-10 at 10:20:00.
    body = server.search("", start=f"{DAY}T10:15:00.000001Z", end=f"{DAY}T11:00:00Z")
    assert (body["stats"]["segments_total"], body["stats"]["segments_scanned"]) == (1, 1)
    assert [r["attrs"]["id"] for r in body["rows"]] == ["b2"]


def test_range_with_no_segments_returns_no_rows(server: Server) -> None:
    body = server.search("", start="2023-01-01T00:00:00Z", end="2023-01-02T00:00:00Z")
    assert body["rows"] == []
    assert (body["stats"]["segments_total"], body["stats"]["segments_scanned"]) == (0, 0)


# -- syntax errors -------------------------------------------------------------------


def test_syntax_error_is_400_with_position_and_reason(server: Server) -> None:
    resp = server.query("level:error (timeout", **ALL)
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "QuerySyntaxError",
        "message": "expected ')', found end of query at position 20",
        "position": 20, "reason": "expected ')', found end of query", "query": "level:error (timeout",
    }


def test_unclosed_quote_is_400_with_position(server: Server) -> None:
    body = server.query('"abc', **ALL).json()
    assert (body["position"], body["reason"]) == (4, 'unclosed quote: expected "')


def test_deeply_negated_query_is_400_not_500(server: Server) -> None:
    # Its own connection: a 500 makes uvicorn drop the connection it came on.
    resp = httpx.get(f"{server.url}/api/v1/search", params={"q": "NOT " * 5000 + "a", **ALL}, timeout=10)
    assert resp.status_code == 400


# -- injection --------------------------------------------------------------------


def test_phrase_with_escaped_quotes_matches_literally(server: Server) -> None:
    assert server.ids(r'"said \"hello\""') == ["t1"]


def test_backslashes_match_literally(server: Server) -> None:
    assert server.ids(r'"C:\\temp\\new"') == ["t2"]
    assert server.ids(r"C\:\\temp") == ["t2"]


def test_sql_in_a_phrase_is_only_text(server: Server) -> None:
    assert server.ids("\"'; DROP TABLE segments; --\"") == ["t3"]
    assert server.service.catalog.totals()["segments"] == 4
    assert server.ids() == NEWEST_FIRST


def test_sql_in_a_field_value_is_only_text(server: Server) -> None:
    assert server.ids("service:\"api' OR '1'='1\"") == []
    assert server.ids("http.status:\"500' OR 'x'='x\"") == []


def test_quote_in_an_attribute_value_matches_literally(server: Server) -> None:
    assert server.ids("note:\"it's 5 o'clock\"") == ["t5"]


def test_percent_in_a_word_is_not_a_like_wildcard(server: Server) -> None:
    assert server.ids("100%") == ["b2"]


def test_underscore_in_a_word_is_not_a_like_wildcard(server: Server) -> None:
    assert server.ids("a_b") == ["c1"]


def test_percent_and_underscore_stay_literal_inside_wildcard_terms(server: Server) -> None:
    assert server.ids("100%*") == ["b2"]
    assert server.ids("*a_b*") == ["c1"]


@pytest.mark.parametrize("field", ["../../etc/passwd", "attrs/../x", "a;b", "a'b"])
def test_path_or_sql_in_a_field_name_is_a_syntax_error(server: Server, field: str) -> None:
    resp = server.query(f"{field}:x", **ALL)
    assert resp.status_code == 400
    assert resp.json()["reason"].startswith("invalid field name")


def test_dots_in_an_attribute_key_are_not_a_path(server: Server) -> None:
    assert server.ids("attrs...:x") == []
    assert server.ids("x..y:x") == []


# -- DuckDB sandbox ---------------------------------------------------------------


@pytest.fixture
def cursor(server: Server) -> Iterator[duckdb.DuckDBPyConnection]:
    cur = server.service.runner.db.cursor()
    yield cur
    cur.close()


def test_duckdb_cannot_read_files_outside_the_data_root(cursor: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(duckdb.PermissionException):
        cursor.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()


def test_duckdb_cannot_climb_out_of_the_data_root(server: Server, cursor: duckdb.DuckDBPyConnection) -> None:
    escape = f"{server.service.root.url}/../../../../../../etc/passwd"
    with pytest.raises(duckdb.PermissionException):
        cursor.execute("SELECT * FROM read_csv(?)", [escape]).fetchall()


def test_duckdb_reads_segments_inside_the_data_root(server: Server,
                                                    cursor: duckdb.DuckDBPyConnection) -> None:
    files = sorted(str(p) for p in Path(server.service.root.url).rglob("*.parquet"))
    assert cursor.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone() == (13,)


def test_duckdb_cannot_write_files(server: Server, cursor: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(duckdb.PermissionException):
        cursor.execute("COPY (SELECT 1) TO '/tmp/loglake-escape.csv'")


@pytest.mark.parametrize("setting", [
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "SET lock_configuration = false",
])
def test_duckdb_configuration_is_locked(cursor: duckdb.DuckDBPyConnection, setting: str) -> None:
    with pytest.raises(duckdb.Error, match="locked"):
        cursor.execute(setting)


def test_duckdb_cannot_load_extensions(cursor: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(duckdb.PermissionException):
        cursor.execute("LOAD httpfs")
