"""When scheduled flows fire: "daily at HH:MM" and "every N minutes between HH:MM and HH:MM".

Pure functions over datetimes (no trio, no I/O), in a configured IANA time zone. Daylight-saving rules:

* a daily time that does not exist on a spring-forward day (02:30 in a 02:00→03:00 gap) fires at the same
  elapsed instant, i.e. just after the gap (03:30 local); it still fires once that day;
* a daily time that happens twice on a fall-back day fires once, at its first occurrence;
* interval slots are laid out in local wall time from the window's start, so "every 5 minutes between 08:00
  and 21:00" keeps its local slots across a change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(text: str) -> timedelta:
    """'30s', '5m', '48h', '1d', '1h30m' → timedelta. Bare numbers are refused (unit ambiguity)."""
    m = _DURATION.match(text or "")
    if not text or not m or not any(m.groups()):
        raise ValueError(f"{text!r} is not a duration; use a number with a unit, like 30s, 5m, 48h or 1d")
    d, h, mi, s = m.groups()
    return timedelta(days=int(d or 0), hours=int(h or 0), minutes=int(mi or 0), seconds=float(s or 0))


def parse_clock_time(text: str) -> time:
    """'HH:MM' (24-hour) → time."""
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", (text or "").strip())
    if not m:
        raise ValueError(f"{text!r} is not a time of day; use HH:MM, 24-hour, like 02:00 or 21:30")
    return time(int(m.group(1)), int(m.group(2)))


def format_duration(td: timedelta) -> str:
    total = int(td.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"


@dataclass(frozen=True)
class Daily:
    at: time

    def describe(self) -> str:
        return f"daily at {self.at:%H:%M}"


@dataclass(frozen=True)
class Interval:
    every: timedelta
    start: time = time(0, 0)
    end: time = time(0, 0)  # exclusive; equal to start means all day

    def describe(self) -> str:
        if self.start == self.end:
            return f"every {format_duration(self.every)}"
        return f"every {format_duration(self.every)} between {self.start:%H:%M} and {self.end:%H:%M}"


Schedule = Daily | Interval


def _to_utc(local_naive: datetime, tz: ZoneInfo) -> datetime:
    return local_naive.replace(tzinfo=tz, fold=0).astimezone(UTC)


def next_fire(schedule: Schedule, after: datetime, tz: ZoneInfo) -> datetime:
    """The first firing instant strictly after ``after`` (aware), as an aware UTC datetime."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    local_day = after.astimezone(tz).date()
    if isinstance(schedule, Daily):
        for offset in range(0, 3):
            day = local_day + timedelta(days=offset - 1)
            candidate = _to_utc(datetime.combine(day, schedule.at), tz)
            if candidate > after:
                return candidate
        raise AssertionError("unreachable: a daily time occurs within three days")
    return _next_interval(schedule, after, tz, local_day)


def _next_interval(s: Interval, after: datetime, tz: ZoneInfo, local_day: date) -> datetime:
    step = s.every
    if step <= timedelta(0):
        raise ValueError("interval must be positive")
    best: datetime | None = None
    for offset in range(-1, 3):
        day = local_day + timedelta(days=offset)
        start = datetime.combine(day, s.start)
        end = datetime.combine(day, s.end)
        if end <= start:
            end += timedelta(days=1)  # all day, or a window across midnight
        # local wall-clock slots start, start+step, ... < end; find the first one mapping after `after`
        after_local = after.astimezone(tz).replace(tzinfo=None)
        if after_local < start:
            k = 0
        else:
            k = int((after_local - start) / step)
        slot = start + step * k
        while slot < end:
            utc = _to_utc(slot, tz)
            if utc > after:
                if best is None or utc < best:
                    best = utc
                break
            slot += step
    if best is None:
        raise AssertionError("unreachable: an interval window recurs daily")
    return best


def in_window(s: Interval, at: datetime, tz: ZoneInfo) -> bool:
    if s.start == s.end:
        return True
    t = at.astimezone(tz).time()
    if s.start < s.end:
        return s.start <= t < s.end
    return t >= s.start or t < s.end
