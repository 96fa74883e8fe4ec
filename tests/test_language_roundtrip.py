"""Properties of the search language: printing and parsing are inverses, and no text crashes the parser.

``tests/test_language.py`` documents the language by example; here hypothesis
builds syntax trees of every node kind and checks ``parse(to_string(ast)) == ast``,
then throws arbitrary text at ``parse``.

What the language cannot say is left out of the generated trees (each strategy
says why); an AST the language *can* say but that does not survive printing is
a bug, pinned by a strict xfail test below.
"""

from __future__ import annotations

import string
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from query.errors import QuerySyntaxError
from query.language import (
    And,
    Compare,
    Exists,
    MatchAll,
    Node,
    Not,
    Or,
    Range,
    Term,
    parse,
    to_string,
)
from query.language.lexer import FIELD_RE

KEYWORDS = ("AND", "OR", "NOT")
EXISTS = "_exists_"

#: Characters the printer escapes in a word; the parser refuses escapes inside a wildcard.
_PRINTER_ESCAPES = set('()":\\<>')

# -- strategies ---------------------------------------------------------------------

#: Any field name the lexer accepts. ``_exists_`` is not a field: ``_exists_:x`` is Exists.
fields = st.from_regex(FIELD_RE, fullmatch=True).filter(lambda f: f != EXISTS)

#: Text with the characters the language treats specially, so escaping is exercised often.
_tricky = st.lists(st.sampled_from(list('ab -*?/\\":()[]{}<>=_@.') + ["AND", "OR", "NOT", "TO", "\t", "\u00a0", "é"]),
                   max_size=12).map("".join)
values = st.text() | _tricky


def words(field: st.SearchStrategy[str | None]) -> st.SearchStrategy[Term]:
    # An empty word cannot be written (it would be the empty query, or `f:` with no value).
    return st.builds(Term, field, (st.text(min_size=1) | _tricky).filter(bool), st.just("word"))


def phrases(field: st.SearchStrategy[str | None]) -> st.SearchStrategy[Term]:
    return st.builds(Term, field, values, st.just("phrase"))


def _wildcard_writable(value: str, fielded: bool) -> bool:
    """Whether ``value`` can be written as a wildcard at all, and avoids the printer bugs below.

    The parser refuses any escape in a wildcard, so a wildcard can only hold characters that need
    none: no whitespace, parentheses or quotes, and unfielded no leading '-' (that is NOT). Some
    characters are read otherwise in some places (':' makes a field, '<'/'>' a comparison, a
    fielded value's leading '/', '[' or '{' a regex or a range); the tests above pin the places
    where they are literal, and this generator stays on the safe side of all of them.
    """
    if not any(c in "*?" for c in value):
        return False
    if any(c in _PRINTER_ESCAPES or c.isspace() for c in value):
        return False
    if value.startswith("-"):
        return False
    return not (fielded and value[:1] in "/[{")


@st.composite
def wildcards(draw: st.DrawFn, field: st.SearchStrategy[str | None]) -> Term:
    name = draw(field)
    body = draw(st.text(st.characters(exclude_categories=("Cs",)) | st.sampled_from(list("ab/[{-_.%"))))
    stars = draw(st.lists(st.sampled_from("*?"), min_size=1, max_size=3))
    chars = list(body)
    for star in stars:
        chars.insert(draw(st.integers(0, len(chars))), star)
    value = "".join(chars)
    assume(_wildcard_writable(value, name is not None))
    return Term(name, value, "wildcard")


def _regex_writable(pattern: str) -> bool:
    """Whether ``pattern`` can be written between slashes.

    The lexer reads ``\\/`` as a plain '/', so a pattern holding the escape pair ``\\/`` comes back
    without its backslash (RE2 reads both the same); a trailing lone backslash would escape the
    closing slash.
    """
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if i + 1 == len(pattern) or pattern[i + 1] == "/":
                return False
            i += 2
        else:
            i += 1
    return True


#: Regular expressions only with a field: the language has no bare /regex/ (it is a word there).
regexes = st.builds(Term, fields, values.filter(_regex_writable), st.just("regex"))

terms = st.one_of(
    words(st.none() | fields), phrases(st.none() | fields), wildcards(st.none() | fields), regexes,
)
compares = st.builds(Compare, fields, st.sampled_from([">", ">=", "<", "<="]), values)
bounds = st.none() | values
ranges = st.builds(Range, fields, bounds, bounds, st.booleans(), st.booleans())
#: ``_exists_:AND`` cannot be written: the keyword is not a field name there, and escapes are refused.
exists = st.builds(Exists, fields.filter(lambda f: f not in KEYWORDS))

leaves = st.one_of(terms, compares, ranges, exists)


def _compound(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    groups = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.one_of(st.builds(Not, children), groups.map(And), groups.map(Or))


#: MatchAll is the empty query, so it only stands alone.
asts = st.just(MatchAll()) | st.recursive(leaves, _compound, max_leaves=10)

# -- round trip -----------------------------------------------------------------------


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(asts)
def test_every_writable_tree_survives_printing_and_parsing(ast: Node) -> None:
    text = to_string(ast)
    assert parse(text) == ast, text


@settings(max_examples=300, deadline=None)
@given(st.one_of(words(fields), phrases(fields), wildcards(fields), regexes, compares, ranges, exists))
def test_every_leaf_survives_printing_under_not_and_in_groups(leaf: Node) -> None:
    # The same leaf in every position a printer can put it: negated, first, last, inside parentheses.
    for ast in (Not(leaf), And((leaf, leaf)), Or((Term(None, "x"), leaf)), And((Or((leaf, leaf)), Not(leaf)))):
        assert parse(to_string(ast)) == ast, to_string(ast)


def test_nested_and_keeps_its_parentheses() -> None:
    # No normalisation is needed for nesting: the printer wraps every inner And/Or.
    ast = And((And((Term(None, "a"), Term(None, "b"))), Or((Term(None, "c"), And((Term(None, "d"),
                                                                                    Term(None, "e")))))))
    assert to_string(ast) == "(a AND b) AND (c OR (d AND e))"
    assert parse(to_string(ast)) == ast


def test_wildcard_examples_that_do_round_trip() -> None:
    for ast in (Term(None, "/api/*", "wildcard"), Term("f", "a/b*", "wildcard"), Term("f", "*[x]", "wildcard"),
                Term(None, "[*", "wildcard"), Term("path", "*-x", "wildcard")):
        assert parse(to_string(ast)) == ast


# Each of these is written here the way the parser reads it (the printer once escaped a character
# in them, and the parser refuses any escape in a wildcard).


def test_fielded_wildcard_starting_with_a_slash_round_trips() -> None:
    ast = Term("http.path", "/api/*", "wildcard")
    assert parse("http.path:/api/*") == ast
    assert parse(to_string(ast)) == ast


def test_fielded_wildcard_with_a_colon_round_trips() -> None:
    ast = Term("url", "http://x/*", "wildcard")
    assert parse("url:http://x/*") == ast
    assert parse(to_string(ast)) == ast


def test_fielded_wildcard_starting_with_a_dash_round_trips() -> None:
    ast = Term("f", "-a*", "wildcard")
    assert parse("f:-a*") == ast
    assert parse(to_string(ast)) == ast


def test_wildcard_with_an_angle_bracket_round_trips() -> None:
    for text, ast in (("f:a>b*", Term("f", "a>b*", "wildcard")), ("<a*", Term(None, "<a*", "wildcard"))):
        assert parse(text) == ast
        assert parse(to_string(ast)) == ast


# -- parsed text prints back to the same tree ----------------------------------------------

_query_text = st.text() | st.lists(st.sampled_from(
    ["a", "B", "x1", "f:", "g.h:", "_exists_:", " ", "  ", "AND", "OR", "NOT", "-", "(", ")", '"', "\\", "*", "?",
     "/", ":", "[", "]", "{", "}", " TO ", ">", ">=", "<", "=", "250ms", "é", "\t"]), max_size=20).map("".join)


@settings(max_examples=1000, deadline=None)
@given(_query_text)
def test_whatever_parses_prints_back_to_the_same_tree(query: str) -> None:
    try:
        ast = parse(query)
    except QuerySyntaxError:
        return
    assert parse(to_string(ast)) == ast, to_string(ast)


# -- arbitrary text -----------------------------------------------------------------------


def _check_parse(query: str) -> None:
    try:
        parse(query)
    except QuerySyntaxError as e:
        assert 0 <= e.position <= len(query), (e.position, len(query))
        assert e.query == query
        assert e.caret().startswith(query + "\n")
    # Anything else (IndexError, RecursionError, ...) fails the test: it would be an HTTP 500.


@settings(max_examples=1500, deadline=timedelta(milliseconds=500))
@given(_query_text | st.text(alphabet=string.printable))
def test_any_text_parses_or_is_a_syntax_error_within_the_query(query: str) -> None:
    _check_parse(query)


@settings(max_examples=100, deadline=timedelta(seconds=2))
@given(_query_text.filter(bool), st.integers(1, 2_000))
def test_long_repetitive_text_is_parsed_or_refused_promptly(chunk: str, times: int) -> None:
    # A query of up to ~40 KB: quadratic rescanning (of regexes, ranges, comparisons) would blow the deadline.
    _check_parse(chunk * times)


def test_a_bare_wildcard_starting_with_a_dash_round_trips() -> None:
    # Read glued to a phrase, '-*' is a wildcard, not a negation; printed at a term's start it
    # takes the one escape a wildcard allows.
    ast = parse('""-*')
    assert ast == And((Term(None, "", "phrase"), Term(None, "-*", "wildcard")))
    assert to_string(ast) == '"" AND \\-*'
    assert parse(to_string(ast)) == ast
    assert parse("\\-a?b") == Term(None, "-a?b", "wildcard")
    with pytest.raises(QuerySyntaxError):
        parse("a\\-*")          # any other escape in a wildcard is still refused
