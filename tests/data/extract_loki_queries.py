"""Extract LogQL query strings and Loki's parser verdicts from Loki's own Go tests, as data.

    python tests/data/extract_loki_queries.py /path/to/loki [--commit REV] [--out tests/data/loki_queries.jsonl]

``/path/to/loki`` is a Git repository of grafana/loki (a bare mirror or a clone). The script reads
``pkg/logql/syntax/*_test.go`` and ``pkg/logql/*_test.go`` at ``REV`` with ``git show`` and writes one
JSON object per line: ``{"query", "accept", "source", "line", "loki_commit"}``. No Go code is copied: only
the strings the tests parse, and whether the test expects Loki's parser to take them.

How a verdict is decided (a case whose verdict is not clear is left out):

* Tables (``[]struct{...}{...}``, ``map[..]struct``, ``[]string{...}``, ``[]namedType{...}``) ranged over
  by a ``for`` loop whose body calls a parse function on a string field of the case (``ParseExpr(tc.in)``),
  and direct calls on literals (``ParseExpr(`{a="b"}`)``).
* The call must be one whose success or failure says what ``syntax.ParseExpr`` says:
  ``ParseExpr``, ``MustParseExpr`` (panics otherwise: accepted), ``NewLiteralParams`` (calls ParseExpr),
  ``ParseSampleExpr`` and ``ParseLogSelector(q, true)`` (ParseExpr plus a type check: their successes
  count, and their failures only when the expected error is a parse error), ``ParseMatchers(q, true)``
  (successes only), ``ParseExprWithoutValidation`` (failures only).
* A case is a rejection when its error field (a field named like ``err``/``wantErr``/``expErr`` that the
  loop body reads) holds a non-nil error, ``true`` or a non-empty string; an acceptance when it holds
  none. A loop that checks the call with ``require.NoError``/``require.Nil`` right after it accepts every
  case (a test that runs the query afterwards and expects a runtime error still parsed it).
* Strings built at run time (``fmt.Sprintf``, variables) are left out, and so are strings that are
  not valid UTF-8.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

GLOBS = ("pkg/logql/syntax/", "pkg/logql/")

# -- Go tokens ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tok:
    kind: str          # id, str, num, rune, op
    text: str
    line: int
    value: str | None = None     # a string literal's value (None when not valid UTF-8)


_ESC = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34}
_OPS = ("...", ":=", "&&", "||", "==", "!=", "<=", ">=", "<-", "++", "--", "+=", "-=", "*=", "/=", "<<", ">>")


def _interpreted(src: str, i: int) -> tuple[str | None, int]:
    """The Go string literal opening at src[i]: (value or None if not UTF-8, end)."""
    out = bytearray()
    j = i + 1
    while src[j] != '"':
        c = src[j]
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            j += 1
            continue
        e = src[j + 1]
        if e in _ESC:
            out.append(_ESC[e])
            j += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            code = int(src[j + 2:j + 2 + width], 16)
            out += bytes([code]) if e == "x" else chr(code).encode("utf-8", "surrogatepass")
            j += 2 + width
        else:       # three octal digits
            out.append(int(src[j + 1:j + 4], 8))
            j += 4
    try:
        return out.decode("utf-8"), j + 1
    except UnicodeDecodeError:
        return None, j + 1


def tokenize(src: str) -> list[Tok]:
    out: list[Tok] = []
    i, n, line = 0, len(src), 1
    word = re.compile(r"[A-Za-z_0-9]+")
    number = re.compile(r"[0-9][0-9a-zA-Z_.]*")
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            line += src.count("\n", i, j)
            i = j + 2
        elif c == '"':
            value, j = _interpreted(src, i)
            out.append(Tok("str", src[i:j], line, value))
            i = j
        elif c == "`":
            j = src.find("`", i + 1)
            value = src[i + 1:j].replace("\r", "")
            out.append(Tok("str", src[i:j + 1], line, value))
            line += value.count("\n")
            i = j + 1
        elif c == "'":
            j = i + 1
            while src[j] != "'":
                j += 2 if src[j] == "\\" else 1
            out.append(Tok("rune", src[i:j + 1], line))
            i = j + 1
        elif c.isalpha() or c == "_":
            m = word.match(src, i)
            assert m is not None
            out.append(Tok("id", m.group(), line))
            i = m.end()
        elif c.isdigit():
            m = number.match(src, i)
            assert m is not None
            out.append(Tok("num", m.group(), line))
            i = m.end()
        else:
            op = next((o for o in _OPS if src.startswith(o, i)), c)
            out.append(Tok("op", op, line))
            i += len(op)
    return out


def brackets(toks: list[Tok]) -> dict[int, int]:
    """Index of each opening bracket to its closing one."""
    pairs, stack = {}, []
    for i, t in enumerate(toks):
        if t.kind == "op" and t.text in "([{":
            stack.append(i)
        elif t.kind == "op" and t.text in ")]}":
            pairs[stack.pop()] = i
    return pairs


def split_top(toks: list[Tok], lo: int, hi: int, pairs: dict[int, int]) -> list[tuple[int, int]]:
    """Comma-separated parts of toks[lo:hi] at bracket depth 0, as (start, end) spans."""
    parts, start, i = [], lo, lo
    while i < hi:
        t = toks[i]
        if i in pairs:
            i = pairs[i] + 1
            continue
        if t.kind == "op" and t.text == ",":
            parts.append((start, i))
            start = i + 1
        i += 1
    if start < hi:
        parts.append((start, hi))
    return parts


def string_value(toks: list[Tok], lo: int, hi: int) -> str | None:
    """The value of a constant string expression ``"a" + `b` + ...`` spanning toks[lo:hi], else None."""
    if lo >= hi or (hi - lo) % 2 == 0:
        return None
    out = []
    for k in range(lo, hi):
        t = toks[k]
        if (k - lo) % 2 == 0:
            if t.kind != "str" or t.value is None:
                return None
            out.append(t.value)
        elif t.text != "+":
            return None
    return "".join(out)


#: The field name under which a map case keeps its key.
KEY = "<key>"

# -- tables and their loops ------------------------------------------------------------------------


@dataclass
class Case:
    values: dict[str, tuple[int, int]]       # field -> token span of its value
    line: int


@dataclass
class Table:
    fields: list[tuple[str, str]]            # (name, type text) in order; [("", "string")] for []string
    cases: list[Case]
    start: int                               # index of the table literal's first token
    end: int                                 # index after its closing brace
    var: str | None = None                   # the variable it is assigned to, if any


def struct_fields(toks: list[Tok], lo: int, hi: int, pairs: dict[int, int]) -> list[tuple[str, str]]:
    """Fields of a struct type body toks[lo:hi] (between its braces), in order."""
    out: list[tuple[str, str]] = []
    i = lo
    while i < hi:
        line = toks[i].line
        j = i
        while j < hi and toks[j].line == line:
            j = pairs.get(j, j) + 1 if j in pairs else j + 1
        names, k = [], i
        while k < j and toks[k].kind == "id":
            names.append(toks[k].text)
            k += 1
            if k < j and toks[k].text == ",":
                k += 1
            else:
                break
        typ = " ".join(t.text for t in toks[k:j])
        if names and typ:
            out += [(name, typ) for name in names]
        i = j
    return out


def elements(toks: list[Tok], lo: int, hi: int, pairs: dict[int, int], fields: list[tuple[str, str]],
             is_map: bool) -> list[Case]:
    cases = []
    for a, b in split_top(toks, lo, hi, pairs):
        key: tuple[int, int] | None = None
        if is_map:          # "name": {...}
            k = a
            while k < b and not (toks[k].text == ":" and toks[k].kind == "op"):
                k = pairs.get(k, k) + 1 if k in pairs else k + 1
            key, a = (a, k), k + 1
        if key is not None and fields == [("", "value")]:
            cases.append(Case({KEY: key}, toks[key[0]].line))
            continue
        if fields == [("", "string")]:
            cases.append(Case({"": (a, b)}, toks[a].line))
            continue
        while a < b and toks[a].text in ("&",):
            a += 1
        if toks[a].kind == "id" and a + 1 < b and toks[a + 1].text == "{":      # T{...}
            a += 1
        if toks[a].text != "{" or pairs.get(a) != b - 1:
            continue
        values: dict[str, tuple[int, int]] = {}
        parts = split_top(toks, a + 1, b - 1, pairs)
        keyed = bool(parts) and toks[parts[0][0]].kind == "id" and toks[parts[0][0] + 1].text == ":"
        for n, (c, d) in enumerate(parts):
            if keyed:
                if toks[c].kind == "id" and toks[c + 1].text == ":":
                    values[toks[c].text] = (c + 2, d)
            elif n < len(fields):
                values[fields[n][0]] = (c, d)
        if key is not None:
            values[KEY] = key
        cases.append(Case(values, toks[a].line))
    return cases


def find_tables(toks: list[Tok], pairs: dict[int, int], types: dict[str, list[tuple[str, str]]]) -> list[Table]:
    tables = []
    for i, t in enumerate(toks):
        fields: list[tuple[str, str]] | None = None
        is_map = False
        body = None
        if t.text == "[" and toks[i + 1].text == "]":
            nxt = toks[i + 2]
            if nxt.text == "struct" and toks[i + 3].text == "{":
                close = pairs[i + 3]
                fields = struct_fields(toks, i + 4, close, pairs)
                body = close + 1
            elif nxt.text == "string" and toks[i + 3].text == "{":
                fields, body = [("", "string")], i + 3
            elif nxt.kind == "id" and nxt.text in types and toks[i + 3].text == "{":
                fields, body = types[nxt.text], i + 3
        elif t.text == "map" and toks[i + 1].text == "[" and toks[i + 2].text == "string" \
                and toks[i + 3].text == "]":
            close = i + 3
            if toks[close + 1].text == "struct" and toks[close + 2].text == "{":
                sclose = pairs[close + 2]
                fields = struct_fields(toks, close + 3, sclose, pairs)
                body, is_map = sclose + 1, True
            elif toks[close + 1].kind == "id" and toks[close + 2].text == "{":      # map[string]bool{...}
                fields, body, is_map = [("", "value")], close + 2, True
        if fields is None or body is None or toks[body].text != "{":
            continue
        end = pairs[body]
        table = Table(fields, elements(toks, body + 1, end, pairs, fields, is_map), i, end + 1)
        # `name := []struct...`, `name = ...`, `var name = ...`
        if i >= 2 and toks[i - 1].text in (":=", "=") and toks[i - 2].kind == "id":
            table.var = toks[i - 2].text
        tables.append(table)
    return tables


def struct_types(toks: list[Tok], pairs: dict[int, int]) -> dict[str, list[tuple[str, str]]]:
    """``type name struct {...}`` declarations of the file."""
    out = {}
    for i, t in enumerate(toks[:-3]):
        if t.text == "type" and toks[i + 1].kind == "id" and toks[i + 2].text == "struct" \
                and toks[i + 3].text == "{":
            out[toks[i + 1].text] = struct_fields(toks, i + 4, pairs[i + 3], pairs)
    return out


# -- consumers and verdicts ---------------------------------------------------------------------------

#: Call name -> (its success says ParseExpr accepts, its failure says ParseExpr rejects).
ACCEPTS_ONLY, REJECTS_ONLY, BOTH, PARSE_ERRORS_ONLY = "accepts", "rejects", "both", "parse-errors"
CONSUMERS = {"ParseExpr": BOTH, "MustParseExpr": ACCEPTS_ONLY, "NewLiteralParams": ACCEPTS_ONLY,
             "NewLiteralParamsWithCaching": ACCEPTS_ONLY, "ParseSampleExpr": PARSE_ERRORS_ONLY,
             "ParseLogSelector": PARSE_ERRORS_ONLY, "ParseMatchers": ACCEPTS_ONLY,
             "ParseExprWithoutValidation": REJECTS_ONLY}
_ERR_FIELD = re.compile(r"err", re.IGNORECASE)
_OK_CHECKS = ("NoError", "Nil")
_ERR_CHECKS = ("Error", "NotNil", "ErrorIs", "ErrorContains", "EqualError", "ErrorAs")


@dataclass
class Call:
    name: str
    arg: tuple[int, int]         # first argument's span
    end: int                     # index of the closing parenthesis
    second_arg: str              # text of the second argument ("true" for ParseLogSelector(q, true))
    err_var: str | None          # the variable the error goes to


def calls(toks: list[Tok], lo: int, hi: int, pairs: dict[int, int]) -> Iterator[Call]:
    for i in range(lo, hi):
        t = toks[i]
        if t.kind != "id" or t.text not in CONSUMERS or toks[i + 1].text != "(":
            continue
        if i > 0 and toks[i - 1].text == "func":
            continue
        close = pairs[i + 1]
        args = split_top(toks, i + 2, close, pairs)
        if not args:
            continue
        second = " ".join(tok.text for tok in toks[args[1][0]:args[1][1]]) if len(args) > 1 else ""
        # `a, err := syntax.ParseExpr(...)`: walk back over the qualifier to the assignment.
        k = i - 2 if i >= 2 and toks[i - 1].text == "." else i
        err_var = None
        if toks[k - 1].text in (":=", "="):
            j = k - 2
            err_var = toks[j].text if toks[j].kind == "id" else None
        yield Call(t.text, args[0], close, second, err_var)


def next_check(toks: list[Tok], call: Call, hi: int) -> str | None:
    """How the statement right after ``call`` checks its error: "ok", "err", or None (something else)."""
    if call.err_var is None or call.err_var == "_":
        return None
    i = call.end + 1
    if i + 2 < hi and toks[i].text in ("require", "assert") and toks[i + 1].text == ".":
        fn = toks[i + 2].text
        window = [t.text for t in toks[i + 3:i + 9]]
        if call.err_var in window:
            if fn in _OK_CHECKS:
                return "ok"
            if fn in _ERR_CHECKS:
                return "err"
    if i + 3 < hi and toks[i].text == "if" and toks[i + 1].text == call.err_var and toks[i + 2].text == "!=" \
            and toks[i + 3].text == "nil":
        body = [t.text for t in toks[i + 5:i + 12]]
        if any(w in body for w in ("Fatal", "Fatalf", "panic", "FailNow")):
            return "ok"
    return None


def error_expected(toks: list[Tok], span: tuple[int, int] | None) -> tuple[bool, str] | None:
    """(whether the case expects an error, the expected value's text); None if it cannot tell."""
    if span is None:
        return False, ""
    a, b = span
    text = " ".join(t.text for t in toks[a:b])
    if text in ("nil", "false", '""', "``"):
        return False, text
    if text == "true":
        return True, text
    if b - a == 1 and toks[a].kind == "str":
        return toks[a].value != "", text
    if b - a == 1 and toks[a].kind == "id":
        # a named error value (errFoo, ErrParse) or a boolean we cannot see: take names that read as errors.
        return (True, text) if _ERR_FIELD.search(text) else None
    return True, text       # a constructed error: logqlmodel.NewParseError(...), errors.New(...), fmt.Errorf(...)


@dataclass
class Found:
    query: str
    accept: bool
    line: int
    via: str
    notes: list[str] = field(default_factory=list)


def loops(toks: list[Tok]) -> Iterator[tuple[int, str, str | None]]:
    """(index of `range`, the value variable, the key variable) of each ``for [k,] v := range ...``."""
    for i, t in enumerate(toks):
        if t.text != "range" or toks[i - 1].text not in (":=", "="):
            continue
        names = []
        k = i - 2
        while (toks[k].kind == "id" and toks[k].text != "for") or toks[k].text == ",":
            if toks[k].kind == "id":
                names.insert(0, toks[k].text)
            k -= 1
        if toks[k].text == "for" and names:
            yield i, names[-1], names[0] if len(names) > 1 else None


def extract_file(src: str) -> list[Found]:
    toks = tokenize(src)
    pairs = brackets(toks)
    types = struct_types(toks, pairs)
    tables = find_tables(toks, pairs, types)
    by_var: dict[str, list[Table]] = {}
    for tb in tables:
        if tb.var:
            by_var.setdefault(tb.var, []).append(tb)
    found: list[Found] = []
    consumed: set[tuple[int, int]] = set()       # argument spans handled through a table

    for range_at, var, key_var in loops(toks):
        expr_start = range_at + 1
        table = next((tb for tb in tables if tb.start == expr_start), None)
        if table is not None:
            body = table.end
        elif toks[expr_start].kind == "id" and toks[expr_start + 1].text == "{":
            body = expr_start + 1
            candidates = by_var.get(toks[expr_start].text, [])
            # the nearest assignment before the loop, else a package-level table
            before = [tb for tb in candidates if tb.start < range_at]
            table = before[-1] if before else (candidates[0] if candidates else None)
        if table is None or toks[body].text != "{":
            continue
        lo, hi = body + 1, pairs[body]
        # aliases: `q := tc.in` in the body
        aliases: dict[str, str] = {}
        for k in range(lo, hi - 4):
            if toks[k].kind == "id" and toks[k + 1].text in (":=", "=") and toks[k + 2].text == var \
                    and toks[k + 3].text == "." and toks[k + 4].kind == "id" \
                    and toks[k + 5].text not in (".", "("):
                aliases[toks[k].text] = toks[k + 4].text
        fields = dict(table.fields)
        for call in calls(toks, lo, hi, pairs):
            a, b = call.arg
            arg = [t.text for t in toks[a:b]]
            if key_var is not None and arg == [key_var] and key_var != "_":
                qfield = KEY
            elif fields.get("") == "string":
                if arg != [var]:
                    continue
                qfield = ""
            elif len(arg) == 3 and arg[0] == var and arg[1] == ".":
                qfield = arg[2]
            elif len(arg) == 1 and arg[0] in aliases:
                qfield = aliases[arg[0]]
            else:
                continue
            if qfield != KEY and fields.get(qfield) != "string":
                continue
            consumed.add(call.arg)
            mode = CONSUMERS[call.name]
            if call.name in ("ParseLogSelector", "ParseMatchers") and call.second_arg != "true":
                continue
            check = next_check(toks, call, hi)
            err_fields = [f for f, _ in table.fields if _ERR_FIELD.search(f)
                          and any(toks[k].text == var and toks[k + 1].text == "." and toks[k + 2].text == f
                                  for k in range(lo, hi - 2))]
            if call.name == "MustParseExpr":
                check = "ok"
            for case in table.cases:
                span = case.values.get(qfield)
                if span is None:
                    continue
                query = string_value(toks, *span)
                if query is None:
                    continue
                if check == "ok":
                    verdict: bool | None = True
                    expected_text = ""
                elif check == "err" and not err_fields:
                    verdict, expected_text = False, ""
                elif len(err_fields) == 1:
                    got = error_expected(toks, case.values.get(err_fields[0]))
                    if got is None:
                        continue
                    verdict, expected_text = not got[0], got[1]
                else:
                    continue
                if verdict and mode == REJECTS_ONLY:
                    continue
                if not verdict and mode == ACCEPTS_ONLY:
                    continue
                if not verdict and mode == PARSE_ERRORS_ONLY and "ParseError" not in expected_text \
                        and "ErrParse" not in expected_text:
                    continue
                found.append(Found(query, bool(verdict), case.line, f"table:{call.name}"))

    # direct calls on a literal, or on a variable assigned a literal just before
    for call in calls(toks, 0, len(toks), pairs):
        if call.arg in consumed:
            continue
        a, b = call.arg
        query = string_value(toks, a, b)
        if query is None and b - a == 1 and toks[a].kind == "id":
            query = _assigned_literal(toks, toks[a].text, a)
        if query is None:
            continue
        mode = CONSUMERS[call.name]
        if call.name in ("ParseLogSelector", "ParseMatchers") and call.second_arg != "true":
            continue
        check = "ok" if call.name == "MustParseExpr" else next_check(toks, call, len(toks))
        if check is None:
            continue
        accept = check == "ok"
        if (accept and mode == REJECTS_ONLY) or (not accept and mode in (ACCEPTS_ONLY, PARSE_ERRORS_ONLY)):
            continue
        found.append(Found(query, accept, toks[a].line, f"call:{call.name}"))
    return found


def _assigned_literal(toks: list[Tok], name: str, before: int) -> str | None:
    """The constant string last assigned to ``name`` before token ``before`` (within 40 lines)."""
    line = toks[before].line
    for k in range(before - 1, 0, -1):
        if toks[k].line < line - 40:
            return None
        if toks[k].text == name and toks[k + 1].text in (":=", "=") and toks[k - 1].text not in (".", ","):
            end = k + 2
            while end < len(toks) and (toks[end].kind == "str" or toks[end].text == "+"):
                end += 1
            return string_value(toks, k + 2, end)
    return None


# -- logqltest scripts -----------------------------------------------------------------------------------

SCRIPTS = "pkg/logql/internal/logqltest/testdata/"
_EVAL = re.compile(r"eval\s+(?:instant\s+at\s+\S+|range\s+from\s+\S+\s+to\s+\S+\s+step\s+\S+)\s+(.*)")
#: What an ``expect fail`` message must contain to be the parser's refusal (not an evaluation error).
PARSE_FAILURES = ("syntax error", "parse error", "unexpected", "expecting", "grouping not allowed",
                  "invalid aggregation", "parameter required", "invalid parameter")


def _strip_comment(text: str) -> str:
    """``text`` up to a ``#`` outside "..." and `...` quotes (the scripts' comment rule)."""
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote is None and c == "#":
            return text[:i].rstrip()
        if quote == '"' and c == "\\":
            i += 2
            continue
        if c in "\"`" and quote in (None, c):
            quote = None if quote == c else c
        i += 1
    return text.rstrip()


def extract_script(src: str) -> list[Found]:
    """``eval`` commands of a ``.logqltest`` script (Loki's promqltest-like DSL): a query with expected
    results parsed; one that must fail counts only when the expected message is the parser's."""
    lines = src.splitlines()
    found = []
    for n, line in enumerate(lines):
        m = _EVAL.fullmatch(line.strip()) if line.startswith("eval") else None
        if m is None:
            continue
        query = _strip_comment(m.group(1))
        block = []
        for follow in lines[n + 1:]:
            if not follow.strip() or not follow[:1].isspace():
                break
            block.append(follow.strip())
        fails = [b for b in block if b.startswith("expect fail")]
        if not fails:
            if block:
                found.append(Found(query, True, n + 1, "eval"))
            continue
        message = fails[0].removeprefix("expect fail").strip()
        if any(marker in message for marker in PARSE_FAILURES):
            found.append(Found(query, False, n + 1, "eval:fail"))
    return found


# -- driver ---------------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_files(repo: Path, commit: str) -> list[str]:
    names = []
    for folder in GLOBS:
        out = git(repo, "ls-tree", "--name-only", commit, folder)
        names += [n for n in out.splitlines() if n.endswith("_test.go") and n.count("/") == folder.count("/")]
    out = git(repo, "ls-tree", "--name-only", commit, SCRIPTS)
    names += [n for n in out.splitlines() if n.endswith(".logqltest")]
    return sorted(set(names))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("loki", type=Path, help="a Git repository of grafana/loki")
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("loki_queries.jsonl"))
    args = ap.parse_args(argv)
    commit = git(args.loki, "rev-parse", args.commit).strip()
    seen: dict[str, dict[str, object]] = {}
    conflicts: set[str] = set()
    for path in test_files(args.loki, commit):
        text = git(args.loki, "show", f"{commit}:{path}")
        for f in extract_script(text) if path.endswith(".logqltest") else extract_file(text):
            entry = {"query": f.query, "accept": f.accept, "source": path, "line": f.line, "loki_commit": commit}
            prior = seen.get(f.query)
            if prior is None:
                seen[f.query] = entry
            elif prior["accept"] != f.accept:
                conflicts.add(f.query)     # two tests disagree (different parse functions): not clear
    entries = [e for q, e in seen.items() if q not in conflicts]
    with args.out.open("w", encoding="utf-8") as out:
        for e in entries:
            out.write(json.dumps(e, ensure_ascii=False) + "\n")
    accepted = sum(1 for e in entries if e["accept"])
    print(f"{len(entries)} queries ({accepted} accepted, {len(entries) - accepted} rejected) from Loki "
          f"{commit[:12]}, {len(conflicts)} left out as contradictory -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
