"""Staff cards speak the staff's language: why a card was raised, from where, recent scores.

A counselor reading a card at 3 a.m. should not have to decode "zh.intent.passive (source:
triage)" or "PHQ9 4 (minimal)".
"""

from __future__ import annotations

import json
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from core.assessment import AssessmentResult
from core.config import Settings
from core.escalation import reason_labels
from core.instruments import InstrumentRegistry, bundled_dir
from core.models import OutboxMessage, Person
from core.services import Core
from tests.conftest import settings_for
from tests.drivers import EngineChat

STAFF_CHAT = "-100500"
TRIAGE_DATA = Path(__file__).resolve().parents[2] / "core" / "data" / "triage"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return settings_for(tmp_path, db_url, telegram_token="1:x", staff_chat_id=STAFF_CHAT)


def every_reason_id() -> set[str]:
    """Every reason a card can carry: triage cues, instrument rules, and the fixed ones."""
    ids = {
        "negated",
        "context.affirmed",
        "context.unsure",
        "third_party.film",
        "third_party.risk",
        "sos.button",
        "resident.asked_for_counselor",
        "staff.concern",
        *(f"followup.{q}" for q in ("plan", "means", "timeframe")),
    }
    for path in TRIAGE_DATA.glob("lexicon_*.toml"):
        ids |= {cue["id"] for cue in tomllib.loads(path.read_text("utf-8")).get("cue", [])}
    registry = InstrumentRegistry.load([bundled_dir()], languages=("zh_Hans", "en"))
    for instrument_id in ("phq9", "phq2", "gad7", "gad2", "k6", "who5", "pcl5"):
        ids |= {
            rule.id
            for rule in registry.get(instrument_id).rules
            if rule.signal_levels or rule.signal
        }
    return ids


@pytest.mark.parametrize("lang", ["zh_Hans", "en"])
async def test_every_reason_has_words_in_both_languages(core: Core, lang: str) -> None:
    raw = sorted(r for r in every_reason_id() if reason_labels(core.engine, lang, [r]) == r)
    assert raw == [], f"reasons shown to staff as raw ids in {lang}: {raw}"
    assert reason_labels(core.engine, "zh_Hans", ["zh.intent.passive", "method.jump"]) == (
        "流露出不想活下去的念头、提到自杀的方式"
    )


async def resident_with_results(core: Core) -> EngineChat:
    resident = EngineChat(core, "100")
    await resident.onboard()
    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == "100"))).one()
        assert person.id is not None
        start = core.clock.now() - timedelta(days=14)
        for n, (total, band) in enumerate([(12, "moderate"), (8, "mild")]):
            s.add(
                AssessmentResult(
                    person_id=person.id,
                    instrument="phq9",
                    version="1.0",
                    attempt=f"a{n}",
                    total=total,
                    band=band,
                    created_at=start + timedelta(days=7 * n),
                )
            )
        await s.commit()
    return resident


async def last_card(core: Core) -> str:
    async with core.db.session() as s:
        rows = (
            await s.exec(
                select(OutboxMessage)
                .where(OutboxMessage.chat_id == STAFF_CHAT)
                .order_by(col(OutboxMessage.id))
            )
        ).all()
    assert rows, "no staff card"
    return rows[-1].text


async def test_card_names_reasons_source_and_score_change_in_chinese(core: Core) -> None:
    resident = await resident_with_results(core)
    await resident.text("我不想活了")
    card = await last_card(core)
    assert "原因：直接说出想死或想自杀（来源：对话内容自动识别）" in card, card
    assert "近期自评：PHQ-9 12 → 8（轻度）；PHQ-9 12（中度）" in card, card
    assert "地点：示例隔离点 · 语言：中文" in card, card
    assert "zh.intent" not in card and "triage" not in card and "PHQ9" not in card


async def test_card_in_english_when_the_staff_work_in_english(core: Core) -> None:
    core.engine.config.default_language = "en"
    resident = await resident_with_results(core)
    await resident.text("我不想活了")
    card = await last_card(core)
    assert "says directly they want to die or to kill themselves" in card, card
    assert "read automatically in the conversation" in card
    assert "PHQ-9 12 → 8 (Mild)" in card, card


def test_rule_ids_in_the_data_are_what_the_cards_expect() -> None:
    # The card words for instrument rules are keyed by rule id: a renamed rule must fail here.
    registry = InstrumentRegistry.load([bundled_dir()], languages=("zh_Hans", "en"))
    ids = {rule.id for rule in registry.get("phq9").rules} | {
        rule.id for rule in registry.get("k6").rules
    }
    assert {"phq9.item9", "phq9.severe", "k6.serious_distress"} <= ids
    assert json.dumps(sorted(ids))  # a plain list of strings
