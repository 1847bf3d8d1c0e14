"""Availability in plain words: what the parser reads, and what it refuses rather than guess."""

from __future__ import annotations

from datetime import date, time
from zoneinfo import ZoneInfo

import pytest

from core.timephrase import Availability, PhraseError, parse_availability

MONDAY = date(2026, 1, 5)
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize(
    ("phrase", "day", "start", "end", "minutes"),
    [
        ("明天 14:00-17:00 50分钟", 6, time(14), time(17), 50),
        ("tomorrow 2pm-5pm 50 min", 6, time(14), time(17), 50),
        ("周三下午2点到5点", 7, time(14), time(17), 50),
        ("下午两点半到五点 明天", 6, time(14, 30), time(17), 50),
        ("下周一 上午9点到11点 一小时", 12, time(9), time(11), 60),
        ("1月8日 19:00-21:00 45分钟", 8, time(19), time(21), 45),
        ("2026-01-09 14:00–16:00", 9, time(14), time(16), 50),
        ("后天 晚上7点-9点 半小时", 7, time(19), time(21), 30),
        ("Jan 7 2-5pm 60 minutes", 7, time(14), time(17), 60),
        ("明天 上午11点到1点", 6, time(11), time(13), 50),
        ("sat 10:00 to 12:00", 10, time(10), time(12), 50),
        ("明天１４：００－１７：００", 6, time(14), time(17), 50),
        ("11-1pm tomorrow", 6, time(11), time(13), 50),
    ],
)
def test_phrases_in_chinese_and_english_are_read(
    phrase: str, day: int, start: time, end: time, minutes: int
) -> None:
    assert parse_availability(phrase, MONDAY) == Availability(
        date(2026, 1, day), start, end, minutes
    )


@pytest.mark.parametrize(
    ("phrase", "reason"),
    [
        ("随便什么时候都行", "day"),
        ("明天", "time"),
        ("14:00-17:00", "day"),
        ("明天 17:00-14:00", "order"),
        ("明天 14:00-14:30 50分钟", "too_short"),
        ("明天 14:00-17:00 5分钟", "length"),
        ("2月30日 14:00-17:00", "day"),
    ],
)
def test_unclear_phrases_are_refused_with_the_reason(phrase: str, reason: str) -> None:
    with pytest.raises(PhraseError) as caught:
        parse_availability(phrase, MONDAY)
    assert caught.value.reason == reason


def test_a_weekday_means_the_coming_one_and_next_week_means_the_week_after() -> None:
    assert parse_availability("周一 9:00-10:00", MONDAY).day == MONDAY
    assert parse_availability("下周一 9:00-10:00", MONDAY).day == date(2026, 1, 12)


def test_a_january_date_said_in_december_is_next_year() -> None:
    found = parse_availability("1月3日 9:00-10:00", date(2025, 12, 20))
    assert found.day == date(2026, 1, 3)


def test_fifty_minute_sessions_start_on_the_hour_leaving_a_break() -> None:
    found = parse_availability("明天 14:00-17:00 50分钟", MONDAY)
    assert [s.strftime("%H:%M") for s in found.slot_starts(SHANGHAI)] == [
        "14:00",
        "15:00",
        "16:00",
    ]


def test_thirty_minute_sessions_fill_the_window() -> None:
    found = parse_availability("明天 9:00-10:30 30分钟", MONDAY)
    assert len(found.slot_starts(SHANGHAI)) == 3


def test_without_a_default_length_the_session_is_the_whole_window() -> None:
    found = parse_availability("明天 19:00-20:30", MONDAY, default_minutes=None)
    assert found.minutes == 90
