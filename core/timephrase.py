"""Reads a counselor's availability in plain words: "明天 14:00-17:00 50分钟", "tomorrow 2pm-5pm".

The parser understands one day and one time window, in Chinese or English, with an optional
session length; the caller turns the window into bookable slots. Anything it cannot read with
confidence is refused with a reason, so nothing is stored from a guess.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DEFAULT_MINUTES = 50
MIN_MINUTES = 15
MAX_MINUTES = 180
#: Sessions start on the hour or half hour; what is left of the step is the counselor's break
#: (the "fifty-minute hour").
STEP_MINUTES = 30

_FULLWIDTH = str.maketrans("０１２３４５６７８９：～－—–，", "0123456789:~---,")
_CN_DIGITS = {
    "零": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_CN_NUMBER = re.compile(r"[零一二两三四五六七八九十]+")
_WEEKDAYS_ZH = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6, "七": 6}
_WEEKDAYS_EN = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_MONTHS_EN = {
    m: i + 1
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
_RELATIVE_DAYS = (
    ("大后天", 3),
    ("后天", 2),
    ("明天", 1),
    ("明日", 1),
    ("今天", 0),
    ("今日", 0),
    ("day after tomorrow", 2),
    ("tomorrow", 1),
    ("tmrw", 1),
    ("tmr", 1),
    ("today", 0),
    ("tonight", 0),
)
_MINUTES = re.compile(
    r"(\d+)\s*(?:分钟|分鐘|minutes?\b|mins?\b|m\b)|(\d+(?:\.\d+)?)\s*(?:个?小时|hours?\b|hrs?\b|h\b)"
    r"|(半小时|half an hour)"
)
_MERIDIEM_ZH = "上午|早上|早晨|早|中午|下午|午后|晚上|傍晚|夜里|凌晨"
_TIME = (
    r"(?P<merN>MERIDIEM)?\s*(?P<hN>\d{1,2})"
    r"(?:[:.](?P<mN>\d{2})|\s*[点點时](?:\s*(?P<halfN>半)|\s*(?P<mmN>\d{1,2})\s*分?|钟)?)?"
    r"\s*(?P<apN>a\.?m\.?|p\.?m\.?)?"
).replace("MERIDIEM", _MERIDIEM_ZH)
_RANGE = re.compile(
    _TIME.replace("N>", "1>") + r"\s*(?:-|~|到|至|to|until|till)\s*" + _TIME.replace("N>", "2>"),
    re.IGNORECASE,
)


class PhraseError(ValueError):
    """The phrase could not be read; ``reason`` says which part (a catalog suffix)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Availability:
    """One day's window of availability and the length of each session in it."""

    day: date
    start: time
    end: time
    minutes: int

    def window(self, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The window as aware datetimes in ``tz``."""
        start = datetime.combine(self.day, self.start, tzinfo=tz)
        end = datetime.combine(self.day, self.end, tzinfo=tz)
        if end <= start:  # "22:00-00:00": the window ends at midnight
            end += timedelta(days=1)
        return start, end

    def slot_starts(self, tz: ZoneInfo) -> list[datetime]:
        """The start of every whole session that fits in the window."""
        start, end = self.window(tz)
        step = timedelta(minutes=math.ceil(self.minutes / STEP_MINUTES) * STEP_MINUTES)
        length = timedelta(minutes=self.minutes)
        starts: list[datetime] = []
        moment = start
        while moment + length <= end:
            starts.append(moment)
            moment += step
        return starts


def parse_availability(
    text: str, today: date, *, default_minutes: int | None = DEFAULT_MINUTES
) -> Availability:
    """Read a day, a time window and an optional session length from ``text``.

    ``today`` is the date where the counselor is; with ``default_minutes`` None the session
    is the whole window (a group session). Raises :class:`PhraseError` when unsure.
    """
    normal = _normalise(text)
    minutes, normal = _take_minutes(normal)
    day, normal = _take_day(normal, today)
    start, end = _take_window(normal)
    if minutes is None:
        if default_minutes is None:
            whole = datetime.combine(today, end) - datetime.combine(today, start)
            if whole <= timedelta(0):
                whole += timedelta(days=1)
            minutes = int(whole.total_seconds() // 60)
        else:
            minutes = default_minutes
    if not MIN_MINUTES <= minutes <= (MAX_MINUTES if default_minutes is not None else 24 * 60):
        raise PhraseError("length")
    found = Availability(day=day, start=start, end=end, minutes=minutes)
    first, last = found.window(ZoneInfo("UTC"))
    if last - first < timedelta(minutes=minutes):
        raise PhraseError("too_short")
    return found


def _normalise(text: str) -> str:
    normal = _protect_weekdays(text.strip().lower().translate(_FULLWIDTH))
    normal = _CN_NUMBER.sub(lambda m: str(_chinese_number(m.group(0))), normal)
    return re.sub(r"(\d)\s*(?:号|日)", r"\1日", normal)


def _protect_weekdays(text: str) -> str:
    # "周三" / "星期日" keep their Chinese numeral (it names a day, not a number).
    return re.sub(
        r"(周|星期|礼拜|週)([一二三四五六日天七])",
        lambda m: f"{m.group(1)}#{_WEEKDAYS_ZH[m.group(2)]}",
        text,
    )


def _chinese_number(word: str) -> int:
    if "十" not in word:
        value = 0
        for char in word:
            value = value * 10 + _CN_DIGITS.get(char, 0)
        return value
    tens, _, ones = word.partition("十")
    return (_CN_DIGITS.get(tens, 1) if tens else 1) * 10 + (_CN_DIGITS.get(ones, 0) if ones else 0)


def _take_minutes(text: str) -> tuple[int | None, str]:
    found = _MINUTES.search(text)
    if found is None:
        return None, text
    if found.group(1):
        minutes = int(found.group(1))
    elif found.group(2):
        minutes = round(float(found.group(2)) * 60)
    else:
        minutes = 30
    return minutes, text[: found.start()] + " " + text[found.end() :]


def _take_day(text: str, today: date) -> tuple[date, str]:
    for word, offset in _RELATIVE_DAYS:
        if word in text:
            return today + timedelta(days=offset), text.replace(word, " ", 1)
    iso = re.search(r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?", text)
    if iso:
        return _date(int(iso.group(1)), int(iso.group(2)), int(iso.group(3))), _cut(text, iso)
    month_day = re.search(r"(\d{1,2})月(\d{1,2})日?", text) or re.search(
        r"(?<![\d:])(\d{1,2})/(\d{1,2})(?![\d:])", text
    )
    if month_day:
        return _next_date(today, int(month_day.group(1)), int(month_day.group(2))), _cut(
            text, month_day
        )
    named = re.search(r"\b([a-z]{3})[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b", text)
    if named and named.group(1) in _MONTHS_EN:
        day = _next_date(today, _MONTHS_EN[named.group(1)], int(named.group(2)))
        return day, _cut(text, named)
    named = re.search(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+([a-z]{3})[a-z]*\b", text)
    if named and named.group(2) in _MONTHS_EN:
        day = _next_date(today, _MONTHS_EN[named.group(2)], int(named.group(1)))
        return day, _cut(text, named)
    weekday = re.search(r"(下下|下个?|这个?|本)?(?:周|星期|礼拜|週)#(\d)", text)
    if weekday:
        weeks = {"下下": 2, "下": 1, "下个": 1}.get(weekday.group(1) or "", 0)
        explicit = weekday.group(1) is not None
        return _weekday(today, int(weekday.group(2)), weeks, explicit), _cut(text, weekday)
    english = re.search(r"\b(next\s+|this\s+)?(mon|tue|wed|thu|fri|sat|sun)[a-z]*\b", text)
    if english:
        prefix = (english.group(1) or "").strip()
        day = _weekday(
            today, _WEEKDAYS_EN[english.group(2)], 1 if prefix == "next" else 0, bool(prefix)
        )
        return day, _cut(text, english)
    raise PhraseError("day")


def _cut(text: str, found: re.Match[str]) -> str:
    return text[: found.start()] + " " + text[found.end() :]


def _date(year: int, month: int, day: int) -> date:
    try:
        return date(year, month, day)
    except ValueError:
        raise PhraseError("day") from None


def _next_date(today: date, month: int, day: int) -> date:
    """``month``/``day`` this year, or next year when long past (January said in December)."""
    found = _date(today.year, month, day)
    if found < today - timedelta(days=60):
        found = _date(today.year + 1, month, day)
    return found


def _weekday(today: date, weekday: int, weeks: int, explicit: bool) -> date:
    if explicit:  # "下周三", "next wed", "本周五": counted from this week's Monday
        monday = today - timedelta(days=today.weekday())
        return monday + timedelta(days=7 * weeks + weekday)
    return today + timedelta(days=(weekday - today.weekday()) % 7)


def _take_window(text: str) -> tuple[time, time]:
    found = _RANGE.search(text)
    if found is None:
        raise PhraseError("time")
    g = found.groupdict()
    first_ap, second_ap = g["ap1"], g["ap2"]
    first_mer = g["mer1"]
    second_mer = g["mer2"] or first_mer
    end = _clock(g["h2"], g["m2"] or g["mm2"], g["half2"], second_mer, second_ap)
    start = _clock(g["h1"], g["m1"] or g["mm1"], g["half1"], first_mer, first_ap or second_ap)
    if not first_ap and second_ap and start >= end:  # "11-1pm": the start is before noon
        start = _clock(g["h1"], g["m1"] or g["mm1"], g["half1"], first_mer, "am")
    if end <= start and end.hour < 12 and not (second_ap or g["mer2"]) and end != time(0):
        end = end.replace(hour=end.hour + 12)  # "上午11点到1点", "11-1"
    if end <= start and end != time(0):
        raise PhraseError("order")
    return start, end


def _clock(
    hour_text: str, minute_text: str | None, half: str | None, meridiem: str | None, ap: str | None
) -> time:
    hour = int(hour_text)
    minute = 30 if half else int(minute_text or 0)
    if ap:
        if not 1 <= hour <= 12:
            raise PhraseError("time")
        pm = ap.startswith("p")
        hour = hour % 12 + (12 if pm else 0)
    elif meridiem:
        if meridiem in ("下午", "午后", "晚上", "傍晚", "夜里") and hour < 12:
            hour += 12
        elif meridiem == "中午" and hour < 11:
            hour += 12
        elif meridiem in ("凌晨", "上午", "早上", "早晨", "早") and hour == 12:
            hour = 0
    if hour == 24 and minute == 0:
        hour = 0
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise PhraseError("time")
    return time(hour, minute)
