"""The pattern miner's pure parts: Drain, the masking SQL (run by an in-memory DuckDB, as the query
service runs it), templates as filters and as whole-line Loki patterns."""

from __future__ import annotations

import random

import duckdb
import pytest

from query.patterns.drain import PARAM, Drain, join_template
from query.patterns.mask import mask_sql
from query.patterns.miner import line_template, mine_messages
from query.patterns.template import literals, template_regex


def masked(text: str) -> str:
    return str(duckdb.execute(f"SELECT {mask_sql('m')} FROM (SELECT ?::VARCHAR AS m)", [text]).fetchone()[0])


@pytest.mark.parametrize(("message", "want"), [
    ("took 15 ms", "took <_> ms"),
    ("took 15ms", "took <_>"),
    ("blk_-1608999687919862906 deleted", "blk_<_> deleted"),
    ("blk_38865049064139660 deleted", "blk_<_> deleted"),
    ("from 10.0.0.1:8080 via eth0", "from <_> via <_>"),
    ("at 2005-12-04 04:47:44", "at <_> <_>"),
    ("[instance: b9000564-fe1a-409b-b8cc-1e88b294cd1d] VM Paused", "[instance: <_>] VM Paused"),
    ("addr 0x7ffd5a3c", "addr <_>"),
    ("appattempt_1445144423722_0020_000001 started", "appattempt_<_> started"),
    ("Invalid user  0101 from 5.188.10.180", "Invalid user <_> from <_>"),
    ("Sun Jul  3 07:07:00 2005", "Sun Jul <_> <_> <_>"),
    ('acquire tag="View Lock" uid=10037', 'acquire tag="<_>" uid=<_>'),
    ('empty tag="" ok', 'empty tag="" ok'),
    ("index:-3", "index:<_>"),
    ("no variables here", "no variables here"),
    ("workers2.properties", "<_>.properties"),
    ("naïve café 12", "naïve café <_>"),
])
def test_mask(message: str, want: str) -> None:
    assert masked(message) == want


def test_join_template_writes_a_run_of_placeholders_once() -> None:
    assert join_template(["a", "<_><_>", "b"]) == "a <_> b"
    assert join_template(["<_>", "x"]) == "<_> x"
    assert line_template("<_> x", 1) == "<_> x"           # header placeholder and the first variable: one
    assert line_template("x <_>", 2) == "<_>x <_>"
    assert line_template("x y", 2) == "<_>x y<_>"
    assert line_template("x y", 0) == "x y"


def test_drain_generalises_the_positions_that_differ_and_weighs_counts() -> None:
    d = Drain()
    a = d.add("logged in: user alice from <_>", 3)
    b = d.add("logged in: user bob from <_>", 2)
    c = d.add("disk full on <_>", 1)
    assert a == b != c
    assert [(cl.template, cl.size) for cl in d.clusters] == [("logged in: user <_> from <_>", 5),
                                                              ("disk full on <_>", 1)]


def test_drain_splits_by_the_leading_tokens() -> None:
    """Depth 4: the first two tokens choose the leaf, so a variable there is never generalised (Drain's
    assumption that a message starts with constants)."""
    d = Drain()
    ids = d.train([("user alice logged in", 1), ("user bob logged in", 1)])
    assert ids["user alice logged in"] != ids["user bob logged in"]


def test_drain_keeps_apart_what_is_too_different_or_of_another_length() -> None:
    d = Drain(sim_th=0.5)
    ids = d.train([("a b c d", 1), ("a b x y", 1), ("a b c", 1), ("a b c d e", 1)])
    assert ids["a b c d"] == ids["a b x y"]          # 2 of 4 alike: 0.5 reaches sim_th
    assert len({ids["a b c d"], ids["a b c"], ids["a b c d e"]}) == 3
    strict = Drain(sim_th=0.75)
    ids = strict.train([("a b c d", 1), ("a b x y", 1)])
    assert ids["a b c d"] != ids["a b x y"]


def test_drain_result_does_not_depend_on_input_order() -> None:
    rng = random.Random(5)
    items = [(f"job {w} finished in <_> s", rng.randrange(1, 50)) for w in ("alpha", "beta", "gamma")]
    items += [(f"cache {w} evicted", rng.randrange(1, 50)) for w in ("users", "orders")]
    results = set()
    for _ in range(5):
        rng.shuffle(items)
        d = Drain()
        ids = d.train(items)
        results.add(tuple(sorted((m, d.cluster(i).template) for m, i in ids.items())))
    assert len(results) == 1


def test_drain_sends_tokens_past_max_children_down_the_wildcard_branch() -> None:
    d = Drain(depth=3, max_children=2)
    for w in ("one", "two", "three", "four"):
        d.add(f"{w} x y")
    # "one" and "two" have their own branch; "three" and "four" share the wildcard one, where
    # they are 2 of 3 tokens alike and merge.
    assert sorted(c.template for c in d.clusters) == ["<_> x y", "one x y", "two x y"]


def test_drain_refuses_bad_settings() -> None:
    for kwargs in ({"depth": 2}, {"sim_th": 1.5}, {"max_children": 0}):
        with pytest.raises(ValueError):
            Drain(**kwargs)  # type: ignore[arg-type]


def test_mine_messages_maps_each_message_to_its_template() -> None:
    msgs = ["login ok for alice", "login ok for bob", "disk 3 full", "disk 7 full", "login ok for carol"]
    assert mine_messages(msgs) == ["login ok for <_>", "login ok for <_>", "disk <_> full", "disk <_> full",
                                   "login ok for <_>"]
    assert mine_messages([]) == []


@pytest.mark.parametrize(("template", "message", "matches"), [
    ("user <_> logged in", "user alice logged in", True),
    ("user <_> logged in", "user   logged in", True),       # the variable is the middle space
    ("user <_> logged in", "user  logged in", False),        # no character is left for it
    ("user <_> logged in", "user logged in", False),
    ("user <_> logged in", "User alice logged in", False),   # literal text keeps its case
    ("user <_> logged in", "user alice logged in twice", False),
    ("<_> done", "job 7 done", True),
    ("a.b (c) [d] <_>", "a.b (c) [d] e", True),
    ("a.b (c) [d] <_>", "aXb (c) [d] e", False),             # '.' is a dot, not any character
    ("multi <_> line", "multi x\ny line", True),             # a variable may span lines
    ("multi <_> line", "multi\nx\nline", False),
])
def test_template_regex(template: str, message: str, matches: bool) -> None:
    got = duckdb.execute("SELECT regexp_matches(?, ?)", [message, template_regex(template)]).fetchone()
    assert got is not None and got[0] is matches


def test_literals() -> None:
    assert literals("<_> connection from <_> port <_>") == [" connection from ", " port "]
    assert literals(PARAM) == []
