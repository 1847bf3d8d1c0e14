"""Self-assessment through the engine: screens, results, safety, history, privacy, bad input."""

from __future__ import annotations

import json

from sqlmodel import col, func, select

from core.access import Role
from core.assessment import AssessmentResult, result_summary
from core.conversation import TriageVerdict, Turn
from core.instruments import InstrumentRegistry, age_band_minimum, bundled_dir
from core.messages import Priority
from core.models import OutboxMessage, Person, RoleGrant
from core.services import Core, build_core
from tests.drivers import EngineChat

NONE, SEVERAL, HALF, DAILY = "完全不会", "好几天", "一半以上的天数", "几乎每天"


async def onboard(
    core: Core, *, relation: str = "正在隔离", age: str = "18–39", external_id: str = "1001"
) -> EngineChat:
    """A Chinese-speaking person through onboarding, with the menu on screen."""
    chat = EngineChat(core, external_id)
    await chat.command("start")
    await chat.tap("中文")
    await chat.tap("同意")
    await chat.tap(relation)
    await chat.tap(age)
    await chat.new_replies()
    return chat


async def answer(chat: EngineChat, *labels: str) -> None:
    """Tap one answer per question, in order."""
    for label in labels:
        await chat.tap(label)


async def results(core: Core) -> list[AssessmentResult]:
    async with core.db.session() as s:
        return list(
            (await s.exec(select(AssessmentResult).order_by(col(AssessmentResult.id)))).all()
        )


async def person(core: Core, external_id: str = "1001") -> Person:
    async with core.db.session() as s:
        return (await s.exec(select(Person).where(Person.external_id == external_id))).one()


def texts(replies: list) -> str:  # type: ignore[type-arg]
    return "\n---\n".join(r.text for r in replies)


async def test_onboarding_age_bands_are_understood_by_the_registry() -> None:
    registry = InstrumentRegistry.load([bundled_dir()])
    assert [age_band_minimum(b) for b in ("under_16", "16_17", "18_39", "40_64", "65_plus")] == [
        0,
        16,
        18,
        40,
        65,
    ]
    assert registry.for_person("resident", "under_16") == []
    assert {i.id for i in registry.for_person("site_staff", "16_17")} >= {"k6", "who5"}


async def test_resident_in_chinese_goes_from_phq2_to_phq9_without_repeating_questions(
    core: Core,
) -> None:
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    choose = (await chat.new_replies())[-1]
    assert "经历过让你非常害怕的事情" in choose.text  # who the PCL-5 is for
    labels = [b["label"] for row in choose.buttons for b in row]
    assert any("心情和兴趣（2题）" in label for label in labels)
    assert not any("压力和困扰" in label for label in labels)
    await chat.tap("心情和兴趣")
    start = await chat.new_replies()
    assert "过去两个星期" in start[0].text and "一共 2 个问题" in start[0].text
    assert start[-1].text.startswith("1/2 · 过去两周")
    await answer(chat, HALF, SEVERAL)  # PHQ-2 = 3: positive
    offer = (await chat.new_replies())[-1]
    assert "筛查阳性" in offer.text and "不是诊断" in offer.text
    await chat.press(offer.token("接着做 PHQ-9（还有 7 题）"))
    replies = await chat.new_replies()
    assert replies[-1].text.startswith("3/9")
    await answer(chat, *[NONE] * 7)
    all_text = texts(await chat.all_replies())
    assert "1/9" not in all_text and "2/9" not in all_text
    stored = await results(core)
    assert [(r.instrument, r.total, json.loads(r.answers)) for r in stored] == [
        ("phq2", 3, [2, 1]),
        ("phq9", 3, [2, 1, 0, 0, 0, 0, 0, 0, 0]),
    ]
    assert stored[1].version == "1.0" and stored[1].band == "minimal"
    assert (await person(core)).state == "assess_result"


async def test_gad7_in_english_lets_the_person_change_an_answer(core: Core) -> None:
    chat = EngineChat(core, language_hint="en")
    await chat.onboard("English")
    await chat.command("menu")
    await chat.tap("Self-check")
    await chat.tap("Nerves and worry")
    await answer(chat, "Nearly every day", "Nearly every day")
    await chat.tap("Continue with the GAD-7")
    await chat.tap("Several days")  # question 3
    await chat.tap("Change previous answer")
    back = await chat.new_replies()
    assert "Your answer was: Several days" in texts(back)
    assert back[-1].text.startswith("3/7 · Over the last 2 weeks")
    await answer(chat, *["Not at all"] * 5)
    result = (await chat.new_replies())[-1]
    assert "Your score: 6 (out of 21)" in result.text and "Mild" in result.text
    assert "not a diagnosis" in result.text
    gad7 = (await results(core))[-1]
    assert (gad7.instrument, json.loads(gad7.answers)) == ("gad7", [3, 3, 0, 0, 0, 0, 0])


async def test_answers_survive_a_restart_and_a_pause(core: Core) -> None:
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣")
    await chat.tap(DAILY)
    # A restart: a new core on the same database takes the latest button.
    restarted = build_core(core.settings, core.db, core.clock)
    chat2 = EngineChat(restarted, chat.external_id, seen=chat.seen)
    await chat2.tap(DAILY)  # PHQ-2 = 6
    await chat2.tap("接着做 PHQ-9")
    await answer(chat2, NONE, SEVERAL)  # questions 3 and 4
    await chat2.tap("下次再做")
    await chat2.command("menu")
    menu = (await chat2.new_replies())[-1]
    labels = [b["label"] for row in menu.buttons for b in row]
    assert "📝 继续上次的自我评估" in labels and "📝 自我评估" not in labels
    await chat2.command("help")  # a detour through another feature keeps the answers
    await chat2.new_replies()
    again = EngineChat(
        build_core(core.settings, core.db, core.clock), chat.external_id, seen=chat2.seen
    )
    await again.command("menu")
    await again.new_replies()
    await again.tap("继续上次的自我评估")
    resumed = await again.new_replies()
    assert "欢迎回来" in resumed[0].text and resumed[-1].text.startswith("5/9")
    await answer(again, *[NONE] * 5)
    phq9 = (await results(core))[-1]
    assert json.loads(phq9.answers) == [3, 3, 0, 1, 0, 0, 0, 0, 0]


async def test_menu_self_check_offers_to_continue_or_start_over(core: Core) -> None:
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("紧张和担心")
    await chat.tap(SEVERAL)
    await chat.command("menu")
    await chat.tap("继续上次的自我评估")
    await chat.tap("下次再做")
    await chat.command("menu")
    await chat.tap("主菜单")
    # "Self-check" from an old menu message, with a draft: continue or start over.
    await chat.command("menu")
    await chat.new_replies()
    await chat.tap("继续上次的自我评估")
    await chat.tap("不做了")
    assert "没有保存" in (await chat.new_replies())[-1].text
    await chat.command("menu")
    menu = (await chat.new_replies())[-1]
    assert "📝 自我评估" in [b["label"] for row in menu.buttons for b in row]
    assert await results(core) == []


async def test_phq9_item_9_brings_the_hotlines_at_crisis_priority(core: Core) -> None:
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣")
    await answer(chat, HALF, SEVERAL)
    await chat.tap("接着做 PHQ-9")
    await chat.new_replies()
    await answer(chat, *[NONE] * 6, HALF)  # item 9: more than half the days
    replies = await chat.new_replies()
    crisis = [r for r in replies if r.priority == Priority.CRISIS]
    assert len(crisis) == 1
    assert "010-82951332" in crisis[0].text and "120" in crisis[0].text
    assert "很担心你" in replies[-1].text and "不是诊断" in replies[-1].text
    phq9 = (await results(core))[-1]
    assert phq9.instrument == "phq9" and json.loads(phq9.answers)[8] == 2


async def test_negative_phq2_does_not_lead_to_phq9(core: Core) -> None:
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣")
    await answer(chat, NONE, SEVERAL)
    result = (await chat.new_replies())[-1]
    assert "筛查阴性" in result.text and "照顾好自己" in result.text
    assert not any("PHQ-9" in b["label"] for row in result.buttons for b in row)
    assert [r.instrument for r in await results(core)] == ["phq2"]


async def test_staff_are_offered_k6_and_who5(core: Core) -> None:
    staff = await onboard(core, relation="工作人员", external_id="2001")
    await staff.command("menu")
    await staff.tap("自我评估")
    labels = [b["label"] for row in (await staff.new_replies())[-1].buttons for b in row]
    assert any("压力和困扰（6题）" in label for label in labels)
    assert any("身心状态（5题）" in label for label in labels)
    assert any("经历可怕的事情之后" in label for label in labels)
    assert not any("心情和兴趣" in label for label in labels)
    await staff.tap("压力和困扰")
    intro = await staff.new_replies()
    assert "没有经过正式验证" in texts(intro)  # the Chinese K6 is the team's own translation
    await answer(staff, "所有时间", "所有时间", "大部分时间", "部分时间", "从来没有", "从来没有")
    replies = await staff.new_replies()  # 4+4+3+2 = 13: serious distress
    assert [r.priority for r in replies].count(Priority.CRISIS) == 1
    # A resident made staff by an admin gets the staff questionnaires too.
    resident = await onboard(core, external_id="2002")
    async with core.db.session() as s:
        row = await person(core, "2002")
        s.add(
            RoleGrant(person_id=row.id or 0, role=Role.COUNSELOR.value, granted_at=core.clock.now())
        )
        await s.commit()
    await resident.command("menu")
    await resident.tap("自我评估")
    labels = [b["label"] for row in (await resident.new_replies())[-1].buttons for b in row]
    assert any("压力和困扰" in label for label in labels)


async def test_under_16_gets_no_instrument(core: Core) -> None:
    chat = await onboard(core, age="16岁以下")
    await chat.command("menu")
    menu = (await chat.new_replies())[-1]
    labels = [b["label"] for row in menu.buttons for b in row]
    assert not any("自我评估" in label or "自评" in label for label in labels)
    await chat.command("results")
    reply = (await chat.new_replies())[-1]
    assert "16岁及以上" in reply.text
    assert any("工作人员" in b["label"] for row in reply.buttons for b in row)


async def test_history_shows_dates_and_the_change_since_last_time(core: Core) -> None:
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣")
    await answer(chat, HALF, HALF)
    await chat.tap("接着做 PHQ-9")
    await answer(chat, *[HALF] * 4, NONE, NONE, NONE)  # 12
    core.clock.advance(days=14)  # type: ignore[attr-defined]
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣（9题）")  # followed up on the PHQ-9 directly
    await answer(chat, *[SEVERAL] * 8, NONE)  # 8
    result = (await chat.new_replies())[-1]
    assert "上一次（2026年1月5日 20:00）的得分是 12，这一次是 8" in result.text
    await chat.command("results")
    history = (await chat.new_replies())[-1].text
    assert "PHQ-9 12 → 8" in history
    assert "2026年1月19日 20:00" in history and "2026年1月5日 20:00" in history
    async with core.db.session() as s:
        summary = await result_summary(s, (await person(core)).id or 0)
    assert [(e["instrument"], e["total"], e["change"]) for e in summary] == [
        ("phq9", 8, -4),
        ("phq9", 12, None),
        ("phq2", 4, None),
    ]


async def test_export_includes_results(core: Core) -> None:
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣")
    await answer(chat, NONE, SEVERAL)
    await chat.command("privacy")
    await chat.tap("下载")
    async with core.db.session() as s:
        body = (
            await s.exec(
                select(OutboxMessage.document_body).where(
                    col(OutboxMessage.document_body).is_not(None)
                )
            )
        ).one()
    exported = json.loads(body or "{}")["assessments"]
    assert [(e["instrument"], e["answers"], e["total"]) for e in exported] == [("phq2", [0, 1], 1)]


async def test_erasure_deletes_results(core: Core) -> None:
    chat = await onboard(core)
    other = await onboard(core, external_id="3001")
    for someone in (chat, other):
        await someone.command("menu")
        await someone.tap("自我评估")
        await someone.tap("心情和兴趣")
        await answer(someone, NONE, NONE)
    await chat.command("privacy")
    await chat.tap("删除")
    await chat.tap("确定删除")
    remaining = await results(core)
    assert len(remaining) == 1 and remaining[0].person_id == (await person(core, "3001")).id


async def test_an_old_questions_button_is_refused_and_nothing_is_recorded_twice(
    core: Core,
) -> None:
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣")
    first_question = (await chat.new_replies())[-1]
    await chat.press(first_question.token(SEVERAL))
    second_question = (await chat.new_replies())[-1]
    outcome = await chat.press(first_question.token(DAILY))
    assert outcome.notice and "之前的步骤" in outcome.notice
    assert (await chat.new_replies())[-1].text.startswith("2/2")
    await chat.press(second_question.token(NONE))
    late = await chat.press(second_question.token(DAILY))
    assert late.notice and "之前的步骤" in late.notice
    stored = await results(core)
    assert [(r.instrument, json.loads(r.answers)) for r in stored] == [("phq2", [1, 0])]


async def test_the_same_answer_pressed_twice_counts_once(core: Core) -> None:
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣")
    token = (await chat.new_replies())[-1].token(HALF)
    await chat.press(token)
    second = await chat.press(token)
    assert second.notice and "之前的步骤" in second.notice
    data = json.loads((await person(core)).state_data)
    assert data["assessment"]["answers"] == [2]


async def test_typed_text_goes_through_triage_and_the_question_is_asked_again(
    core: Core,
) -> None:
    seen: list[str] = []

    def triage(_turn: Turn, text: str) -> TriageVerdict:
        seen.append(text)
        return TriageVerdict(None)

    core.engine.triage = triage
    chat = await onboard(core)
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣")
    await chat.new_replies()
    await chat.text("我也说不清")
    replies = await chat.new_replies()
    assert seen == ["我也说不清"]
    assert "请点下面的一个答案" in replies[0].text
    assert replies[-1].text.startswith("1/2") and replies[-1].buttons
    async with core.db.session() as s:
        count = (await s.exec(select(func.count()).select_from(AssessmentResult))).one()
    assert count == 0
