"""The check-in sweep reads whether it may reach a person in SQL: the same answer as
``_may_reach`` gives for the person's row, for every combination of what stops outreach."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import checkins
from core.db import Database
from core.models import Person

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


async def test_reachable_in_sql_is_may_reach(db: Database) -> None:
    await db.create_all()
    combos = list(itertools.product((False, True), (None, NOW), (None, 1), (None, NOW)))

    async def add(session: AsyncSession) -> None:
        for i, (paused, blocked_at, consent, withdrawn) in enumerate(combos):
            session.add(
                Person(
                    channel="telegram",
                    external_id=str(1000 + i),
                    chat_id=str(1000 + i),
                    case_code=f"R-{i:04d}",
                    paused=paused,
                    blocked_at=blocked_at,
                    consent_version=consent,
                    consent_withdrawn_at=withdrawn,
                    created_at=NOW,
                    last_seen_at=NOW,
                )
            )

    await db.run(add)
    async with db.session() as session:
        people = (await session.exec(select(Person).order_by(col(Person.id)))).all()
        in_sql = dict((await session.exec(select(col(Person.id), checkins._reachable()))).all())
    assert len(people) == len(combos) == 16
    assert {p.id: checkins._may_reach(p) for p in people} == {
        pid: bool(ok) for pid, ok in in_sql.items()
    }
    assert sum(bool(ok) for ok in in_sql.values()) == 1
