"""Joining lines into records: which lines start a record, found for a whole chunk at once.

The rule's regex runs over the chunk in multi-line mode (one pass in C), and
numpy turns its matches into record boundaries; only a record longer than
``max_bytes`` is split with a loop over its own lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from loglake.core.config import MultilineConfig

#: Continuation rules for common stack traces.
PRESETS: dict[str, str] = {
    # "\tat x.y(Z.java:1)", "\t... 12 more", "Caused by: ...", the exception line itself.
    "java": r"[ \t]+(?:at |\.\.\. \d+ (?:more|common frames omitted))|Caused by: |Suppressed: |"
            r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+(?:Exception|Error|Throwable)\b",
    # The traceback header, indented frames and code, chained-exception notes, the exception line.
    "python": r"Traceback \(most recent call last\):|[ \t]+\S|"
              r"During handling of the above exception|The above exception was the direct cause|"
              r"[A-Za-z_][\w.]*(?:Error|Exception|Warning|Interrupt|Exit)(?::|$)|$",
    # A blank line, "goroutine N [...]:", function lines, indented file:line lines, "exit status N".
    "go": r"$|goroutine \d+ \[|[ \t]+\S|created by |exit status \d+|[\w./*()\[\]-]+\(.*\)$",
}


#: Lines a container runtime split, each recognised by its whole shape (a file's name or
#: place only suggests the runtime: an application's own lines there are never joined).
#: CRI: "<RFC 3339 time> <stream> P <text>".
_CRI_PARTIAL = re.compile(rb"(?m)^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2}) "
                          rb"(?:stdout|stderr) P ")
#: Docker json-file: {"log":"...","stream":"...",["attrs":{...},]"time":"..."}, its "log" value the
#: group; a partial one if that does not end in an escaped newline. No "^": led by a literal, the
#: search skips ahead fast, and a match that is not at a line start is not counted.
_STRING = rb'[^"\\\n]*(?:\\.[^"\\\n]*)*'
_DOCKER_LINE = re.compile(rb'(?m)\{"log":"(' + _STRING + rb')","stream":"(?:stdout|stderr)",'
                          rb'(?:"attrs":\{(?:[^"\n{}]|"' + _STRING + rb'")*\},)?"time":"[^"\n]+"\}\r?$')


def _ends_in_a_newline(json_string: bytes) -> bool:
    """Whether a JSON string's text ends with the escape \\n (an odd run of backslashes, then n)."""
    if not json_string.endswith(b"n"):
        return False
    head = json_string[:-1]
    return (len(head) - len(head.rstrip(b"\\"))) % 2 == 1


@dataclass(frozen=True)
class LineJoiner:
    """Compiled multiline rule, or a container runtime's partial-line joining."""

    pattern: re.Pattern[bytes]
    starts_on_match: bool       # True: a match starts a record; False: a match continues one
    max_lines: int
    max_bytes: int
    timeout_s: float
    wrapper: str = ""           # "cri" or "docker": join the runtime's partial lines instead
    #: The rule alone, to re-check a line within its own bounds (see ``_matching_lines``).
    bounded: re.Pattern[bytes] | None = None

    @classmethod
    def for_wrapper(cls, wrapper: str, max_bytes: int, timeout_s: float) -> LineJoiner:
        pattern = _CRI_PARTIAL if wrapper == "cri" else _DOCKER_LINE
        return cls(pattern, False, 1_000_000, max_bytes, timeout_s, wrapper)

    def _line_ends_record(self, data: bytes, starts: np.ndarray) -> np.ndarray:
        """For a suggested wrapper: does each line end its record? All do but the runtime's partials."""
        partial = (m.start() for m in self.pattern.finditer(data)
                   if self.wrapper == "cri" or not _ends_in_a_newline(m.group(1)))
        return ~np.isin(starts, np.fromiter(partial, dtype=np.int64))

    def last_record_complete(self, data: bytes, starts: np.ndarray) -> bool:
        """Whether the final line closes its record (only wrappers can tell)."""
        return self.split(data, starts)[1]

    @classmethod
    def from_config(cls, mc: MultilineConfig) -> LineJoiner:
        if mc.preset:
            text, starts = PRESETS[mc.preset], False
        elif mc.start_pattern:
            text, starts = mc.start_pattern, True
        else:
            text, starts = mc.continue_pattern or "", False
        text = text[1:] if text.startswith("^") else text
        # A zero-width look-ahead at each line start, capturing how far the rule reached.
        return cls(re.compile(b"(?m)^(?=(" + text.encode() + b"))"), starts, mc.max_lines, mc.max_bytes,
                   mc.timeout_s, bounded=re.compile(b"(?m)(?:" + text.encode() + b")"))

    def _matching_lines(self, data: bytes) -> np.ndarray:
        """Starts of the lines the rule matches, each judged within its own line.

        One pass of the look-ahead over the chunk finds the candidates; a match
        that reached past its line's newline (a rule with ``\\s*``, say) is
        re-checked against that line alone, so no line is judged by the next.
        """
        out = []
        for m in self.pattern.finditer(data):
            start, reach = m.start(), m.end(1)
            if reach > start and data.find(b"\n", start, reach) >= 0:
                line_end = data.find(b"\n", start)
                assert self.bounded is not None
                if not self.bounded.match(data, start, line_end if line_end >= 0 else len(data)):
                    continue
            out.append(start)
        return np.array(out, dtype=np.int64)

    def record_starts(self, data: bytes, line_starts: np.ndarray) -> np.ndarray:
        """Offsets in ``data`` where records begin (always including 0)."""
        return self.split(data, line_starts)[0]

    def split(self, data: bytes, line_starts: np.ndarray) -> tuple[np.ndarray, bool]:
        """Record starts, and whether the last record is known to be complete (wrappers only)."""
        complete = False
        if self.wrapper:
            ends = self._line_ends_record(data, line_starts)
            complete = bool(ends[-1])
            is_start = np.concatenate([[True], ends[:-1]])
        else:
            hit = np.isin(line_starts, self._matching_lines(data))
            is_start = hit if self.starts_on_match else ~hit
        if len(is_start):
            is_start[0] = True
        # Cap lines per record: every max_lines-th line of a record starts a new one.
        group = np.cumsum(is_start) - 1
        first_line = np.flatnonzero(is_start)
        position = np.arange(len(line_starts)) - first_line[group]
        is_start |= (position % self.max_lines) == 0
        starts = line_starts[is_start]
        return self._cap_bytes(starts, line_starts, len(data)), complete

    def _cap_bytes(self, starts: np.ndarray, line_starts: np.ndarray, end: int) -> np.ndarray:
        sizes = np.diff(np.append(starts, end))
        if not np.any(sizes > self.max_bytes):
            return starts
        out: list[int] = []
        for s, size in zip(starts.tolist(), sizes.tolist(), strict=True):
            out.append(s)
            if size <= self.max_bytes:
                continue
            record_end = s + size
            inner = line_starts[(line_starts > s) & (line_starts < record_end)].tolist()
            begin = s
            for i, ls in enumerate(inner):
                line_end = inner[i + 1] if i + 1 < len(inner) else record_end
                if line_end - begin > self.max_bytes:     # this line would overflow the piece
                    out.append(ls)
                    begin = ls
        return np.array(out, dtype=np.int64)


def line_starts(data: bytes) -> np.ndarray:
    """Offsets where the lines of ``data`` begin (the last may lack its newline)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 0x0A) + 1
    return np.concatenate([[0], ends[ends < len(data)]]).astype(np.int64)
