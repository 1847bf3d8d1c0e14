"""Self-assessment in Chinese through the real aiogram client and the fake Bot API.

A resident opens the self-check from the menu, screens positive on the PHQ-2, goes on to the
PHQ-9 without being asked its first two questions again, changes an answer with the back
button, and reads the result; two weeks later (the injected clock) a second PHQ-9 and
``/results`` show the change. Then what goes wrong through Telegram: an old question's button,
the same button pressed twice at once (one getUpdates batch; concurrent webhook POSTs), text
typed where a button is expected (it is still read for risk), and PHQ-9 item 9 above 0.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import ClientSession
from sqlmodel import col, select

from core.assessment import AssessmentResult
from core.clock import FakeClock
from core.escalation import Escalation
from core.messages import HandleResult, Inbound
from tests.fakebotapi import SentMessage
from tests.integration.conftest import WEBHOOK_SECRET, BotUnderTest, Resident, StartBot
from tests.integration.test_telegram_onboarding import onboard_in_chinese

STAFF_CHAT = -1_009_300_000_001
NONE, SEVERAL, HALF, DAILY = "完全不会", "好几天", "一半以上的天数", "几乎每天"
OPTIONS = [NONE, SEVERAL, HALF, DAILY]
STALE = "这个按钮属于之前的步骤"
PHQ9_ITEM_3 = "入睡困难、睡不安稳或睡眠过多"
PHQ9_ITEM_4 = "感觉疲倦或没有活力"
PHQ9_ITEM_9 = "有不如死掉或用某种方式伤害自己的念头"


async def start(start_bot: StartBot, transport: str = "polling") -> BotUnderTest:
    bot = await start_bot(transport, staff_chat_id=str(STAFF_CHAT))
    bot.api.group(STAFF_CHAT, "值班群")
    return bot


def labels(message: SentMessage) -> list[str]:
    return [b["text"] for b in message.buttons]


def text_of(message: SentMessage) -> str:
    return message.plain_text or ""


async def question(resident: Resident, progress: str) -> SentMessage:
    """Wait for the question whose progress marker is ``progress`` ("3/9")."""
    [asked] = await resident.replies(1, contains=f"{progress} · 过去两周")
    assert text_of(asked).startswith(f"{progress} · 过去两周\n\n")
    assert labels(asked)[:4] == OPTIONS
    return asked


async def answer(resident: Resident, asked: SentMessage, label: str) -> dict[str, Any]:
    """Press the button ``label`` of the question message ``asked`` (not the newest such)."""
    data = next(b["callback_data"] for b in asked.buttons if b["text"] == label)
    return await resident.user.press(asked, data)


async def open_self_check(resident: Resident) -> SentMessage:
    """Tap the menu's self-check button and wait for the list of questionnaires."""
    await resident.tap("📝 自我评估")
    [choose] = await resident.replies(1, contains="选一个开始吧")
    return choose


async def positive_phq2(resident: Resident) -> SentMessage:
    """From the list: PHQ-2 answered 2 + 1 = 3 (positive); returns the screen's result."""
    await resident.tap("心情和兴趣（2题）")
    [intro] = await resident.replies(1, contains="一共 2 个问题")
    assert "在过去两个星期，有多少时候您受到以下任何问题所困扰？" in text_of(intro)
    first = await question(resident, "1/2")
    assert "做事时提不起劲或没有兴趣" in text_of(first)
    await answer(resident, first, HALF)
    second = await question(resident, "2/2")
    assert "感到心情低落、沮丧或绝望" in text_of(second)
    assert "← 改上一题" in labels(second)
    await answer(resident, second, SEVERAL)
    [result] = await resident.replies(1, contains="筛查阳性")
    return result


async def results(bot: BotUnderTest) -> list[AssessmentResult]:
    async with bot.runtime.db.session() as session:
        rows = await session.exec(select(AssessmentResult).order_by(col(AssessmentResult.id)))
        return list(rows.all())


async def draft_answers(bot: BotUnderTest, user_id: int) -> list[int] | None:
    person = await bot.person(user_id)
    assert person is not None
    draft = json.loads(person.state_data or "{}").get("assessment")
    return None if draft is None else list(draft["answers"])


def overlap_meter(bot: BotUnderTest, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count how many inbound updates core is handling at the same moment (``most``)."""
    engine = bot.runtime.core.engine
    inner = engine.handle
    meter = {"now": 0, "most": 0}

    async def handle(inbound: Inbound) -> HandleResult:
        meter["now"] += 1
        meter["most"] = max(meter["most"], meter["now"])
        try:
            return await inner(inbound)
        finally:
            meter["now"] -= 1

    monkeypatch.setattr(engine, "handle", handle)
    return meter


async def escalations(bot: BotUnderTest) -> list[Escalation]:
    async with bot.runtime.db.session() as session:
        return list((await session.exec(select(Escalation))).all())


# --- the happy path, with a changed answer and the history ----------------------------------


async def test_phq2_then_phq9_in_chinese_with_a_changed_answer_and_the_history(
    start_bot: StartBot, clock: FakeClock
) -> None:
    bot = await start(start_bot)
    resident = bot.resident(7301)
    await onboard_in_chinese(resident)

    choose = await open_self_check(resident)
    assert "心情和兴趣（2题）" in labels(choose) and "紧张和担心（2题）" in labels(choose)
    screen = await positive_phq2(resident)
    assert "你的得分：3（最高 6）" in text_of(screen)
    assert "不是诊断" in text_of(screen)
    assert "接着做 PHQ-9（还有 7 题）" in labels(screen)

    await resident.tap("接着做 PHQ-9（还有 7 题）")
    [intro] = await resident.replies(1, contains="一共 7 个问题")
    assert "患者健康问卷（PHQ-9）" in text_of(intro)
    third = await question(resident, "3/9")  # the PHQ-2's two answers are carried over
    assert PHQ9_ITEM_3 in text_of(third)
    await answer(resident, third, HALF)
    fourth = await question(resident, "4/9")
    assert PHQ9_ITEM_4 in text_of(fourth)
    await answer(resident, fourth, DAILY)
    fifth = await question(resident, "5/9")

    # Change the previous answer: back to question 4, which remembers what was chosen.
    await answer(resident, fifth, "← 改上一题")
    [went_back] = await resident.replies(1, contains="回到上一题")
    assert "你之前选的是：几乎每天" in text_of(went_back)
    again = await question(resident, "4/9")
    assert PHQ9_ITEM_4 in text_of(again)
    assert await draft_answers(bot, 7301) == [2, 1, 2]
    await answer(resident, again, SEVERAL)

    for progress, label in [("5/9", HALF), ("6/9", HALF), ("7/9", SEVERAL), ("8/9", SEVERAL)]:
        await answer(resident, await question(resident, progress), label)
    ninth = await question(resident, "9/9")
    assert PHQ9_ITEM_9 in text_of(ninth)
    await answer(resident, ninth, NONE)

    [result] = await resident.replies(1, contains="你的得分")
    shown = text_of(result)
    assert "患者健康问卷（PHQ-9）" in shown
    assert "你的得分：12（最高 27）" in shown
    assert "结果：中度" in shown
    assert "低落的感受比较明显，建议和心理咨询师聊一聊。" in shown  # the band in plain words
    assert "这是一份筛查问卷，不是诊断" in shown
    assert "和心理咨询师聊一聊会有帮助" in shown and "/sos" in shown  # next steps, urgent help
    assert "🆘 我需要紧急帮助" in labels(result) and "我的自评记录" in labels(result)
    first_phq9 = (await results(bot))[-1]
    assert (first_phq9.instrument, first_phq9.total, first_phq9.band) == ("phq9", 12, "moderate")
    assert json.loads(first_phq9.answers) == [2, 1, 2, 1, 2, 2, 1, 1, 0]
    asked = [text_of(m) for m in bot.api.messages_to(7301)]
    assert not any(t.startswith(("1/9", "2/9")) for t in asked)  # never asked again
    assert sum(t.startswith("4/9") for t in asked) == 2  # once, then again after "back"

    # Two weeks later the list offers the PHQ-9 itself, so the change can be measured.
    clock.advance(days=14)
    await resident.command("/menu")
    await resident.replies(1, contains="我能为你做些什么")
    choose = await open_self_check(resident)
    assert "心情和兴趣（9题）" in labels(choose)
    await resident.tap("心情和兴趣（9题）")
    for n in range(1, 9):
        await answer(resident, await question(resident, f"{n}/9"), SEVERAL)
    await answer(resident, await question(resident, "9/9"), NONE)
    [second] = await resident.replies(1, contains="你的得分")
    assert "你的得分：8（最高 27）" in text_of(second) and "结果：轻度" in text_of(second)
    assert "上一次（2026年1月5日 20:00）的得分是 12，这一次是 8" in text_of(second)

    await resident.command("/results")
    [history] = await resident.replies(1, contains="你的自评记录")
    lines = text_of(history).splitlines()
    assert lines[0] == "你的自评记录（最近 3 次）："
    assert lines[1:4] == [
        "• 2026年1月19日 20:00　PHQ-9：8 分，轻度",
        "• 2026年1月5日 20:00　PHQ-9：12 分，中度",
        "• 2026年1月5日 20:00　PHQ-2：3 分，筛查阳性",
    ]
    assert lines[-2:] == ["和上一次相比：", "• PHQ-9 12 → 8"]
    await bot.all_sent()
    assert bot.api.messages_to(STAFF_CHAT) == []  # nothing here asked for a human review


# --- bad input through Telegram -------------------------------------------------------------


async def test_an_old_questions_button_gets_a_kind_answer_and_changes_nothing(
    start_bot: StartBot,
) -> None:
    bot = await start(start_bot)
    resident = bot.resident(7302)
    await onboard_in_chinese(resident)
    await open_self_check(resident)
    await resident.tap("心情和兴趣（2题）")
    first = await question(resident, "1/2")
    await answer(resident, first, SEVERAL)
    second = await question(resident, "2/2")
    before = await bot.person(7302)
    assert before is not None

    late = await answer(resident, first, DAILY)  # question 1's button, after it moved on
    toast = await resident.answer_to(late)
    assert STALE in toast.get("text", "")
    [kind] = await resident.replies(1, contains=STALE)
    assert "请用下面最新的按钮" in text_of(kind)
    asked_again = await question(resident, "2/2")
    after = await bot.person(7302)
    assert after is not None
    assert (after.state, after.state_seq, after.state_data) == (
        before.state,
        before.state_seq,
        before.state_data,
    )
    assert await draft_answers(bot, 7302) == [1]

    await answer(resident, asked_again, NONE)  # the newest question still works
    [result] = await resident.replies(1, contains="你的得分")
    assert "你的得分：1（最高 6）" in text_of(result) and "筛查阴性" in text_of(result)
    # After the result, an answer button of the finished questionnaire records nothing.
    toast = await resident.answer_to(await answer(resident, second, DAILY))
    assert STALE in toast.get("text", "")
    await resident.replies(1, contains=STALE)
    stored = await results(bot)
    assert [(r.instrument, json.loads(r.answers)) for r in stored] == [("phq2", [1, 0])]


async def test_the_same_answer_twice_in_one_getupdates_batch_is_recorded_once(
    start_bot: StartBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await start(start_bot)
    resident = bot.resident(7303)
    await onboard_in_chinese(resident)
    await open_self_check(resident)
    await resident.tap("心情和兴趣（2题）")
    first = await question(resident, "1/2")
    meter = overlap_meter(bot, monkeypatch)

    # Two taps before the bot polls again (nothing awaits in between): one batch, handled
    # by aiogram as concurrent tasks.
    one = await answer(resident, first, HALF)
    two = await answer(resident, first, HALF)
    assert [u["update_id"] for u in bot.api.pending_updates] == [one["update_id"], two["update_id"]]

    toasts = [(await resident.answer_to(p)).get("text", "") for p in (one, two)]
    assert sorted(STALE in t for t in toasts) == [False, True]  # one silent, one kind notice
    await question(resident, "2/2")
    await resident.replies(1, contains=STALE)
    assert await draft_answers(bot, 7303) == [2]
    assert meter["most"] == 2  # the two presses really were handled at the same time
    await bot.all_sent()
    asked = [text_of(m) for m in bot.api.messages_to(7303)]
    assert sum(t.startswith("2/2") for t in asked) == 2  # the next question, then shown again
    assert not any(t.startswith("1/2") for t in asked[asked.index(text_of(first)) + 1 :])


def callback_update(
    bot: BotUnderTest, resident: Resident, message: SentMessage, data: str, update_id: int
) -> dict[str, Any]:
    """A callback_query update for a press on ``message``, as Telegram would POST it."""
    stored = bot.api.message(message.chat_id, message.message_id)
    assert stored is not None
    return {
        "update_id": update_id,
        "callback_query": {
            "id": str(9_100_000_000 + update_id),
            "from": resident.user.json,
            "message": stored,
            "chat_instance": "7304",
            "data": data,
        },
    }


async def test_the_same_answer_posted_twice_at_once_to_the_webhook_is_recorded_once(
    start_bot: StartBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await start(start_bot, "webhook")
    resident = bot.resident(7304)
    await onboard_in_chinese(resident)
    await open_self_check(resident)
    await resident.tap("心情和兴趣（2题）")
    first = await question(resident, "1/2")
    data = next(b["callback_data"] for b in first.buttons if b["text"] == DAILY)
    meter = overlap_meter(bot, monkeypatch)

    # Telegram delivers webhook updates over several connections at once; the fake sends one
    # at a time, so the two presses are POSTed here, concurrently, as Telegram would.
    updates = [callback_update(bot, resident, first, data, n) for n in (880_001, 880_002)]
    headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    async with ClientSession() as http:

        async def post(update: dict[str, Any]) -> int:
            async with http.post(bot.webhook_url, json=update, headers=headers) as response:
                return response.status

        statuses = await asyncio.gather(*(post(u) for u in updates))
    assert statuses == [200, 200]

    await question(resident, "2/2")
    await resident.replies(1, contains=STALE)
    assert await draft_answers(bot, 7304) == [3]
    assert meter["most"] == 2
    assert {"880001", "880002"} <= set(await bot.seen_keys())
    notices = [
        c.params.get("text") or ""
        for c in bot.api.calls
        if c.method.lower() == "answercallbackquery"
        and str(c.params.get("callback_query_id")) in {u["callback_query"]["id"] for u in updates}
    ]
    assert sorted(STALE in n for n in notices) == [False, True]


async def test_text_typed_mid_questionnaire_is_read_for_risk(start_bot: StartBot) -> None:
    bot = await start(start_bot)
    resident = bot.resident(7305)
    await onboard_in_chinese(resident)
    await open_self_check(resident)
    await resident.tap("心情和兴趣（2题）")
    await answer(resident, await question(resident, "1/2"), DAILY)
    await question(resident, "2/2")

    await resident.say("我也说不清")  # harmless text: asked to use the buttons, kindly
    [kindly] = await resident.replies(1, contains="请点下面的一个答案")
    assert "我需要紧急帮助" in text_of(kindly)
    await question(resident, "2/2")

    await resident.say("我不想活了")
    [safety] = await resident.replies(1, contains="我很担心你的安全")
    assert "010-82951332" in text_of(safety) and "12356" in text_of(safety)
    [card] = await bot.api.wait_for_message(STAFF_CHAT, contains="高风险")
    person = await bot.person(7305)
    assert person is not None
    assert person.case_code in text_of(card) and "7305" not in text_of(card)
    assert "认领" in [b["text"] for b in card.buttons]
    [opened] = await escalations(bot)
    assert opened.source == "triage" and opened.person_id == person.id
    assert await draft_answers(bot, 7305) == [3]  # the answers so far are kept

    # Once the crisis part is past, the questionnaire can be picked up where it was.
    await resident.command("/menu")
    [menu] = await resident.replies(1, contains="我能为你做些什么")
    assert "📝 继续上次的自我评估" in labels(menu)
    await resident.tap("📝 继续上次的自我评估")
    await resident.replies(1, contains="欢迎回来")
    await answer(resident, await question(resident, "2/2"), NONE)
    [result] = await resident.replies(1, contains="你的得分")
    assert "你的得分：3（最高 6）" in text_of(result)
    assert [json.loads(r.answers) for r in await results(bot)] == [[3, 0]]


@pytest.mark.parametrize(
    ("item9", "level", "safety_text"),
    [(SEVERAL, "中", "这些热线随时可以拨打"), (HALF, "高", "我很担心你的安全")],
    ids=["item9-several-days", "item9-more-than-half"],
)
async def test_phq9_item_9_above_zero_shows_the_hotlines_at_once_and_a_staff_card(
    start_bot: StartBot, item9: str, level: str, safety_text: str
) -> None:
    bot = await start(start_bot)
    resident = bot.resident(7306)
    await onboard_in_chinese(resident)
    await open_self_check(resident)
    await positive_phq2(resident)
    await resident.tap("接着做 PHQ-9")
    for n in range(3, 9):
        await answer(resident, await question(resident, f"{n}/9"), NONE)
    await answer(resident, await question(resident, "9/9"), item9)

    [safety] = await resident.replies(1, contains=safety_text)
    assert "010-82951332" in text_of(safety) and "400-161-9995" in text_of(safety)
    [result] = await resident.replies(1, contains="你的得分")
    sent = bot.api.messages_to(7306)
    assert sent.index(safety) < sent.index(result)  # the lines come first, at crisis priority
    assert "不是诊断" in text_of(result)
    [card] = await bot.api.wait_for_message(STAFF_CHAT, contains=f"{level}风险")
    person = await bot.person(7306)
    assert person is not None and person.case_code in text_of(card)
    assert "PHQ-9 第9题" in text_of(card) and "来源：自评问卷" in text_of(card)
    assert "近期自评：PHQ-9 " in text_of(card)  # the score the card is about
    [opened] = await escalations(bot)
    assert opened.source == "instrument"
    stored = (await results(bot))[-1]
    assert stored.instrument == "phq9" and json.loads(stored.answers)[8] == OPTIONS.index(item9)
