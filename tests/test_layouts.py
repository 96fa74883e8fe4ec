"""Learned source layouts (ingest/layouts.py, ingest/sources.py): every catalogued time layout, read back.

Lines are generated in each layout of the catalogue, at random positions behind
random prefixes, with random levels, components and messages; the layout
learned from them must read back the generated instant (to the second, or to
the written fraction), the level and the message, both in Python (the
learner's own reading) and through the normalising statement (the SQL that
stores rows). A source whose layout changes midway is learned again; a source
with no time at all is flagged ``ts_parse=observed``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.layouts import LAYOUTS_BY_NAME, TIME_LAYOUTS, instant, learn
from ingest.normalise import RAW_SCHEMA, Normaliser, ParseSettings
from ingest.sources import SourceBook
from storage.lines import original_line

OBSERVED = datetime(2026, 11, 26, 18, 0, 0, tzinfo=UTC)


def original(row: dict) -> str:
    """A stored row's original line."""
    return original_line(row)


def _ms(t: datetime) -> str:
    return f"{t.microsecond // 1000:03d}"


#: Each layout of the catalogue, written the way its systems write it: (text, the instant it names).
RENDER: dict[str, Callable[[datetime], tuple[str, datetime]]] = {
    "iso8601": lambda t: (t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+02:00", t - timedelta(hours=2)),
    "iso8601_underscore": lambda t: (t.strftime("%Y-%m-%d-%H.%M.%S.%f"), t),
    "ymd_slash": lambda t: (t.strftime("%Y/%m/%d %H:%M:%S"), t.replace(microsecond=0)),
    "ymd_dot": lambda t: (t.strftime("%Y.%m.%d %H:%M:%S"), t.replace(microsecond=0)),
    "clf": lambda t: (t.strftime("%d/%b/%Y:%H:%M:%S -0700"), t.replace(microsecond=0) + timedelta(hours=7)),
    "dmy_name": lambda t: (t.strftime("%d-%b-%Y %H:%M:%S.") + _ms(t),
                           t.replace(microsecond=t.microsecond // 1000 * 1000)),
    "rfc1123": lambda t: (t.strftime("%a, %d %b %Y %H:%M:%S GMT"), t.replace(microsecond=0)),
    "ctime": lambda t: (t.strftime("%a %b %d %H:%M:%S %Y"), t.replace(microsecond=0)),
    "mdy_name": lambda t: (t.strftime("%b %d, %Y %I:%M:%S %p"), t.replace(microsecond=0)),
    "mdy_slash": lambda t: (t.strftime("%m/%d/%Y %H:%M:%S"), t.replace(microsecond=0)),
    "dmy_dot": lambda t: (t.strftime("%d.%m.%Y %H:%M:%S"), t.replace(microsecond=0)),
    "yy_slash": lambda t: (t.strftime("%y/%m/%d %H:%M:%S"), t.replace(microsecond=0)),
    "ymd_compact": lambda t: (f"{t:%Y%m%d}-{t.hour}:{t.minute}:{t.second}:{_ms(t)}",
                              t.replace(microsecond=t.microsecond // 1000 * 1000)),
    "yymmdd_hhmmss": lambda t: (t.strftime("%y%m%d %H%M%S"), t.replace(microsecond=0)),
    "yymmdd_clock": lambda t: (t.strftime("%y%m%d %H:%M:%S"), t.replace(microsecond=0)),
    "syslog": lambda t: (f"{t:%b} {t.day:>2} {t:%H:%M:%S}", t.replace(microsecond=0)),
    "md_dash": lambda t: (t.strftime("%m-%d %H:%M:%S.") + _ms(t), t.replace(microsecond=t.microsecond // 1000 * 1000)),
    "md_dot": lambda t: (t.strftime("%m.%d %H:%M:%S"), t.replace(microsecond=0)),
    "md_slash": lambda t: (t.strftime("%m/%d %H:%M:%S"), t.replace(microsecond=0)),
    "klog": lambda t: (t.strftime("I%m%d %H:%M:%S.%f"), t),
    "epoch": lambda t: (str(int(t.timestamp())), t.replace(microsecond=0)),
}
LEVELS = {"INFO": "info", "WARN": "warn", "ERROR": "error", "DEBUG": "debug", "Warning": "warn", "[Note]": "info",
          "Info": "info", "E": "error", "I": "info", "W": "warn"}


def test_every_catalogued_layout_has_a_renderer() -> None:
    assert set(RENDER) == {t.name for t in TIME_LAYOUTS}


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def _lines(name: str, seed: int, n: int = 40) -> tuple[list[str], list[datetime], list[str], list[str]]:
    """``n`` lines of one source in layout ``name``: a fixed shape, random values."""
    rng = random.Random(seed)
    prefix_tokens = rng.randint(0, 2)
    bracket = rng.random() < 0.3 and prefix_tokens == 0
    level_words = rng.sample(sorted(LEVELS), 3)
    component = rng.random() < 0.5
    lines, instants, levels, messages = [], [], [], []
    noyear = LAYOUTS_BY_NAME[name].kind == "noyear"
    for _ in range(n):
        when = OBSERVED - timedelta(seconds=rng.randint(60, (300 if noyear else 3000) * 86400),
                                    microseconds=rng.randint(0, 999_999))
        text, t = RENDER[name](when.replace(tzinfo=None))
        prefix = " ".join(f"p{i}{w}" for i, w in enumerate(_words(rng, prefix_tokens)))
        stamp = f"[{text}]" if bracket else text
        word = rng.choice(level_words)
        message = " ".join(_words(rng, rng.randint(1, 6)))
        head = f"{prefix} {stamp}" if prefix else stamp
        comp = f" {rng.choice(['a.B', 'c.D$E', 'main'])}:" if component else ""
        lines.append(f"{head} {word}{comp} {message}")
        instants.append(t.replace(tzinfo=UTC))
        levels.append(LEVELS[word])
        messages.append(message)
    return lines, instants, levels, messages


@pytest.mark.parametrize("name", sorted(RENDER))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_the_learned_layout_reads_back_the_generated_instant(name: str, seed: int) -> None:
    lines, instants, levels, messages = _lines(name, seed)
    layout = learn(lines)
    assert layout is not None, lines[:3]
    pattern = re2.compile(layout.pattern)
    for line, want, level, message in zip(lines, instants, levels, messages, strict=True):
        m = pattern.match(line)
        assert m is not None, (layout.describe(), line)
        assert instant(m.groupdict(), OBSERVED) == want, (layout.describe(), line)
        assert m.group("lvl").lower().strip("[]") in {level, {"warn": "warning", "info": "note"}.get(level, level),
                                                      level[0]}, (layout.describe(), line)
        assert m.group("msg") == message, (layout.describe(), line)


def _raw(lines: list[str], source: str = "/var/log/app.log", host: str = "shipper", zone: str = "") -> pa.Table:
    n = len(lines)
    return pa.table({
        "line": lines,
        "observed_ts": pa.array([OBSERVED] * n, pa.timestamp("us", tz="UTC")),
        "service": pa.array(["app"] * n).dictionary_encode(),
        "host": pa.array([host] * n).dictionary_encode(),
        "source": pa.array([source] * n).dictionary_encode(),
        "labels": pa.nulls(n, pa.map_(pa.string(), pa.string())),
        "wrapper": pa.array([""] * n).dictionary_encode(),
        "format": pa.array([""] * n).dictionary_encode(),
        "zone": pa.array([zone] * n).dictionary_encode(),
    }).cast(RAW_SCHEMA)


@pytest.fixture(scope="module")
def normaliser() -> Normaliser:
    return Normaliser(ParseSettings(max_ahead_s=7 * 86400))


@pytest.mark.parametrize("name", sorted(RENDER))
def test_the_stored_rows_carry_the_generated_instant_level_and_message(name: str) -> None:
    # A fresh normaliser per layout: each is a new source's first lines.
    normaliser = Normaliser()
    lines, instants, levels, messages = _lines(name, seed=len(name))
    rows = normaliser(_raw(lines, source=f"/var/log/{name}.log")).to_pylist()
    for row, line, want, level, message in zip(rows, lines, instants, levels, messages, strict=True):
        assert row["ts"] == want, line
        assert row["level"] == level, line
        assert row["message"] == message, line
        assert original(row) == line and row["raw"] is None
        assert "ts_parse" not in dict(row["attrs"] or []), line


def test_a_source_whose_layout_changes_midway_is_learned_again() -> None:
    normaliser = Normaliser()
    first, t1, _, m1 = _lines("iso8601", 1, n=60)
    second, t2, _, m2 = _lines("epoch", 2, n=60)
    rows = normaliser(_raw(first)).to_pylist() + normaliser(_raw(second)).to_pylist()
    assert [r["ts"] for r in rows] == t1 + t2
    assert [r["message"] for r in rows] == m1 + m2


def test_a_source_with_no_time_is_flagged_observed_on_every_row(normaliser: Normaliser) -> None:
    lines = [f"request {i} handled by worker {i % 7}" for i in range(30)]
    rows = normaliser(_raw(lines, source="/var/log/no-time.log")).to_pylist()
    assert all(r["ts"] == OBSERVED for r in rows)
    assert all(dict(r["attrs"])["ts_parse"] == "observed" for r in rows)
    assert [r["message"] for r in rows] == lines and all(r["head"] is None and r["raw"] is None for r in rows)


def test_an_epoch_column_wins_over_a_zone_less_wall_clock_in_the_same_line(normaliser: Normaliser) -> None:
    # BGL's shape: an epoch, a date, a node, then a local wall clock seven hours off UTC.
    base = 1117838570
    local = [datetime.fromtimestamp(base + i * 37, UTC) - timedelta(hours=7) for i in range(40)]
    lines = [f"- {base + i * 37} 2005.06.03 R02-M1-N{i % 4} {local[i]:%Y-%m-%d-%H.%M.%S}.000001 "
             f"R02-M1-N{i % 4} RAS KERNEL INFO cache parity error {i} corrected" for i in range(40)]
    rows = normaliser(_raw(lines, source="/var/log/bgl.log")).to_pylist()
    assert [r["ts"] for r in rows] == [datetime.fromtimestamp(base + i * 37, UTC) for i in range(40)]
    assert {r["level"] for r in rows} == {"info"}
    assert [r["message"] for r in rows] == [f"cache parity error {i} corrected" for i in range(40)]


def test_a_message_body_word_is_not_a_level(normaliser: Normaliser) -> None:
    lines = [f"2024-05-01 10:00:{i:02d} worker-{i % 3} no errors found in batch {i}" for i in range(30)]
    lines += [f"2024-05-01 10:01:{i:02d} worker-{i % 3} ERROR found in batch {i}" for i in range(2)]
    rows = normaliser(_raw(lines, source="/var/log/nolevel.log")).to_pylist()
    assert {r["level"] for r in rows[:30]} == {"unknown"}


# -- host precedence: the host the line names fills `host`; the shipper's machine goes to agent.host --

def test_a_syslog_hostname_wins_over_the_shippers(normaliser: Normaliser) -> None:
    rows = normaliser(_raw(["Nov  9 12:01:01 dn228 crond[2915]: session closed for user root"],
                           source="/var/log/messages")).to_pylist()
    assert rows[0]["host"] == "dn228"
    assert dict(rows[0]["attrs"])["agent.host"] == "shipper"
    assert rows[0]["message"] == "session closed for user root"


def test_a_json_host_field_wins_over_the_shippers(normaliser: Normaliser) -> None:
    for key in ("host", "hostname", "host.name"):
        line = '{"time":"2024-05-01T10:00:00Z","level":"info","msg":"hi",' + (
            '"host":{"name":"web-7"}' if key == "host.name" else f'"{key}":"web-7"') + "}"
        row = normaliser(_raw([line], source=f"/var/log/{key}.json")).to_pylist()[0]
        assert row["host"] == "web-7", key
        attrs = dict(row["attrs"])
        assert attrs["agent.host"] == "shipper" and key not in attrs
        assert original(row) == line and row["message"] == "hi"


def test_a_pattern_host_group_wins_over_the_shippers() -> None:
    n = Normaliser(ParseSettings(patterns=(r"^(?P<ts>\S+) (?P<host>\S+) (?P<message>.*)$",)))
    raw = _raw(["2024-05-01T10:00:00Z db-3 checkpoint done"]).set_column(
        RAW_SCHEMA.get_field_index("format"), "format", pa.array(["pattern0"]).dictionary_encode().cast(
            RAW_SCHEMA.field("format").type))
    row = n(raw).to_pylist()[0]
    assert row["host"] == "db-3" and dict(row["attrs"])["agent.host"] == "shipper"


def test_a_learned_header_host_wins_over_the_shippers(normaliser: Normaliser) -> None:
    lines = [f"- {1131566461 + i} 2005.11.09 dn{i % 3} Nov 9 12:01:{i % 60:02d} dn{i % 3}/dn{i % 3} "
             f"crond(pam_unix)[{2900 + i}]: session closed for user root" for i in range(30)]
    rows = normaliser(_raw(lines, source="/var/log/tbird.log")).to_pylist()
    assert [r["host"] for r in rows] == [f"dn{i % 3}" for i in range(30)]
    assert all(dict(r["attrs"])["agent.host"] == "shipper" for r in rows)
    assert {r["message"] for r in rows} == {"session closed for user root"}


def test_without_a_host_in_the_line_the_shippers_host_stays(normaliser: Normaliser) -> None:
    row = normaliser(_raw(["2024-05-01 10:00:00 INFO started"], source="/var/log/plain.log")).to_pylist()[0]
    assert row["host"] == "shipper" and "agent.host" not in dict(row["attrs"] or [])


# -- zones and configured time formats --

def test_a_sources_zone_reads_its_zone_less_times(normaliser: Normaliser) -> None:
    lines = [f"2024-01-15 10:00:{i:02d} INFO tick {i}" for i in range(10)]
    berlin = normaliser(_raw(lines, source="/var/log/berlin.log", zone="Europe/Berlin")).to_pylist()
    utc = normaliser(_raw(lines, source="/var/log/utc.log")).to_pylist()
    assert [r["ts"] for r in berlin] == [datetime(2024, 1, 15, 9, 0, i, tzinfo=UTC) for i in range(10)]
    assert [r["ts"] for r in utc] == [datetime(2024, 1, 15, 10, 0, i, tzinfo=UTC) for i in range(10)]
    # A zone written in the line wins over the source's.
    zoned = normaliser(_raw(["2024-01-15T10:00:00+05:00 INFO x"] * 3, source="/var/log/z.log",
                            zone="Europe/Berlin")).to_pylist()
    assert {r["ts"] for r in zoned} == {datetime(2024, 1, 15, 5, 0, 0, tzinfo=UTC)}


def _pattern_raw(lines: list[str], zone: str = "") -> pa.Table:
    raw = _raw(lines, zone=zone)
    fmt = pa.array(["pattern0"] * len(lines)).dictionary_encode().cast(RAW_SCHEMA.field("format").type)
    return raw.set_column(RAW_SCHEMA.get_field_index("format"), "format", fmt)


@pytest.mark.parametrize(("ts_format", "text", "zone", "want"), [
    ("%d.%m.%Y %H:%M:%S", "15.01.2024 10:00:00", "", datetime(2024, 1, 15, 10, tzinfo=UTC)),
    ("%d.%m.%Y %H:%M:%S", "15.01.2024 10:00:00", "America/New_York", datetime(2024, 1, 15, 15, tzinfo=UTC)),
    ("%Y%m%dT%H%M%S%z", "20240115T100000+0200", "America/New_York", datetime(2024, 1, 15, 8, tzinfo=UTC)),
    ("%m.%d %H:%M:%S", "10.30 16:49:06", "", datetime(2026, 10, 30, 16, 49, 6, tzinfo=UTC)),  # no year: observed
])
def test_a_pattern_rules_ts_format_and_zone(ts_format: str, text: str, zone: str, want: datetime) -> None:
    n = Normaliser(ParseSettings(patterns=(r"^\[(?P<ts>[^\]]+)\] (?P<message>.*)$",), pattern_ts_formats=(ts_format,)))
    row = n(_pattern_raw([f"[{text}] backup done"], zone=zone)).to_pylist()[0]
    assert row["ts"] == want and row["message"] == "backup done"
    assert "ts_parse" not in dict(row["attrs"] or [])


def test_a_bad_ts_format_is_refused_when_the_normaliser_starts() -> None:
    from ingest.parsers.pattern import PatternError
    with pytest.raises(PatternError, match="ts_format"):
        Normaliser(ParseSettings(patterns=(r"(?P<ts>\S+) (?P<message>.*)",), pattern_ts_formats=("%Q",)))


def test_a_line_that_misses_its_sources_pattern_is_flagged_unmatched() -> None:
    n = Normaliser(ParseSettings(patterns=(r"^(?P<ts>\S+) \| (?P<level>\w+) \| (?P<message>.*)$",)))
    rows = n(_pattern_raw(["2024-01-15T10:00:00Z | warn | disk low", "something else entirely"])).to_pylist()
    assert rows[0]["level"] == "warn" and "format" not in dict(rows[0]["attrs"] or [])
    attrs = dict(rows[1]["attrs"])
    assert attrs["format"] == "unmatched" and attrs["ts_parse"] == "observed"
    assert rows[1]["message"] == "something else entirely"


def test_continuation_lines_inherit_the_time_of_the_line_they_continue() -> None:
    n = Normaliser()
    lines = []
    for i in range(12):
        lines.append(f"2024-03-01 12:00:{i:02d},000 ERROR [main] c.Foo: request {i} failed")
        lines += ["java.lang.IllegalStateException: boom", "\tat c.Foo.bar(Foo.java:42)", "\tat c.Foo.main(Foo.java:7)"]
    rows = n(_raw(lines, source="/var/log/java.log")).to_pylist()
    for i in range(12):
        head, *trace = rows[4 * i:4 * i + 4]
        want = datetime(2024, 3, 1, 12, 0, i, tzinfo=UTC)
        assert head["ts"] == want and head["message"] == f"request {i} failed"
        assert [r["ts"] for r in trace] == [want] * 3
        assert all(dict(r["attrs"])["ts_parse"] == "inherited" for r in trace)
        assert [r["message"] for r in trace] == lines[4 * i + 1:4 * i + 4]


def _java(start: int, n: int, hour: int = 12, tag: str = "Foo") -> list[str]:
    """``n`` records of a Java log from second ``start``: a header line, then a three-line stack trace."""
    lines = []
    for i in range(start, start + n):
        lines.append(f"2024-03-01 {hour}:00:{i:02d},000 ERROR [main] c.{tag}: request {i} failed")
        lines += ["java.lang.IllegalStateException: boom", f"\tat c.{tag}.bar({tag}.java:42)",
                  f"\tat c.{tag}.main({tag}.java:7)"]
    return lines


def _flags(rows: list[dict]) -> list[str | None]:
    return [dict(r["attrs"] or []).get("ts_parse") for r in rows]


def test_a_stack_trace_split_between_two_batches_inherits_the_first_batchs_time() -> None:
    # A flush boundary inside a stack trace: the second batch starts with the trace's last two lines.
    n = Normaliser()
    lines = _java(0, 12)
    first = n(_raw(lines[:-2], source="/var/log/java.log")).to_pylist()
    rows = n(_raw(lines[-2:] + _java(20, 3), source="/var/log/java.log")).to_pylist()
    assert first[-2]["ts"] == datetime(2024, 3, 1, 12, 0, 11, tzinfo=UTC)
    assert [r["ts"] for r in rows[:2]] == [datetime(2024, 3, 1, 12, 0, 11, tzinfo=UTC)] * 2
    assert _flags(rows[:2]) == ["inherited", "inherited"]
    assert [r["message"] for r in rows[:2]] == lines[-2:]
    # Past the first header of the batch its own times win, as within one batch.
    assert [r["ts"] for r in rows[2:]] == [datetime(2024, 3, 1, 12, 0, s, tzinfo=UTC) for s in (20, 21, 22)
                                           for _ in range(4)]
    assert _flags(rows[2:]) == [None, "inherited", "inherited", "inherited"] * 3


def test_a_continued_stack_trace_takes_the_time_of_its_own_source_only() -> None:
    n = Normaliser()
    a, b = _java(0, 10), _java(0, 10, hour=13, tag="Bar")
    both = pa.concat_tables([_raw(a[:-2], source="/var/log/a.log"), _raw(b[:-1], source="/var/log/b.log")])
    n(both)
    # The next batch: b's trace goes on, then a's, then a source that was not in the first batch, whose
    # lines are the same shape and come after a's; and a's source again, but of another tenant.
    c = _java(0, 10, hour=14, tag="Baz")
    second = pa.concat_tables([_raw(b[-1:], source="/var/log/b.log"), _raw(a[-2:], source="/var/log/a.log"),
                               _raw(["\tat c.Baz.early(Baz.java:1)"] + c, source="/var/log/c.log")])
    rows = n(second).to_pylist()
    assert [r["ts"] for r in rows[:3]] == [datetime(2024, 3, 1, 13, 0, 9, tzinfo=UTC)] + \
        [datetime(2024, 3, 1, 12, 0, 9, tzinfo=UTC)] * 2
    assert _flags(rows[:3]) == ["inherited"] * 3
    # The new source's leading line has no time of its own and no earlier one: the observed time, said so.
    assert rows[3]["ts"] == OBSERVED and _flags(rows[3:4]) == ["observed"]
    other = n(_raw(a[-2:], source="/var/log/a.log"), tenant="other").to_pylist()
    assert [r["ts"] for r in other] == [OBSERVED] * 2 and _flags(other) == ["observed"] * 2


def test_a_sources_last_time_carries_over_batches_without_continuation_lines() -> None:
    n = Normaliser()
    heads = [f"2024-03-01 12:00:{i:02d},000 INFO [main] c.Foo: tick {i}" for i in range(30)]
    n(_raw(heads, source="/var/log/ticks.log"))             # no continuation lines: no inheriting statement
    n(_raw(_java(0, 5, hour=15, tag="Other"), source="/var/log/other.log"))   # another source meanwhile
    rows = n(_raw(["java.lang.IllegalStateException: late", "\tat c.Foo.tick(Foo.java:3)"],
                  source="/var/log/ticks.log")).to_pylist()
    assert [r["ts"] for r in rows] == [datetime(2024, 3, 1, 12, 0, 29, tzinfo=UTC)] * 2
    assert _flags(rows) == ["inherited"] * 2


def test_an_implausible_time_is_not_carried_to_the_next_batch() -> None:
    n = Normaliser()
    lines = _java(0, 10)
    # The last record's header is dated far ahead of the observed time: not believed, so its trace's
    # lines in the next batch do not take it, nor the time of the record before it.
    lines[-4] = lines[-4].replace("2024-03-01", "2099-03-01")
    first = n(_raw(lines[:-2], source="/var/log/ahead.log")).to_pylist()
    assert dict(first[-2]["attrs"])["ts_parse"] == "fallback"
    rows = n(_raw(lines[-2:], source="/var/log/ahead.log")).to_pylist()
    assert [r["ts"] for r in rows] == [OBSERVED] * 2
    assert _flags(rows) == ["observed"] * 2


# -- where a source's zone comes from: format rule, then the shipper input (in the frame), then the topic --

def test_zone_settings_are_checked_at_load() -> None:
    from loglake.core.config import Config
    with pytest.raises(ValueError, match="unknown time zone"):
        Config.model_validate({"ingest": {"formats": [{"service": "x", "timezone": "Mars/Olympus"}]}})
    with pytest.raises(ValueError, match="unknown time zone"):
        Config.model_validate({"shipper": {"timezone": "CEST+2"}})
    with pytest.raises(ValueError, match="ts_format"):
        Config.model_validate({"ingest": {"formats": [{"service": "x", "format": "json", "ts_format": "%Y"}]}})
    cfg = Config.model_validate({"ingest": {"formats": [
        {"service": "x", "format": "pattern", "pattern": "(?P<ts>\\S+) (?P<message>.*)", "ts_format": "%s"}]}})
    assert cfg.ingest.pattern_ts_formats() == ("%s",)


def test_the_shipper_inputs_zone_travels_in_the_frame() -> None:
    import numpy as np

    from loglake.core.frame import FrameMeta, decode_frame, encode_frame
    meta = FrameMeta(source_id="s", source="/var/log/a.log", host="h", service="svc", tenant="default",
                     first_offset=0, end_offset=4, observed_us=1, count=1, timezone="Asia/Tokyo")
    assert decode_frame(encode_frame(meta, b"abc\n", np.array([0, 4], dtype=np.int64))).meta.timezone == "Asia/Tokyo"


def test_a_sources_zone_precedence() -> None:
    from ingest.buffers import IngestState
    from ingest.router import RecordRouter
    from loglake.core.config import Config
    cfg = Config.model_validate({"ingest": {
        "formats": [{"service": "billing", "timezone": "Europe/Paris"}],
        "topics": [{"name": "third-party", "timezone": "America/Chicago"}]}})
    router = RecordRouter(cfg, IngestState())
    assert router.zone_for("logs", "billing", "/a.log", "Asia/Tokyo") == "Europe/Paris"      # the rule wins
    assert router.zone_for("logs", "web", "/a.log", "Asia/Tokyo") == "Asia/Tokyo"           # then the frame's
    assert router.zone_for("logs", "web", "/a.log", "Not/AZone") == ""                       # a bad one is ignored
    assert router.zone_for("third-party", "web", "kafka:third-party") == "America/Chicago"    # then the topic's
    assert router.zone_for("logs", "web", "/a.log") == ""                                    # then the default



@pytest.mark.parametrize("line", [
    '{"ts":"2024-05-01T10:00:00Z","level":"info","msg":"user signed in","user_id":"u1"}',
    '{"msg":"user signed in","note":"user signed in"}',                    # the message twice
    '{"user signed in":1,"msg":"user signed in"}',                         # as a key first
    '{"ts":"2024-05-01T10:00:00Z", "msg": "caf\\u00e9 opened",  "n": 1.50}',  # escaped: kept whole
    '{"msg":"tab\\there","x":"\\"q\\""}',
    '{"msg":"short"}',
    '{"msg":"héllo wörld ünïcode","k":"v"}',
])
def test_a_json_records_original_line_is_kept_byte_for_byte(normaliser: Normaliser, line: str) -> None:
    row = normaliser(_raw([line], source="/var/log/orig.json")).to_pylist()[0]
    assert original(row) == line
    assert row["head"] is None


def test_the_sql_original_line_of_text_rows(normaliser: Normaliser) -> None:
    import duckdb

    from storage.lines import ORIGINAL_LINE
    lines = ["2024-05-01 10:00:00 INFO [main] started", "no header at all", '{"msg":"user signed in","k":"v"}',
             '{"msg":"caf\\u00e9","service":"billing","trace_id":"abc123","n":12.50}']
    table = normaliser(_raw(lines, source="/var/log/mixed.log"))
    con = duckdb.connect()
    con.register("stored", table)
    assert [r[0] for r in con.execute(f"SELECT {ORIGINAL_LINE} FROM stored").fetchall()] == lines



_JSON_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_JSON_LEAF = st.one_of(_JSON_TEXT, st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                       st.booleans(), st.none())
_KEYS = st.one_of(st.sampled_from(["ts", "time", "level", "msg", "message", "service", "host", "trace_id",
                                   "span_id", "user_id", "region", "log", "t", "a.b"]), _JSON_TEXT)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=st.dictionaries(_KEYS, st.recursive(_JSON_LEAF, lambda inner: st.one_of(
           st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=3)), max_leaves=8), max_size=8),
       spaced=st.booleans(), ascii_only=st.booleans())
def test_any_json_records_original_line_comes_back_byte_for_byte(record: dict, spaced: bool,
                                                                 ascii_only: bool) -> None:
    import json as jsonlib
    line = jsonlib.dumps(record, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":"))
    row = _shared()(_raw([line], source="/var/log/any.json")).to_pylist()[0]
    assert original_line(row) == line


_SHARED: list[Normaliser] = []


def _shared() -> Normaliser:
    """One normaliser for every generated example (making one takes about a second)."""
    if not _SHARED:
        _SHARED.append(Normaliser())
    return _SHARED[0]


def test_a_second_loggers_lines_keep_their_level_by_the_sources_time() -> None:
    n = Normaliser()
    lines = [f"2024-03-01 12:00:{i:02d},000 INFO started job {i}" for i in range(30)]
    lines += ["2024-03-01 12:01:00,000 - WARN  [main:Thing@1] - disk low",
              "2024-03-01 12:01:01,000 [main] ERROR: broke"]
    rows = n(_raw(lines, source="/var/log/two-loggers.log")).to_pylist()
    assert [r["level"] for r in rows[-2:]] == ["warn", "error"]
    assert [r["ts"] for r in rows[-2:]] == [datetime(2024, 3, 1, 12, 1, s, tzinfo=UTC) for s in (0, 1)]
    assert all(original(r) == line for r, line in zip(rows, lines, strict=True))


def test_fractions_beyond_microseconds_are_cut_not_rounded() -> None:
    rows = Normaliser()(_raw([f"2024-03-04T05:06:59.99999{i}9Z INFO x" for i in range(10)],
                             source="/var/log/frac.log")).to_pylist()
    assert [r["ts"] for r in rows] == [datetime(2024, 3, 4, 5, 6, 59, 999990 + i, tzinfo=UTC) for i in range(10)]


def test_lines_that_miss_their_pattern_are_counted_per_source() -> None:
    from ingest.source_stats import count_rows
    n = Normaliser(ParseSettings(patterns=(r"^(?P<ts>\S+) \| (?P<message>.*)$",)))
    records = n(_pattern_raw(["2024-01-15T10:00:00Z | ok", "not the pattern", "nor this"]))
    counts = count_rows(records)[("app", "/var/log/app.log")]
    assert (counts["rows"], counts["unmatched"], counts["observed_time"]) == (3, 2, 2)


def test_rows_come_out_in_the_input_order_when_two_sources_interleave_continuation_lines() -> None:
    """A flush normalises several partitions in one statement and splits the rows back by position;
    the window that carries a time to continuation lines must not reorder them."""
    n = Normaliser()
    a = _raw([f"2024-03-01 12:00:{i:02d},000 ERROR [main] c.Foo: a {i}" if i % 3 == 0 else f"\tat a.frame{i}"
              for i in range(60)], source="/var/log/a.log")
    b = _raw([f"2024-03-01 13:00:{i:02d},000 ERROR [main] c.Bar: b {i}" if i % 4 == 0 else f"\tat b.frame{i}"
              for i in range(60)], source="/var/log/b.log")
    mixed = pa.concat_tables([a.slice(i, 1) if k == 0 else b.slice(i, 1) for i in range(60) for k in (0, 1)])
    rows = n(mixed).to_pylist()
    assert [r["source"] for r in rows] == ["/var/log/a.log", "/var/log/b.log"] * 60
    assert [original(r) for r in rows] == mixed.column("line").to_pylist()
    inherited = [r for r in rows if dict(r["attrs"] or []).get("ts_parse") == "inherited"]
    assert inherited and all(r["ts"].hour == (12 if r["source"].endswith("a.log") else 13) for r in inherited)


def test_a_book_of_sources_forgets_the_one_seen_longest_ago() -> None:
    n = Normaliser()
    n.sources = SourceBook(max_sources=2)
    heads = [f"2024-03-01 12:00:{i:02d},000 INFO [main] c.Foo: tick {i}" for i in range(10)]
    for name in ("a", "b", "a", "c"):          # a is seen again after b, so b is the oldest when c comes
        n(_raw(heads, source=f"/var/log/{name}.log"))
    assert [k.rsplit("\x1f", 1)[1] for k, _ in n.sources] == ["/var/log/a.log", "/var/log/c.log"]
    # A forgotten source is learned again from its next lines, and its continuation lines then have
    # no time to carry over: the observed one, said so.
    rows = n(_raw(["\tat c.Foo.tick(Foo.java:3)"] + heads, source="/var/log/b.log")).to_pylist()
    assert rows[0]["ts"] == OBSERVED and _flags(rows[:1]) == ["observed"]
    assert [r["ts"] for r in rows[1:]] == [datetime(2024, 3, 1, 12, 0, i, tzinfo=UTC) for i in range(10)]
    assert len(list(n.sources)) == 2
