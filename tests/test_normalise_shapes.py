"""The parsing statement built for a batch's shape (only the formats its lines need, without the
SQL fallbacks the compiled pre-pass made unneeded) gives exactly what the full statement gives."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.normalise import Normaliser, ParseSettings
from tests.helpers import normalising
from tests.helpers.fuzzing import examples

OBSERVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


class FullStatement(Normaliser):
    """Every batch parsed by the statement with every parser and every fallback."""

    def _statement(self, c: pa.Table, inherit: bool, compiled: frozenset[str]) -> str:
        return self.inherit_sql if inherit else self.parse_sql


#: Lines of every format, including the ones the compiled pre-passes leave to SQL.
POOL = [
    # JSON the compiled pass takes
    '{"time":"2024-06-01T11:59:00.123Z","level":"info","msg":"order 1 created","service":"api","host":"a1",'
    '"trace_id":"0af7651916cd43dd8448eb211c80319c","http":{"status":200,"method":"GET"},"n":1.50}',
    '{"ts":1717243140,"severity":"WARNING","message":"slow","user":{"id":7,"name":"x"}}',
    '{"@timestamp":"2024-06-01T11:58:00Z","log.level":"error","message":"boom","host":""}',
    '{"t":{"$date":"2024-06-01T11:57:00.000+00:00"},"s":"I","msg":"mongo says hi","attr":{"a":1}}',
    '{"request":{"timestamp":"2024-06-01T11:56:00Z","level":"debug"},"text":"deep keys"}',
    '{"time":"not a time","level":"verbose","msg":"kept in attrs"}',
    '{"msg":"no time at all","level":30}',
    # JSON left to the SQL steps: a repeated key, a \\u0000, not strict JSON
    '{"a":1,"a":2,"msg":"repeated"}',
    '{"msg":"nul \\u0000 inside","level":"info"}',
    '{"msg": "trailing comma",}',
    # access logs: the compiled shape, and the ones the regexes take
    '203.0.113.9 - - [01/Jun/2024:11:55:00 +0000] "GET /api/x?id=1 HTTP/1.1" 200 512 "-" "curl/8.0"',
    '10.0.0.2, 10.0.0.1 - - [01/Jun/2024:11:54:00 +0000] "POST /login HTTP/1.1" 401 0 "-" "Mozilla/5.0"',
    'www.example.org:443 198.51.100.4 - bob [01/Jun/2024:11:53:00 +0000] "GET / HTTP/2.0" 500 12 "-" "x"',
    # syslog, Apache errors, logfmt, plain text with and without times
    "<34>Jun  1 11:52:00 web01 sshd[4242]: Failed password for root from 10.0.0.9",
    "<165>1 2024-06-01T11:51:00.003Z mymachine evntslog - ID47 [exampleSDID@32473 iut=\"3\"] An application event",
    "[Sat Jun 01 11:50:00.123456 2024] [core:error] [pid 1234:tid 5678] [client 10.0.0.1:5555] AH00124: too many",
    'ts=2024-06-01T11:49:00Z level=warn msg="disk almost full" path=/var used=91',
    "2024-06-01 11:48:00,123 ERROR [main] com.example.App - it broke",
    "\tat com.example.App.main(App.java:42)",
    "just some words with no time",
    "",
]


@pytest.fixture(scope="module")
def normalisers() -> Iterator[tuple[Normaliser, Normaliser]]:
    shaped, full = Normaliser(), FullStatement()
    yield shaped, full
    shaped.close()
    full.close()


def _same(shaped: Normaliser, full: Normaliser, lines: list[str], **kw: object) -> None:
    batch = normalising.raw(lines, observed=OBSERVED, **kw)  # type: ignore[arg-type]
    got, want = shaped(batch), full(batch)
    assert got.equals(want), (lines, got.to_pylist(), want.to_pylist())


@pytest.mark.parametrize("pick", [
    slice(0, 7),        # JSON, all taken by the compiled pass: no fallbacks, no text
    slice(0, 10),       # JSON, some left to SQL
    slice(10, 13),      # access logs, compiled and not
    slice(10, 11),      # one compiled access line
    slice(13, 16),      # syslog and Apache: they may fall back to text
    slice(16, 20),      # logfmt and text with a continuation line (the inheriting statement)
    slice(19, 21),      # text only
    slice(0, len(POOL)),
])
def test_a_batch_of_one_shape_parses_as_with_the_full_statement(normalisers: tuple[Normaliser, Normaliser],
                                                                  pick: slice) -> None:
    _same(*normalisers, POOL[pick])


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(POOL), min_size=1, max_size=30))
def test_any_mix_parses_as_with_the_full_statement(normalisers: tuple[Normaliser, Normaliser],
                                                   lines: list[str]) -> None:
    _same(*normalisers, lines)


def test_configured_formats_and_patterns_parse_as_with_the_full_statement() -> None:
    rules = ParseSettings(patterns=(r"^(?P<ts>\S+ \S+) (?P<level>\w+) (?P<msg>.*)$",),
                          pattern_ts_formats=("%Y-%m-%d %H:%M:%S,%f",))
    shaped, full = Normaliser(rules), FullStatement(rules)
    try:
        _same(shaped, full, POOL[17:21], fmt="pattern0")
        _same(shaped, full, POOL[0:3], fmt="logfmt")           # JSON lines its configured format misses
        _same(shaped, full, POOL[10:13], fmt="nginx")
    finally:
        shaped.close()
        full.close()


def test_the_shaped_statements_are_smaller() -> None:
    # A normaliser of its own: the shared one holds statements for whatever mixes ran before.
    shaped = Normaliser()
    try:
        shaped(normalising.raw(POOL[0:7], observed=OBSERVED))
        json_only = [sql for (inherit, present, _), sql in shaped._parse_sql.items() if present == {"json"}]
        assert json_only and len(json_only[0]) < len(shaped.parse_sql) / 2
    finally:
        shaped.close()
