"""The self-help library: content files, the menu, timed guided steps, pointers into it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from core.clock import as_utc
from core.config import SUPPORTED_LANGUAGES
from core.models import OutboxMessage
from core.selfhelp import SelfHelpError, SelfHelpLibrary, bundled_dir, read_topic
from core.services import Core
from tests.drivers import EngineChat

TOPICS = {"isolation_stress", "sleep", "breathing", "grounding", "children", "grief", "frontline"}


def test_every_topic_exists_in_both_languages() -> None:
    library = SelfHelpLibrary.load(bundled_dir(), SUPPORTED_LANGUAGES)
    assert set(library.topics) == TOPICS
    for topic_id in TOPICS:
        assert set(library.topics[topic_id]) == set(SUPPORTED_LANGUAGES)


def test_the_breathing_exercise_has_timed_steps_in_both_languages() -> None:
    library = SelfHelpLibrary.load(bundled_dir(), SUPPORTED_LANGUAGES)
    zh = library.get("breathing", "zh_Hans")
    en = library.get("breathing", "en")
    assert zh is not None and en is not None
    assert len(zh.steps) == len(en.steps) > 5
    assert [s.pause for s in zh.steps] == [s.pause for s in en.steps]
    assert all(step.pause > 0 for step in zh.steps[1:])


def test_a_topic_missing_in_one_language_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zh_Hans").mkdir()
    (tmp_path / "en").mkdir()
    (tmp_path / "zh_Hans" / "sleep.md").write_text("# 睡眠\n\n好好睡", encoding="utf-8")
    with pytest.raises(SelfHelpError, match="missing in en"):
        SelfHelpLibrary.load(tmp_path, SUPPORTED_LANGUAGES)


def test_a_file_without_a_title_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.md"
    path.write_text("no title", encoding="utf-8")
    with pytest.raises(SelfHelpError, match="Title"):
        read_topic(path)


async def steps_of(core: Core, chat: EngineChat) -> list[OutboxMessage]:
    async with core.db.session() as s:
        found = await s.exec(
            select(OutboxMessage)
            .where(OutboxMessage.chat_id == chat.external_id, OutboxMessage.kind == "selfhelp")
            .order_by(col(OutboxMessage.id))
        )
        return list(found.all())


async def test_the_menu_lists_the_library_and_a_topic_opens(core: Core) -> None:
    chat = EngineChat(core, "600")
    await chat.onboard()
    await chat.command("menu")
    await chat.tap("自助练习")
    listing = (await chat.new_replies())[-1]
    labels = [b["label"] for line in listing.buttons for b in line]
    assert "睡个好觉" in labels and "5-4-3-2-1 稳定练习" in labels
    await chat.tap("睡个好觉")
    assert "每天尽量同一时间起床" in (await chat.new_replies())[-1].text


async def test_guided_breathing_steps_are_queued_with_their_pauses(core: Core) -> None:
    chat = EngineChat(core, "601")
    await chat.onboard()
    await chat.command("selfhelp")
    await chat.tap("呼吸练习")
    assert any(r.text.startswith("跟我做呼吸练习") for r in await chat.new_replies())
    steps = await steps_of(core, chat)
    now = core.clock.now()
    offsets = [as_utc(r.due_at) - now for r in steps]
    assert offsets[0] == timedelta(seconds=6)
    assert offsets == sorted(offsets) and offsets[-1] > timedelta(seconds=40)


async def test_stopping_the_exercise_drops_the_steps_not_yet_sent(core: Core) -> None:
    chat = EngineChat(core, "602")
    await chat.onboard()
    await chat.command("selfhelp")
    await chat.tap("呼吸练习")
    await chat.tap("停止练习")
    assert {r.status for r in await steps_of(core, chat)} == {"cancelled"}


async def test_a_questionnaire_result_points_to_the_exercises(core: Core) -> None:
    chat = EngineChat(core, "603")
    await chat.onboard()
    await chat.command("menu")
    await chat.tap("自我评估")
    await chat.tap("心情和兴趣")
    await chat.tap("完全不会")
    await chat.tap("完全不会")
    result = (await chat.new_replies())[-1]
    assert "筛查阴性" in result.text
    await chat.press(result.token("放松小练习"))
    assert "呼吸练习" in str((await chat.new_replies())[-1].buttons)


async def test_a_checkin_answer_offers_the_library(core: Core) -> None:
    from core import checkins

    chat = EngineChat(core, "604")
    await chat.onboard()
    core.clock.advance(days=1)  # type: ignore[attr-defined]
    await checkins.sweep(core.engine)
    await chat.tap("一般")
    assert (await chat.new_replies())[-1].token("自助练习")
