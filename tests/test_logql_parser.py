"""LogQL, Grafana Loki's query language: text to syntax tree and back (``query/logql``).

Examples come from Loki's documentation (log queries, metric queries, query examples, the query
reference and the template functions page) and from its grammar (``pkg/logql/syntax/syntax.y``
and ``lex.go``). What is LogQL but outside loglake's subset must raise LogQLUnsupported naming
the construct; what is not LogQL at all must raise QuerySyntaxError with the position.
Nothing here touches DuckDB or storage.
"""

from __future__ import annotations

import ast as pyast
import itertools

import pytest
import re2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from query.errors import QueryError, QuerySyntaxError
from query.logql import (
    BinaryOp,
    BytesFilter,
    Decolorize,
    DropLabels,
    DurationFilter,
    Expr,
    Extraction,
    Grouping,
    Ip,
    IpFilter,
    JsonParser,
    KeepLabels,
    LabelAnd,
    LabelFilter,
    LabelFormat,
    LabelFormatItem,
    LabelOr,
    LabelPredicate,
    LabelReplace,
    LineFilter,
    LineFormat,
    LogfmtParser,
    LogQLUnsupported,
    LogQuery,
    LogRange,
    Matcher,
    MetricExpr,
    Number,
    NumericFilter,
    PatternParser,
    RangeAggregation,
    RegexpParser,
    Selector,
    Stage,
    UnpackParser,
    Unwrap,
    Vector,
    VectorAggregation,
    VectorMatching,
    compile_template,
    is_log_query,
    is_metric_query,
    is_scalar,
    log_queries,
    parse,
    pattern_parts,
    render,
    to_string,
    walk,
)
from query.logql.ast import COMPARISON_OPS, GROUPED_RANGE_OPS, LINE_RANGE_OPS, RANGE_OPS, SET_OPS, UNWRAP_RANGE_OPS
from query.logql.lexer import KEYWORDS, format_duration, parse_bytes, parse_duration, tokenize
from query.logql.parser import MAX_DEPTH

S = 10**9           # nanoseconds in a second
MS = 10**6
MINUTE, HOUR, DAY = 60 * S, 3600 * S, 86400 * S


def m(name: str, op: str, value: str) -> Matcher:
    return Matcher(name, op, value)  # type: ignore[arg-type]


def sel(*matchers: Matcher, **equal: str) -> Selector:
    return Selector(tuple(matchers) + tuple(Matcher(k, "=", v) for k, v in equal.items()))


def logq(selector: Selector, *stages: Stage) -> LogQuery:
    return LogQuery(selector, tuple(stages))


def rng(query: LogQuery, range_ns: int, offset_ns: int = 0, unwrap: Unwrap | None = None) -> LogRange:
    return LogRange(query, range_ns, offset_ns, unwrap)


def count(query: LogQuery, range_ns: int = 5 * MINUTE) -> RangeAggregation:
    return RangeAggregation("count_over_time", rng(query, range_ns))


def lf(predicate: LabelPredicate) -> LabelFilter:
    return LabelFilter(predicate)


def and_(*items: LabelPredicate) -> LabelAnd:
    return LabelAnd(tuple(items))


def or_(*items: LabelPredicate) -> LabelOr:
    return LabelOr(tuple(items))


def syntax_error(query: str) -> QuerySyntaxError:
    with pytest.raises(QuerySyntaxError) as info:
        parse(query)
    return info.value


def unsupported(query: str) -> LogQLUnsupported:
    with pytest.raises(LogQLUnsupported) as info:
        parse(query)
    return info.value


def roundtrips(query: str) -> Expr:
    expr = parse(query)
    assert parse(to_string(expr)) == expr, to_string(expr)
    return expr


# -- Loki's documentation -------------------------------------------------------------------
# Verbatim, except that pipeline fragments get a selector and a selector that Loki would refuse
# on its own ({name !~ "..."} narrows nothing) gets a second matcher.

DOC_LOG_QUERIES = [
    ('{container="query-frontend",namespace="loki-dev"} |= "metrics.go" | logfmt | duration > 10s and '
     'throughput_mb < 500'),
    '{app="mysql",name="mysql-backup"}',
    '{name =~ "mysql.+"}',
    '{name !~ "mysql.+", app="x"}',
    '{name !~ `mysql-\\d+`, app="x"}',
    '{job="mysql"} |= "error"',
    '{instance=~"kafka-[23]",name="kafka"} != "kafka.server:type=ReplicaManager"',
    '{name="kafka"} |~ "tsdb-ops.*io:2003"',
    '{name="cassandra"} |~  `error=\\w+`',
    '{job="mysql"} |= "error" != "timeout"',
    '{job="mysql"} |= "error" | json | line_format "{{.err}}"',
    '{job="mysql"} | json | line_format "{{.message}}" |= "error"',
    '{job="example"} | decolorize',
    '{job="varlogs"}|json|drop level, method="GET"',
    '{job="varlogs"}|json|drop __error__',
    '{job="varlogs"}|json|drop level, path, app=~"some-api.*"',
    '{job="varlogs"}|json|keep level, method="GET"',
    '{job="varlogs"}|json|keep level, tenant, app=~"some-api.*"',
    '{container="frontend"} | logfmt | line_format "{{.query}} {{.duration}}"',
    '{job="mysql"} | json first_server="servers[0]", ua="request.headers[\\"User-Agent\\"]"',
    '{job="mysql"} | json server_list="servers", headers="request.headers"',
    '{job="mysql"} | json servers',
    '{job="a"} | logfmt --strict',
    '{job="a"} | logfmt --strict host, fwd_ip="fwd"',
    '{job="a"} | logfmt --keep-empty --strict host',
    '{job="a"} | logfmt host, fwd_ip="fwd"',
    '{job="a"} | pattern `<ip> - - <_> "<method> <uri> <_>" <status> <size> <_> "<agent>" <_>`',
    '{job="a"} | pattern `<_> msg="<method> <path> (<status>) <latency>"`',
    '{job="a"} | regexp "(?P<method>\\\\w+) (?P<path>[\\\\w|/]+) \\\\((?P<status>\\\\d+?)\\\\) (?P<duration>.*)"',
    '{job="a"} | duration >= 20ms or size == 20KB and method!~"2.."',
    '{job="a"} | duration >= 20ms or size == 20KB | method!~"2.."',
    '{job="a"} | duration >= 20ms or size == 20KB , method!~"2.."',
    '{job="a"} | duration >= 20ms or size == 20KB  method!~"2.."',
    '{job="a"} | duration >= 20ms or method="GET" and size <= 20KB',
    '{job="a"} | ((duration >= 20ms or method="GET") and size <= 20KB)',
    '{job="a"} | duration >= 20ms or (method="GET" and size <= 20KB)',
    '{job="a"} | logfmt | duration > 1m and bytes_consumed > 20MB',
    ('{job="security"} |~ "Invalid user.*" | regexp "(^(?P<user>\\\\S+ {1,2}){8})" '
     '| regexp "(^(?P<ip>\\\\S+ {1,2}){10})" | line_format "IP = {{.ip}}\\tUSER = {{.user}}"'),
    ('{job="security"}\n    != "grafana_com"\n    |= "session opened"\n    != "sudo: "\n'
     '    |regexp "(^(?P<user>\\\\S+ {1,2}){11})"\n    | line_format "USER = {{.user}}"'),
    ('{cluster="ops-tools1", namespace="loki-dev", job="loki-dev/query-frontend"} |= "metrics.go" '
     '!= "out of order" | logfmt | duration > 30s or status_code != "200"'),
    ('{job="loki-ops/query-frontend"} | logfmt | line_format "{{.msg}}" | regexp '
     '"(?P<method>\\\\w+) (?P<path>[\\\\w|/]+) \\\\((?P<status>\\\\d+?)\\\\) (?P<duration>.*)"'),
    '{cluster="ops-tools1",container="ingress-nginx"}\n    | json\n    | __error__ != "JSONParserErr"',
    '{app="foo"} # anything that comes after will not be interpreted in your query',
    '{app="foo"}\n    | json\n    # this line will be ignored\n    | bar="baz" # this checks if bar = "baz"',
    '{job="access_log"} | json | line_format `{{.http_request_headers_x_forwarded_for | default "-"}}`',
    '{job="a"} | line_format "{{ .path }}"',
    '{job="a"} | line_format `{{ __line__ | lower }}`',
]

DOC_METRIC_QUERIES = [
    'count_over_time({job="mysql"}[5m])',
    'sum by (host) (rate({job="mysql"} |= "error" != "timeout" | json | duration > 10s [1m]))',
    'count_over_time({job="mysql"}[5m] offset 5m)',
    'sum(count_over_time({namespace="traefik"}[5m])) # will return nothing\n  or\nvector(0) # will return 0',
    'sum by (host) (rate({job="mysql"}\n    |= "error" != "timeout"\n    | json\n    | duration > 10s [1m]))',
    ('quantile_over_time(0.99,\n  {cluster="ops-tools1",container="ingress-nginx"}\n    | json\n'
     '    | __error__ = ""\n    | unwrap request_time [1m]) by (path)'),
    ('sum by (org_id) (\n  sum_over_time(\n  {cluster="ops-tools1",container="loki-dev"}\n      |= "metrics.go"\n'
     '      | logfmt\n      | unwrap bytes_processed [1m])\n  )'),
    'topk(10,sum(rate({region="us-east1"}[5m])) by (name))',
    'sum(count_over_time({job="mysql"}[5m])) by (level)',
    'avg(rate(({job="nginx"} |= "GET" | json | path="/home")[10s])) by (region)',
    '1 + 1',
    'sum(rate({app="foo"}[1m])) * 2',
    'sum(rate({app="foo", level="warn"}[1m])) / sum(rate({app="foo", level="error"}[1m]))',
    'rate({app=~"foo|bar"}[1m]) and rate({app="bar"}[1m])',
    '1 >= 1',
    'count_over_time({foo="bar"}[1m]) > 10',
    'count_over_time({foo="bar"}[1m]) > bool 10',
    'sum without(app) (count_over_time({app="foo"}[1m])) > sum without(app) (count_over_time({app="bar"}[1m]))',
    ('sum without(app) (count_over_time({app="foo"}[1m])) > bool sum without(app) '
     '(count_over_time({app="bar"}[1m]))'),
    ('max by(machine) (count_over_time({app="foo"}[1m])) > bool ignoring(machine) '
     'avg(count_over_time({app="foo"}[1m]))'),
    'sum by(machine) (count_over_time({app="foo"}[1m])) / on() sum(count_over_time({app="foo"}[1m]))',
    ('sum by (app, status) (\n  rate(\n    {job="http-server"}\n      | json\n      [5m]\n  )\n)\n'
     '/ on (app) group_left\nsum by (app) (\n  rate(\n    {job="http-server"}\n      | json\n      [5m]\n  )\n)'),
    ('sum by (user, namespace) (\n  rate(\n    {job="events"}\n      | logfmt\n      | discarded="true"\n'
     '      [5m]\n  )\n)\n* on (user) group_left(organization)\nmax_over_time(\n  {job="cost-calculator"}\n'
     '    | logfmt\n    | unwrap cost\n    [5m]\n) by (user, organization)'),
    ('quantile_over_time(\n\t0.99,\n\t{container="ingress-nginx",service="hosted-grafana"}\n\t| json\n'
     '\t| unwrap response_latency_seconds\n\t| __error__=""[1m]\n\t) by (cluster)'),
    'label_replace(rate({job="api-server",service="a:c"} |= "err" [1m]), "foo", "$1",\n  "service", "(.*):.*")',
]


@pytest.mark.parametrize("query", DOC_LOG_QUERIES)
def test_documented_log_queries_parse_to_log_queries_and_round_trip(query: str) -> None:
    expr = roundtrips(query)
    assert is_log_query(expr) and not is_metric_query(expr)


@pytest.mark.parametrize("query", DOC_METRIC_QUERIES)
def test_documented_metric_queries_parse_and_round_trip(query: str) -> None:
    expr = roundtrips(query)
    assert is_metric_query(expr) and not is_log_query(expr)


def test_the_documented_full_log_query_has_the_documented_parts() -> None:
    assert parse(DOC_LOG_QUERIES[0]) == logq(
        sel(container="query-frontend", namespace="loki-dev"),
        LineFilter("|=", ("metrics.go",)),
        LogfmtParser(),
        lf(and_(DurationFilter("duration", ">", 10 * S), NumericFilter("throughput_mb", "<", 500.0))))


def test_grafanas_health_check_is_a_sum_of_two_vectors() -> None:
    assert parse("vector(1)+vector(1)") == BinaryOp("+", Vector(1.0), Vector(1.0))


def test_grafanas_log_volume_query_parses() -> None:
    expr = parse('sum by (level, detected_level) (count_over_time({service_name="api"} | drop __error__[1m]))')
    assert expr == VectorAggregation("sum", RangeAggregation("count_over_time", rng(
        logq(sel(service_name="api"), DropLabels(("__error__",))), MINUTE)), None,
        Grouping(("level", "detected_level")))


# -- stream selectors -----------------------------------------------------------------------


@pytest.mark.parametrize("op", ["=", "!=", "=~", "!~"])
def test_every_matcher_operator_is_kept(op: str) -> None:
    assert parse(f'{{app="x", l{op}"v"}}') == logq(Selector((m("app", "=", "x"), m("l", op, "v"))))


def test_spaces_around_matchers_are_ignored() -> None:
    assert parse('{ a = "1" ,b=~ "2" }') == logq(sel(m("a", "=", "1"), m("b", "=~", "2")))


def test_double_quoted_strings_take_go_escapes() -> None:
    q = r'{a="tab\there \"q\" back\\slash nl\n \x41\101\u00e9\U0001F600"}'
    assert parse(q).selector.matchers[0].value == 'tab\there "q" back\\slash nl\n AAé\U0001F600'


def test_hex_and_octal_escapes_are_bytes_of_utf8() -> None:
    assert parse(r'{a="\xc3\xa9"}').selector.matchers[0].value == "é"


def test_backtick_strings_are_raw() -> None:
    assert parse(r'{a=`\d+\n"`}').selector.matchers[0].value == '\\d+\\n"'


def test_backtick_strings_may_span_lines() -> None:
    assert parse('{a=`x\ny`}').selector.matchers[0].value == "x\ny"


def test_label_names_may_look_like_function_names() -> None:
    # rate, count and bytes are functions only when called.
    assert parse('{rate="1", count="2", bytes="3"}') == logq(sel(rate="1", count="2", bytes="3"))


@pytest.mark.parametrize("keyword", ["by", "BY", "on", "offset", "json", "and", "unwrap", "drop", "bool"])
def test_keywords_cannot_name_a_label(keyword: str) -> None:
    err = syntax_error(f'{{app="x", {keyword}="v"}}')
    assert err.position == 10 and "keyword" in err.reason


def test_a_selector_needs_a_matcher() -> None:
    err = syntax_error("{}")
    assert err.position == 0 and "at least one matcher" in err.reason


@pytest.mark.parametrize("selector", ['{a=""}', '{a=~".*"}', '{a!="x"}', '{a!~"x", b=~"y*"}'])
def test_a_selector_must_narrow_the_streams_like_lokis(selector: str) -> None:
    assert "cannot match an empty value" in syntax_error(selector).reason


@pytest.mark.parametrize("selector", ['{a=~".+"}', '{a!="x", b="y"}', '{a=~"x|y"}'])
def test_selectors_that_narrow_the_streams_are_accepted(selector: str) -> None:
    assert is_log_query(parse(selector))


def test_a_trailing_comma_in_a_selector_is_an_error() -> None:
    assert syntax_error('{a="b",}').position == 7


# -- line filters ---------------------------------------------------------------------------


def test_line_filters_chain_in_order() -> None:
    assert parse('{a="b"} |= "x" != "y" |~ "z.*" !~ `w\\d`').pipeline == (
        LineFilter("|=", ("x",)), LineFilter("!=", ("y",)), LineFilter("|~", ("z.*",)), LineFilter("!~", ("w\\d",)))


@pytest.mark.parametrize("op", ["|=", "!=", "|~", "!~"])
def test_loki3_or_in_a_line_filter_keeps_every_value(op: str) -> None:
    assert parse(f'{{a="b"}} {op} "x" or "y" or `z`').pipeline == (LineFilter(op, ("x", "y", "z")),)  # type: ignore


def test_or_binds_to_the_preceding_line_filter_only() -> None:
    assert parse('{a="b"} |= "test" |= "foo" or "bar"').pipeline == (
        LineFilter("|=", ("test",)), LineFilter("|=", ("foo", "bar")))


def test_an_empty_line_filter_is_allowed() -> None:
    assert parse('{a="b"} |= ``').pipeline == (LineFilter("|=", ("",)),)


def test_pattern_line_filters() -> None:
    assert parse('{a="b"} |> "<_> x" or "y <_>" !> "<_> z"').pipeline == (
        LineFilter("|>", ("<_> x", "y <_>")), LineFilter("!>", ("<_> z",)))


def test_ip_line_filters_mix_with_strings_in_or_chains() -> None:
    assert parse('{a="b"} != ip("192.168.4.5-192.168.4.20")').pipeline == (
        LineFilter("!=", (Ip("192.168.4.5-192.168.4.20"),)),)
    assert parse('{a="b"} |= "x" or ip("10.0.0.0/8") or ip("::1")').pipeline == (
        LineFilter("|=", ("x", Ip("10.0.0.0/8"), Ip("::1"))),)
    # Loki's parser takes ip() after any line filter operator; running |~ ip(...) is refused later.
    assert parse('{a="b"} |~ ip("1.2.3.4")').pipeline == (LineFilter("|~", (Ip("1.2.3.4"),)),)


def test_ip_label_filters() -> None:
    assert parse('{a="b"} | logfmt | addr = ip("192.168.4.5/16")').pipeline[1] == LabelFilter(
        IpFilter("addr", "=", "192.168.4.5/16"))
    assert parse('{a="b"} | x="1" or addr != ip("::1")').pipeline[0] == LabelFilter(
        LabelOr((m("x", "=", "1"), IpFilter("addr", "!=", "::1"))))


@pytest.mark.parametrize("query", ['{a="b"} | addr == ip("1.2.3.4")', '{a="b"} | addr > ip("1.2.3.4")',
                                   '{a="b"} |= ip(1)', '{a="b"} |= ip("1.2.3.4"'])
def test_ip_needs_equality_and_a_string(query: str) -> None:
    syntax_error(query)


# -- parsers --------------------------------------------------------------------------------


def test_json_without_parameters() -> None:
    assert parse('{a="b"} | json').pipeline == (JsonParser(),)


def test_json_parameters_keep_their_expressions() -> None:
    assert parse('{a="b"} | json a="x.y", b="z[0]", servers').pipeline == (JsonParser((
        Extraction("a", "x.y"), Extraction("b", "z[0]"), Extraction("servers", "servers"))),)


@pytest.mark.parametrize("flags, strict, keep_empty", [
    ("", False, False), ("--strict", True, False), ("--keep-empty", False, True),
    ("--keep-empty --strict", True, True)])
def test_logfmt_flags(flags: str, strict: bool, keep_empty: bool) -> None:
    assert parse(f'{{a="b"}} | logfmt {flags} host').pipeline == (
        LogfmtParser((Extraction("host", "host"),), strict, keep_empty),)


def test_an_unknown_logfmt_flag_is_an_error() -> None:
    assert syntax_error('{a="b"} | logfmt --lenient').position == 17


def test_pattern_and_regexp_keep_their_expression() -> None:
    assert parse('{a="b"} | pattern "<ip> - <_> <status>" | regexp `(?P<x>\\d+)`').pipeline == (
        PatternParser("<ip> - <_> <status>"), RegexpParser("(?P<x>\\d+)"))


def test_pattern_parts_split_captures_from_literals() -> None:
    assert pattern_parts('<_> msg="<method> <path>"') == (
        ("capture", "_"), ("literal", ' msg="'), ("capture", "method"), ("literal", " "), ("capture", "path"),
        ("literal", '"'))
    assert pattern_parts("<<from>> -> <<to>>") == (
        ("literal", "<"), ("capture", "from"), ("literal", "> -> <"), ("capture", "to"), ("literal", ">"))


@pytest.mark.parametrize("pattern, reason", [
    ("<_> only unnamed", "at least one named capture"),
    ("no captures", "at least one named capture"),
    ("<a><b>", "consecutive captures"),
    ("<a> <a>", "appears twice"),
])
def test_invalid_patterns_are_syntax_errors(pattern: str, reason: str) -> None:
    err = syntax_error(f'{{a="b"}} | pattern "{pattern}"')
    assert err.position == 18 and reason in err.reason


def test_regexp_needs_a_named_group() -> None:
    assert "named group" in syntax_error('{a="b"} | regexp "(\\\\d+)"').reason


def test_unpack_takes_no_parameters() -> None:
    assert parse('{a="b"} | unpack | json').pipeline == (UnpackParser(), JsonParser())
    syntax_error('{a="b"} | unpack foo')


def test_xml_parser_is_unsupported_but_xml_stays_a_label() -> None:
    assert unsupported('{a="b"} | xml').construct == "| xml"
    assert parse('{a="b"} | xml="1"').pipeline == (lf(m("xml", "=", "1")),)


# -- label filters --------------------------------------------------------------------------


@pytest.mark.parametrize("text, predicate", [
    ("status >= 500", NumericFilter("status", ">=", 500.0)),
    ("status = 500", NumericFilter("status", "==", 500.0)),
    ("status == 500", NumericFilter("status", "==", 500.0)),
    ("status != 5e2", NumericFilter("status", "!=", 500.0)),
    ("lat < -1.5", NumericFilter("lat", "<", -1.5)),
    ("lat <= +2", NumericFilter("lat", "<=", 2.0)),
    ("duration > 250ms", DurationFilter("duration", ">", 250 * MS)),
    ("duration == 1h30m", DurationFilter("duration", "==", 90 * MINUTE)),
    ("duration = 1.5h", DurationFilter("duration", "==", 90 * MINUTE)),
    ("duration < 300us", DurationFilter("duration", "<", 300_000)),
    ("duration > -5m", DurationFilter("duration", ">", -5 * MINUTE)),
    ("size > 10KB", BytesFilter("size", ">", 10_000)),
    ("size > 10kB", BytesFilter("size", ">", 10_000)),
    ("size >= 1.5KiB", BytesFilter("size", ">=", 1536)),
    ("size < 20MB", BytesFilter("size", "<", 20_000_000)),
    ("size <= 2MiB", BytesFilter("size", "<=", 2 * 1024**2)),
    ("size != 20B", BytesFilter("size", "!=", 20)),
    ("size == 1GiB", BytesFilter("size", "==", 1024**3)),
    ('method = "GET"', m("method", "=", "GET")),
    ('method != "GET"', m("method", "!=", "GET")),
    ('method =~ "G.*"', m("method", "=~", "G.*")),
    ('method !~ "G.*"', m("method", "!~", "G.*")),
    ('__error__ = ""', m("__error__", "=", "")),
    ('__error__ != ""', m("__error__", "!=", "")),
])
def test_label_filter_values_are_typed_by_their_text(text: str, predicate: LabelPredicate) -> None:
    assert parse(f'{{a="b"}} | {text}').pipeline == (lf(predicate),)


def test_and_binds_tighter_than_or_as_lokis_engine_does() -> None:
    # The docs once said left to right; Loki's grammar (and engine) evaluate `and` first.
    assert parse('{a="b"} | d >= 20ms or method="GET" and size <= 20KB').pipeline[0] == lf(or_(
        DurationFilter("d", ">=", 20 * MS), and_(m("method", "=", "GET"), BytesFilter("size", "<=", 20_000))))


def test_parentheses_regroup_label_filters() -> None:
    assert parse('{a="b"} | (d >= 20ms or method="GET") and size <= 20KB').pipeline[0] == lf(and_(
        or_(DurationFilter("d", ">=", 20 * MS), m("method", "=", "GET")), BytesFilter("size", "<=", 20_000)))


@pytest.mark.parametrize("joiner", [",", " , ", " ", " and "])
def test_comma_space_and_and_all_mean_and(joiner: str) -> None:
    assert parse(f'{{a="b"}} | x="1"{joiner}y="2"').pipeline == (lf(and_(m("x", "=", "1"), m("y", "=", "2"))),)


def test_a_comma_takes_the_rest_of_the_filter_as_in_lokis_grammar() -> None:
    # yacc shifts on the precedence-less `,`: `a, b or c` is `a and (b or c)`, unlike `a and b or c`.
    comma = parse('{a="b"} | x="1", y="2" or z="3"').pipeline[0]
    keyword = parse('{a="b"} | x="1" and y="2" or z="3"').pipeline[0]
    x, y, z = m("x", "=", "1"), m("y", "=", "2"), m("z", "=", "3")
    assert comma == lf(and_(x, or_(y, z)))
    assert keyword == lf(or_(and_(x, y), z))


def test_a_pipe_starts_a_new_label_filter_stage() -> None:
    assert parse('{a="b"} | x="1" or y="2" | z="3"').pipeline == (
        lf(or_(m("x", "=", "1"), m("y", "=", "2"))), lf(m("z", "=", "3")))


def test_chains_of_and_and_or_are_flat() -> None:
    assert parse('{a="b"} | x="1" and y="2" and z="3" or w="4" or v="5"').pipeline[0] == lf(or_(
        and_(m("x", "=", "1"), m("y", "=", "2"), m("z", "=", "3")), m("w", "=", "4"), m("v", "=", "5")))


def test_and_and_or_also_read_as_binary_nodes() -> None:
    x, y, z = m("x", "=", "1"), m("y", "=", "2"), m("z", "=", "3")
    match and_(x, y, z):
        case LabelAnd(left=a, right=LabelAnd(left=b, right=c)):
            assert (a, b, c) == (x, y, z)
        case _:
            pytest.fail("a three-item and is not x and (y and z)")
    assert (or_(x, y).left, or_(x, y).right) == (x, y) and or_(x, y, z).right == or_(y, z)


def test_a_long_comma_list_stays_flat() -> None:
    expr = parse('{a="b"} | ' + ", ".join(f'l{i}="{i}"' for i in range(2000)))
    predicate = expr.pipeline[0].predicate  # type: ignore[union-attr]
    assert isinstance(predicate, LabelAnd) and len(predicate.items) == 2000
    assert parse(to_string(expr)) == expr


@pytest.mark.parametrize("text, position, reason", [
    ('x > "s"', 14, "compares numbers"),
    ('x == "s"', 15, "compares numbers"),
    ("x =~ 5", 15, "quoted regular expression"),
    ("x", 11, "a comparison"),
    ("x > y", 14, "a string, number, duration or byte size"),
])
def test_mistyped_label_filters_are_syntax_errors(text: str, position: int, reason: str) -> None:
    err = syntax_error(f'{{a="b"}} | {text}')
    assert (err.position, reason in err.reason) == (position, True), err


# -- formatting and label stages ------------------------------------------------------------


def test_line_format_keeps_the_template_text() -> None:
    assert parse('{a="b"} | line_format "{{.status}} {{.msg | ToUpper}}"').pipeline == (
        LineFormat("{{.status}} {{.msg | ToUpper}}"),)


def test_label_format_renames_and_templates() -> None:
    assert parse('{a="b"} | label_format new=old, x="{{.a}}-{{.b}}"').pipeline == (LabelFormat((
        LabelFormatItem("new", "old", True), LabelFormatItem("x", "{{.a}}-{{.b}}", False))),)


@pytest.mark.parametrize("query, reason", [
    ('{a="b"} | label_format foo=bar,foo="new"', "sets foo twice"),
    ('{a="b"} | label_format __error__="x"', "__error__ cannot be set"),
])
def test_label_format_refuses_what_loki_refuses(query: str, reason: str) -> None:
    assert reason in syntax_error(query).reason


def test_keep_and_drop_take_names_and_matchers() -> None:
    assert parse('{a="b"} | keep a, b, c="v" | drop d, e=~"x.*"').pipeline == (
        KeepLabels(("a", "b", m("c", "=", "v"))), DropLabels(("d", m("e", "=~", "x.*"))))


def test_decolorize_is_a_stage() -> None:
    assert parse('{a="b"} | decolorize |= "x"').pipeline == (Decolorize(), LineFilter("|=", ("x",)))


def test_stages_run_in_the_written_order() -> None:
    assert [type(s).__name__ for s in parse(
        '{a="b"} |= "x" | json | y > 1 | line_format "{{.y}}" | logfmt | drop z').pipeline] == [
        "LineFilter", "JsonParser", "LabelFilter", "LineFormat", "LogfmtParser", "DropLabels"]


# -- templates ------------------------------------------------------------------------------


@pytest.mark.parametrize("template, expected", [
    ("{{.status}} {{.msg | ToUpper}}", "200 HELLO THERE"),
    ("{{ .status }}", "200"),
    ("{{__line__}}", "the line"),
    ("{{ __line__ | ToUpper }}", "THE LINE"),
    ("{{ .msg | ToLower }}|{{ upper .status }}", "hello there|200"),
    ("[{{ .pad | trim }}] [{{ TrimSpace .pad }}]", "[x] [x]"),
    ('{{ .missing | default "-" }} {{ default "-" .status }}', "- 200"),
    ('{{ default "-" }}', "-"),
    ("{{.missing}}", ""),
    ('{{ ToUpper (default "none" .missing) }}', "NONE"),
    ('{{ "lit" }} and {{ `raw\\n` }}', "lit and raw\\n"),
    ("a  {{- .status -}}  b", "a200b"),
    ("a {{/* comment */}} b", "a  b"),
    ("a {{- /* comment */ -}} b", "ab"),
    ("no actions at all }} {", "no actions at all }} {"),
    ("{{ .german | ToUpper }}", "STRAßE"),          # rune by rune, as Go does, not "STRASSE"
    ("[{{ .seps | TrimSpace }}]", "[\x1fx]"),     # Go does not count \x1f as space
])
def test_render_evaluates_the_template_subset(template: str, expected: str) -> None:
    labels = {"status": "200", "msg": "Hello there", "pad": "  x \t", "german": "straße", "seps": " \x1fx\u3000"}
    assert render(template, labels, "the line") == expected


def test_template_labels_and_line_use_are_known_before_rendering() -> None:
    t = compile_template('{{.a}} {{ .b | default "x" }} {{ ToUpper .a }}')
    assert t.labels == ("a", "b") and not t.uses_line
    assert compile_template("{{ __line__ }}").uses_line


@pytest.mark.parametrize("template, construct", [
    ('{{ printf "%s" .a }}', "{{ printf }}"),
    ("{{ if .a }}x{{ end }}", "{{ if }}"),
    ("{{ range .a }}x{{ end }}", "{{ range }}"),
    ("{{ $x := .a }}", "{{ $variable }}"),
    ("{{ .a | replace \"a\" \"b\" }}", "{{ replace }}"),
    ("{{ __timestamp__ }}", "{{ __timestamp__ }}"),
    ("{{ div .duration 1000 }}", "{{ div }}"),
    ("{{ . }}", "{{ . }}"),
    ("{{ .a.b }}", "{{ .a.… }}"),
    ("{{ 5 }}", "{{ number or character constant }}"),
    ("{{ true }}", "{{ true }}"),
])
def test_templates_outside_the_subset_are_unsupported_at_parse_time(template: str, construct: str) -> None:
    err = unsupported(f'{{a="b"}} | line_format `{template}`')
    assert err.construct == f"| line_format {construct}" and err.position == 22
    err = unsupported(f'{{a="b"}} | label_format x=`{template}`')
    assert err.construct == f"| label_format {construct}"


@pytest.mark.parametrize("template, reason", [
    ("{{ nosuchfunc .a }}", 'function "nosuchfunc" not defined'),
    ("{{ .a ", "unclosed action"),
    ("{{ }}", "missing value"),
    ("{{ .a .b }}", "can't give argument to non-function"),
    ("{{ .a | .b }}", "can't give argument to non-function"),
    ("{{ ToUpper }}", "wrong number of arguments for ToUpper"),
    ("{{ ToUpper .a .b }}", "wrong number of arguments for ToUpper"),
    ("{{ .a | ToUpper .b }}", "wrong number of arguments for ToUpper"),
    ("{{ (.a }}", "unexpected '}}'"),
    ('{{ "unterminated }}', "unterminated string"),
])
def test_invalid_templates_are_syntax_errors_at_the_string(template: str, reason: str) -> None:
    err = syntax_error(f'{{a="b"}} | line_format `{template}`')
    assert err.position == 22 and reason in err.reason, err


# -- metric queries: range aggregations -----------------------------------------------------


@pytest.mark.parametrize("op", sorted(LINE_RANGE_OPS))
def test_line_range_aggregations(op: str) -> None:
    assert parse(f'{op}({{service="api"}} |= "error" [5m])') == RangeAggregation(
        op, rng(logq(sel(service="api"), LineFilter("|=", ("error",))), 5 * MINUTE))  # type: ignore[arg-type]


@pytest.mark.parametrize("op", sorted(UNWRAP_RANGE_OPS - {"quantile_over_time"}))
def test_unwrapped_range_aggregations(op: str) -> None:
    assert parse(f'{op}({{a="b"}} | json | unwrap latency [1m])') == RangeAggregation(
        op, rng(logq(sel(a="b"), JsonParser()), MINUTE, unwrap=Unwrap("latency")))  # type: ignore[arg-type]


def test_quantile_over_time_with_grouping_after_the_parentheses() -> None:
    assert parse('quantile_over_time(0.99, {a="b"} | json | unwrap latency [5m]) by (path)') == RangeAggregation(
        "quantile_over_time", rng(logq(sel(a="b"), JsonParser()), 5 * MINUTE, unwrap=Unwrap("latency")), 0.99,
        Grouping(("path",)))


@pytest.mark.parametrize("conversion", ["bytes", "duration", "duration_seconds"])
def test_unwrap_conversions(conversion: str) -> None:
    expr = parse(f'sum_over_time({{a="b"}} | unwrap {conversion}(size) [1m])')
    assert expr.log_range.unwrap == Unwrap("size", conversion)  # type: ignore[union-attr, arg-type]


def test_a_label_named_like_a_conversion_is_unwrapped_as_is() -> None:
    assert parse('sum_over_time({a="b"} | unwrap bytes [1m])').log_range.unwrap == Unwrap("bytes")  # type: ignore


def test_label_filters_after_unwrap_belong_to_the_unwrap() -> None:
    expr = parse('sum_over_time({a="b"} | unwrap x | __error__="" | x > 0 [1m])')
    assert expr.log_range == rng(logq(sel(a="b")), MINUTE, unwrap=Unwrap(  # type: ignore[union-attr]
        "x", None, (m("__error__", "=", ""), NumericFilter("x", ">", 0.0))))


def test_only_label_filters_may_follow_unwrap() -> None:
    err = syntax_error('sum_over_time({a="b"} | unwrap x | json [1m])')
    assert err.position == 33 and "only label filters" in err.reason


@pytest.mark.parametrize("query", [
    'count_over_time({a="b"} |= "x" [5m] offset 1h)',
    'count_over_time({a="b"}[5m] offset 1h |= "x")',
    'count_over_time(({a="b"} |= "x")[5m] offset 1h)',
    'count_over_time(({a="b"} |= "x" [5m] offset 1h))',
    'count_over_time(((({a="b"} |= "x")[5m] offset 1h)))',
])
def test_the_range_may_follow_the_selector_or_the_pipeline(query: str) -> None:
    assert parse(query) == RangeAggregation("count_over_time", rng(
        logq(sel(a="b"), LineFilter("|=", ("x",))), 5 * MINUTE, HOUR))


@pytest.mark.parametrize("query", [
    'sum_over_time({a="b"} | json | unwrap x [5m])',
    'sum_over_time({a="b"}[5m] | json | unwrap x)',
    'sum_over_time(({a="b"} | json | unwrap x)[5m])',
])
def test_the_range_may_be_before_or_after_unwrap(query: str) -> None:
    assert parse(query).log_range == rng(  # type: ignore[union-attr]
        logq(sel(a="b"), JsonParser()), 5 * MINUTE, unwrap=Unwrap("x"))


def test_negative_offsets_are_go_durations() -> None:
    assert parse('rate({a="b"}[1m] offset -30s)').log_range.offset_ns == -30 * S  # type: ignore[union-attr]


@pytest.mark.parametrize("query, position, reason", [
    ('sum_over_time({a="b"}[5m])', 0, "needs | unwrap"),
    ('quantile_over_time(0.5, {a="b"}[5m])', 0, "needs | unwrap"),
    ('count_over_time({a="b"} | unwrap x [5m])', 0, "cannot be used with | unwrap"),
    ('bytes_rate({a="b"} | unwrap x [5m])', 0, "cannot be used with | unwrap"),
    ('count_over_time({a="b"}[5m]) by (x)', 0, "cannot be followed by by/without"),
    ('sum_over_time({a="b"} | unwrap x [5m]) by (x)', 0, "cannot be followed by by/without"),
    ('rate({a="b"} | unwrap x [5m]) without (x)', 0, "cannot be followed by by/without"),
    ('quantile_over_time({a="b"} | unwrap x [5m])', 19, "the quantile"),
    ('rate(0.5, {a="b"}[5m])', 5, "takes no parameter"),
    ('rate({a="b"})', 12, "a range such as [5m]"),
    ('rate({a="b"}[5m] [5m])', 17, "')'"),
    ('count_over_time({a="b"}[5m]) offset 5m', 29, "binary operator"),
    ('rate({a="b"}[5m] offset 5)', 24, "a duration"),
])
def test_range_aggregation_rules(query: str, position: int, reason: str) -> None:
    err = syntax_error(query)
    assert (err.position, reason in err.reason) == (position, True), err


@pytest.mark.parametrize("op", sorted(GROUPED_RANGE_OPS))
def test_grouping_is_allowed_where_loki_allows_it(op: str) -> None:
    param = "0.5, " if op == "quantile_over_time" else ""
    expr = parse(f'{op}({param}{{a="b"}} | unwrap x [1m]) without (y)')
    assert expr.grouping == Grouping(("y",), without=True)  # type: ignore[union-attr]


def test_the_range_sets_are_consistent() -> None:
    assert LINE_RANGE_OPS | UNWRAP_RANGE_OPS == RANGE_OPS and GROUPED_RANGE_OPS < UNWRAP_RANGE_OPS


# -- metric queries: vector aggregations ----------------------------------------------------


@pytest.mark.parametrize("op", ["sum", "avg", "min", "max", "count", "stddev", "stdvar"])
def test_vector_aggregations_group_before_or_after(op: str) -> None:
    inner = count(logq(sel(a="b")), MINUTE)
    before = parse(f'{op} by (level) (count_over_time({{a="b"}}[1m]))')
    after = parse(f'{op}(count_over_time({{a="b"}}[1m])) by (level)')
    bare = parse(f'{op}(count_over_time({{a="b"}}[1m]))')
    assert before == after == VectorAggregation(op, inner, None, Grouping(("level",)))  # type: ignore[arg-type]
    assert bare == VectorAggregation(op, inner)  # type: ignore[arg-type]


@pytest.mark.parametrize("op", ["topk", "bottomk"])
def test_topk_and_bottomk_take_k(op: str) -> None:
    inner = count(logq(sel(a="b")), MINUTE)
    assert parse(f'{op}(5, count_over_time({{a="b"}}[1m]))') == VectorAggregation(op, inner, 5)  # type: ignore
    assert parse(f'{op} without (x) (5, count_over_time({{a="b"}}[1m]))') == VectorAggregation(
        op, inner, 5, Grouping(("x",), True))  # type: ignore[arg-type]


@pytest.mark.parametrize("query, position, reason", [
    ('topk(count_over_time({a="b"}[1m]))', 5, "k, e.g. topk(10, ...)"),
    ('topk(1.5, count_over_time({a="b"}[1m]))', 5, "whole number greater than 0"),
    ('bottomk(0, count_over_time({a="b"}[1m]))', 8, "whole number greater than 0"),
    ('sum(5, count_over_time({a="b"}[1m]))', 4, "takes no parameter"),
    ('sum by (a) (count_over_time({a="b"}[1m])) by (b)', 42, "grouped twice"),
    ('sum({a="b"})', 4, "found a log query"),
    ('sum by (a,) (vector(1))', 10, "a label name"),
])
def test_vector_aggregation_rules(query: str, position: int, reason: str) -> None:
    err = syntax_error(query)
    assert (err.position, reason in err.reason) == (position, True), err


@pytest.mark.parametrize("op", ["sort", "sort_desc"])
def test_sort_takes_no_labels_to_group_by(op: str) -> None:
    inner = count(logq(sel(a="b")), MINUTE)
    assert parse(f'{op}(count_over_time({{a="b"}}[1m]))') == VectorAggregation(op, inner)  # type: ignore[arg-type]
    assert parse(f'{op} by () (count_over_time({{a="b"}}[1m]))').grouping == Grouping(())  # type: ignore
    assert parse(f'{op}(count_over_time({{a="b"}}[1m])) without ()').grouping == Grouping((), True)  # type: ignore
    for query in (f'{op} by (app) (count_over_time({{a="b"}}[1m]))', f'{op}(count_over_time({{a="b"}}[1m])) by (app)',
                  f'{op}(count_over_time({{a="b"}}[1m])) without (a)'):
        assert "cannot be grouped" in str(syntax_error(query))


def test_approx_topk_takes_k_and_no_grouping() -> None:
    inner = parse('sum by (a) (rate({a="b"}[1m]))')
    assert parse('approx_topk(5, sum by (a) (rate({a="b"}[1m])))') == VectorAggregation(
        "approx_topk", inner, 5)  # type: ignore[arg-type]
    for query in ('approx_topk(5, rate({a="b"}[1m])) by (a)', 'approx_topk by (a) (5, rate({a="b"}[1m]))',
                  'approx_topk(rate({a="b"}[1m]))', 'approx_topk(1.5, rate({a="b"}[1m]))'):
        syntax_error(query)


@pytest.mark.parametrize(("k", "ok"), [("9223372036854775807", True), ("9223372036854775808", False),
                                       ("100000000000000000000", False), ("010", True), ("1e3", False),
                                       ("0x10", False), ("1_0", False)])
def test_k_is_an_int64_as_strconv_atoi_reads_it(k: str, ok: bool) -> None:
    query = f'topk({k}, count_over_time({{a="b"}}[1m]))'
    if ok:
        assert parse(query).param == int(k)  # type: ignore[union-attr]
    else:
        syntax_error(query)


@pytest.mark.parametrize(("text", "value"), [("0x1p3", 8.0), ("0X1P-3", 0.125), ("0x1.8p3", 12.0), ("0x_1p3", 8.0),
                                             ("1_000", 1000.0), ("0_1", 1.0), ("010", 10.0), ("08.5", 8.5),
                                             (".5", 0.5), ("5.", 5.0), ("1E-3", 0.001)])
def test_numbers_are_go_literals(text: str, value: float) -> None:
    assert parse(text) == Number(value)


@pytest.mark.parametrize("text", ["0x10", "0b1", "0o7", "09", "1__0", "1_", "1e", "0x", "0x1p", "0B",
                                  '{a="b"} | size < 0B'])
def test_numbers_go_refuses_are_refused(text: str) -> None:
    syntax_error(text)


@pytest.mark.parametrize("query", ['{a=~"("}', '{a="b"} | x=~"("', '{a="b"} | json | x="a" or y!~"("',
                                   '{a="b"} | keep x=~"("', '{a="b"} | drop x!~"("',
                                   'label_replace(rate({a="b"}[5m]), "foo", "$1", "bar", "^^^^x43\\\\q")'])
def test_regular_expressions_of_matchers_are_checked_when_parsed(query: str) -> None:
    assert "regular expression" in str(syntax_error(query))


def test_line_filter_regular_expressions_are_checked_when_run() -> None:
    assert parse('{a="b"} |~ "("').pipeline == (LineFilter("|~", ("(",)),)    # as Loki: a 400 when it runs


def test_empty_grouping_is_kept() -> None:
    assert parse("sum by () (vector(1))") == VectorAggregation("sum", Vector(1.0), None, Grouping(()))


def test_keywords_are_case_insensitive() -> None:
    assert parse('SUM BY (a) (COUNT_OVER_TIME({a="b"}[1m])) OR vector(0)') == parse(
        'sum by (a) (count_over_time({a="b"}[1m])) or vector(0)')


# -- binary operators, precedence, literals --------------------------------------------------

one, two, three, four = Number(1.0), Number(2.0), Number(3.0), Number(4.0)


@pytest.mark.parametrize("text, tree", [
    ("1 + 2 * 3", BinaryOp("+", one, BinaryOp("*", two, three))),
    ("1 * 2 + 3", BinaryOp("+", BinaryOp("*", one, two), three)),
    ("1 - 2 - 3", BinaryOp("-", BinaryOp("-", one, two), three)),
    ("1 / 2 % 3", BinaryOp("%", BinaryOp("/", one, two), three)),
    ("2 ^ 3 ^ 4", BinaryOp("^", two, BinaryOp("^", three, four))),
    ("2 * 3 ^ 4", BinaryOp("*", two, BinaryOp("^", three, four))),
    ("(1 + 2) * 3", BinaryOp("*", BinaryOp("+", one, two), three)),
    ("1 + 2 > 3 - 4", BinaryOp(">", BinaryOp("+", one, two), BinaryOp("-", three, four))),
    ("1 == 2 != 3", BinaryOp("!=", BinaryOp("==", one, two), three)),
    ("-1 ^ 2", BinaryOp("^", Number(-1.0), two)),      # the sign belongs to the literal, as in Loki
    ("2 ^ -1", BinaryOp("^", two, Number(-1.0))),
    ("1 - -2", BinaryOp("-", one, Number(-2.0))),
    ("1-2", BinaryOp("-", one, two)),
    ("+3", three),
    ("1e3 + .5 + 2.", BinaryOp("+", BinaryOp("+", Number(1000.0), Number(0.5)), two)),
])
def test_arithmetic_precedence_and_associativity(text: str, tree: Expr) -> None:
    assert parse(text) == tree


V, W, X = (VectorAggregation("sum", count(logq(sel(a=n)), MINUTE)) for n in ("v", "w", "x"))


def test_set_operators_bind_looser_than_comparisons() -> None:
    text = 'sum(count_over_time({a="v"}[1m])) > 1 and sum(count_over_time({a="w"}[1m])) or ' \
           'sum(count_over_time({a="x"}[1m])) unless sum(count_over_time({a="v"}[1m]))'
    assert parse(text) == BinaryOp("or", BinaryOp("and", BinaryOp(">", V, one), W), BinaryOp("unless", X, V))


def test_and_and_unless_share_a_level_and_associate_left() -> None:
    text = 'sum(count_over_time({a="v"}[1m])) unless sum(count_over_time({a="w"}[1m])) ' \
           'and sum(count_over_time({a="x"}[1m]))'
    assert parse(text) == BinaryOp("and", BinaryOp("unless", V, W), X)


def test_a_bare_group_left_takes_following_parentheses_as_its_labels() -> None:
    # As in Loki's grammar; the printer therefore always writes the list, empty or not.
    assert parse("vector(1) / on () group_left (a) vector(2)").matching == VectorMatching(  # type: ignore[union-attr]
        True, (), "many-to-one", ("a",))
    assert "a label name" in syntax_error("vector(1) / on () group_left (vector(2) + 1)").reason
    expr = BinaryOp("/", Vector(1.0), BinaryOp("+", Vector(2.0), one), False, VectorMatching(True, (), "many-to-one"))
    assert to_string(expr) == "vector(1) / on () group_left () (vector(2) + 1)" and parse(to_string(expr)) == expr


def test_bool_and_vector_matching_modifiers() -> None:
    text = 'sum(count_over_time({a="v"}[1m])) > bool on (a, b) group_left (c) sum(count_over_time({a="w"}[1m]))'
    assert parse(text) == BinaryOp(">", V, W, True, VectorMatching(True, ("a", "b"), "many-to-one", ("c",)))
    text = 'sum(count_over_time({a="v"}[1m])) / ignoring () group_right sum(count_over_time({a="w"}[1m]))'
    assert parse(text) == BinaryOp("/", V, W, False, VectorMatching(False, (), "one-to-many"))


def test_arithmetic_agrees_with_pythons_precedence() -> None:
    """An independent oracle: for + - * / % and parentheses Python groups exactly like PromQL."""
    text = "1 + 2 * 3 - 4 / 5 % 6 * (7 - 8) - 9 % 2"

    def from_python(node: pyast.expr) -> Expr:
        if isinstance(node, pyast.Constant):
            return Number(float(node.value))
        assert isinstance(node, pyast.BinOp)
        op = {pyast.Add: "+", pyast.Sub: "-", pyast.Mult: "*", pyast.Div: "/", pyast.Mod: "%"}[type(node.op)]
        return BinaryOp(op, from_python(node.left), from_python(node.right))  # type: ignore[arg-type]

    assert parse(text) == from_python(pyast.parse(text, mode="eval").body)


@given(st.recursive(
    st.integers(0, 99).map(str),
    lambda inner: st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%"]), inner, st.booleans()).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})" if t[3] else f"{t[0]} {t[1]} {t[2]}"),
    max_leaves=8))
@settings(max_examples=150, deadline=None)
def test_random_arithmetic_groups_like_python(text: str) -> None:
    def from_python(node: pyast.expr) -> Expr:
        if isinstance(node, pyast.Constant):
            return Number(float(node.value))
        assert isinstance(node, pyast.BinOp)
        op = {pyast.Add: "+", pyast.Sub: "-", pyast.Mult: "*", pyast.Div: "/", pyast.Mod: "%"}[type(node.op)]
        return BinaryOp(op, from_python(node.left), from_python(node.right))  # type: ignore[arg-type]

    assert parse(text) == from_python(pyast.parse(text, mode="eval").body)


@pytest.mark.parametrize("query, position, reason", [
    ('{a="b"} + 1', 0, "log query cannot be an operand"),
    ('1 + {a="b"}', 4, "log query cannot be an operand"),
    ('vector(1) and 1', 14, "needs vectors on both sides"),
    ('1 or vector(1)', 0, "needs vectors on both sides"),
    ('vector(1) + bool vector(1)', 12, "bool only applies to comparison"),
    ('vector(1) + group_left vector(1)', 12, "needs on(...) or ignoring(...)"),
    ('-vector(1)', 0, "unary - only applies to a number"),
    ('-(1)', 0, "unary - only applies to a number"),
    ('vector(-1)', 7, "a number"),
    ('1 +', 3, "end of query"),
    ('Inf', 0, "a stream selector, a number or a function"),
    ('NaN + 1', 0, "a stream selector, a number or a function"),
    ('1e999', 0, "out of range"),
    ('vector(1) vector(1)', 10, "a binary operator or end of query"),
    ('(vector(1)', 10, "')'"),
])
def test_binary_operator_errors(query: str, position: int, reason: str) -> None:
    err = syntax_error(query)
    assert (err.position, reason in err.reason) == (position, True), err


def test_label_replace_parses() -> None:
    assert parse('label_replace(vector(1), "dst", "$1", "src", "(.*)")') == LabelReplace(
        Vector(1.0), "dst", "$1", "src", "(.*)")


def test_deep_nesting_is_refused_before_the_stack_runs_out() -> None:
    for text in ["(" * 200 + "1" + ")" * 200, "1" + " ^ 1" * 200, "1" + " + 1" * 200,
                 "sum(" * 200 + "vector(1)" + ")" * 200, '{a="b"} | ' + "(" * 200 + 'x="1"' + ")" * 200]:
        assert f"deeper than {MAX_DEPTH}" in syntax_error(text).reason
    assert parse("(" * 50 + "1" + ")" * 50) == one


# -- durations, bytes, numbers --------------------------------------------------------------


@pytest.mark.parametrize("text, ns", [
    ("5m", 5 * MINUTE), ("1h30m", 90 * MINUTE), ("250ms", 250 * MS), ("1d", DAY), ("1w", 7 * DAY),
    ("1y", 365 * DAY), ("2w3d4h5m6s7ms", 2 * 7 * DAY + 3 * DAY + 4 * HOUR + 5 * MINUTE + 6 * S + 7 * MS),
    ("0", 0), ("1.5h", 90 * MINUTE), ("300us", 300_000), ("300µs", 300_000), ("10ns", 10),
    ("1h0.5s", HOUR + S // 2), ("-5m", -5 * MINUTE), ("1m1h", 61 * MINUTE),   # Go takes any order
])
def test_durations_read_like_lokis(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "5", "m", "1hh", "5x", "1.5d", "-1d", "5.m.s", "1h-5m", "99999999999h"])
def test_invalid_durations(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize("text, size", [
    ("20B", 20), ("10KB", 10_000), ("10kB", 10_000), ("1.5KiB", 1536), ("5MB", 5_000_000), ("5MiB", 5 * 2**20),
    ("1GB", 10**9), ("1GiB", 2**30), ("2TB", 2 * 10**12), ("1TiB", 2**40), ("1PB", 10**15), ("1PiB", 2**50),
    ("5M", 5_000_000), ("3k", 3000),
])
def test_byte_sizes_read_like_go_humanize(text: str, size: int) -> None:
    assert parse_bytes(text) == size


def test_a_glued_unit_decides_the_token_type() -> None:
    kinds = [(t.kind, t.value) for t in tokenize("5m 5M 5mb 10KB 500 1e3")][:-1]
    # "5mb" is a 5m duration and an identifier b, as in Loki's lexer.
    assert kinds == [("DURATION", 5 * MINUTE), ("BYTES", 5_000_000), ("DURATION", 5 * MINUTE), ("IDENT", "b"),
                     ("BYTES", 10_000), ("NUMBER", 500.0), ("NUMBER", 1000.0)]


@pytest.mark.parametrize("range_text, ns", [("[5m]", 5 * MINUTE), ("[1h30m]", 90 * MINUTE), ("[250ms]", 250 * MS),
                                            ("[1d]", DAY), ("[1w]", 7 * DAY)])
def test_ranges_are_prometheus_durations(range_text: str, ns: int) -> None:
    assert parse(f'rate({{a="b"}}{range_text})').log_range.range_ns == ns  # type: ignore[union-attr]


@pytest.mark.parametrize("range_text, hint", [("[$__auto]", "Grafana"), ("[$__interval]", "Grafana"),
                                              ("[1.5h]", "[5m]"), ("[5 m]", "[5m]"), ("[]", "[5m]")])
def test_grafana_variables_and_bad_ranges_are_syntax_errors(range_text: str, hint: str) -> None:
    err = syntax_error(f'rate({{a="b"}}{range_text})')
    assert err.position == 12 and hint in err.reason


@pytest.mark.parametrize("ns", [0, 1, 999, MS, 5 * MINUTE, 90 * MINUTE + 1, 8 * DAY + 3 * MS, -1, -5 * MINUTE,
                                -(2 * DAY) - 7, 2**63 - 1])
def test_format_duration_reads_back(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


# -- errors: positions and unsupported constructs -------------------------------------------


@pytest.mark.parametrize("query, position, reason", [
    ("", 0, "end of query"),
    ('{a="b"', 6, "',' or '}'"),
    ('{a="b"} |', 9, "after '|'"),
    ('{a="b"} | json a=', 17, "a quoted expression"),
    ('{a="b\\q"}', 5, "unknown escape sequence \\q"),
    ('{a="abc}', 3, "unterminated string"),
    ('{a="x\ny"}', 3, "unterminated string"),
    ('{a=`abc}', 3, "unterminated raw string"),
    ('{a="\\xff"}', 3, "not valid UTF-8"),
    ('{a="\\ud800"}', 4, "invalid Unicode code point"),
    ('{a="b"} | line_format', 21, "a template string"),
    ('{a="b"} ~ "x"', 8, "unexpected character"),
    ('{a="b"}[5m]', 7, "only allowed inside a range aggregation"),
    ('{a="b"} | unwrap x', 10, "only allowed inside a range aggregation"),
    ('{a="b"} | json | unwrap x', 17, "only allowed inside a range aggregation"),
    ('{a="b"} |= "x" or 5', 18, "a string"),
    ('{a="b"} | by="x"', 10, "cannot start a pipeline stage"),
    ("bytes(x)", 0, "not a query function"),
    ("rate", 0, "a stream selector, a number or a function"),
    ('{a="b"} | x = 1 | y', 19, "a comparison"),
])
def test_syntax_errors_report_where(query: str, position: int, reason: str) -> None:
    err = syntax_error(query)
    assert (err.position, reason in err.reason) == (position, True), err
    assert err.query == query and str(err).endswith(f"at position {position}")


def test_unsupported_is_not_a_syntax_error_and_says_where() -> None:
    err = unsupported('count_over_time({a="b"} | json | xml [5m])')
    assert not isinstance(err, QuerySyntaxError) and (err.position, err.query) == (
        33, 'count_over_time({a="b"} | json | xml [5m])')
    assert isinstance(err, QueryError) and err.status_code == 400


def test_documented_template_functions_outside_the_subset_are_unsupported() -> None:
    err = unsupported('{job="loki/querier"} | label_format nowEpoch=`{{(unixEpoch now)}}`,createDateEpoch='
                      '`{{unixEpoch (toDate "2006-01-02" .createDate)}}` | label_format dateTimeDiff='
                      '`{{sub .nowEpoch .createDateEpoch}}` | dateTimeDiff > 86400')
    assert err.construct == "| label_format {{ unixEpoch }}"


def test_variants_are_not_a_function() -> None:
    # Loki removed variants(...) of (...); `variants` is an ordinary label name again.
    syntax_error('variants(count_over_time({a="b"}[1m]), bytes_over_time({a="b"}[1m])) of ({a="b"}[1m])')
    assert parse('sum by (variants) (count_over_time({variants="a"}[5m]))')


@pytest.mark.parametrize(("query", "ok"), [('count_over_time(({a="b"} |= "x")[1m])', True),
                                           ('count_over_time(((({a="b"} |= "x")[1m])))', True),
                                           ('count_over_time((({a="b"} |= "x"))[1m])', False),
                                           ('count_over_time(({a="b"}))', False)])
def test_one_pair_of_parentheses_before_a_range(query: str, ok: bool) -> None:
    if ok:
        assert isinstance(parse(query), RangeAggregation)
    else:
        syntax_error(query)


# -- printer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("query, canonical", [
    ('{a="b",c=~`x\\d`}', '{a="b", c=~"x\\\\d"}'),
    ('sum(count_over_time({job="mysql"}[5m])) by (level)', 'sum by (level) (count_over_time({job="mysql"}[5m]))'),
    ('count_over_time({a="b"}[5m] |= "x")', 'count_over_time({a="b"} |= "x" [5m])'),
    ('rate(({a="b"})[1m] offset 1h)', 'rate({a="b"}[1m] offset 1h)'),
    ('(1 + 2) * (3 ^ 4) ^ 2', '(1 + 2) * (3 ^ 4) ^ 2'),
    ('((1 - 2) - (3 - 4))', '1 - 2 - (3 - 4)'),
    ('{a="b"} | x="1", y="2" or z="3"', '{a="b"} | x="1" and (y="2" or z="3")'),
    ('{a="b"} | size > 10240B | d > 90s', '{a="b"} | size > 10KiB | d > 1m30s'),
    ('{a="b"} | logfmt --keep-empty --strict', '{a="b"} | logfmt --strict --keep-empty'),
    ('topk(5,vector(1))by(a)', 'topk by (a) (5, vector(1))'),
    ('{a="b"} | json x', '{a="b"} | json x="x"'),
    ('{a="b"} |= "tab\there"', '{a="b"} |= "tab\\there"'),
    ('vector(1) >bool on(a)group_left(b) vector(2)', 'vector(1) > bool on (a) group_left (b) vector(2)'),
])
def test_printer_writes_canonical_text(query: str, canonical: str) -> None:
    assert to_string(parse(query)) == canonical


def test_keep_then_a_negative_line_filter_has_no_text() -> None:
    # A bare name at the end of keep/drop takes a following != or !~ as its matcher, in Loki too.
    assert parse('{a="b"} | keep x != "y"').pipeline == (KeepLabels((m("x", "!=", "y"),)),)
    assert parse('{a="b"} | drop x, y !~ "z"').pipeline == (DropLabels(("x", m("y", "!~", "z"))),)
    with pytest.raises(ValueError, match="keep/drop"):
        to_string(logq(sel(a="b"), KeepLabels(("x",)), LineFilter("!=", ("y",))))
    assert to_string(logq(sel(a="b"), KeepLabels(("x",)), LineFilter("|=", ("y",)))) == '{a="b"} | keep x |= "y"'


def test_printer_refuses_what_logql_cannot_say() -> None:
    with pytest.raises(ValueError):
        to_string(Number(float("nan")))
    with pytest.raises(ValueError):
        to_string(count(logq(sel(a="b")), 1))   # a range below a millisecond
    with pytest.raises(ValueError):
        to_string(Vector(-1.0))
    with pytest.raises(ValueError):
        to_string(RangeAggregation("quantile_over_time", rng(logq(sel(a="b")), MINUTE, unwrap=Unwrap("x")), -0.5))


# -- helpers on the tree ---------------------------------------------------------------------


def test_walk_and_log_queries_find_every_log_query_in_order() -> None:
    expr = parse('sum(rate({a="1"}[1m])) / on () sum(rate({a="2"} |= "x" [1m])) + vector(1)')
    assert [q.selector.matchers[0].value for q in log_queries(expr)] == ["1", "2"]
    assert sum(isinstance(n, LogRange) for n in walk(expr)) == 2
    assert list(walk(parse('{a="b"}'))) == [parse('{a="b"}')]


def test_is_scalar() -> None:
    assert is_scalar(parse("1 + 2 * 3")) and not is_scalar(parse("vector(1) + 1"))
    assert not is_scalar(parse('{a="b"}'))


# -- properties: printing and parsing are inverses --------------------------------------------

#: Names the lexer reads as identifiers: no reserved word, in any case.
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s.lower() not in KEYWORDS)
_tricky = st.lists(st.sampled_from([*'ab "\\`{}|=~!<>()[]#,.$\n\t', "é", "\x00", "\x7f", "{{", "}}", "or"]),
                   max_size=10).map("".join)
texts = st.text(max_size=10) | _tricky
finite = st.floats(allow_nan=False, allow_infinity=False)
nonnegative = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
durations = st.integers(-(2**63) + 1, 2**63 - 1) | st.integers(-10**6, 10**6) | st.integers(0, 10**6).map(
    lambda n: n * MS)
compare_ops = st.sampled_from(sorted(COMPARISON_OPS))
match_ops = st.sampled_from(["=", "!=", "=~", "!~"])


def _compiles(pattern: str) -> bool:
    try:
        re2.compile(f"^(?:{pattern})$")
    except re2.error:
        return False
    return True


regexes = texts.filter(_compiles)
matchers = st.builds(Matcher, names, st.sampled_from(["=", "!="]), texts) | st.builds(
    Matcher, names, st.sampled_from(["=~", "!~"]), regexes)

selectors = st.builds(
    lambda first, rest, at: Selector((*rest[:at], first, *rest[at:])),
    st.builds(Matcher, names, st.just("="), texts.filter(bool)), st.lists(matchers, max_size=2),
    st.integers(0, 2))

predicate_leaves = st.one_of(
    matchers,
    st.builds(NumericFilter, names, compare_ops, finite),
    st.builds(DurationFilter, names, compare_ops, durations),
    st.builds(BytesFilter, names, compare_ops, st.integers(0, 2**63)),
    st.builds(IpFilter, names, st.sampled_from(["=", "!="]), texts),
)
predicates: st.SearchStrategy[LabelPredicate] = st.recursive(
    predicate_leaves,
    lambda inner: st.lists(inner, min_size=2, max_size=3).map(lambda xs: LabelAnd(tuple(xs)))
    | st.lists(inner, min_size=2, max_size=3).map(lambda xs: LabelOr(tuple(xs))),
    max_leaves=6)

_template_pieces = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="{", blacklist_categories=("Cs",)), max_size=6),
    names.map(lambda n: f"{{{{.{n}}}}}"),
    names.map(lambda n: f"{{{{ .{n} | ToUpper }}}}"),
    names.map(lambda n: f'{{{{ default "-" .{n} }}}}'),
    st.just("{{__line__}}"), st.just("{{- __line__ | trim -}}"), st.just('{{ "x" | lower }}'),
)
templates = st.lists(_template_pieces, max_size=4).map("".join)


def _pattern(names_: list[str], literals: list[str]) -> str:
    out = literals[0]
    for name, lit in zip(names_, literals[1:], strict=True):
        out += f"<{name}>" + lit
    return out


patterns = st.lists(names.filter(lambda n: n != "_"), min_size=1, max_size=3, unique=True).flatmap(
    lambda ns: st.tuples(st.just(ns), st.lists(st.text(alphabet=" -:=[]\"abc", min_size=1, max_size=4),
                                               min_size=len(ns) + 1, max_size=len(ns) + 1))).map(
    lambda t: _pattern(t[0], t[1]))
extractions = st.lists(st.builds(Extraction, names, texts), max_size=2).map(tuple)
named_items = st.lists(names | matchers, min_size=1, max_size=3).map(tuple)
label_formats = st.lists(
    st.builds(LabelFormatItem, names.filter(lambda n: n != "__error__"), names, st.just(True))
    | st.builds(LabelFormatItem, names.filter(lambda n: n != "__error__"), templates, st.just(False)),
    min_size=1, max_size=3, unique_by=lambda i: i.dst).map(lambda xs: LabelFormat(tuple(xs)))

stages: st.SearchStrategy[Stage] = st.one_of(
    st.builds(LineFilter, st.sampled_from(["|=", "!=", "|~", "!~", "|>", "!>"]),
              st.lists(texts | st.builds(Ip, texts), min_size=1, max_size=3).map(tuple)),
    st.just(UnpackParser()),
    st.builds(JsonParser, extractions),
    st.builds(LogfmtParser, extractions, st.booleans(), st.booleans()),
    st.builds(RegexpParser, st.tuples(names, texts).map(lambda t: f"(?P<{t[0]}>{t[1]})")),
    st.builds(PatternParser, patterns),
    st.builds(LabelFilter, predicates),
    st.builds(LineFormat, templates),
    label_formats,
    st.builds(KeepLabels, named_items),
    st.builds(DropLabels, named_items),
    st.just(Decolorize()),
)
def _writable(pipeline: tuple[Stage, ...]) -> bool:
    """See test_keep_then_a_negative_line_filter_has_no_text."""
    return not any(isinstance(a, (KeepLabels, DropLabels)) and isinstance(a.items[-1], str)
                   and isinstance(b, LineFilter) and b.op in ("!=", "!~") for a, b in itertools.pairwise(pipeline))


log_query_trees = st.builds(LogQuery, selectors, st.lists(stages, max_size=4).map(tuple).filter(_writable))
unwraps = st.builds(Unwrap, names, st.sampled_from([None, "bytes", "duration", "duration_seconds"]),
                    st.lists(predicates, max_size=2).map(tuple))
groupings = st.builds(Grouping, st.lists(names, max_size=3).map(tuple), st.booleans())


@st.composite
def range_aggregations(draw: st.DrawFn) -> RangeAggregation:
    op = draw(st.sampled_from(sorted(RANGE_OPS)))
    if op in LINE_RANGE_OPS and op in UNWRAP_RANGE_OPS:
        unwrap = draw(st.none() | unwraps)
    else:
        unwrap = draw(unwraps) if op in UNWRAP_RANGE_OPS else None
    log_range = LogRange(draw(log_query_trees), draw(st.integers(0, 10**7)) * MS, draw(durations), unwrap)
    param = draw(nonnegative) if op == "quantile_over_time" else None
    grouping = draw(st.none() | groupings) if op in GROUPED_RANGE_OPS else None
    return RangeAggregation(op, log_range, param, grouping)  # type: ignore[arg-type]


BINARY_OPS = ("+", "-", "*", "/", "%", "^", "==", "!=", ">", ">=", "<", "<=", "and", "or", "unless")
vector_matchings = st.one_of(
    st.builds(VectorMatching, st.booleans(), st.lists(names, max_size=2).map(tuple), st.just("one-to-one")),
    st.builds(VectorMatching, st.booleans(), st.lists(names, max_size=2).map(tuple),
              st.sampled_from(["many-to-one", "one-to-many"]), st.lists(names, max_size=2).map(tuple)))


def _binary(draw: st.DrawFn, inner: st.SearchStrategy[MetricExpr]) -> BinaryOp:
    op = draw(st.sampled_from(sorted(BINARY_OPS)))
    operand = inner.filter(lambda e: not isinstance(e, Number)) if op in SET_OPS else inner
    return BinaryOp(op, draw(operand), draw(operand), op in COMPARISON_OPS and draw(st.booleans()),
                    draw(st.none() | vector_matchings))



def _extend(inner: st.SearchStrategy[MetricExpr]) -> st.SearchStrategy[MetricExpr]:
    vector_aggs = st.one_of(
        st.builds(VectorAggregation, st.sampled_from(["sum", "avg", "min", "max", "count", "stddev", "stdvar"]),
                  inner, st.none(), st.none() | groupings),
        st.builds(VectorAggregation, st.sampled_from(["sort", "sort_desc"]), inner, st.none(),
                  st.none() | st.builds(Grouping, st.just(()), st.booleans())),
        st.builds(VectorAggregation, st.sampled_from(["topk", "bottomk"]), inner, st.integers(1, 2**63 - 1),
                  st.none() | groupings),
        st.builds(VectorAggregation, st.just("approx_topk"), inner, st.integers(1, 10**6)))
    return st.one_of(vector_aggs, st.composite(lambda draw: _binary(draw, inner))(),
                     st.builds(LabelReplace, inner, texts, texts, names, regexes))


metric_trees: st.SearchStrategy[MetricExpr] = st.recursive(
    range_aggregations() | st.builds(Number, finite) | st.builds(Vector, nonnegative), _extend, max_leaves=4)
expressions: st.SearchStrategy[Expr] = log_query_trees | metric_trees


@given(expressions)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_printing_then_parsing_gives_the_same_tree(expr: Expr) -> None:
    text = to_string(expr)
    assert parse(text) == expr, text


@given(st.builds(LabelFilter, predicates))
@settings(max_examples=200, deadline=None)
def test_label_predicates_round_trip(stage: LabelFilter) -> None:
    expr = LogQuery(Selector((Matcher("a", "=", "b"),)), (stage,))
    assert parse(to_string(expr)) == expr


@given(templates, st.dictionaries(names, st.text(max_size=5), max_size=3), st.text(max_size=5))
@settings(max_examples=100, deadline=None)
def test_generated_templates_are_valid_and_render_their_labels(template: str, labels: dict[str, str],
                                                               line: str) -> None:
    compiled = compile_template(template)
    out = compiled.render(labels, line)
    assert isinstance(out, str)
    for name in compiled.labels:
        if f"{{{{.{name}}}}}" in template and labels.get(name):
            assert labels[name] in out


_SOUP = ['{', '}', 'a', 'b', '=', '!=', '=~', '"x"', '`y`', '""', '|=', '|~', '!~', '|', 'json', 'logfmt', 'x="1"',
         'sum', 'count_over_time', 'rate', 'topk', 'vector', '(', ')', '[5m]', '[1h]', 'by', 'without', ',', 'or',
         'and', 'unless', '1', '2.5', '-', '+', '*', '/', '^', '>', '==', 'bool', 'on', 'ignoring', 'group_left',
         'offset', '1h', '5m', '10KB', 'unwrap', 'bytes', 'duration', 'line_format', '"{{.a}}"', 'label_format',
         'keep', 'drop', 'decolorize', 'pattern', '"<a> <_>"', 'regexp', '"(?P<a>.)"', '--strict', '#c\n', '\n',
         'quantile_over_time', '0.5', 'sum_over_time', 'label_replace', 'unpack', '|>', 'ip("1.2.3.4")', ' ']


@given(st.lists(st.sampled_from(_SOUP), max_size=25).map(" ".join) | st.text(max_size=40))
@settings(max_examples=400, deadline=None)
def test_any_text_parses_or_fails_cleanly_and_what_parses_round_trips(text: str) -> None:
    try:
        expr = parse(text)
    except (QuerySyntaxError, LogQLUnsupported) as e:
        assert e.position is None or 0 <= e.position <= len(text)
        return
    assert parse(to_string(expr)) == expr


@given(st.lists(st.sampled_from(['{a="b"}', '|= "x"', '| json', '| y="1"', 'or', '"z"', '| logfmt', ',',
                                 'y > 1', '(', ')', 'and', '| drop y', '| line_format "{{.y}}"']), max_size=12))
@settings(max_examples=300, deadline=None)
def test_log_query_soup_round_trips_when_it_parses(parts: list[str]) -> None:
    text = '{a="b"} ' + " ".join(parts)
    try:
        expr = parse(text)
    except (QuerySyntaxError, LogQLUnsupported):
        return
    assume(isinstance(expr, LogQuery))
    assert parse(to_string(expr)) == expr


def test_strategies_reach_every_node_kind() -> None:
    # Guards the round-trip property against a strategy that silently stopped generating a node type.
    seen: set[str] = set()

    @given(stages)
    @settings(max_examples=400, deadline=None, database=None, derandomize=True)
    def collect_stages(stage: Stage) -> None:
        seen.add(type(stage).__name__)

    @given(metric_trees)
    @settings(max_examples=400, deadline=None, database=None, derandomize=True)
    def collect_metrics(metric: MetricExpr) -> None:
        for node in walk(metric):
            seen.add(type(node).__name__)
            if isinstance(node, BinaryOp) and node.matching is not None:
                seen.add(f"matching {node.matching.card}")
            if isinstance(node, LogRange) and node.unwrap is not None:
                seen.add(f"unwrap {node.unwrap.conversion}")

    collect_stages()
    collect_metrics()
    assert seen >= {"LineFilter", "UnpackParser", "JsonParser", "LogfmtParser", "RegexpParser", "PatternParser",
                    "LabelFilter", "LineFormat", "LabelFormat", "KeepLabels", "DropLabels", "Decolorize",
                    "RangeAggregation", "VectorAggregation", "BinaryOp", "Number", "Vector", "LabelReplace",
                    "LogRange", "LogQuery", "matching one-to-one", "matching many-to-one", "matching one-to-many",
                    "unwrap None", "unwrap bytes", "unwrap duration", "unwrap duration_seconds"}
