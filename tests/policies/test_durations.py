from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15.0), ("2m", 120.0), ("1h30m", 5400.0), ("500ms", 0.5), ("0", 0.0), ("1.5s", 1.5)],
)
def test_parses_go_style_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "15", "s", "1d", "-5s", " 5s", "5 s", "1h 30m"])
def test_rejects_what_go_rejects(text: str) -> None:
    with pytest.raises(DurationError, match="expected a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**7))
def test_format_round_trips_whole_milliseconds(millis: int) -> None:
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


def test_format_is_short() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.25) == "250ms"
    assert format_duration(0) == "0s"


@pytest.mark.parametrize("text", ["0.00005s", "1.0000001s", "90.5s", "0.25s"])
def test_sub_millisecond_and_odd_values_format_to_something_parseable(text: str) -> None:
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_format_always_parses_back(seconds: float) -> None:
    # Go durations are whole nanoseconds
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12, abs=1e-9)


def test_only_ascii_digits() -> None:
    """Regression (found by the schema agreement test): Python's \\d matched '٣' (Arabic-Indic
    three) and float() read it, so "٣s" was 3 seconds; Go, and the JSON Schema, reject it."""
    for text in ("٣s", "1٣m", "١٠s"):
        with pytest.raises(DurationError):
            parse_duration(text)
