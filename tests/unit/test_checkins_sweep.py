"""The check-in sweep at scale: thousands due at once, in batches, each person exactly once.

The scheduler's clock is injected (nothing sleeps); every test runs on SQLite and, when it is
configured, on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import checkins
from core.assessment import AssessmentResult
from core.bulk import insert_rows, update_rows
from core.checkins import Checkin, CheckinPlan
from core.clock import FakeClock, as_utc
from core.config import Settings
from core.db import Database
from core.escalation import Escalation
from core.messages import Button, Outbound, Priority
from core.models import ButtonToken, OutboxMessage, Person
from core.outbox import queue, queue_many
from core.risk import RiskLevel
from core.services import Core, build_core
from tests.conftest import settings_for
from tests.unit.test_checkins import SITES

# Monday 5 January 2026, 12:00 UTC: 20:00 in Shanghai, 12:00 in London.
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    sites = tmp_path / "sites.toml"
    sites.write_text(SITES, encoding="utf-8")
    return settings_for(tmp_path, db_url, sites_file=sites)


@pytest.fixture
def woken() -> list[str]:
    return []


@pytest.fixture
async def core(settings: Settings, db: Database, clock: FakeClock, woken: list[str]) -> Core:
    return build_core(settings, db, clock, notify=woken.append)


_people = iter(range(1, 10**9))


async def seed(core: Core, count: int, *, site: str, language: str, **person: Any) -> list[int]:
    """``count`` onboarded residents, each with an active plan that fell due a minute ago."""
    first = next(_people)
    for _ in range(count - 1):
        next(_people)
    rows = [
        {
            "channel": "telegram",
            "external_id": str(700_000 + n),
            "chat_id": str(700_000 + n),
            "case_code": f"R-T{n:07d}",
            "language": language,
            "language_confirmed": True,
            "site_code": site,
            "relation": "resident",
            "age_band": "18_39",
            "consent_version": 1,
            "consent_at": NOW - timedelta(days=3),
            "state": "menu",
            "state_data": "{}",
            "state_seq": 4,
            "paused": False,
            "created_at": NOW - timedelta(days=3),
            "last_seen_at": NOW - timedelta(days=3),
            **person,
        }
        for n in range(first, first + count)
    ]

    async def work(session: AsyncSession) -> list[int]:
        await session.execute(insert(Person), rows)
        ids = list(
            (
                await session.exec(
                    select(Person.id).where(
                        col(Person.external_id).in_([r["external_id"] for r in rows])
                    )
                )
            ).all()
        )
        await session.execute(
            insert(CheckinPlan),
            [
                {
                    "person_id": pid,
                    "local_time": "20:00",
                    "status": "active",
                    "tier": "low",
                    "next_due_at": NOW - timedelta(minutes=1),
                    "planned_at": NOW - timedelta(days=3),
                    "low_streak": 0,
                    "created_at": NOW - timedelta(days=3),
                }
                for pid in ids
            ],
        )
        return [pid for pid in ids if pid is not None]

    return await core.db.run(work)


async def count(core: Core, model: Any, *where: Any) -> int:
    async with core.db.session() as s:
        return int((await s.exec(select(func.count()).select_from(model).where(*where))).one())


async def test_2500_due_checkins_are_all_queued_in_one_sweep(
    core: Core, clock: FakeClock, woken: list[str]
) -> None:
    north = await seed(core, 2000, site="north", language="zh_Hans")
    west = await seed(core, 500, site="west", language="en")
    counts = await checkins.sweep(core.engine)
    assert counts["checkins"] == 2500
    # Delivery is woken batch by batch, not only at the end.
    assert woken.count("telegram") >= 2500 // checkins.CHECKIN_BATCH + 1

    t = core.engine.catalogs.t
    async with core.db.session() as s:
        sent = {c.person_id: c for c in (await s.exec(select(Checkin))).all()}
        rows = (await s.exec(select(OutboxMessage).where(OutboxMessage.kind == "checkin"))).all()
        tokens = {b.token: b for b in (await s.exec(select(ButtonToken))).all()}
        plans = {p.person_id: p for p in (await s.exec(select(CheckinPlan))).all()}
    assert sorted(sent) == sorted(north + west) and len(rows) == 2500 and len(tokens) == 12500
    for row in rows:
        assert row.person_id is not None
        checkin = sent[row.person_id]
        lang = "en" if row.person_id in west else "zh_Hans"
        assert row.dedupe_key == f"checkin:{checkin.id}" and row.chat_kind == "private"
        assert row.text == t(lang, "checkin.ask") and row.priority == Priority.REMINDER
        assert row.status == "pending" and as_utc(row.due_at) == NOW
        [line] = json.loads(row.buttons)
        assert [b["label"] for b in line] == [t(lang, f"checkin.mood_{m}") for m in range(1, 6)]
        bound = [tokens[b["token"]] for b in line]
        assert [(b.person_id, b.action, b.arg, b.state_seq) for b in bound] == [
            (row.person_id, "checkin.mood", f"{checkin.id}:{m}", 4) for m in range(1, 6)
        ]
    for pid, plan in plans.items():
        assert plan.status == "active" and as_utc(plan.planned_at) == NOW
        assert plan.last_sent_on == "2026-01-05" and sent[pid].local_date == "2026-01-05"
        # Twice a week: Thursday at 20:00 local, in each site's timezone.
        local = ZoneInfo("Europe/London" if pid in west else "Asia/Shanghai")
        nxt = datetime(2026, 1, 8, 20, 0, tzinfo=local).astimezone(UTC)
        assert plan.next_due_at is not None and as_utc(plan.next_due_at) == nxt

    assert (await checkins.sweep(core.engine))["checkins"] == 0
    assert await count(core, OutboxMessage) == 2500


async def test_a_batch_that_fails_is_sent_by_the_next_sweep_and_nobody_twice(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = await seed(core, 2500, site="north", language="zh_Hans")
    calls = 0
    real = queue_many

    async def failing(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the process dies mid-sweep")
        return await real(*args, **kwargs)

    monkeypatch.setattr("core.checkins.queue_many", failing)
    with pytest.raises(RuntimeError):
        await checkins.queue_due_checkins(core.engine, NOW, batch_size=1000, parallel=1)
    # What committed is whole: each check-in with its message and its plan moved on.
    done = await count(core, Checkin)
    assert done == 1000
    assert await count(core, OutboxMessage) == done
    assert await count(core, ButtonToken) == 5 * done
    assert await count(core, CheckinPlan, col(CheckinPlan.next_due_at) <= NOW) == 2500 - done

    monkeypatch.setattr("core.checkins.queue_many", real)
    assert (await checkins.sweep(core.engine))["checkins"] == 2500 - done
    async with core.db.session() as s:
        per_person = Counter(
            pid for pid in (await s.exec(select(OutboxMessage.person_id))).all() if pid
        )
    assert sorted(per_person) == sorted(people) and set(per_person.values()) == {1}


async def test_two_sweeps_at_once_send_each_checkin_once(core: Core) -> None:
    people = await seed(core, 2500, site="north", language="zh_Hans")
    first, second = await asyncio.gather(
        checkins.queue_due_checkins(core.engine, NOW), checkins.queue_due_checkins(core.engine, NOW)
    )
    assert first + second == 2500
    async with core.db.session() as s:
        per_person = Counter(
            pid for pid in (await s.exec(select(OutboxMessage.person_id))).all() if pid
        )
    assert sorted(per_person) == sorted(people) and set(per_person.values()) == {1}


async def test_who_is_not_sent_a_checkin_has_the_plan_moved_on(core: Core) -> None:
    [reachable] = await seed(core, 1, site="north", language="zh_Hans")
    [blocked] = await seed(core, 1, site="north", language="zh_Hans", blocked_at=NOW)
    [quiet] = await seed(core, 1, site="north", language="zh_Hans", paused=True)
    [withdrawn] = await seed(core, 1, site="north", language="zh_Hans", consent_withdrawn_at=NOW)
    [held] = await seed(core, 1, site="north", language="zh_Hans", state="handover")
    [already] = await seed(core, 1, site="north", language="zh_Hans")
    [resumed] = await seed(core, 1, site="north", language="zh_Hans")
    assert "handover" in core.engine.holding_states
    async with core.db.session() as s:
        # Sent today already (the plan was moved by hand since): not sent a second time.
        s.add(Checkin(person_id=already, site_code="north", local_date="2026-01-05", sent_at=NOW))
        plan = await s.get(CheckinPlan, resumed)
        assert plan is not None
        plan.status = "paused"  # a week's pause that ran out: resumes by itself
        s.add(plan)
        await s.commit()

    assert (await checkins.sweep(core.engine))["checkins"] == 2
    async with core.db.session() as s:
        sent = set((await s.exec(select(OutboxMessage.person_id))).all())
        plans = {p.person_id: p for p in (await s.exec(select(CheckinPlan))).all()}
        today = Counter((await s.exec(select(Checkin.person_id))).all())
    assert sent == {reachable, resumed}
    assert today == Counter({reachable: 1, already: 1, resumed: 1})
    for pid, plan in plans.items():
        assert plan.next_due_at is not None and as_utc(plan.next_due_at) > NOW, pid
        assert plan.status == "active", pid
    assert all(plans[pid].last_sent_on is None for pid in (blocked, quiet, withdrawn, held))
    assert {pid for pid, p in plans.items() if p.last_sent_on} == {reachable, already, resumed}


async def test_tiers_in_one_query_match_one_at_a_time(core: Core) -> None:
    ids = await seed(core, 6, site="north", language="zh_Hans")
    high_open, high_recent, high_old, worrying, calmed, moderate_case = ids
    async with core.db.session() as s:

        def escalation(pid: int, level: RiskLevel, resolved: datetime | None) -> None:
            s.add(
                Escalation(
                    person_id=pid,
                    open_person_id=None if resolved else pid,
                    case_code=f"R-E{pid}",
                    level=int(level),
                    source="triage",
                    status="resolved" if resolved else "open",
                    created_at=NOW - timedelta(days=20),
                    resolved_at=resolved,
                )
            )

        def result(pid: int, band: str, at: datetime) -> None:
            s.add(
                AssessmentResult(
                    person_id=pid,
                    instrument="phq9",
                    version="1",
                    attempt=f"a{pid}{band}{at:%j%H}",
                    total=12,
                    band=band,
                    created_at=at,
                )
            )

        escalation(high_open, RiskLevel.HIGH, None)
        escalation(high_recent, RiskLevel.IMMINENT, NOW - timedelta(days=3))
        escalation(high_old, RiskLevel.HIGH, NOW - timedelta(days=9))
        result(worrying, "moderate", NOW - timedelta(days=2))
        result(calmed, "moderate", NOW - timedelta(days=5))
        result(calmed, "minimal", NOW - timedelta(days=4))
        escalation(moderate_case, RiskLevel.MODERATE, None)
        # Someone else's later, calm result leaves the worrying one of ``worrying`` standing.
        result(moderate_case, "minimal", NOW - timedelta(days=1))
        await s.commit()

    expected = {
        high_open: "high",
        high_recent: "high",
        high_old: "low",
        worrying: "moderate",
        calmed: "low",
        moderate_case: "moderate",
    }
    async with core.db.session() as s:
        assert await checkins.care_tiers(s, ids, NOW) == expected
        for pid, tier in expected.items():
            assert await checkins.care_tier(s, pid, NOW) == tier


def _shape(row: OutboxMessage, tokens: dict[str, ButtonToken]) -> tuple[Any, ...]:
    """A row with its ids and random tokens replaced by what the tokens mean."""
    drawn = re.sub(r'"token": "[0-9a-f]{12}[A-Za-z0-9_-]{16}"', '"token": "T"', row.buttons)
    meant = [
        (t.person_id, t.action, t.arg, t.state_seq, as_utc(t.created_at))
        for line in json.loads(row.buttons)
        for t in (tokens[b["token"]] for b in line)
    ]
    return (
        row.channel,
        row.chat_id,
        row.chat_kind,
        row.person_id,
        row.priority,
        row.kind,
        row.text,
        drawn,
        meant,
        row.document_name,
        row.document_body,
        row.status,
        row.attempts,
        as_utc(row.due_at),
        row.hold_until,
        as_utc(row.created_at),
        row.claimed_at,
        row.sent_at,
        row.platform_message_id,
        row.error,
        row.dedupe_key.split(":", 1)[1] if row.dedupe_key else None,
    )


async def test_queue_and_queue_many_write_these_rows_and_tokens(core: Core) -> None:
    [resident] = await seed(core, 1, site="north", language="zh_Hans")
    holder = SimpleNamespace(state_seq=7)
    lines = [f"第{i}行，" + "安心" * 40 for i in range(60)]  # 84 or 85 characters each

    def messages(prefix: str) -> list[Outbound]:
        return [
            Outbound(
                "telegram",
                "5001",
                "今天过得怎么样？",
                buttons=[
                    [Button('很好 "好"', "checkin.mood", "1:5"), Button("差", "checkin.mood")],
                    [Button("主菜单", "menu")],
                ],
                priority=Priority.REMINDER,
                kind="checkin",
                person_id=resident,
                seq_holder=holder,
                dedupe_key=f"{prefix}:one",
            ),
            Outbound(
                "telegram",
                "-100600",
                "新个案 R-7K3Q",
                buttons=[[Button("认领", "esc.claim", "9", scope="staff")]],
                priority=Priority.ESCALATION,
                kind="card",
                chat_kind="group",
            ),
            Outbound(
                "web",
                "w-1",
                "\n".join(lines),
                buttons=[[Button("下一页", "more", "2")]],
                person_id=resident,
                dedupe_key=f"{prefix}:long",
            ),
            Outbound(
                "telegram",
                "5001",
                "你的数据",
                person_id=resident,
                document=("anxin.json", '{"a": 1}'),
                buttons=[[Button("删除", "privacy.erase")]],
            ),
            Outbound("telegram", "5001", "", person_id=resident, dedupe_key=f"{prefix}:empty"),
        ]

    def row(
        channel: str,
        chat_id: str,
        chat_kind: str,
        person_id: int | None,
        priority: Priority,
        kind: str,
        text: str,
        buttons: str,
        meant: list[tuple[Any, ...]],
        document: tuple[str, str] | None,
        dedupe: str | None,
    ) -> tuple[Any, ...]:
        """What ``_shape`` gives for a row just queued at NOW."""
        name, body = document or (None, None)
        never = (None, NOW, None, None, None, None)  # hold, created, claimed, sent, id, error
        return (
            *(channel, chat_id, chat_kind, person_id, int(priority), kind, text, buttons, meant),
            *(name, body, "pending", 0, NOW),
            *never,
            dedupe,
        )

    mood, menu = (resident, "checkin.mood"), (resident, "menu", "", 7, NOW)
    # Lines 0 to 46 with their newlines are 4,031 characters; with line 47, 4,117 (over 4,096).
    expected = [
        row(
            *("telegram", "5001", "private", resident, Priority.REMINDER, "checkin"),
            "今天过得怎么样？",
            '[[{"label": "很好 \\"好\\"", "token": "T"}, {"label": "差", "token": "T"}], '
            '[{"label": "主菜单", "token": "T"}]]',
            [(*mood, "1:5", 7, NOW), (*mood, "", 7, NOW), menu],
            None,
            "one",
        ),
        row(
            *("telegram", "-100600", "group", None, Priority.ESCALATION, "card"),
            "新个案 R-7K3Q",
            '[[{"label": "认领", "token": "T"}]]',
            [(None, "esc.claim", "9", 3, NOW)],
            None,
            None,
        ),
        row(
            *("web", "w-1", "private", resident, Priority.REPLY, "reply"),
            "\n".join(lines[:47]),
            "[]",
            [],
            None,
            "long",
        ),
        row(
            *("web", "w-1", "private", resident, Priority.REPLY, "reply"),
            "\n".join(lines[47:]),
            '[[{"label": "下一页", "token": "T"}]]',
            [(resident, "more", "2", 3, NOW)],
            None,
            "long#1",
        ),
        row(
            *("telegram", "5001", "private", resident, Priority.REPLY, "reply"),
            "你的数据",
            '[[{"label": "删除", "token": "T"}]]',
            [(resident, "privacy.erase", "", 3, NOW)],
            ("anxin.json", '{"a": 1}'),
            None,
        ),
        row(
            *("telegram", "5001", "private", resident, Priority.REPLY, "reply"),
            "",
            "[]",
            [],
            None,
            "empty",
        ),
    ]

    assert await core.db.run(lambda s: queue(s, messages("a"), NOW, state_seq=3)) == 6
    assert await core.db.run(lambda s: queue_many(s, iter(messages("b")), NOW, 3)) == 6
    async with core.db.session() as s:
        rows = (await s.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
        tokens = {t.token: t for t in (await s.exec(select(ButtonToken))).all()}
    assert [_shape(r, tokens) for r in rows[:6]] == expected
    assert [_shape(r, tokens) for r in rows[6:]] == expected
    assert [r.dedupe_key for r in rows if r.dedupe_key] == [
        *("a:one", "a:long", "a:long#1", "a:empty"),
        *("b:one", "b:long", "b:long#1", "b:empty"),
    ]
    # The time of queueing in ms as 12 hex digits (so new tokens go at the end of the index),
    # then 16 random characters.
    stamp = f"{int(NOW.timestamp() * 1000):012x}"
    assert len(tokens) == 12 and all(
        re.fullmatch(re.escape(stamp) + r"[A-Za-z0-9_-]{16}", t) for t in tokens
    )


async def test_queue_refuses_a_persons_button_without_a_person(core: Core) -> None:
    lost = Outbound("telegram", "5001", "hi", buttons=[[Button("主菜单", "menu")]])
    with pytest.raises(ValueError, match="buttons need a person"):
        await core.db.run(lambda s: queue(s, [lost], NOW))
    async with core.db.session() as s:
        assert (await s.exec(select(func.count()).select_from(OutboxMessage))).one() == 0
        assert (await s.exec(select(func.count()).select_from(ButtonToken))).one() == 0


async def test_bulk_insert_stores_times_as_sqlalchemy_does(core: Core) -> None:
    """Equal instants written from two timezones are converted each in its own right."""
    shanghai = NOW.astimezone(ZoneInfo("Asia/Shanghai"))
    table = ButtonToken.__table__  # type: ignore[attr-defined]

    async def write(session: AsyncSession) -> None:
        await session.execute(
            insert(ButtonToken),
            [
                {"token": "orm-utc", "action": "a", "arg": "", "state_seq": 0, "created_at": NOW},
                {
                    "token": "orm-sh",
                    "action": "a",
                    "arg": "",
                    "state_seq": 0,
                    "created_at": shanghai,
                },
            ],
        )
        await insert_rows(
            session,
            table,
            ("token", "action", "arg", "state_seq", "created_at"),
            [("bulk-utc", "a", "", 0, NOW), ("bulk-sh", "a", "", 0, shanghai)],
        )

    await core.db.run(write)
    async with core.db.session() as s:
        stored = {t.token: t.created_at for t in (await s.exec(select(ButtonToken))).all()}
    assert stored["bulk-utc"] == stored["orm-utc"] and stored["bulk-sh"] == stored["orm-sh"]


async def test_bulk_rows_with_columns_the_same_in_every_row_or_not(core: Core) -> None:
    """On PostgreSQL a column with one value in every row goes as that value, not an array."""
    table = ButtonToken.__table__  # type: ignore[attr-defined]
    columns = ("token", "person_id", "action", "arg", "state_seq")

    async def write(session: AsyncSession) -> None:
        await insert_rows(
            session,
            table,
            columns,
            [(f"t{n}", None, "same", "", n) for n in range(1, 21)],
            same={"created_at": NOW},
        )
        await update_rows(
            session,
            table,
            ("token", "arg"),
            [(f"t{n}", "x") for n in range(1, 20)],
            same={"state_seq": 9},
        )
        await update_rows(session, table, ("token", "action", "arg"), [("t20", "one", "y")])

    await core.db.run(write)
    async with core.db.session() as s:
        stored = {
            t.token: (t.person_id, t.action, t.arg, t.state_seq, as_utc(t.created_at))
            for t in (await s.exec(select(ButtonToken))).all()
        }
    assert stored == {f"t{n}": (None, "same", "x", 9, NOW) for n in range(1, 20)} | {
        "t20": (None, "one", "y", 20, NOW)
    }
