"""The shipped hotline's business hours against the State Council's holiday notices, every day of 2025 and 2026.

The notices, as published (国办发明电〔2024〕12号 for 2025, 国办发明电〔2025〕7号 for 2026): each festival's days
off ("放假调休，共N天") and the weekend days worked in exchange ("上班"). Each range is written here with the
notice's own day count, so a typo in a date shows as a wrong count. 2027's notice could not be checked when
the flow was written: only its statutory days are in the flow, marked provisional, and tested as closed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ivr_flows import load_flow

HOTLINE = load_flow(Path(__file__).resolve().parents[1] / "config" / "ivr" / "hotline.yaml")
OFFICE = HOTLINE.schedules["office"]
SHANGHAI = ZoneInfo("Asia/Shanghai")

#: (first day off, last day off, the notice's day count, the days worked in exchange)
NOTICES: dict[int, list[tuple[str, str, int, list[str]]]] = {
    2025: [
        ("2025-01-01", "2025-01-01", 1, []),                           # 元旦
        ("2025-01-28", "2025-02-04", 8, ["2025-01-26", "2025-02-08"]),  # 春节
        ("2025-04-04", "2025-04-06", 3, []),                           # 清明节
        ("2025-05-01", "2025-05-05", 5, ["2025-04-27"]),               # 劳动节
        ("2025-05-31", "2025-06-02", 3, []),                           # 端午节
        ("2025-10-01", "2025-10-08", 8, ["2025-09-28", "2025-10-11"]),  # 国庆节、中秋节
    ],
    2026: [
        ("2026-01-01", "2026-01-03", 3, ["2026-01-04"]),               # 元旦
        ("2026-02-15", "2026-02-23", 9, ["2026-02-14", "2026-02-28"]),  # 春节
        ("2026-04-04", "2026-04-06", 3, []),                           # 清明节
        ("2026-05-01", "2026-05-05", 5, ["2026-05-09"]),               # 劳动节
        ("2026-06-19", "2026-06-21", 3, []),                           # 端午节
        ("2026-09-25", "2026-09-27", 3, []),                           # 中秋节
        ("2026-10-01", "2026-10-07", 7, ["2026-09-20", "2026-10-10"]),  # 国庆节
    ],
}
#: 《全国年节及纪念日放假办法》 (2024): the statutory days themselves, on 2027's calendar.
STATUTORY_2027 = ["2027-01-01", "2027-02-05", "2027-02-06", "2027-02-07", "2027-02-08", "2027-04-05",
                  "2027-05-01", "2027-05-02", "2027-06-09", "2027-09-15", "2027-10-01", "2027-10-02", "2027-10-03"]


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


def days_of(year: int) -> list[date]:
    first = date(year, 1, 1)
    return [first + timedelta(days=i) for i in range((date(year + 1, 1, 1) - first).days)]


@pytest.mark.parametrize("year", sorted(NOTICES))
def test_every_day_of_the_year_follows_the_notice(year: int) -> None:
    off: set[date] = set()
    worked: set[date] = set()
    for first, last, count, exchanged in NOTICES[year]:
        a, b = date.fromisoformat(first), date.fromisoformat(last)
        assert (b - a).days + 1 == count, (first, last)
        off.update(a + timedelta(days=i) for i in range(count))
        worked.update(date.fromisoformat(d) for d in exchanged)
    assert all(d.weekday() >= 5 for d in worked)  # exchanged days are weekends
    wrong = []
    for day in days_of(year):
        expected = day not in off and (day.weekday() < 5 or day in worked)
        if OFFICE.is_open(at(day, 10)) != expected:
            wrong.append(f"{day} {day:%a}: expected {'open' if expected else 'closed'}")
    assert not wrong


def test_opening_hours_are_eight_to_eight_in_shanghai_and_a_worked_saturday_keeps_them() -> None:
    monday, worked_saturday = date(2026, 11, 23), date(2026, 2, 14)
    for day in (monday, worked_saturday):
        assert not OFFICE.is_open(at(day, 7, 59))
        assert OFFICE.is_open(at(day, 8, 0)) and OFFICE.is_open(at(day, 19, 59))
        assert not OFFICE.is_open(at(day, 20, 0))
    assert not OFFICE.is_open(at(date(2026, 11, 28), 10))  # an ordinary Saturday


def test_2027_statutory_days_are_closed_until_the_notice_is_added() -> None:
    for text in STATUTORY_2027:
        day = date.fromisoformat(text)
        assert OFFICE.is_holiday(at(day, 10)) and not OFFICE.is_open(at(day, 10)), text


def test_the_after_hours_prompt_says_the_hours_the_schedule_has() -> None:
    assert OFFICE.weekly == {"mon-fri": "08:00-20:00"} and OFFICE.timezone == "Asia/Shanghai"
    assert "8 a.m. to 8 p.m." in HOTLINE.prompts["after_hours"].text["en"]
    assert "上午八点至晚上八点" in HOTLINE.prompts["after_hours"].text["zh"]
