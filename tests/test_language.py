"""The search language: how query text becomes a syntax tree, and back again.

Covers ``query/language`` (lexer, parser, AST, printer) and the syntax errors
of ``query/errors.py``. Nothing here touches DuckDB or storage.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.errors import BadTimeRange, QueryError, QuerySyntaxError, UnknownField
from query.language import And, MatchAll, Node, Not, Or, Term, parse, to_string
from query.language.lexer import FIELD_RE
from query.language.parser import MAX_DEPTH


def word(value: str, field: str | None = None) -> Term:
    return Term(field, value, "word")


def phrase(value: str, field: str | None = None) -> Term:
    return Term(field, value, "phrase")


def wildcard(value: str, field: str | None = None) -> Term:
    return Term(field, value, "wildcard")


def syntax_error(query: str) -> QuerySyntaxError:
    with pytest.raises(QuerySyntaxError) as info:
        parse(query)
    return info.value


# -- terms -------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_empty_or_blank_query_matches_everything(query: str) -> None:
    assert parse(query) == MatchAll()


def test_bare_word_searches_the_message() -> None:
    assert parse("timeout") == word("timeout")


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse("  timeout \n") == word("timeout")


def test_phrase_keeps_its_inner_spaces() -> None:
    assert parse('"connection reset by peer"') == phrase("connection reset by peer")


def test_phrase_unescapes_quotes() -> None:
    assert parse(r'"she said \"hi\""') == phrase('she said "hi"')


def test_phrase_unescapes_backslashes() -> None:
    assert parse(r'"C:\\temp"') == phrase("C:\\temp")


def test_phrase_keeps_keywords_and_specials_literal() -> None:
    assert parse('"a AND (b) OR -c:d"') == phrase("a AND (b) OR -c:d")


def test_field_value_is_a_fielded_word() -> None:
    assert parse("level:error") == word("error", "level")


def test_field_phrase_is_a_fielded_phrase() -> None:
    assert parse('message:"disk full"') == phrase("disk full", "message")


def test_field_names_may_hold_dots_dashes_underscores_and_at() -> None:
    assert parse("@attrs.http-status_code:500") == word("500", "@attrs.http-status_code")


def test_value_may_contain_further_colons() -> None:
    assert parse("host:10.0.0.1:8080") == word("10.0.0.1:8080", "host")


def test_url_splits_at_its_first_colon_into_field_and_value() -> None:
    assert parse("http://example.com") == word("//example.com", "http")


def test_escaped_colon_keeps_a_bare_word_unfielded() -> None:
    assert parse(r"a\:b") == word("a:b")


def test_escaped_space_joins_a_word() -> None:
    assert parse(r"two\ words") == word("two words")


def test_dash_inside_a_word_is_literal() -> None:
    assert parse("x-request-id") == word("x-request-id")


def test_lone_dash_is_a_word() -> None:
    assert parse("a - b") == And((word("a"), word("-"), word("b")))


# -- wildcards ---------------------------------------------------------------


def test_star_makes_a_wildcard_term() -> None:
    assert parse("val*") == wildcard("val*")


def test_question_mark_makes_a_wildcard_term() -> None:
    assert parse("a?c") == wildcard("a?c")


def test_fielded_wildcard() -> None:
    assert parse("http.path:/api/*") == wildcard("/api/*", "http.path")


def test_escaped_star_is_a_literal_word() -> None:
    assert parse(r"a\*") == word("a*")


def test_star_inside_a_phrase_is_literal() -> None:
    assert parse('"a*"') == phrase("a*")


def test_wildcard_with_an_escaped_character_is_rejected() -> None:
    err = syntax_error(r"a\:b*")
    assert err.position == 0
    assert "wildcard" in err.reason


# -- boolean operators and precedence -----------------------------------------


def test_juxtaposed_terms_are_an_implicit_and() -> None:
    assert parse("a b c") == And((word("a"), word("b"), word("c")))


def test_explicit_and_is_the_same_as_implicit_and() -> None:
    assert parse("a AND b AND c") == parse("a b c")


def test_or_collects_its_operands_in_one_node() -> None:
    assert parse("a OR b OR c") == Or((word("a"), word("b"), word("c")))


def test_not_keyword_negates_the_next_term() -> None:
    assert parse("NOT a") == Not(word("a"))


def test_leading_minus_negates_the_next_term() -> None:
    assert parse("-a") == Not(word("a"))


def test_minus_after_a_space_negates_a_fielded_term() -> None:
    assert parse("service:api -level:info") == And((word("api", "service"), Not(word("info", "level"))))


def test_minus_glued_to_a_phrase_is_part_of_a_word() -> None:
    assert parse('"a"-b') == And((phrase("a"), word("-b")))


def test_double_negation_is_kept() -> None:
    assert parse("NOT -a") == Not(Not(word("a")))


def test_or_binds_looser_than_implicit_and() -> None:
    assert parse("a b OR c") == Or((And((word("a"), word("b"))), word("c")))
    assert parse("a OR b c") == Or((word("a"), And((word("b"), word("c")))))


def test_or_binds_looser_than_explicit_and() -> None:
    assert parse("a AND b OR c AND d") == Or((And((word("a"), word("b"))), And((word("c"), word("d")))))


def test_not_binds_tighter_than_and() -> None:
    assert parse("NOT a b") == And((Not(word("a")), word("b")))


def test_parentheses_override_precedence() -> None:
    assert parse("a (b OR c)") == And((word("a"), Or((word("b"), word("c")))))


def test_not_applies_to_a_whole_group() -> None:
    assert parse("NOT (a OR b)") == Not(Or((word("a"), word("b"))))


def test_redundant_parentheses_leave_no_trace() -> None:
    assert parse("((a))") == word("a")


def test_parenthesised_and_is_kept_as_its_own_node() -> None:
    assert parse("(a b) c") == And((And((word("a"), word("b"))), word("c")))


def test_keywords_are_case_sensitive() -> None:
    assert parse("a and b") == And((word("a"), word("and"), word("b")))


@pytest.mark.parametrize("keyword", ["AND", "OR", "NOT"])
def test_escaped_keyword_is_an_ordinary_word(keyword: str) -> None:
    assert parse("\\" + keyword) == word(keyword)


@pytest.mark.parametrize("keyword", ["AND", "OR", "NOT"])
def test_quoted_keyword_is_a_phrase(keyword: str) -> None:
    assert parse(f'"{keyword}"') == phrase(keyword)


def test_escaped_keyword_as_a_field_value() -> None:
    assert parse(r"op:\OR") == word("OR", "op")


# -- syntax errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "position", "reason"),
    [
        ("(a", 2, "expected ')', found end of query"),
        ("a OR", 4, "expected a search term, a field:value or '(', found end of query"),
        ("a AND", 5, "expected a search term, a field:value or '(', found end of query"),
        ("NOT", 3, "expected a search term, a field:value or '(', found end of query"),
        ("OR a", 0, "expected a search term, a field:value or '(', found 'OR'"),
        ('"abc', 4, 'unclosed quote: expected "'),
        ('a "b', 4, 'unclosed quote: expected "'),
        ("a)", 1, "expected AND, OR or end of query, found ')'"),
        ("()", 1, "expected a search term, a field:value or '(', found ')'"),
        ("a:", 2, "expected a value after 'a:'"),
        ("a: b", 2, "expected a value after 'a:'"),
        ("(a:)", 3, "expected a value after 'a:'"),
        (":x", 0, "expected a field name before ':'"),
        ("a :x", 2, "expected a field name before ':'"),
        ("1abc:x", 0, "invalid field name '1abc'"),
        ("ok b$d:x", 3, "invalid field name 'b$d'"),
        ("../../etc/passwd:x", 0, "invalid field name '../../etc/passwd'"),
        ("f:AND", 2, "expected a value, found 'AND'"),
        ("f:(a)", 2, "expected a value, found '('"),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_syntax_error_reports_position_and_reason(query: str, position: int, reason: str) -> None:
    err = syntax_error(query)
    assert (err.position, err.reason, err.query) == (position, reason, query)


def test_syntax_error_message_names_the_position() -> None:
    assert str(syntax_error("(a")) == "expected ')', found end of query at position 2"


def test_syntax_error_caret_points_under_the_position() -> None:
    assert syntax_error("a OR").caret() == "a OR\n    ^"


def test_query_errors_map_to_http_400() -> None:
    for cls in (QuerySyntaxError, UnknownField, BadTimeRange):
        assert issubclass(cls, QueryError)
    assert QueryError.status_code == 400
    assert syntax_error("(").status_code == 400


def test_nesting_up_to_max_depth_parses() -> None:
    query = "(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH
    assert parse(query) == word("a")


def test_nesting_deeper_than_max_depth_is_rejected_at_the_offending_parenthesis() -> None:
    err = syntax_error("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    assert err.position == MAX_DEPTH
    assert err.reason == f"nesting deeper than {MAX_DEPTH}"


def test_sibling_groups_do_not_add_up_to_the_depth_limit() -> None:
    group = "(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH
    assert parse(f"{group} {group}") == And((word("a"), word("a")))


@pytest.mark.parametrize("prefix", ["NOT ", "-"])
def test_deeply_chained_negation_is_a_syntax_error_not_a_crash(prefix: str) -> None:
    # A chain of NOTs recurses like nesting does; it must hit a QuerySyntaxError
    # (HTTP 400), never RecursionError (HTTP 500).
    query = prefix * 5000 + "a"
    with pytest.raises(QuerySyntaxError):
        parse(query)


# -- printer ------------------------------------------------------------------


def test_match_all_prints_as_the_empty_query() -> None:
    assert to_string(MatchAll()) == ""


def test_printer_joins_with_explicit_operators_and_wraps_groups() -> None:
    ast = Or((And((word("a"), Not(word("b")))), phrase("c d", "f")))
    assert to_string(ast) == '(a AND NOT b) OR f:"c d"'


def test_printer_escapes_keywords_and_a_leading_minus() -> None:
    assert to_string(And((word("AND"), word("-x")))) == r"\AND AND \-x"


def test_printer_escapes_quotes_and_backslashes_in_phrases() -> None:
    assert to_string(phrase('a "b" \\c')) == r'"a \"b\" \\c"'


def test_printer_escapes_specials_in_words() -> None:
    assert to_string(word('a:b (c) "d" e\\f')) == r'a\:b\ \(c\)\ \"d\"\ e\\f'


def test_printer_rejects_what_is_not_a_node() -> None:
    with pytest.raises(TypeError):
        to_string("a")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["a*", "?", "a:*"])
def test_word_with_wildcard_characters_round_trips_as_a_word(value: str) -> None:
    # parse(r"a\*") is the word "a*"; printing it must keep the star escaped.
    assert parse(to_string(word(value))) == word(value)


@pytest.mark.parametrize("value", ["\x0bb", "\u00a0", "\u2003x"])
def test_word_starting_with_unicode_whitespace_round_trips(value: str) -> None:
    assert parse(to_string(word(value))) == word(value)


_fields = st.from_regex(FIELD_RE, fullmatch=True)
_terms = st.builds(
    Term,
    field=st.none() | _fields,
    value=st.text(min_size=1),
    kind=st.sampled_from(["word", "phrase"]),
)


def _compound(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    groups = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.one_of(st.builds(Not, children), groups.map(And), groups.map(Or))


_asts = st.recursive(_terms, _compound, max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_asts)
def test_printed_query_parses_back_to_the_same_tree(ast: Node) -> None:
    assert parse(to_string(ast)) == ast
