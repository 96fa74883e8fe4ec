"""Loghub conformance: ten real system logs through the real pipeline, checked against Loghub's CSVs.

The issue: "A conformance test ingests each through the real pipeline and checks,
against those CSVs, that at least 99% of lines get the right timestamp (to the
second) and level where the CSV has one."

The samples (2,000 lines each, with ``<System>_2k.log_structured.csv`` holding
each line's header fields) live beside the checkout in ``../shared/data/loghub``.
Their licence requires the notice to travel with every copy, so they are never
copied into this repository (nor into the test's temporary directory): the
shipper tails them where they are, and the test skips, saying why, when they
are absent.

``_expected`` maps one CSV row to the timestamp and level the pipeline should
store; its unit tests below run without the data. The conformance test ships
all ten files at once, one service per system, through the real shipper,
broker and ingest worker, reads the stored rows back from the Parquet segments
the catalog lists, matches each to its line, and reports per system.
"""

from __future__ import annotations

import collections
import csv
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from storage.catalog import Catalog
from storage.lines import ORIGINAL_LINE
from tests.helpers.processes import Stack, wait_until

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"   # beside the checkout, never copied in
SYSTEMS = ("Android", "Apache", "HDFS", "Hadoop", "HealthApp", "Linux", "OpenSSH", "OpenStack", "Spark", "Zookeeper")
LINES_PER_SYSTEM = 2000
REQUIRED = 0.99

# Which CSV column holds the line's real level, per system. Loghub's CSV columns
# come from its own header regexes, so a column's name is not always what it holds:
# - Linux: the column named "Level" holds the host name ("combo" in every row);
#   the lines are RFC 3164 syslog without a <PRI>, so they carry no level at all.
# - OpenSSH: no level column (sshd syslog without a <PRI>); its "Date" column is the
#   month, "Day" the day and "Component" the host.
# - HealthApp: "time|component|pid|content", no level.
# - The others' "Level" column is the level token of the line: Apache notice/error,
#   HDFS INFO/WARN, Hadoop INFO/WARN/ERROR/FATAL, Spark INFO, Zookeeper INFO/WARN/ERROR
#   (padded to 5 in the line, trimmed in the CSV), OpenStack INFO/WARNING, Android
#   logcat's one letter V/D/I/W/E (F and A exist in logcat, not in this sample).
LEVEL_COLUMN: dict[str, str | None] = {
    "Android": "Level", "Apache": "Level", "HDFS": "Level", "Hadoop": "Level", "HealthApp": None,
    "Linux": None, "OpenSSH": None, "OpenStack": "Level", "Spark": "Level", "Zookeeper": "Level",
}

_LEVEL_WORDS = {
    "trace": "trace", "finest": "trace", "finer": "trace",
    "debug": "debug", "fine": "debug",
    "info": "info", "notice": "info",
    "warn": "warn", "warning": "warn",
    "error": "error", "err": "error", "severe": "error",
    "fatal": "fatal", "critical": "fatal", "crit": "fatal", "emerg": "fatal", "alert": "fatal",
}
# logcat's priority letters (A is "assert", logged by wtf()).
_ANDROID_LEVELS = {"V": "trace", "D": "debug", "I": "info", "W": "warn", "E": "error", "F": "fatal", "A": "fatal"}


@dataclass(frozen=True)
class Expected:
    ts: datetime            # UTC, to the second
    level: str | None       # None: the line has no level to check


def _with_year(no_year: str, fmt: str, observed: datetime) -> datetime:
    """A time without a year takes the observed year, or the year before when that
    puts it more than one day after the observed time (December lines read in January)."""
    t = datetime.strptime(f"{observed.year} {no_year}", f"%Y {fmt}").replace(tzinfo=UTC)
    if t > observed + timedelta(days=1):
        t = t.replace(year=t.year - 1)
    return t


def _healthapp_time(text: str) -> datetime:
    # "20171223-22:15:29:606", fields not zero-padded: "20171224-1:2:35:789".
    day, clock = text.split("-")
    hour, minute, second, _ms = (int(p) for p in clock.split(":"))
    return datetime.strptime(day, "%Y%m%d").replace(hour=hour, minute=minute, second=second, tzinfo=UTC)


def _expected(system: str, row: dict[str, str], observed: datetime | None = None) -> Expected:
    """The timestamp (UTC, to the second) and level the pipeline should store for one CSV row.

    ``observed`` is when the line was read (now, by default): it supplies the year
    for formats without one. Times without a zone are UTC; two-digit years are 20yy
    (all of them: strptime's %y would make 69-99 the 1900s).
    """
    observed = observed or datetime.now(UTC)
    match system:
        case "Apache":       # [Sun Dec 04 04:47:44 2005] [notice] ...
            ts = datetime.strptime(row["Time"], "%a %b %d %H:%M:%S %Y")
        case "HDFS":         # 081109 203615 148 INFO ...
            ts = datetime.strptime(f"20{row['Date']} {row['Time']}", "%Y%m%d %H%M%S")
        case "Hadoop" | "Zookeeper":   # 2015-10-18 18:01:47,978 ...
            ts = datetime.strptime(f"{row['Date']} {row['Time'].split(',')[0]}", "%Y-%m-%d %H:%M:%S")
        case "OpenStack":    # nova-api.log.1.2017-05-16_13:53:08 2017-05-16 00:00:00.008 ...: Date/Time is the second
            ts = datetime.strptime(f"{row['Date']} {row['Time'].split('.')[0]}", "%Y-%m-%d %H:%M:%S")
        case "Spark":        # 17/06/09 20:10:40 INFO ...
            ts = datetime.strptime(f"20{row['Date']} {row['Time']}", "%Y/%m/%d %H:%M:%S")
        case "HealthApp":
            ts = _healthapp_time(row["Time"])
        case "Android":      # 03-17 16:13:38.811  1702  8671 D ...
            ts = _with_year(f"{row['Date']} {row['Time'].split('.')[0]}", "%m-%d %H:%M:%S", observed)
        case "Linux":        # Jun 14 15:16:01 combo ...: Month, Date (the day), Time
            ts = _with_year(f"{row['Month']} {row['Date']} {row['Time']}", "%b %d %H:%M:%S", observed)
        case "OpenSSH":      # Dec 10 06:55:46 LabSZ sshd[24200]: ...: Date (the month), Day, Time
            ts = _with_year(f"{row['Date']} {row['Day']} {row['Time']}", "%b %d %H:%M:%S", observed)
        case _:
            raise ValueError(f"unknown system {system!r}")
    level = None
    if (column := LEVEL_COLUMN[system]) is not None:
        raw = row[column].strip()
        mapped = _ANDROID_LEVELS.get(raw) if system == "Android" else _LEVEL_WORDS.get(raw.lower())
        if mapped is None:
            raise ValueError(f"{system}: unexpected level {raw!r} in the CSV")
        level = mapped
    return Expected(ts.replace(tzinfo=UTC, microsecond=0), level)


# -- _expected, without the data ---------------------------------------------------------
# Rows in each system's CSV layout, with made-up values (the samples stay outside the repository).

NOW = datetime(2026, 11, 26, 18, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("system", "row", "ts", "level"), [
    ("Apache", {"Time": "Mon Jan 02 03:04:05 2006", "Level": "notice"}, datetime(2006, 1, 2, 3, 4, 5), "info"),
    ("Apache", {"Time": "Sat Dec 31 23:59:59 2005", "Level": "error"}, datetime(2005, 12, 31, 23, 59, 59), "error"),
    ("Apache", {"Time": "Sat Dec 31 23:59:59 2005", "Level": "warn"}, datetime(2005, 12, 31, 23, 59, 59), "warn"),
    ("HDFS", {"Date": "081231", "Time": "090807", "Level": "WARN"}, datetime(2008, 12, 31, 9, 8, 7), "warn"),
    ("Hadoop", {"Date": "2015-10-18", "Time": "18:01:47,978", "Level": "FATAL"},
     datetime(2015, 10, 18, 18, 1, 47), "fatal"),
    ("Hadoop", {"Date": "2015-10-18", "Time": "18:01:47,999", "Level": "ERROR"},
     datetime(2015, 10, 18, 18, 1, 47), "error"),
    ("Zookeeper", {"Date": "2015-08-01", "Time": "00:00:00,001", "Level": "INFO"}, datetime(2015, 8, 1), "info"),
    ("Spark", {"Date": "17/06/09", "Time": "20:10:40", "Level": "INFO"}, datetime(2017, 6, 9, 20, 10, 40), "info"),
    ("Spark", {"Date": "99/01/02", "Time": "03:04:05", "Level": "DEBUG"}, datetime(2099, 1, 2, 3, 4, 5), "debug"),
    ("OpenStack", {"Logrecord": "nova-compute.log.2017-05-17_12:02:35", "Date": "2017-05-16",
                   "Time": "00:14:47.687", "Level": "WARNING"}, datetime(2017, 5, 16, 0, 14, 47), "warn"),
    ("HealthApp", {"Time": "20171223-22:15:29:606"}, datetime(2017, 12, 23, 22, 15, 29), None),
    ("HealthApp", {"Time": "20171224-1:2:35:789"}, datetime(2017, 12, 24, 1, 2, 35), None),
    ("HealthApp", {"Time": "20171224-0:0:0:7"}, datetime(2017, 12, 24), None),
    ("Linux", {"Month": "Jun", "Date": "4", "Time": "05:06:07", "Level": "somehost"},
     datetime(2026, 6, 4, 5, 6, 7), None),
    ("OpenSSH", {"Date": "Dec", "Day": "10", "Time": "06:55:46", "Component": "host"},
     datetime(2025, 12, 10, 6, 55, 46), None),
    ("Android", {"Date": "03-17", "Time": "16:13:38.811", "Level": "V"}, datetime(2026, 3, 17, 16, 13, 38), "trace"),
    ("Android", {"Date": "03-17", "Time": "16:13:38.811", "Level": "D"}, datetime(2026, 3, 17, 16, 13, 38), "debug"),
    ("Android", {"Date": "03-17", "Time": "16:13:38.811", "Level": "I"}, datetime(2026, 3, 17, 16, 13, 38), "info"),
    ("Android", {"Date": "03-17", "Time": "16:13:38.811", "Level": "W"}, datetime(2026, 3, 17, 16, 13, 38), "warn"),
    ("Android", {"Date": "03-17", "Time": "16:13:38.811", "Level": "E"}, datetime(2026, 3, 17, 16, 13, 38), "error"),
    ("Android", {"Date": "03-17", "Time": "16:13:38.811", "Level": "F"}, datetime(2026, 3, 17, 16, 13, 38), "fatal"),
])
def test_expected_from_csv_rows(system: str, row: dict[str, str], ts: datetime, level: str | None) -> None:
    assert _expected(system, row, NOW) == Expected(ts.replace(tzinfo=UTC), level)


@pytest.mark.parametrize(("observed", "text", "year"), [
    (datetime(2026, 1, 1, 0, 30, tzinfo=UTC), "Dec 31 23:59:59", 2025),   # last year's December, read in January
    (datetime(2026, 1, 1, 0, 30, tzinfo=UTC), "Jan 01 00:29:00", 2026),
    (datetime(2026, 6, 1, 12, 0, tzinfo=UTC), "Jun 02 12:00:00", 2026),   # exactly one day ahead: same year
    (datetime(2026, 6, 1, 12, 0, tzinfo=UTC), "Jun 02 12:00:01", 2025),   # more than one day ahead: the year before
    (datetime(2026, 12, 31, 23, 0, tzinfo=UTC), "Jan 01 05:00:00", 2026),  # the year's start, read at its end
])
def test_a_missing_year_is_the_observed_one_or_the_year_before(observed: datetime, text: str, year: int) -> None:
    month, day, clock = text.split()
    linux = _expected("Linux", {"Month": month, "Date": day, "Time": clock, "Level": "h"}, observed)
    ssh = _expected("OpenSSH", {"Date": month, "Day": day, "Time": clock}, observed)
    months = {"Jan": "01", "Jun": "06", "Dec": "12"}
    android = _expected("Android", {"Date": f"{months[month]}-{int(day):02}", "Time": f"{clock}.500", "Level": "I"},
                        observed)
    assert linux.ts.year == ssh.ts.year == android.ts.year == year
    assert linux.ts == ssh.ts == android.ts


def test_expected_rejects_a_level_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unexpected level"):
        _expected("HDFS", {"Date": "081109", "Time": "203615", "Level": "combo"}, NOW)
    with pytest.raises(ValueError, match="unexpected level"):
        _expected("Android", {"Date": "03-17", "Time": "16:13:38.811", "Level": "INFO"}, NOW)


# -- the data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    system: str
    log: Path
    lines: list[str]                 # without their CRLF
    rows: list[dict[str, str]]       # the structured CSV, one per line

    @property
    def service(self) -> str:
        return f"loghub-{self.system.lower()}"


def _load(system: str) -> Sample:
    log = LOGHUB / system / f"{system}_2k.log"
    structured = LOGHUB / system / f"{system}_2k.log_structured.csv"
    if not (log.is_file() and structured.is_file()):
        reason = f"loghub data not found under {LOGHUB} ({system}); it lives beside the checkout, never in it"
        print(reason)
        pytest.skip(reason)
    data = log.read_bytes().decode("utf-8")
    lines = data.split("\r\n")
    if lines[-1] == "":          # HDFS and Spark end with CRLF; the other eight end mid-line
        lines.pop()
    with structured.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(lines) == len(rows) == LINES_PER_SYSTEM, (system, len(lines), len(rows))
    assert [int(r["LineId"]) for r in rows] == list(range(1, LINES_PER_SYSTEM + 1))
    return Sample(system, log, lines, rows)


def _header(system: str, e: Expected) -> str:
    """The expected time, written back the way the system writes it (to check _expected against the lines)."""
    t = e.ts
    return {
        "Apache": t.strftime("[%a %b %d %H:%M:%S %Y]"),
        "HDFS": t.strftime("%y%m%d %H%M%S "),
        "Hadoop": t.strftime("%Y-%m-%d %H:%M:%S,"),
        "Zookeeper": t.strftime("%Y-%m-%d %H:%M:%S,"),
        "OpenStack": t.strftime(" %Y-%m-%d %H:%M:%S."),
        "Spark": t.strftime("%y/%m/%d %H:%M:%S "),
        "HealthApp": f"{t:%Y%m%d}-{t.hour}:{t.minute}:{t.second}:",
        "Android": t.strftime("%m-%d %H:%M:%S."),
        "Linux": f"{t:%b} {t.day:>2} {t:%H:%M:%S} ",
        "OpenSSH": f"{t:%b} {t.day:>2} {t:%H:%M:%S} ",
    }[system]


@pytest.mark.parametrize("system", SYSTEMS)
def test_expected_agrees_with_the_raw_lines(system: str) -> None:
    """Spot-check of the CSV mapping on every row: the expected time, written the system's
    way, is in the line where the format puts it, and so is the level token."""
    sample = _load(system)
    observed = datetime.now(UTC)
    for line, row in zip(sample.lines, sample.rows, strict=True):
        e = _expected(system, row, observed)
        header = _header(system, e)
        # Linux pads the day with a space ("Jul  1"), OpenSSH with a zero in this sample.
        candidates = {header, header.replace(f" {e.ts.day:>2} ", f" {e.ts.day:02} ")}
        if system == "OpenStack":
            assert line.split(" ", 1)[1].startswith(header.lstrip()), (line, e)
        else:
            assert any(line.startswith(c) for c in candidates), (line, header, e)
        assert line.endswith(row["Content"]) or line.rstrip().endswith(row["Content"]), (line, row["Content"])
        if (column := LEVEL_COLUMN[system]) is not None:
            token = f"[{row[column]}]" if system == "Apache" else row[column]
            assert f" {token} " in line[:120], (line, token)
        if system in ("Linux", "OpenSSH", "Android"):
            assert e.ts <= observed + timedelta(days=1)
            assert e.ts > observed - timedelta(days=366)


# -- through the pipeline ----------------------------------------------------------------------


def _inputs_toml(samples: list[Sample]) -> str:
    """`[[shipper.inputs]]` as one TOML array of inline tables, for LOGLAKE_SHIPPER__INPUTS."""
    tables = [f"{{include = [{json.dumps(str(s.log))}], service = {json.dumps(s.service)}, format = \"plain\"}}"
              for s in samples]
    return "[" + ", ".join(tables) + "]"


def _stored_rows(stack: Stack) -> list[dict[str, Any]]:
    catalog = Catalog(f"sqlite:///{stack.data_root / 'catalog.sqlite'}")
    try:
        files = [str(stack.data_root / s.path) for s in catalog.segments("default", -(1 << 62), 1 << 62)]
    finally:
        catalog.close()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        # Through Arrow: DuckDB's own Python conversion of TIMESTAMPTZ needs pytz.
        # The original line (what the row is matched by) and the message after its header.
        return con.execute(f"SELECT service, ts, observed_ts, level, message, {ORIGINAL_LINE} AS line "
                           "FROM read_parquet(?)",
                           [files]).to_arrow_table().to_pylist()
    finally:
        con.close()


def _stored_count(stack: Stack) -> int:
    if not (stack.data_root / "catalog.sqlite").exists():
        return 0
    catalog = Catalog(f"sqlite:///{stack.data_root / 'catalog.sqlite'}")
    try:
        return catalog.totals()["rows"]
    finally:
        catalog.close()


@dataclass
class Result:
    system: str
    lines: int
    stored: int = 0
    unmatched_rows: int = 0         # stored rows whose original line is none of the file's lines
    message_ok: int = 0             # the message is the CSV's Content
    ts_ok: int = 0
    level_checked: int = 0
    level_ok: int = 0
    ts_bad: list[str] = field(default_factory=list)        # the first few mismatches, for the report
    level_bad: list[str] = field(default_factory=list)
    message_bad: list[str] = field(default_factory=list)
    levels_seen: collections.Counter[str] = field(default_factory=collections.Counter)

    def message_pct(self) -> float:
        return 100.0 * self.message_ok / self.lines

    def ts_pct(self) -> float:
        return 100.0 * self.ts_ok / self.lines

    def level_pct(self) -> float | None:
        return 100.0 * self.level_ok / self.level_checked if self.level_checked else None


def _short(line: str, n: int = 110) -> str:
    return line if len(line) <= n else line[:n] + "..."


def _check(sample: Sample, stored: list[dict[str, Any]]) -> Result:
    """Match each stored row to its line (by the original line the row keeps) and compare."""
    res = Result(sample.system, len(sample.lines), stored=len(stored),
                 levels_seen=collections.Counter(r["level"] for r in stored))
    by_line: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)
    for i, line in enumerate(sample.lines):
        by_line[line].append(i)
    taken: dict[int, dict[str, Any]] = {}
    for r in stored:
        queue = by_line.get(r["line"] or "") or by_line.get((r["line"] or "").rstrip("\r\n"))
        if not queue:
            res.unmatched_rows += 1
            continue
        taken[queue.popleft()] = r

    for i, (line, row) in enumerate(zip(sample.lines, sample.rows, strict=True)):
        r = taken.get(i)
        observed = r["observed_ts"] if r is not None else datetime.now(UTC)
        e = _expected(sample.system, row, observed)
        got_ts = r["ts"].astimezone(UTC).replace(microsecond=0) if r is not None else None
        # Loghub's Content is the message with surrounding spaces trimmed.
        if r is not None and (r["message"] or "").strip() == row["Content"].strip():
            res.message_ok += 1
        elif len(res.message_bad) < 4:
            res.message_bad.append(f"line {i + 1}: want {_short(row['Content'].strip(), 60)!r} got "
                                   f"{'(not stored)' if r is None else repr(_short(r['message'] or '', 60))}")
        if got_ts == e.ts:
            res.ts_ok += 1
        elif len(res.ts_bad) < 4:
            res.ts_bad.append(f"line {i + 1}: want {e.ts:%Y-%m-%d %H:%M:%S} got "
                              f"{'(not stored)' if r is None else f'{got_ts:%Y-%m-%d %H:%M:%S}'}: {_short(line)}")
        if e.level is not None:
            res.level_checked += 1
            got_level = r["level"] if r is not None else "(not stored)"
            if got_level == e.level:
                res.level_ok += 1
            elif len(res.level_bad) < 4:
                res.level_bad.append(f"line {i + 1}: want {e.level} got {got_level}: {_short(line)}")
    return res


def _report(results: list[Result]) -> str:
    out = [f"{'system':<10} {'lines':>5} {'stored':>6} {'ts ok':>7} {'level ok':>8} {'msg ok':>7}  stored levels"]
    for r in results:
        lvl = r.level_pct()
        seen = ", ".join(f"{k}={v}" for k, v in sorted(r.levels_seen.items()))
        out.append(f"{r.system:<10} {r.lines:>5} {r.stored:>6} {r.ts_pct():>6.1f}% "
                   f"{'n/a' if lvl is None else f'{lvl:.1f}%':>8} {r.message_pct():>6.1f}%  {seen}")
    for r in results:
        notes = []
        if r.unmatched_rows:
            notes.append(f"  {r.unmatched_rows} stored rows match none of its lines")
        if r.ts_ok < r.lines:
            notes += ["  ts    " + b for b in r.ts_bad]
        if r.level_ok < r.level_checked:
            notes += ["  level " + b for b in r.level_bad]
        if r.message_ok < r.lines:
            notes += ["  msg   " + b for b in r.message_bad]
        if notes:
            out.append(f"{r.system}:")
            out += notes
    return "\n".join(out)


def test_loghub_samples_get_their_timestamp_level_and_message(stack: Stack) -> None:
    samples = [_load(system) for system in SYSTEMS]
    total = sum(len(s.lines) for s in samples)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    stack.start("ingest")
    # Each file is tailed where it is (no copy), as its own input with its own service;
    # eight of them end without a newline, shipped after partial_line_timeout_s (1 s here).
    stack.start("ship", LOGLAKE_SHIPPER__INPUTS=_inputs_toml(samples))
    wait_until(lambda: _stored_count(stack) >= total, 120, interval_s=0.5,
               what=f"{total} loghub lines stored")
    time.sleep(1.5)    # a late duplicate would show up in the counts below
    finished = datetime.now(UTC)
    stored = _stored_rows(stack)
    elapsed = time.monotonic() - t0

    by_service: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in stored:
        by_service[r["service"]].append(r)
    assert set(by_service) == {s.service for s in samples}, sorted(by_service)
    # The year rule uses each row's observed time: it must be the time of this run.
    assert all(started - timedelta(seconds=5) <= r["observed_ts"] <= finished + timedelta(seconds=5)
               for r in stored), "observed_ts outside the test run"

    results = [_check(s, by_service[s.service]) for s in samples]
    report = _report(results)
    print(f"\nloghub conformance ({total} lines, stored in {elapsed:.1f}s):\n{report}")

    failures = []
    for r in results:
        if r.stored != r.lines or r.unmatched_rows:
            failures.append(f"{r.system}: {r.stored} rows stored for {r.lines} lines "
                            f"({r.unmatched_rows} unmatched)")
        if r.ts_ok < REQUIRED * r.lines:
            failures.append(f"{r.system}: timestamp right for {r.ts_pct():.1f}% of lines")
        if r.level_checked and r.level_ok < REQUIRED * r.level_checked:
            failures.append(f"{r.system}: level right for {r.level_pct():.1f}% of lines")
        if r.message_ok < REQUIRED * r.lines:
            failures.append(f"{r.system}: message equal to Content for {r.message_pct():.1f}% of lines")
    assert not failures, "below 99% or not every line stored:\n  " + "\n  ".join(failures) + "\n\n" + report
