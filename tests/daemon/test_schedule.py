"""Schedules are pure: next firing instants across days and daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from crmsync.daemon.schedule import Daily, Interval, in_window, next_fire, parse_clock_time, parse_duration

NY = ZoneInfo("America/New_York")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)


def test_daily_fires_next_occurrence_strictly_after() -> None:
    s = Daily(time(2, 0))
    assert next_fire(s, local(2026, 3, 1, 1, 0), NY) == local(2026, 3, 1, 2, 0)
    assert next_fire(s, local(2026, 3, 1, 2, 0), NY) == local(2026, 3, 2, 2, 0)
    assert next_fire(s, local(2026, 3, 1, 15, 0), NY) == local(2026, 3, 2, 2, 0)


def test_daily_in_spring_forward_gap_fires_once_after_the_gap() -> None:
    s = Daily(time(2, 30))  # 2026-03-08 02:00 -> 03:00 in New York
    fire = next_fire(s, local(2026, 3, 7, 12, 0), NY)
    assert fire.astimezone(NY).date().isoformat() == "2026-03-08"
    assert fire.astimezone(NY).hour == 3 and fire.astimezone(NY).minute == 30
    assert next_fire(s, fire, NY).astimezone(NY) == local(2026, 3, 9, 2, 30)


def test_daily_in_fall_back_repeat_fires_once() -> None:
    s = Daily(time(1, 30))  # 2026-11-01 01:30 happens twice
    first = next_fire(s, local(2026, 10, 31, 12, 0), NY)
    assert first == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # the first (EDT) occurrence
    again = next_fire(s, first, NY)
    assert again.astimezone(NY).date().isoformat() == "2026-11-02"


def test_interval_window_slots_and_nights() -> None:
    s = Interval(timedelta(minutes=5), time(8, 0), time(21, 0))
    assert next_fire(s, local(2026, 5, 1, 3, 0), NY) == local(2026, 5, 1, 8, 0)
    assert next_fire(s, local(2026, 5, 1, 8, 0), NY) == local(2026, 5, 1, 8, 5)
    assert next_fire(s, local(2026, 5, 1, 8, 3, 10), NY) == local(2026, 5, 1, 8, 5)
    assert next_fire(s, local(2026, 5, 1, 20, 55), NY) == local(2026, 5, 2, 8, 0)  # 21:00 is the end
    assert not in_window(s, local(2026, 5, 1, 23, 0), NY) and in_window(s, local(2026, 5, 1, 9, 0), NY)


def test_interval_across_midnight_and_all_day() -> None:
    night = Interval(timedelta(hours=1), time(22, 0), time(2, 0))
    assert next_fire(night, local(2026, 5, 1, 23, 30), NY) == local(2026, 5, 2, 0, 0)
    assert next_fire(night, local(2026, 5, 2, 1, 30), NY) == local(2026, 5, 2, 22, 0)
    always = Interval(timedelta(minutes=10))
    assert next_fire(always, local(2026, 5, 1, 23, 55), NY) == local(2026, 5, 2, 0, 0)


@pytest.mark.parametrize("text,expected", [("30s", 30), ("5m", 300), ("48h", 172800), ("1d", 86400),
                                           ("1h30m", 5400)])
def test_parse_duration(text: str, expected: int) -> None:
    assert parse_duration(text).total_seconds() == expected


@pytest.mark.parametrize("bad", ["", "5", "soon", "5x", "-1m"])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_parse_clock_time() -> None:
    assert parse_clock_time("02:00") == time(2, 0) and parse_clock_time("23:59") == time(23, 59)
    for bad in ("24:00", "2", "12:60", "noon"):
        with pytest.raises(ValueError):
            parse_clock_time(bad)
