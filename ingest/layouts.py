"""Learning a text source's line layout: where its time is and how to read it, its level, its header.

A source (one service's file or stream) writes every line the same way, so its
layout is learned once from a sample of its lines, not guessed line by line:

1. **The time.** Every layout of :data:`TIME_LAYOUTS` is tried at the start of
   each of the first whitespace-separated tokens of each sampled line. The
   (layout, token) pair that reads the most lines wins; an epoch column beats
   a zone-less wall clock that reads nearly as many (it is an instant), then a
   zone, then a fraction of a second.
2. **The header.** What follows the time is cut into tokens and each token
   classed: a level word, a number, a bracketed group, a separator, a
   ``component:`` tag, another time, or a word. A position whose class is the
   same in nearly every line is part of the header; the header runs to the
   last level or tag found that way, and on over the numbers, brackets and
   separators after it and words that stand as columns (followed by a run of
   spaces, a ``|``, a bracket or a ``-``). What comes after is the message.
3. **A regular expression.** The learned layout compiles to one RE2 pattern
   with named groups (the time's parts, ``lvl``, ``host``, ``comp``, ``pid``
   and ``msg``) that ingest runs over the source's lines in one vectorised
   pass (:mod:`ingest.sources`); a line it does not match is parsed the
   generic way.

Everything here runs on samples (a few hundred lines per source, when a source
is new or its layout stops matching), never per line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ingest.levels import SEVERITY_OF

#: Characters of a line's head the learner and the compiled pattern look at for the header.
HEAD_CHARS = 320
#: Tokens from the start of the line at which a time may begin.
MAX_TIME_TOKEN = 10
#: Header tokens after the time that are classed.
MAX_SLOTS = 14
#: Share of the sample a position's class must hold to be part of the header.
DOMINANT = 0.9
#: Share of the sample the chosen time layout must read for a source to have a layout.
MIN_TIME_SHARE = 0.5
#: Below this many sample lines, only the time, a level and punctuation count as header.
MIN_LINES_FOR_COLUMNS = 8

_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_MON = r"(?P<t_monname>(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*)"
_DAYNAME = r"(?i:mon|tue|wed|thu|fri|sat|sun)[a-z]*"
_ZONE = r"(?P<t_zone>Z|[+-]\d{2}:?\d{2}|UTC|GMT)"
_FRAC = r"(?:[.,:](?P<t_frac>\d{1,9}))?"
_HMS = r"(?P<t_hour>[ \d]?\d):(?P<t_min>\d{2}):(?P<t_sec>\d{2})"
_HMS2 = r"(?P<t_hour>\d{2}):(?P<t_min>\d{2}):(?P<t_sec>\d{2})"
#: What may follow a time: the end, a space, or punctuation that closes a header field.
_END = r"(?:$|[\s\]\)|,;>\"']|:\s|\.\s)"


@dataclass(frozen=True)
class TimeLayout:
    """A way of writing a time, as an RE2 fragment with named parts.

    Parts: ``t_year`` year, ``t_yy`` two-digit year, ``t_mon`` month, ``t_monname`` month
    name, ``t_day`` day, ``t_hour``/``t_min``/``t_sec`` clock, ``t_frac`` fraction,
    ``t_ampm`` AM/PM, ``t_zone`` zone, ``t_epoch`` epoch number.
    """

    name: str
    regex: str
    example: str
    #: "wall" (a date and a clock), "noyear" (no year written) or "epoch".
    kind: str = "wall"


#: The catalogue, most specific first within a family (the learner picks by how many lines each reads).
TIME_LAYOUTS: tuple[TimeLayout, ...] = (
    TimeLayout("iso8601", r"(?P<t_year>\d{4})-(?P<t_mon>\d{2})-(?P<t_day>\d{2})[T ]" + _HMS2 + _FRAC
               + r"(?: ?" + _ZONE + ")?",
               "2016-09-28 04:30:30,123"),
    TimeLayout("iso8601_underscore", r"(?P<t_year>\d{4})-(?P<t_mon>\d{2})-(?P<t_day>\d{2})[_-]"
               r"(?P<t_hour>\d{2})[.:](?P<t_min>\d{2})"
               r"[.:](?P<t_sec>\d{2})" + _FRAC, "2005-06-03-15.42.50.675872"),
    TimeLayout("ymd_slash", r"(?P<t_year>\d{4})/(?P<t_mon>\d{1,2})/(?P<t_day>\d{1,2})[ :T]" + _HMS + _FRAC
               + r"(?: ?" + _ZONE + ")?", "2009/11/10 23:00:00"),
    TimeLayout("ymd_dot", r"(?P<t_year>\d{4})\.(?P<t_mon>\d{1,2})\.(?P<t_day>\d{1,2})[ :T-]" + _HMS + _FRAC,
               "2005.06.03 15:42:50"),
    TimeLayout("clf", r"(?P<t_day>\d{2})/" + _MON + r"/(?P<t_year>\d{4}):" + _HMS2 + _FRAC + r"(?: " + _ZONE + ")?",
               "10/Oct/2000:13:55:36 -0700"),
    TimeLayout("dmy_name", r"(?P<t_day>\d{1,2})[- ]" + _MON + r"[- ](?P<t_year>\d{4})[ :]" + _HMS + _FRAC
               + r"(?: ?" + _ZONE + ")?", "14-Jun-2024 15:16:01.123"),
    TimeLayout("rfc1123", _DAYNAME + r", (?P<t_day>\d{1,2}) " + _MON + r" (?P<t_year>\d{4}) " + _HMS2
               + r"(?: " + _ZONE + ")?", "Sun, 06 Nov 1994 08:49:37 GMT"),
    TimeLayout("ctime", r"(?:" + _DAYNAME + r" )?" + _MON + r" +(?P<t_day>\d{1,2}) " + _HMS2 + _FRAC
               + r"(?: " + _ZONE + r")? (?P<t_year>\d{4})", "Sun Dec 04 04:47:44 2005"),
    TimeLayout("mdy_name", _MON + r" +(?P<t_day>\d{1,2}),? (?P<t_year>\d{4}),? " + _HMS + _FRAC
               + r"(?: ?(?P<t_ampm>[AaPp][Mm]))?", "Jun 14, 2024 3:16:01 PM"),
    TimeLayout("mdy_slash", r"(?P<t_mon>\d{1,2})/(?P<t_day>\d{1,2})/(?P<t_year>\d{4})[ :]" + _HMS + _FRAC
               + r"(?: ?(?P<t_ampm>[AaPp][Mm]))?", "06/14/2024 15:16:01"),
    TimeLayout("dmy_dot", r"(?P<t_day>\d{1,2})\.(?P<t_mon>\d{1,2})\.(?P<t_year>\d{4})[ :]" + _HMS + _FRAC,
               "14.06.2024 15:16:01"),
    TimeLayout("yy_slash", r"(?P<t_yy>\d{2})/(?P<t_mon>\d{2})/(?P<t_day>\d{2}) " + _HMS2 + _FRAC, "17/06/09 20:10:40"),
    TimeLayout("ymd_compact", r"(?P<t_year>\d{4})(?P<t_mon>\d{2})(?P<t_day>\d{2})[-T ]?"
               r"(?P<t_hour>\d{1,2}):(?P<t_min>\d{1,2}):"
               r"(?P<t_sec>\d{1,2})" + _FRAC,
               "20171223-22:15:29:606"),
    TimeLayout("yymmdd_hhmmss", r"(?P<t_yy>\d{2})(?P<t_mon>\d{2})(?P<t_day>\d{2}) "
               r"(?P<t_hour>\d{2})(?P<t_min>\d{2})(?P<t_sec>\d{2})",
               "081109 203615"),
    TimeLayout("yymmdd_clock", r"(?P<t_yy>\d{2})(?P<t_mon>\d{2})(?P<t_day>\d{2}) +" + _HMS + _FRAC, "130930 9:00:00"),
    TimeLayout("syslog", _MON + r" +(?P<t_day>\d{1,2}) " + _HMS2 + _FRAC, "Nov  9 12:01:01", "noyear"),
    TimeLayout("md_dash", r"(?P<t_mon>\d{2})-(?P<t_day>\d{2}) " + _HMS2 + _FRAC, "03-17 16:13:38.811", "noyear"),
    TimeLayout("md_dot", r"(?P<t_mon>\d{2})\.(?P<t_day>\d{2}) " + _HMS2 + _FRAC, "10.30 16:49:06", "noyear"),
    TimeLayout("md_slash", r"(?P<t_mon>\d{2})/(?P<t_day>\d{2}) " + _HMS2 + _FRAC, "10/30 16:49:06", "noyear"),
    TimeLayout("klog", r"(?P<t_lvl>[IWEFD])(?P<t_mon>\d{2})(?P<t_day>\d{2}) " + _HMS2 + _FRAC,
               "I1126 17:55:35.123456", "noyear"),
    TimeLayout("epoch", r"(?P<t_epoch>\d{10}(?:\.\d{1,9})?|\d{13}|\d{16}|\d{19})", "1117838570", "epoch"),
)
LAYOUTS_BY_NAME: dict[str, TimeLayout] = {t.name: t for t in TIME_LAYOUTS}
#: Every time part a layout may name (each compiled pattern yields a subset).
TIME_PARTS: tuple[str, ...] = ("t_year", "t_yy", "t_mon", "t_monname", "t_day", "t_hour", "t_min", "t_sec",
                               "t_frac", "t_ampm", "t_zone", "t_epoch", "t_lvl")
#: Named groups a compiled source pattern may have besides the time's parts.
FIELD_PARTS: tuple[str, ...] = ("lvl", "host", "comp", "pid", "msg")

# The learner's own matching runs Python's engine: on heads of at most HEAD_CHARS characters and
# patterns without nested repetition its cost is bounded, and it is twenty times faster to call
# than RE2's binding; the patterns ingest runs over whole batches are RE2 (pyarrow's).
_COMPILED = {t.name: re.compile(r"[\[(<\"']?" + t.regex + _END) for t in TIME_LAYOUTS}

# Header tokens: a bracketed group (one level of nesting), a parenthesised group, a lone separator,
# or a word (with a [pid] and a (detail) glued on, and a closing colon).
_TOKEN = re.compile(
    r"\s*(\[(?:[^\[\]]|\[[^\[\]]*\])*\]|\([^()\s]*\)|[|,;\]\)]|:(?=\s)|-{1,2}>?(?=\s|$)"
    r"|<\d{1,3}>|[^\s|\[\]]+(?:\[[^\]\s]*\])?(?:\([^)\s]*\))?(?::(?=\s|$))?)")
_CLOCKISH = re.compile(r"^\d{1,4}[-./:_]\d{1,2}(?:[-./:_T]\d{1,4})+(?:[.,]\d+)?$")
_NUM = re.compile(r"^-?\d+$")
_SEP = frozenset({"|", ",", ";", "]", ")", ":", "-", "--", "->", "-->"})

#: Lower-case level words (and single upper-case letters) a header may carry.
LEVEL_WORDS = frozenset(SEVERITY_OF) | {"note", "system", "sever", "informational", "warnings"}
_LETTER_LEVELS = frozenset("VDIWEFAC")
#: RE2: a level word in any case, or a level letter (longest words first).
_LEVEL_ALTERNATION = "(?i:" + "|".join(sorted((w for w in LEVEL_WORDS if len(w) > 1), key=len, reverse=True)) + \
    ")|[" + "".join(sorted(_LETTER_LEVELS)) + "]"


def level_token(token: str) -> str | None:
    """The level word a header token stands for (``[Warning]`` -> ``warning``), or None."""
    t = token.strip("[]()<>:,")
    if len(t) == 1:
        return t.lower() if t in _LETTER_LEVELS else None
    t = t.split("/", 1)[0].lower()
    if t.isdigit() and token.startswith("<"):
        return ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")[int(t) % 8]
    return t if t in LEVEL_WORDS else None


def _class(token: str, spaces_after: int) -> str:
    if level_token(token) is not None and (len(token.strip("[]()<>:,")) > 1 or token.isupper()):
        return "lvl"
    if token[0] in "[(":
        return "brk"
    if token in _SEP:
        return "sep"
    if _NUM.match(token):
        return "num"
    if _CLOCKISH.match(token.rstrip(",:")):
        return "ts"
    if token.endswith(":") and "://" not in token and len(token) > 1:
        return "tag"
    return "word"


@dataclass(frozen=True)
class _Token:
    text: str
    kind: str
    spaces_after: int


def header_tokens(rest: str) -> list[_Token]:
    """The first tokens of what follows a line's time, classed."""
    out: list[_Token] = []
    pos = 0
    while len(out) < MAX_SLOTS:
        m = _TOKEN.match(rest, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        text = m.group(1)
        after = len(rest) - pos - len(rest[pos:].lstrip(" \t"))
        out.append(_Token(text, _class(text, after), after))
    return out


@dataclass(frozen=True)
class Slot:
    """A header position after the time: its class, and for words what makes them a column."""

    kind: str
    #: For a separator: the character; for a column word: what follows it ("spaces", "|", "brk", "sep").
    detail: str = ""
    #: The field this slot fills: "lvl", "comp", "pid", "host" or "".
    field: str = ""


@dataclass(frozen=True)
class SourceLayout:
    """A source's learned layout, and the RE2 pattern it compiles to."""

    time: TimeLayout
    #: Whitespace-separated tokens before the time.
    token: int
    slots: tuple[Slot, ...]
    #: Lines of the sample the layout read.
    share: float
    pattern: str = field(default="")

    def describe(self) -> str:
        """A short human description, e.g. ``epoch at token 1; header: ts word lvl``."""
        where = "at the start" if self.token == 0 else f"after {self.token} token{'s' * (self.token > 1)}"
        header = " ".join(s.field or s.kind for s in self.slots) or "-"
        return f"{self.time.name} ({self.time.example}) {where}; header after it: {header}"


def _slot_regex(slot: Slot) -> str:
    if slot.kind == "lvl":
        # A word, then the end of the token: a level never runs into what follows it.
        return (r"[\[(<]?(?P<lvl>" + _LEVEL_ALTERNATION + r")(?:/[^\s\]]*)?[\])>]?:?,?(?:\s|$)"
                if slot.field == "lvl" else r"\S+")
    if slot.kind == "brk":
        return r"(?:\[(?:[^\[\]]|\[[^\[\]]*\])*\]|\([^()\s]*\))"
    if slot.kind == "sep":
        return re.escape(slot.detail)
    if slot.kind == "num":
        return r"(?P<pid>\d+)" if slot.field == "pid" else r"-?\d+"
    if slot.kind == "tag":
        return r"(?P<comp>[^\s|\[\]]*?[^\s|\[\]:])(?:\[(?P<pid>[^\]\s]*)\])?(?: ?\([^)\s]*\))?:"
    if slot.field == "comp":
        # A program before " - " may carry a second word ("svchost.exe *64 - ").
        return r"(?P<comp>[^\s|\[\]]+(?: [^\s|\[\]]+)?)" if slot.detail == "sep" else r"(?P<comp>[^\s|\[\]]+)"
    if slot.field == "host":
        return r"(?P<host>[^\s|\[\]]+)"
    return r"[^\s|\[\]]+"


def time_pattern(time: TimeLayout, token: int) -> str:
    """The RE2 pattern that reads only a layout's time (for a line whose header differs), and ``msg``."""
    return (rf"^(?:\S+\s+){{{token}}}" if token else "^") + r"[\[(<\"']?" + time.regex + \
        r"[\])\"']?[,:]?\s*(?P<msg>(?s:.*))$"


def compile_pattern(time: TimeLayout, token: int, slots: Sequence[Slot]) -> str:
    """The RE2 pattern of a layout: the time's parts, the header's fields and ``msg``."""
    parts = [rf"^(?:\S+\s+){{{token}}}" if token else "^", r"[\[(<\"']?", time.regex]
    for s in slots:
        parts.append(r"[\])\"']?\s*" if not parts[-1].endswith(r"\s*") else "")
        parts.append(_slot_regex(s))
    parts.append(r"[\])\"']?\s*(?P<msg>(?s:.*))$" if not slots else r"\s*(?P<msg>(?s:.*))$")
    return "".join(parts)


def _month(groups: dict[str, str]) -> int:
    if groups.get("t_mon"):
        return int(groups["t_mon"])
    return _MONTHS.split("|").index(groups["t_monname"][:3].lower()) + 1


def _time_ok(groups: dict[str, str]) -> bool:
    """Whether a layout's match is a time (month, day and clock in range, an epoch since 1990)."""
    if groups.get("t_epoch"):
        v = float(groups["t_epoch"])
        digits = len(groups["t_epoch"].split(".")[0])
        seconds = v / 10 ** (digits - 10)
        return 631152000 <= seconds <= 4102444800          # 1990 to 2100
    try:
        month = _month(groups)
        hour = int(groups["t_hour"])
        if groups.get("t_ampm"):
            hour = hour % 12 + (12 if groups["t_ampm"].lower() == "pm" else 0)
        year = int(groups["t_year"]) if groups.get("t_year") else 2000 + int(groups.get("t_yy") or 0)
        datetime(year, month, int(groups["t_day"]), hour, int(groups["t_min"]), int(groups["t_sec"]))
    except (KeyError, ValueError):
        return False
    return True


def _token_starts(head: str) -> list[int]:
    starts = [m.start() for m in re.finditer(r"\S+", head)]
    return starts[:MAX_TIME_TOKEN]


def _find_times(head: str) -> list[tuple[str, int, int]]:
    """(layout, token index, end offset) of every time found at a token's start in ``head``."""
    found = []
    for k, start in enumerate(_token_starts(head)):
        for t in TIME_LAYOUTS:
            compiled = _COMPILED[t.name]
            m = compiled.match(head, start)
            if m is not None and _time_ok(m.groupdict()):
                # The end of the time itself, not of what follows it.
                index = compiled.groupindex
                end = max(m.end(index[g]) for g in TIME_PARTS if g in index and m.group(index[g]) is not None)
                found.append((t.name, k, end))
    return found


def _rank(name: str, count: int, best: int) -> tuple[int, int, int]:
    t = LAYOUTS_BY_NAME[name]
    close = count >= 0.9 * best
    return (close, 1 if close and t.kind == "epoch" else 0, count)


def learn(lines: Sequence[str]) -> SourceLayout | None:
    """The layout that reads most of ``lines`` (a source's sample), or None when no time layout reads half."""
    heads = [ln[:HEAD_CHARS] for ln in lines if ln.strip()]
    if not heads:
        return None
    votes: Counter[tuple[str, int]] = Counter()
    per_line: list[dict[tuple[str, int], int]] = []
    for head in heads:
        seen: dict[tuple[str, int], int] = {}
        for name, k, end in _find_times(head):
            seen.setdefault((name, k), end)
        per_line.append(seen)
        for key in seen:
            votes[key] += 1
    if not votes:
        return None
    best = max(votes.values())
    (name, k), count = max(votes.items(), key=lambda kv: (*_rank(kv[0][0], kv[1], best), -kv[0][1],
                                                          -TIME_LAYOUTS.index(LAYOUTS_BY_NAME[kv[0][0]])))
    if count < MIN_TIME_SHARE * len(heads) and not _records_with_continuations(heads, per_line, (name, k), count):
        return None
    rests = [heads[i][seen[(name, k)]:] for i, seen in enumerate(per_line) if (name, k) in seen]
    slots = _learn_slots(rests, LAYOUTS_BY_NAME[name])
    layout = LAYOUTS_BY_NAME[name]
    return SourceLayout(layout, k, slots, count / len(heads), compile_pattern(layout, k, slots))


#: A line that continues a record: indented, or how Java and Python go on with a stack trace.
CONTINUATION = (r"^(?:\s|Caused by|Traceback|During handling|\.\.\. \d+ (?:more|common)|[}\])]"
                r"|[\w$.]+(?:Exception|Error|Throwable)\b)")
_CONTINUATION = re.compile(CONTINUATION)


def _records_with_continuations(heads: list[str], per_line: list[dict[tuple[str, int], int]],
                                key: tuple[str, int], count: int) -> bool:
    """Whether the lines without the time continue records that start with it (stack traces):
    then a layout that reads fewer than half the lines still reads every record's first line."""
    if count < 3 or key[1] > 2:
        return False
    rest = [h for h, seen in zip(heads, per_line, strict=True) if key not in seen]
    return sum(1 for h in rest if _CONTINUATION.match(h)) >= 0.8 * len(rest)


def _written_as_level(token: str, letter: bool = False) -> bool:
    word = token.strip(":,")
    return (word.startswith("[") and word.endswith("]")) or (len(word) > 1 or letter) and word.isupper()


def _dominant(tokens: list[list[_Token]], i: int) -> tuple[str, str] | None:
    """The (class, detail) that nearly every line has at position ``i``, if any."""
    n = len(tokens)
    kinds = Counter((t[i].kind, t[i].text if t[i].kind == "sep" else "") if i < len(t) else ("end", "")
                    for t in tokens)
    (kind, detail), c = kinds.most_common(1)[0]
    if kind == "end" or c < DOMINANT * n:
        return None
    return kind, detail


def _column_detail(tokens: list[list[_Token]], i: int) -> str:
    """What makes the word at ``i`` a column in nearly every line ("" when nothing does)."""
    n = len(tokens)
    follows: Counter[str] = Counter()
    for t in tokens:
        if i + 1 < len(t):
            nxt = t[i + 1]
            if t[i].spaces_after >= 2:
                follows["spaces"] += 1
            elif nxt.kind == "brk" and t[i].spaces_after:
                follows["brk"] += 1
            elif nxt.kind == "sep" and nxt.text in ("|", "-", "--", "->", "-->"):
                follows["sep"] += 1
    if not follows:
        return ""
    what, c = follows.most_common(1)[0]
    return what if c >= DOMINANT * n else ""


def _learn_slots(rests: list[str], time: TimeLayout) -> tuple[Slot, ...]:
    tokens = [header_tokens(r) for r in rests]
    classes: list[tuple[str, str]] = []
    for i in range(MAX_SLOTS):
        d = _dominant(tokens, i)
        if d is None:
            break
        classes.append(d)
    few = len(rests) < MIN_LINES_FOR_COLUMNS
    if few:
        # From a line or two, a position proves nothing: a level is a word written as one (upper case,
        # or in brackets) right after the time, as the generic reading has it, never a word further on.
        # (Behind numbers only, as logcat's pid and tid, a single letter counts too.)
        def stands_as_level(i: int) -> bool:
            before = [kind for kind, _ in classes[:i]]
            if any(kind not in ("num", "sep", "brk") for kind in before):
                return False
            letter_ok = bool(before) and all(kind == "num" for kind in before)
            return all(_written_as_level(t[i].text, letter_ok) for t in tokens)
        classes = [("word", "") if kind == "lvl" and not stands_as_level(i) else (kind, detail)
                   for i, (kind, detail) in enumerate(classes)]
    # The header runs to the last level or tag whose position is fixed (words before it included)...
    # (Only the first level position: a later level word is the message's, "... ERROR cache error 3 ...".)
    first_level = next((i for i, (kind, _) in enumerate(classes) if kind == "lvl"), None)
    anchors = [i for i, (kind, _) in enumerate(classes)
               if i == first_level or (kind == "tag" and not few)]
    end = anchors[-1] + 1 if anchors else 0
    if anchors and classes[anchors[-1]][0] == "lvl":
        # ...and on over what usually follows a level: numbers, brackets, separators, a tag, column words.
        pass
    if not anchors or classes[end - 1][0] != "tag":
        while end < len(classes):
            kind, _ = classes[end]
            if kind in ("brk", "sep") or (kind == "num" and not few):
                end += 1
            elif kind == "tag" and not few:
                end += 1
                break
            elif kind == "word" and not few and _column_detail(tokens, end):
                end += 1
            else:
                break
    # A trailing separator with nothing after it in the header belongs to the header only when it is fixed;
    # it is (it is in `classes`), so keep it.
    slots: list[Slot] = []
    has_tag = any(kind == "tag" for kind, _ in classes[:end])
    have: set[str] = set()
    for i, (kind, detail) in enumerate(classes[:end]):
        name = ""
        if kind == "lvl" and "lvl" not in have:
            name = "lvl"
        elif kind == "num" and "pid" not in have and not has_tag and i + 1 < end and classes[i + 1][0] == "lvl":
            name = "pid"
        elif kind == "word" and not has_tag and "comp" not in have and i > 0 and classes[i - 1][0] in ("lvl", "sep") \
                and _column_detail(tokens, i):
            name = "comp"
        elif kind == "word" and has_tag and i + 1 < end and classes[i + 1][0] == "tag" \
                and (classes[i - 1][0] == "ts" if i > 0 else time.name == "syslog"):
            name = "host"
        if kind == "tag":
            have.update(("comp", "pid"))
        if name:
            have.add(name)
        if kind == "word":
            detail = _column_detail(tokens, i)
        slots.append(Slot(kind, detail, name))
    return tuple(slots)


# -- reading a time from its parts (what the SQL does, for the learner's checks and `formats suggest`) --

def instant(groups: dict[str, str], observed: datetime, zone: timedelta = timedelta(0)) -> datetime | None:
    """The instant a match's time parts name (zone-less times at UTC offset ``zone``), or None."""
    if groups.get("t_epoch"):
        digits = len(groups["t_epoch"].split(".")[0])
        return datetime.fromtimestamp(float(groups["t_epoch"]) / 10 ** (digits - 10), UTC)
    if not _time_ok(groups):
        return None
    month = _month(groups)
    hour = int(groups["t_hour"])
    if groups.get("t_ampm"):
        hour = hour % 12 + (12 if groups["t_ampm"].lower() == "pm" else 0)
    frac = int((groups.get("t_frac") or "0").ljust(6, "0")[:6])
    if groups.get("t_year"):
        year = int(groups["t_year"])
    elif groups.get("t_yy"):
        year = 2000 + int(groups["t_yy"])
    else:
        year = observed.year
    t = datetime(year, month, int(groups["t_day"]), hour, int(groups["t_min"]), int(groups["t_sec"]), frac)
    z: str = groups.get("t_zone") or ""
    if z and z not in ("Z", "UTC", "GMT"):
        sign = -1 if z[0] == "-" else 1
        hhmm = z[1:].replace(":", "")
        zone = sign * timedelta(hours=int(hhmm[:2]), minutes=int(hhmm[2:]))
    elif z:
        zone = timedelta(0)
    t = t.replace(tzinfo=UTC) - zone
    if not (groups.get("t_year") or groups.get("t_yy")) and t > observed + timedelta(days=1):
        t = t.replace(year=t.year - 1)
    return t


# -- a learned layout as configuration (`loglake formats suggest`) --

#: strptime directives for a time part (``t_epoch`` has none: an epoch needs no format).
_DIRECTIVES = {"t_year": "%Y", "t_yy": "%y", "t_mon": "%m", "t_monname": "%b", "t_day": "%d", "t_hour": "%H",
               "t_min": "%M", "t_sec": "%S", "t_frac": "%f", "t_ampm": "%p", "t_zone": "%z"}
_DAYNAME_TEXT = re.compile(r"(?i:mon|tue|wed|thu|fri|sat|sun)[a-z]*")
#: Group names of a learned pattern as a ``format = "pattern"`` rule names them.
RULE_GROUPS = {"lvl": "level", "msg": "message", "host": "host", "comp": "component", "pid": "pid"}


def strptime_format(time: TimeLayout, text: str) -> str | None:
    """The strptime format of the time at the start of ``text`` (``%Y-%m-%d %H:%M:%S,%f``), or None.

    Worked out from a written example, so it has the separators the source really writes
    (a ``T`` or a space, a comma or a dot before the fraction); an epoch gives ``%s``.
    """
    m = re.compile(time.regex).match(text)
    if m is None:
        return None
    if m.group("t_epoch") if "t_epoch" in m.re.groupindex else None:
        return "%s"
    spans = sorted((m.start(g), m.end(g), _DIRECTIVES[g]) for g in m.re.groupindex
                   if g in _DIRECTIVES and m.group(g) is not None)
    out, pos = [], m.start()
    for start, end, directive in spans:
        out.append(_DAYNAME_TEXT.sub("%a", text[pos:start].replace("%", "%%")))
        if directive == "%H" and m.groupdict().get("t_ampm"):
            directive = "%I"
        elif directive == "%z" and text[start:end].isalpha():
            directive = "%Z"                     # UTC, GMT
        out.append(directive)
        pos = end
    # One space stands for a run (a day padded to two places: "Nov  9").
    return re.sub(r" +", " ", "".join(out).lstrip()) if out else None


def rule_pattern(layout: SourceLayout) -> str:
    """The layout's pattern as a ``format = "pattern"`` rule writes it: one ``ts`` group around the time,
    the header's groups named as rules name them (``level``, ``host``, ``component``, ``pid``, ``message``)."""
    # The time's own parts become plain groups: a rule reads its time with ts_format instead.
    timed = re.sub(r"\(\?P<t_[a-z]+>", "(?:", layout.time.regex)
    pattern = layout.pattern.replace(layout.time.regex, f"(?P<ts>{timed})", 1)
    return re.sub(r"\(\?P<(lvl|msg|host|comp|pid)>", lambda m: f"(?P<{RULE_GROUPS[m.group(1)]}>", pattern)


@dataclass(frozen=True)
class LayoutSummary:
    """What a learned layout reads in a source's sample: how its times are written."""

    #: strptime format of the first time read (None when none was).
    strptime: str | None
    #: The first time read, as written.
    written: str | None
    #: Share of the lines read whose time carries a zone (an epoch counts as one).
    zoned: float


def summarise(layout: SourceLayout, lines: Sequence[str]) -> LayoutSummary:
    """How ``layout`` reads ``lines`` (a sample; Python's engine, never per ingested line)."""
    compiled = re.compile(time_pattern(layout.time, layout.token))
    first: tuple[str, str | None] | None = None
    read = zoned = 0
    for line in lines:
        m = compiled.match(line[:HEAD_CHARS])
        if m is None:
            continue
        read += 1
        parts = [g for g in TIME_PARTS if g in compiled.groupindex and m.group(g) is not None]
        zoned += any(g in ("t_zone", "t_epoch") for g in parts)
        if first is None and parts:
            start, end = min(m.start(g) for g in parts), max(m.end(g) for g in parts)
            # The layout's own regex from where its first part begins (a day name or letter may precede it).
            back = re.compile(layout.time.regex).search(line, max(0, start - 16), end)
            text = line[back.start():back.end()] if back is not None else line[start:end]
            first = (text, strptime_format(layout.time, text))
    return LayoutSummary(first[1] if first else None, first[0] if first else None, zoned / read if read else 0.0)
