"""Turns that arrive together are handled together: one transaction, each turn as if alone."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from core.conversation import Turn
from core.messages import Inbound, InboundKind, Priority
from core.models import OutboxMessage
from core.services import Core
from tests.drivers import EngineChat


def count_transactions(core: Core) -> Counter[str]:
    """Count the transactions the engine's database begins (on either database)."""
    counted: Counter[str] = Counter()

    def begun(_conn: Any) -> None:
        counted["begin"] += 1

    event.listen(core.db.engine.sync_engine, "begin", begun)  # the writer's too
    return counted


def update_of(chat: EngineChat, key: str, **fields: Any) -> Inbound:
    """An update from ``chat``'s person with the update key ``key``."""
    return Inbound(
        channel="telegram",
        external_id=chat.external_id,
        chat_id=chat.external_id,
        update_key=key,
        **fields,
    )


async def onboarded(core: Core, count: int) -> list[EngineChat]:
    chats = [EngineChat(core, external_id=str(2000 + i)) for i in range(count)]
    for chat in chats:
        await chat.onboard()
    return chats


async def test_people_writing_at_once_share_a_transaction_and_each_gets_their_reply(
    core: Core,
) -> None:
    chats = await onboarded(core, 12)
    counted = count_transactions(core)
    results = await asyncio.gather(*(chat.text(f"你好 {i}") for i, chat in enumerate(chats)))
    assert not any(r.duplicate for r in results)
    # Twelve turns in one transaction (or two, should the first be handled before the
    # others arrive), where they took twelve before.
    assert 1 <= counted["begin"] <= 2
    for chat in chats:
        [reply] = await chat.new_replies()
        assert "自动助手" in reply.text and reply.buttons  # the note with the menu under it
        assert reply.token("我需要紧急帮助")


async def test_one_persons_events_are_handled_in_order_never_in_one_batch(core: Core) -> None:
    chats = await onboarded(core, 2)
    chat = chats[0]
    await asyncio.gather(
        chat.command("menu"), chat.text("你好"), chats[1].text("你好"), chat.text("谢谢")
    )
    replies = await chat.new_replies()
    assert len(replies) == 3
    assert replies[0].text.startswith("我能为你做些什么")
    assert "自动助手" in replies[1].text and "自动助手" in replies[2].text
    # Each turn saw the step the one before left, so the last reply's buttons are current.
    await chat.press(replies[-1].token("使用说明"))
    assert not any("之前的步骤" in r.text for r in await chat.new_replies())


async def test_a_turn_that_fails_costs_the_others_nothing(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    chats = await onboarded(core, 6)
    fixed = False

    async def flaky(turn: Turn, _args: str) -> None:
        turn.say("input.free_text")
        if not fixed:
            raise RuntimeError("a bug in one flow")

    core.engine.command("flaky", flaky)
    update = update_of(chats[3], "flaky-1", kind=InboundKind.COMMAND, command="flaky")
    outcomes = await asyncio.gather(
        *(
            core.engine.handle(update) if i == 3 else chat.text("谢谢")
            for i, chat in enumerate(chats)
        ),
        return_exceptions=True,
    )
    assert isinstance(outcomes[3], RuntimeError)
    assert all(not isinstance(o, BaseException) for i, o in enumerate(outcomes) if i != 3)
    assert "turns failed; handling each alone" in caplog.text
    for i, chat in enumerate(chats):
        assert len(await chat.new_replies()) == (0 if i == 3 else 1)
    # Nothing of the failed turn was kept, not even that its update was seen: when the
    # platform sends it again, it is handled.
    fixed = True
    again = await core.engine.handle(update)
    assert not again.duplicate
    assert len(await chats[3].new_replies()) == 1


async def test_the_same_update_twice_in_one_batch_is_handled_once(core: Core) -> None:
    chats = await onboarded(core, 3)
    first, second = (
        update_of(chats[1], "twice-1", kind=InboundKind.TEXT, text="你好") for _ in range(2)
    )
    other = chats[0].text("谢谢")
    results = await asyncio.gather(
        other, core.engine.handle(first), core.engine.handle(second), chats[2].text("你好")
    )
    assert [r.duplicate for r in results] == [False, False, True, False]
    async with core.db.session() as session:
        rows = (
            await session.exec(
                select(OutboxMessage).where(OutboxMessage.chat_id == chats[1].external_id)
            )
        ).all()
    assert sum("自动助手" in r.text for r in rows) == 1


async def test_a_conflict_with_another_process_is_tried_once_more(core: Core) -> None:
    [chat] = await onboarded(core, 1)
    calls = 0

    async def racing(turn: Turn, _args: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # what a unique row written by another process at the same moment gives
            raise IntegrityError("INSERT ...", {}, Exception("duplicate key value"))
        turn.say("input.free_text")

    core.engine.command("racing", racing)
    result = await chat.command("racing")
    assert calls == 2 and not result.duplicate
    assert len(await chat.new_replies()) == 1


async def test_high_risk_messages_go_before_the_others_waiting(core: Core) -> None:
    chats = await onboarded(core, 42)
    crisis, sos, in_order = chats[40], chats[41], chats[0]
    for chat in chats:
        await chat.new_replies()  # onboarding's
    async with core.db.session() as session:
        before = max((await session.exec(select(OutboxMessage.id))).all(), default=0) or 0
    counted = count_transactions(core)
    await asyncio.gather(
        in_order.text("你好"),
        *(chat.text(f"今天有点累 {i}") for i, chat in enumerate(chats[1:40])),
        in_order.text("我不想活了"),  # waits for the same person's "你好", as it came after it
        crisis.text("我不想活了"),
        sos.command("sos"),
    )
    async with core.db.session() as session:
        rows = (
            await session.exec(
                select(OutboxMessage).where(OutboxMessage.id > before).order_by(OutboxMessage.id)
            )
        ).all()
    first: dict[str, int] = {}
    for row in rows:
        if row.person_id is not None:
            first.setdefault(row.chat_id, row.id or 0)
    ordinary = [first[c.external_id] for c in chats[1:40]]
    # The two urgent turns that waited behind nobody of their own went first, in a batch of
    # their own, although 40 others arrived before them.
    assert first[crisis.external_id] < min(ordinary)
    assert first[sos.external_id] < min(ordinary)
    assert counted["begin"] >= 3
    # The resident who wrote "你好" first got its answer first, then the safety answer.
    mine = [r for r in rows if r.chat_id == in_order.external_id]
    assert "自动助手" in mine[0].text
    assert any(r.priority == Priority.CRISIS for r in mine[1:])
    for chat in (crisis, in_order):
        assert any(r.priority == Priority.CRISIS for r in rows if r.chat_id == chat.external_id)
