"""`loglake formats suggest FILE`: what ingest would make of a file, and a rule to paste to pin it down.

It reads a sample of the file (gzip or plain), runs the normaliser ingest runs
over it (so the format found is the one ingest would find, line by line, and the
majority is reported) and, for plain text, the layout learner ingest runs per
source (:func:`ingest.layouts.learn`). It prints the format, the time layout with
an example and its strptime format, the zone, where the level is, the header's
fields, an ``[[ingest.formats]]`` rule ready to paste, how many sample lines
that rule's pattern reads, and a preview of parsed rows.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from ingest.layouts import SourceLayout, learn, rule_pattern, summarise
from ingest.normalise import RAW_SCHEMA, Normaliser, ParseSettings
from ingest.parsers.json import LEVEL_KEYS, TS_KEYS
from loglake.commands.parsers import SAMPLE_LINES
from loglake.core.config import Config, SourceFormat

PREVIEW_ROWS = 5
#: The fields each structured format reads (for the report; the parsers are the truth).
_FORMAT_FIELDS = {
    "syslog": ["priority", "time", "host", "program", "pid", "message"],
    "clf": ["client", "ident", "user", "time", "request", "status", "bytes", "referer", "user_agent"],
    "apache_error": ["time", "module", "level", "pid", "client", "message"],
}
_FORMAT_LEVEL = {
    "syslog": "the <priority> at the start, when written",
    "clf": "from the status code",
    "apache_error": "the [module:level] field",
}


class SampleError(Exception):
    """The file cannot be sampled."""


def read_sample(path: Path, lines: int = SAMPLE_LINES) -> list[str]:
    """The first ``lines`` non-empty lines of ``path`` (gzip-compressed or not), as text."""
    try:
        with path.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        out: list[str] = []
        with (gzip.open(path, "rb") if gz else path.open("rb")) as f:
            for raw in f:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.strip():
                    out.append(line)
                if len(out) >= lines:
                    break
    except (OSError, EOFError) as e:
        raise SampleError(f"cannot read {path}: {e}") from None
    if not out:
        raise SampleError(f"{path} has no lines to sample")
    return out


def _raw(lines: list[str], source: str, fmt: str = "") -> pa.Table:
    n = len(lines)
    now = datetime.now(UTC)
    return pa.table({"line": lines, "observed_ts": [now] * n, "service": ["suggest"] * n, "host": [""] * n,
                     "source": [source] * n, "labels": [None] * n, "wrapper": [""] * n, "format": [fmt] * n,
                     "zone": [""] * n},
                    schema=RAW_SCHEMA)


def _flat_keys(value: Any, prefix: str = "") -> list[str]:
    if not isinstance(value, dict):
        return [prefix] if prefix else []
    keys: list[str] = []
    for k, v in value.items():
        keys += _flat_keys(v, f"{prefix}{k}.")  if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def _toml_str(s: str) -> str:
    """A TOML string of ``s``: literal (no escaping to get wrong) when it can be."""
    if "'''" not in s and not s.endswith("'") and "\n" not in s:
        return f"'''{s}'''"
    return orjson.dumps(s).decode()


def _rule(fmt: str, source_glob: str, layout: SourceLayout | None, ts_format: str | None, zone: str) -> str:
    lines = ["[[ingest.formats]]", f"source = {_toml_str(source_glob)}"]
    if fmt == "text" and layout is not None:
        lines += ['format = "pattern"', f"pattern = {_toml_str(rule_pattern(layout))}"]
        # Pattern rules read their time with ts_format and timezone where the configuration has them.
        for key, value in (("ts_format", ts_format), ("timezone", zone)):
            if value is None:
                continue
            known = key in SourceFormat.model_fields
            lines.append(f"{'' if known else '# '}{key} = {_toml_str(value)}"
                         + ("" if known else "   # (not a rule key in this version)"))
    elif fmt.startswith("pattern") or fmt == "text":
        lines.append('format = "text"        # no time layout found: rows get the time they were read')
    else:
        lines.append(f'format = "{fmt}"')
    return "\n".join(lines) + "\n"


def suggest(cfg: Config, path: Path, lines: int = SAMPLE_LINES) -> dict[str, Any]:
    """What ingest makes of ``path``'s first ``lines`` lines, and a rule for it."""
    sample = read_sample(path, lines)
    zone = cfg.ingest.default_timezone
    normaliser = Normaliser(ParseSettings(default_timezone=zone, max_ahead_s=cfg.ingest.max_ahead_s))
    try:
        out = normaliser(_raw(sample, str(path)))
    finally:
        normaliser.close()
    fmt = normaliser.formats.get(("", "suggest", str(path)), "text")
    notes: list[str] = []
    answer: dict[str, Any] = {"file": str(path), "lines_sampled": len(sample), "format": fmt,
                              "layout": None, "time": None, "zone": zone, "level": None, "fields": []}
    # A structured format reads its own time; the learner still says how it is written (not for JSON).
    layout = learn(sample) if fmt != "json" else None
    ts_format = None
    if layout is not None and fmt != "text":
        summary = summarise(layout, sample)
        answer["time"] = {"layout": layout.time.name, "example": summary.written or layout.time.example,
                          "strptime": summary.strptime, "tokens_before": layout.token,
                          "share": round(layout.share, 4)}
        layout = None
    if layout is not None:
        summary = summarise(layout, sample)
        ts_format = summary.strptime
        answer["layout"] = layout.describe()
        answer["time"] = {"layout": layout.time.name, "example": summary.written or layout.time.example,
                          "strptime": ts_format, "tokens_before": layout.token, "share": round(layout.share, 4)}
        if summary.zoned >= 0.5:
            answer["zone"] = "in the line"
        elif layout.time.kind == "noyear":
            notes.append("the lines write no year: the year they were read in is assumed (the year before "
                         "for a date more than a day ahead)")
        at = next((i for i, s in enumerate(layout.slots) if s.field == "lvl"), None)
        answer["level"] = (f"header field {at + 1} after the time" if at is not None
                           else "none in the header: rows get level unknown")
        answer["fields"] = ["ts", *[s.field or s.kind for s in layout.slots], "message"]
    elif fmt == "text":
        answer["zone"] = None
        answer["level"] = "a level word at the start of the line, when there is one"
        notes.append("no time layout reads half of the sample: rows get the time they were read "
                     "(attrs.ts_parse=observed)")
    elif fmt == "json":
        keys: Counter[str] = Counter()
        for line in sample:
            try:
                keys.update(_flat_keys(orjson.loads(line)))
            except orjson.JSONDecodeError:
                continue
        answer["fields"] = [k for k, _ in keys.most_common(30)]
        answer["level"] = next((f"key {k}" for k in LEVEL_KEYS if k in keys), "no level key")
        ts_key = next((k for k in TS_KEYS if k in keys), None)
        if ts_key is not None:
            answer["time"] = {"layout": f"key {ts_key}", "example": None, "strptime": None, "tokens_before": None,
                              "share": round(keys[ts_key] / len(sample), 4)}
    elif fmt == "logfmt":
        keys = Counter(k for line in sample for k in
                       (part.split("=", 1)[0] for part in line.split() if "=" in part))
        answer["fields"] = [k for k, _ in keys.most_common(30)]
        answer["level"] = next((f"key {k}" for k in ("level", "lvl", "severity") if k in keys), "no level key")
    else:
        answer["fields"] = _FORMAT_FIELDS.get(fmt, [])
        answer["level"] = _FORMAT_LEVEL.get(fmt, "(the format's own)")
    formats = Counter(normaliser.formats.values())
    answer["format_lines"] = dict(formats)
    rule = _rule(fmt, f"*/{path.name}", layout, ts_format, zone)
    answer["rule"] = rule
    if layout is not None:
        matched = pc.sum(pc.match_substring_regex(pa.array(sample), rule_pattern(layout))).as_py() or 0
        answer["rule_reads"] = round(matched / len(sample), 4)
        if "ts_format" not in SourceFormat.model_fields and ts_format:
            notes.append("pattern rules of this version read the ts group as ISO 8601, syslog and a few other "
                         "layouts; ts_format is printed for when rules take it")
    observed = pc.map_lookup(out.column("attrs"), pa.scalar("ts_parse"), "first")
    answer["time_read"] = round(1 - (pc.sum(pc.is_valid(observed)).as_py() or 0) / out.num_rows, 4)
    answer["level_known"] = round(1 - (pc.sum(pc.equal(out.column("level").cast(pa.string()), "unknown")).as_py()
                                       or 0) / out.num_rows, 4)
    answer["preview"] = [{"ts": r["ts"].isoformat(), "level": r["level"], "host": r["host"],
                          "message": r["message"]}
                         for r in out.select(["ts", "level", "host", "message"]).slice(0, PREVIEW_ROWS).to_pylist()]
    answer["notes"] = notes
    return answer


def _print(answer: dict[str, Any]) -> None:
    console = Console()
    t = answer["time"]
    facts = Table(box=None, show_header=False, pad_edge=False)
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    facts.add_row("file", f"{answer['file']} ({answer['lines_sampled']} lines sampled)")
    facts.add_row("format", answer["format"])
    if t is None:
        facts.add_row("time", "none found")
    else:
        written = f", e.g. {t['example']} (strptime {t['strptime']}), after {t['tokens_before']} tokens" \
            if t["example"] else ""
        facts.add_row("time", f"{t['layout']}{written}; in {t['share']:.0%} of the sample")
    facts.add_row("zone", answer["zone"] or "-")
    facts.add_row("level", answer["level"] or "-")
    facts.add_row("fields", ", ".join(answer["fields"]) or "-")
    if answer["layout"]:
        facts.add_row("layout", answer["layout"])
    facts.add_row("parsed", f"time read from the line: {answer['time_read']:.0%}, level known: "
                            f"{answer['level_known']:.0%}")
    console.print(facts)
    for note in answer["notes"]:
        console.print(f"note: {note}", markup=False)
    console.print("\nrule (paste into loglake.toml):")
    # Unwrapped and unstyled, so that it pastes as printed.
    console.print(answer["rule"], soft_wrap=True, markup=False, highlight=False, end="")
    if "rule_reads" in answer:
        console.print(f"its pattern reads {answer['rule_reads']:.0%} of the sample lines")
    preview = Table(title="preview", pad_edge=False)
    for col in ("time", "level", "host", "message"):
        preview.add_column(col, overflow="fold")
    for r in answer["preview"]:
        preview.add_row(r["ts"], r["level"], r["host"] or "-", r["message"][:200])
    console.print(preview)


def cmd_formats(cfg: Config, args: argparse.Namespace) -> int:
    try:
        answer = suggest(cfg, Path(args.file), args.lines)
    except SampleError as e:
        print(f"loglake formats suggest: {e}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print(answer)
    return 0
