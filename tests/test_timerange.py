"""Reading ``start``/``end`` (RFC 3339, epoch numbers, ``now-15m``) and printing times.

Every relative time is computed from a fixed ``now=``; nothing here depends
on the wall clock.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query.errors import BadTimeRange
from query.timerange import format_us, parse_duration_us, parse_range, parse_time_us

S = 1_000_000            # microseconds per second
M = 60 * S
H = 60 * M
D = 24 * H
#: 2024-03-01T10:00:00Z in epoch microseconds.
T0 = 1_709_287_200 * S
NOW = T0 + 12 * M + 345_678


# -- RFC 3339 -----------------------------------------------------------------


def test_rfc3339_with_z_is_utc() -> None:
    assert parse_time_us("2024-03-01T10:00:00Z") == T0


def test_rfc3339_accepts_a_lowercase_z() -> None:
    assert parse_time_us("2024-03-01t10:00:00z") == T0


def test_rfc3339_positive_offset_is_east_of_utc() -> None:
    assert parse_time_us("2024-03-01T12:00:00+02:00") == T0


def test_rfc3339_negative_offset_is_west_of_utc() -> None:
    assert parse_time_us("2024-03-01T05:30:00-04:30") == T0


def test_rfc3339_without_a_zone_is_read_as_utc() -> None:
    assert parse_time_us("2024-03-01T10:00:00") == T0


def test_rfc3339_keeps_microseconds() -> None:
    assert parse_time_us("2024-03-01T10:00:00.123456Z") == T0 + 123_456


def test_rfc3339_keeps_milliseconds() -> None:
    assert parse_time_us("2024-03-01T10:00:00.250+00:00") == T0 + 250_000


def test_rfc3339_may_use_a_space_instead_of_t() -> None:
    assert parse_time_us("2024-03-01 10:00:00Z") == T0


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_time_us("  2024-03-01T10:00:00Z\n") == T0


def test_rfc3339_with_microseconds_is_exact_in_2004() -> None:
    # Going through float seconds loses the last microsecond for some instants.
    assert parse_time_us("2004-10-23T17:57:33.192844Z") == 1_098_554_253_192_844


# -- epoch numbers, by magnitude ------------------------------------------------


def test_epoch_seconds() -> None:
    assert parse_time_us("1709287200") == T0


def test_epoch_seconds_with_a_fraction() -> None:
    assert parse_time_us("1709287200.5") == T0 + 500_000


def test_epoch_seconds_fraction_is_exact_to_the_microsecond() -> None:
    assert parse_time_us("1.000001") == 1_000_001


def test_epoch_milliseconds() -> None:
    assert parse_time_us("1709287200123") == T0 + 123_000


def test_epoch_microseconds() -> None:
    assert parse_time_us("1709287200123456") == T0 + 123_456


def test_epoch_nanoseconds_are_truncated_to_microseconds() -> None:
    assert parse_time_us("1709287200123456000") == T0 + 123_456


def test_epoch_nanoseconds_are_exact_to_the_microsecond() -> None:
    # int(float(ns)) rounds to a multiple of 256 ns, which can carry into the next microsecond.
    assert parse_time_us("1709290657786307971") == 1_709_290_657_786_307


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        ("99999999999", 99_999_999_999 * S),            # below 1e11: seconds
        ("100000000000", 100_000_000_000 * 1_000),       # from 1e11: milliseconds
        ("100000000000000", 100_000_000_000_000),        # from 1e14: microseconds
        ("100000000000000000", 100_000_000_000_000),     # from 1e17: nanoseconds
    ],
)
def test_epoch_unit_is_chosen_by_magnitude(text: str, expected_us: int) -> None:
    assert parse_time_us(text) == expected_us


# -- now and relative times ------------------------------------------------------


def test_now_is_the_given_now() -> None:
    assert parse_time_us("now", now=NOW) == NOW


def test_now_minus_minutes() -> None:
    assert parse_time_us("now-15m", now=NOW) == NOW - 15 * M


def test_now_minus_compound_duration() -> None:
    assert parse_time_us("now-1h30m", now=NOW) == NOW - 90 * M


def test_now_plus_a_duration_is_in_the_future() -> None:
    assert parse_time_us("now+1d", now=NOW) == NOW + D


def test_relative_time_may_have_spaces_around_the_sign() -> None:
    assert parse_time_us("now - 15m", now=NOW) == NOW - 15 * M


def test_now_minus_sub_second_units() -> None:
    assert parse_time_us("now-250ms", now=NOW) == NOW - 250_000
    assert parse_time_us("now-7us", now=NOW) == NOW - 7


# -- durations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        ("7us", 7),
        ("250ms", 250_000),
        ("30s", 30 * S),
        ("15m", 15 * M),
        ("1h", H),
        ("7d", 7 * D),
        ("2w", 14 * D),
        ("1h30m", 90 * M),
        ("1d2h3m4s5ms6us", D + 2 * H + 3 * M + 4 * S + 5_000 + 6),
        ("0s", 0),
        (" 15m ", 15 * M),
    ],
)
def test_duration_in_microseconds(text: str, expected_us: int) -> None:
    assert parse_duration_us(text) == expected_us


@pytest.mark.parametrize("text", ["", "15", "m", "1.5h", "-5m", "1h 30m", "15x", "15M", "h1"])
def test_invalid_duration_raises_bad_time_range(text: str) -> None:
    with pytest.raises(BadTimeRange, match="invalid duration"):
        parse_duration_us(text)


# -- invalid times ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", "yesterday", "NOW", "now-", "now-15", "now-1.5h", "now*2", "now-15x",
        "2024-13-01T00:00:00Z", "2024-03-01T25:00:00Z", "2024-02-30T00:00:00Z",
        "1e9", "-5", "0x10", "1709287200s", "2024-03-01T10:00:00+25:00",
    ],
)
def test_invalid_time_raises_bad_time_range(text: str) -> None:
    with pytest.raises(BadTimeRange):
        parse_time_us(text, now=NOW)


def test_invalid_time_message_quotes_the_input() -> None:
    with pytest.raises(BadTimeRange, match="invalid time 'yesterday'"):
        parse_time_us("yesterday", now=NOW)


# -- ranges -------------------------------------------------------------------


def test_range_defaults_to_the_last_hour() -> None:
    assert parse_range(None, None, now=NOW) == (NOW - H, NOW)


def test_empty_strings_count_as_not_given() -> None:
    assert parse_range("", "", now=NOW) == (NOW - H, NOW)


def test_range_default_span_is_configurable() -> None:
    assert parse_range(None, None, default_span="15m", now=NOW) == (NOW - 15 * M, NOW)


def test_range_with_only_an_end_spans_the_hour_before_it() -> None:
    assert parse_range(None, "2024-03-01T10:00:00Z", now=NOW) == (T0 - H, T0)


def test_range_with_only_a_start_runs_until_now() -> None:
    assert parse_range("2024-03-01T10:00:00Z", None, now=NOW) == (T0, NOW)


def test_range_of_relative_times_uses_one_now() -> None:
    assert parse_range("now-15m", "now-5m", now=NOW) == (NOW - 15 * M, NOW - 5 * M)


def test_range_may_be_empty() -> None:
    assert parse_range("1709287200", "2024-03-01T10:00:00Z", now=NOW) == (T0, T0)


def test_range_ending_before_it_starts_raises() -> None:
    with pytest.raises(BadTimeRange, match="end is before start"):
        parse_range("2024-03-01T10:00:00.000001Z", "2024-03-01T10:00:00Z", now=NOW)


def test_range_with_an_invalid_end_raises() -> None:
    with pytest.raises(BadTimeRange):
        parse_range("now-1h", "later", now=NOW)


# -- printing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (1, "1970-01-01T00:00:00.000001Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
        (T0, "2024-03-01T10:00:00.000000Z"),
        (T0 + 123_456, "2024-03-01T10:00:00.123456Z"),
        (T0 + D - 1, "2024-03-02T09:59:59.999999Z"),
        (4_102_444_800 * S - 1, "2099-12-31T23:59:59.999999Z"),
        (-50_000_000_000 * S, "0385-07-25T07:06:40.000000Z"),      # RFC 3339 years have four digits
        (-62_135_596_800 * S, "0001-01-01T00:00:00.000000Z"),
    ],
)
def test_format_us_is_rfc3339_utc_with_exact_microseconds(us: int, text: str) -> None:
    assert format_us(us) == text


_instants = st.integers(min_value=0, max_value=4_102_444_800 * S)   # 1970 .. 2100


@settings(max_examples=500, deadline=None)
@given(_instants)
def test_formatted_time_parses_back_to_the_same_microsecond(us: int) -> None:
    assert parse_time_us(format_us(us)) == us


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=10**14, max_value=4_102_444_800 * S))   # read as microseconds
def test_epoch_microseconds_parse_back_exactly(us: int) -> None:
    assert parse_time_us(str(us)) == us


@pytest.mark.parametrize("text", ["now-100000000w", "now+1000000w", "9" * 5000, "99999999999999999999999999999999",
                                  "0000-12-31T23:00:00-05:00"])
def test_times_outside_the_years_1_to_9999_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(BadTimeRange, match="the years 1 to 9999|invalid time"):
        parse_time_us(text)


def test_a_default_span_reaching_before_year_1_is_refused() -> None:
    with pytest.raises(BadTimeRange, match="outside the years 1 to 9999"):
        parse_range(None, "0001-01-01T00:10:00Z")


@pytest.mark.parametrize("text", ["9" * 5000 + "s", "99999999999999999999w"])
def test_durations_too_long_are_refused(text: str) -> None:
    with pytest.raises(BadTimeRange, match="duration"):
        parse_duration_us(text)
