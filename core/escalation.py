"""Closed-loop escalation: anyone at risk gets a safe answer and a named human owns their case.

A risk signal at high or imminent opens (or raises) the person's one open escalation, tells
them plainly what happens next, and puts a card in the staff chat. The card is claimed by one
counselor (a database update decides races), who then talks with the resident through the bot
from a private chat. Unclaimed cards are paged again to the on-call counselors, then to the
supervisors; when nobody is on duty, the resident is told at once how to reach a 24-hour line.
Every action is written to the audit log.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, DateTime, Index, Text, update
from sqlmodel import Field, SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.access import Action, Role, may, roles_of
from core.clock import as_utc
from core.conversation import ConversationEngine, Handler, TriageVerdict, Turn
from core.i18n import format_number
from core.messages import Button, Outbound, Priority
from core.models import AuditLog, Person, RoleGrant
from core.outbox import queue
from core.risk import RiskLevel, RiskSignal
from core.safety import hotline_text

OUTCOMES = ("safe", "referred", "emergency", "no_contact")
FOLLOW_UPS = ("plan", "means", "timeframe")
EXCERPT_LIMIT = 300
STATS_DAYS = 7


class Escalation(SQLModel, table=True):
    """One person's case for the on-call team, from the first alert to its outcome."""

    __tablename__ = "escalation"
    __table_args__ = (Index("ix_escalation_due", "status", "next_page_at"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True, ondelete="CASCADE")
    # Equal to person_id while the case is open, None once resolved: the unique constraint
    # is what keeps every person to one open escalation, even when two signals race.
    open_person_id: int | None = Field(default=None, unique=True)
    case_code: str = Field(max_length=16)
    site_code: str | None = Field(default=None, max_length=32)
    language: str | None = Field(default=None, max_length=16)
    level: int
    source: str = Field(max_length=24)
    reasons: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    excerpt: str = Field(default="", sa_column=Column(Text, nullable=False))
    status: str = Field(default="open", max_length=16)
    nobody_on_call: bool = False
    page_stage: int = 0
    next_page_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    claimed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    claimed_by: int | None = Field(default=None, foreign_key="person.id", ondelete="SET NULL")
    claimed_by_code: str | None = Field(default=None, max_length=16)
    resolved_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    outcome: str | None = Field(default=None, max_length=24)


class OnCall(SQLModel, table=True):
    """A counselor who is on duty now."""

    __tablename__ = "on_call"

    person_id: int = Field(foreign_key="person.id", primary_key=True, ondelete="CASCADE")
    since: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class EscalationNote(SQLModel, table=True):
    """A staff note on a case; only staff ever see it."""

    __tablename__ = "escalation_note"

    id: int | None = Field(default=None, primary_key=True)
    escalation_id: int = Field(foreign_key="escalation.id", index=True, ondelete="CASCADE")
    author_code: str = Field(max_length=16)
    text: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class SafetyPlan(SQLModel, table=True):
    """A resident's own safety plan (Stanley–Brown's six steps), kept for them in the bot."""

    __tablename__ = "safety_plan"

    person_id: int = Field(foreign_key="person.id", primary_key=True, ondelete="CASCADE")
    steps: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


PLAN_STEPS = ("warning_signs", "coping", "distractions", "people", "professionals", "environment")


@dataclass(frozen=True)
class Opened:
    """What happened to a person's escalation when a signal arrived."""

    escalation: Escalation
    created: bool
    raised: bool


def _level_name(engine: ConversationEngine, lang: str, level: int) -> str:
    return engine.catalogs.t(lang, f"escalation.level.{RiskLevel(level).label}")


def _staff_lang(engine: ConversationEngine) -> str:
    return engine.config.default_language


def register(engine: ConversationEngine) -> None:
    """Plug escalation into the engine: the risk path, staff actions, relay and commands."""
    engine.risk = EscalationResponder()
    engine.state("risk_followup", _prompt_followup, _followup_text)
    engine.state("handover", _prompt_handover, _resident_to_counselor, holding=_resident_holding)
    engine.state(
        "relay", _prompt_relay, _counselor_to_resident, holding=_counselor_holding, triage=False
    )
    engine.state("safety_plan", _prompt_plan_step, _plan_answer)
    engine.action("followup", _followup_answer)
    engine.action("esc.request", _request_counselor, any_step=True)
    engine.action("esc.decline", _decline_counselor, any_step=True)
    engine.action("esc.claim", _claim)
    engine.action("esc.resolve", _resolve_ask)
    engine.action("esc.outcome", _resolve_outcome)
    engine.action("esc.note", _note_help)
    engine.action("plan.start", _plan_start, any_step=True)
    engine.action("plan.later", _plan_later, any_step=True)
    engine.command("oncall", _oncall, before_onboarding=True)
    engine.command("queue", _queue, before_onboarding=True)
    engine.command("stats", _stats, before_onboarding=True)
    engine.command("concern", _concern, before_onboarding=True)
    engine.command("note", _note, before_onboarding=True)
    engine.command("done", _done, before_onboarding=True)
    engine.command("plan", _plan_show)
    engine.always_commands.add("done")
    engine.erasure_blockers.append(_erasure_blocked)
    engine.export_hooks.append(_export_plan)


# The risk path ------------------------------------------------------------------------------


class EscalationResponder:
    """Answers risk signals: a safe reply at once, and an owned case for high and imminent."""

    async def respond(self, turn: Turn, signal: RiskSignal, excerpt: str) -> None:
        """Queue the reply and the escalation for ``signal`` in the turn's transaction."""
        if turn.person.state == "handover":
            await _signal_during_handover(turn, signal, excerpt)
            return
        if signal.level >= RiskLevel.HIGH:
            opened = await open_escalation(turn, signal, excerpt)
            _safety_reply(turn, opened.escalation, signal.level)
            if opened.created or opened.raised:
                await _post_card(turn, opened)
            holder = _other_holder(turn.engine, turn.person)
            if holder is not None:
                # A human already holds this conversation (a booked chat session): they read
                # what raised the alarm, and the resident stays with them.
                await holder(turn, excerpt)
            elif (
                signal.level == RiskLevel.HIGH
                and signal.source == "triage"
                and (turn.person.state != "risk_followup")
            ):
                turn.goto("risk_followup", q="plan", esc=opened.escalation.id)
                await _prompt_followup(turn)
            elif turn.person.state == "risk_followup":
                turn.goto("menu" if turn.onboarded else turn.person.state)
            return
        if signal.level == RiskLevel.MODERATE:
            if signal.source in ("instrument", "staff_report"):
                # A screening answer such as PHQ-9 item 9 asks for a human review.
                opened = await open_escalation(turn, signal, excerpt)
                if opened.created or opened.raised:
                    await _post_card(turn, opened)
            turn.say(
                "safety.moderate",
                lines=hotline_text(turn, turn.site_or_default),
                priority=Priority.CRISIS,
                kind="safety",
                buttons=[
                    [turn.button("escalation.button_request", "esc.request")],
                    [turn.button("escalation.button_decline", "esc.decline")],
                ],
            )


async def open_escalation(turn: Turn, signal: RiskSignal, excerpt: str) -> Opened:
    """Open the person's escalation for ``signal``, or add to the one already open."""
    session = turn.session
    person = turn.person
    found = (
        await session.exec(select(Escalation).where(Escalation.open_person_id == person.id))
    ).first()
    shared = _shareable_excerpt(person, excerpt)
    if found is not None:
        reasons = list(dict.fromkeys([*json.loads(found.reasons), *signal.reasons]))
        raised = signal.level > found.level
        found.reasons = json.dumps(reasons)
        if raised:
            found.level = int(signal.level)
            if shared:
                found.excerpt = shared
        session.add(found)
        _audit(turn, "escalation.signal", found, f"{signal.source}:{RiskLevel(signal.level).label}")
        return Opened(found, created=False, raised=raised)
    on_call = await on_call_people(session)
    escalation = Escalation(
        person_id=person.id,  # type: ignore[arg-type]
        open_person_id=person.id,
        case_code=person.case_code,
        site_code=person.site_code,
        language=person.language,
        level=int(signal.level),
        source=signal.source,
        reasons=json.dumps(list(signal.reasons)),
        excerpt=shared,
        nobody_on_call=not on_call or not turn.engine.config.staff_chat_id,
        created_at=turn.now,
        next_page_at=turn.now + timedelta(minutes=turn.engine.config.repage_minutes),
    )
    session.add(escalation)
    await session.flush()
    _audit(turn, "escalation.open", escalation, f"{signal.source}:{RiskLevel(signal.level).label}")
    return Opened(escalation, created=True, raised=False)


def _other_holder(engine: ConversationEngine, person: Person) -> Handler | None:
    """The text handler of a holding state other than this module's own, where a human
    (not the bot, and not an on-call counselor's relay) holds the resident's conversation."""
    state = person.state
    if state == "handover" or state in engine.untriaged_states:
        return None
    return engine.text_handlers.get(state) if state in engine.holding_states else None


def _shareable_excerpt(person: Person, excerpt: str) -> str:
    """The triggering words, only when the person consented to sharing with the team."""
    if person.consent_version is None or not excerpt.strip():
        return ""
    text = " ".join(excerpt.split())
    return text if len(text) <= EXCERPT_LIMIT else text[: EXCERPT_LIMIT - 1] + "…"


def _safety_reply(turn: Turn, escalation: Escalation, level: RiskLevel) -> None:
    """Tell the resident what happens next, truthfully, with a way to reach help now."""
    site = turn.site_or_default
    lines = hotline_text(turn, site, emergency_first=level == RiskLevel.IMMINENT)
    if escalation.nobody_on_call:
        key = "escalation.reply_nobody"
    elif escalation.status == "claimed":
        key = "escalation.reply_claimed"
    else:
        key = "escalation.reply_alerted"
    opening = "escalation.opening_imminent" if level == RiskLevel.IMMINENT else "escalation.opening"
    turn.send(
        turn.t(opening) + "\n\n" + turn.t(key, lines=lines),
        priority=Priority.CRISIS,
        kind="safety",
    )


async def _post_card(turn: Turn, opened: Opened) -> None:
    """Put the case card (or its raised level) in the staff chat."""
    engine = turn.engine
    escalation = opened.escalation
    lang = _staff_lang(engine)
    text = await card_text(turn.session, engine, escalation, raised=opened.raised)
    buttons = [
        [
            Button(
                engine.catalogs.t(lang, "escalation.button_claim"),
                "esc.claim",
                str(escalation.id),
                scope="staff",
            ),
            Button(
                engine.catalogs.t(lang, "escalation.button_resolve"),
                "esc.resolve",
                str(escalation.id),
                scope="staff",
            ),
            Button(
                engine.catalogs.t(lang, "escalation.button_note"),
                "esc.note",
                str(escalation.id),
                scope="staff",
            ),
        ]
    ]
    if escalation.status == "claimed" and escalation.claimed_by is not None:
        counselor = await turn.session.get(Person, escalation.claimed_by)
        if counselor is not None:
            turn.send_to(counselor, text, priority=Priority.ESCALATION, kind="escalation")
    turn.to_staff(text, buttons=buttons, kind="escalation")


async def card_text(
    session: AsyncSession, engine: ConversationEngine, escalation: Escalation, *, raised: bool
) -> str:
    """The staff card: case code, site, language, level, reasons, excerpt, recent scores."""
    lang = _staff_lang(engine)
    t = engine.catalogs.t
    site = engine.sites.get(escalation.site_code)
    reasons = reason_labels(engine, lang, json.loads(escalation.reasons)) or "—"
    parts = [
        t(
            lang,
            "escalation.card_raised" if raised else "escalation.card_title",
            level=_level_name(engine, lang, escalation.level),
            code=escalation.case_code,
        ),
        t(
            lang,
            "escalation.card_site",
            site=site.name(lang) if site else "—",
            # The resident's language by its own name (中文, English), as the language picker.
            language=t(escalation.language, "language.self_name") if escalation.language else "—",
        ),
        t(
            lang,
            "escalation.card_reasons",
            reasons=reasons,
            source=_source_label(engine, lang, escalation.source),
        ),
    ]
    if escalation.excerpt:
        parts.append(t(lang, "escalation.card_excerpt", excerpt=escalation.excerpt))
    else:
        parts.append(t(lang, "escalation.card_no_excerpt"))
    for case_line in engine.case_lines:
        scores = await case_line(session, escalation.person_id, lang)
        if scores:
            parts.append(t(lang, "escalation.card_scores", scores=scores))
    if escalation.nobody_on_call:
        parts.append(t(lang, "escalation.card_nobody"))
    return "\n".join(parts)


def reason_labels(engine: ConversationEngine, lang: str, reasons: Sequence[str]) -> str:
    """Why a card was raised, in the staff's words: each reason id by its own catalog entry,
    else by its kind ("zh.intent.direct" → intent.direct → intent), else as the id itself."""
    labels: list[str] = []
    for reason in reasons:
        bare = reason.removeprefix("zh.").removeprefix("en.")
        for key in (reason, bare, bare.split(".", 1)[0]):
            if engine.catalogs.has(lang, f"escalation.reason.{key}"):
                label = engine.catalogs.t(lang, f"escalation.reason.{key}")
                break
        else:
            label = reason
        if label not in labels:
            labels.append(label)
    return engine.catalogs.t(lang, "escalation.reason_separator").join(labels)


def _source_label(engine: ConversationEngine, lang: str, source: str) -> str:
    key = f"escalation.source.{source}"
    return engine.catalogs.t(lang, key) if engine.catalogs.has(lang, key) else source


async def on_call_people(session: AsyncSession) -> list[Person]:
    """The counselors on duty now."""
    rows = await session.exec(select(Person).join(OnCall, col(OnCall.person_id) == col(Person.id)))
    return list(rows.all())


async def people_with_role(session: AsyncSession, role: Role) -> list[Person]:
    """Everyone holding ``role``."""
    rows = await session.exec(
        select(Person)
        .join(RoleGrant, col(RoleGrant.person_id) == col(Person.id))
        .where(RoleGrant.role == role.value)
    )
    return list(rows.all())


def _audit(turn: Turn, action: str, escalation: Escalation, detail: str = "") -> None:
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=turn.person.id,
            actor=turn.person.case_code,
            action=action,
            subject=escalation.case_code,
            detail=f"escalation {escalation.id}: {detail}".strip(),
        )
    )


# Follow-up questions: plan, means, timeframe --------------------------------------------------


async def _prompt_followup(turn: Turn) -> None:
    question = str(turn.data.get("q", "plan"))
    turn.say(
        f"escalation.ask_{question}",
        priority=Priority.CRISIS,
        kind="safety",
        buttons=[
            [
                turn.button("escalation.answer_yes", "followup", "yes"),
                turn.button("escalation.answer_no", "followup", "no"),
            ],
            [turn.button("escalation.answer_skip", "followup", "skip")],
        ],
    )


def last_question(turn: Turn) -> str | None:
    """The follow-up question the bot last asked this person, for reading a bare "yes"."""
    if turn.person.state == "risk_followup":
        return str(turn.data.get("q", "plan"))
    return None


async def _followup_answer(turn: Turn, answer: str) -> None:
    question = str(turn.data.get("q", "plan"))
    if answer == "yes":
        signal = RiskSignal(RiskLevel.IMMINENT, "followup", (f"followup.{question}",))
        turn.goto("menu" if turn.onboarded else "limited")
        await turn.engine.raise_signal(turn, signal, excerpt="")
        return
    await _next_followup(turn, question)


async def _followup_text(turn: Turn, _text: str) -> None:
    # Triage has already read the words with the question as context; anything it did not
    # raise counts as "not yes", and the next question follows.
    await _next_followup(turn, str(turn.data.get("q", "plan")))


async def _next_followup(turn: Turn, question: str) -> None:
    index = FOLLOW_UPS.index(question) if question in FOLLOW_UPS else len(FOLLOW_UPS) - 1
    if index + 1 < len(FOLLOW_UPS):
        turn.goto("risk_followup", q=FOLLOW_UPS[index + 1], esc=turn.data.get("esc"))
        await _prompt_followup(turn)
        return
    turn.goto("menu" if turn.onboarded else "limited")
    turn.say(
        "escalation.followup_done",
        lines=hotline_text(turn, turn.site_or_default),
        priority=Priority.CRISIS,
        kind="safety",
        buttons=[[turn.menu_button()]],
    )


# Moderate: offer a counselor ----------------------------------------------------------------


async def _request_counselor(turn: Turn, _arg: str) -> None:
    signal = RiskSignal(RiskLevel.MODERATE, "request", ("resident.asked_for_counselor",))
    opened = await open_escalation(turn, signal, "")
    if opened.created:
        await _post_card(turn, opened)
    key = (
        "escalation.request_nobody"
        if opened.escalation.nobody_on_call
        else "escalation.request_done"
    )
    turn.say(
        key,
        lines=hotline_text(turn, turn.site_or_default),
        priority=Priority.CRISIS,
        buttons=[[turn.menu_button()]],
    )


async def _decline_counselor(turn: Turn, _arg: str) -> None:
    turn.say("escalation.request_declined", buttons=[[turn.menu_button()]])


# Staff actions ------------------------------------------------------------------------------


async def _staff_allowed(turn: Turn, action: Action) -> bool:
    """Whether the presser holds a role for ``action`` and is in the staff chat."""
    if not turn.may(action):
        return False
    check = turn.engine.staff_member
    if check is not None and turn.person.channel == "telegram":
        return await check(turn.person.channel, turn.person.external_id)
    return turn.person.channel == "telegram"


async def _refuse(turn: Turn, escalation_id: str, action: str) -> None:
    turn.notice = turn.t("escalation.not_allowed")
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=turn.person.id,
            actor=turn.person.case_code,
            action=f"{action}.refused",
            subject=f"escalation {escalation_id}"[:64],
        )
    )


async def _load(turn: Turn, arg: str) -> Escalation | None:
    try:
        escalation_id = int(arg.split(":")[0])
    except ValueError:
        return None
    return await turn.session.get(Escalation, escalation_id)


async def _claim(turn: Turn, arg: str) -> None:
    if not await _staff_allowed(turn, Action.CLAIM_ESCALATION):
        await _refuse(turn, arg, "escalation.claim")
        return
    escalation = await _load(turn, arg)
    if escalation is None:
        turn.notice = turn.t("escalation.unknown")
        return
    # One UPDATE decides a race between two counselors: only one row changes.
    result = await turn.session.exec(
        update(Escalation)
        .where(col(Escalation.id) == escalation.id, col(Escalation.status) == "open")
        .values(
            status="claimed",
            claimed_at=turn.now,
            claimed_by=turn.person.id,
            claimed_by_code=turn.person.case_code,
            next_page_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:
        await turn.session.refresh(escalation)
        turn.notice = turn.t("escalation.already_claimed", code=escalation.claimed_by_code or "—")
        return
    await turn.session.refresh(escalation)
    _audit(turn, "escalation.claim", escalation)
    _audit(turn, "case.view", escalation)
    lang = _staff_lang(turn.engine)
    waited = _minutes_seconds(as_utc(turn.now) - as_utc(escalation.created_at))
    turn.to_staff(
        turn.engine.catalogs.t(
            lang,
            "escalation.claimed_card",
            code=escalation.case_code,
            by=turn.person.case_code,
            waited=waited,
        ),
        kind="escalation",
    )
    resident = await turn.session.get(Person, escalation.person_id)
    counselor = turn.person
    turn.notice = turn.t("escalation.claimed_notice", code=escalation.case_code)
    card = await card_text(turn.session, turn.engine, escalation, raised=False)
    turn.send_to(
        counselor,
        card + "\n\n" + turn.t("escalation.relay_start", code=escalation.case_code),
        priority=Priority.ESCALATION,
        kind="escalation",
        buttons=[[turn.button("escalation.button_resolve", "esc.resolve", str(escalation.id))]],
    )
    turn.move(counselor, "relay", esc=escalation.id)
    if resident is not None:
        if _other_holder(turn.engine, resident) is None:
            turn.move(resident, "handover", esc=escalation.id)
        turn.send_to(
            resident,
            turn.engine.catalogs.t(resident.language, "escalation.connected"),
            priority=Priority.CRISIS,
            kind="escalation",
        )
    # Keep the turn's own person (the counselor) in the state just set.
    turn.data = {"esc": escalation.id}
    turn.person.state = "relay"


def _minutes_seconds(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    return f"{seconds // 60}:{seconds % 60:02d}"


async def _resolve_ask(turn: Turn, arg: str) -> None:
    if not await _staff_allowed(turn, Action.RESOLVE_ESCALATION):
        await _refuse(turn, arg, "escalation.resolve")
        return
    escalation = await _load(turn, arg)
    if escalation is None or escalation.status == "resolved":
        turn.notice = turn.t("escalation.already_resolved")
        return
    turn.say(
        "escalation.choose_outcome",
        code=escalation.case_code,
        buttons=[
            [
                Button(
                    turn.t(f"escalation.outcome.{o}"),
                    "esc.outcome",
                    f"{escalation.id}:{o}",
                    scope="staff",
                )
            ]
            for o in OUTCOMES
        ],
    )


async def _resolve_outcome(turn: Turn, arg: str) -> None:
    if not await _staff_allowed(turn, Action.RESOLVE_ESCALATION):
        await _refuse(turn, arg, "escalation.resolve")
        return
    escalation = await _load(turn, arg)
    outcome = arg.split(":", 1)[1] if ":" in arg else ""
    if escalation is None or outcome not in OUTCOMES:
        turn.notice = turn.t("escalation.unknown")
        return
    result = await turn.session.exec(
        update(Escalation)
        .where(col(Escalation.id) == escalation.id, col(Escalation.status) != "resolved")
        .values(
            status="resolved",
            resolved_at=turn.now,
            outcome=outcome,
            open_person_id=None,
            next_page_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:
        turn.notice = turn.t("escalation.already_resolved")
        return
    await turn.session.refresh(escalation)
    _audit(turn, "escalation.resolve", escalation, outcome)
    lang = _staff_lang(turn.engine)
    turn.to_staff(
        turn.engine.catalogs.t(
            lang,
            "escalation.resolved_card",
            code=escalation.case_code,
            by=turn.person.case_code,
            outcome=turn.engine.catalogs.t(lang, f"escalation.outcome.{outcome}"),
        ),
        kind="escalation",
    )
    turn.say("escalation.resolved_notice", code=escalation.case_code)
    await _release(turn, escalation)


async def _release(turn: Turn, escalation: Escalation) -> None:
    """Return the resident to the bot (with a safety-plan offer) and the counselor to the menu."""
    resident = await turn.session.get(Person, escalation.person_id)
    if resident is not None and _other_holder(turn.engine, resident) is None:
        next_state = "menu" if resident.consent_version is not None else "limited"
        if resident.id == turn.person.id:
            turn.goto(next_state)
        else:
            turn.move(resident, next_state)
        lang = resident.language
        turn.send_to(
            resident,
            turn.engine.catalogs.t(lang, "escalation.returned"),
            priority=Priority.ESCALATION,
            buttons=[
                [Button(turn.engine.catalogs.t(lang, "escalation.button_plan"), "plan.start")],
                [
                    Button(
                        turn.engine.catalogs.t(lang, "escalation.button_plan_later"), "plan.later"
                    )
                ],
            ],
        )
    if escalation.claimed_by is not None and escalation.claimed_by != turn.person.id:
        counselor = await turn.session.get(Person, escalation.claimed_by)
        if counselor is not None and counselor.state == "relay":
            turn.move(counselor, "menu")
            turn.send_to(
                counselor,
                turn.engine.catalogs.t(
                    counselor.language, "escalation.relay_ended", code=escalation.case_code
                ),
            )
    elif turn.person.state == "relay":
        turn.goto("menu")


async def _note_help(turn: Turn, arg: str) -> None:
    if not await _staff_allowed(turn, Action.VIEW_CASE):
        await _refuse(turn, arg, "escalation.note")
        return
    escalation = await _load(turn, arg)
    if escalation is not None:
        turn.notice = turn.t("escalation.note_help", code=escalation.case_code)
        turn.say("escalation.note_help", code=escalation.case_code)


# Relay between counselor and resident --------------------------------------------------------


async def _prompt_handover(turn: Turn) -> None:
    turn.say("escalation.handover_active")


async def _resident_holding(turn: Turn, _what: str) -> None:
    turn.say("escalation.handover_active")


async def _prompt_relay(turn: Turn) -> None:
    escalation = await _load(turn, str(turn.data.get("esc", "")))
    turn.say("escalation.relay_active", code=escalation.case_code if escalation else "—")


#: Staff commands that still work while a counselor talks with a resident through the bot.
STAFF_COMMANDS_WHILE_TALKING = ("note", "queue", "oncall", "stats", "grant", "whoami", "concern")


async def staff_command_while_talking(turn: Turn, what: str) -> bool:
    """Run a staff command typed while holding a conversation; False when ``what`` is none."""
    if what in turn.engine.commands and what in STAFF_COMMANDS_WHILE_TALKING:
        await turn.engine.commands[what](turn, turn.inbound.args)
        return True
    return False


async def _counselor_holding(turn: Turn, what: str) -> None:
    if not await staff_command_while_talking(turn, what):
        await _prompt_relay(turn)


async def claimed_case(session: AsyncSession, person: Person) -> Escalation | None:
    """The person's open escalation, when a counselor has claimed it."""
    found = await session.exec(
        select(Escalation)
        .where(Escalation.open_person_id == person.id)
        .where(col(Escalation.status) == "claimed")
    )
    return found.first()


async def _resident_to_counselor(turn: Turn, text: str) -> None:
    escalation = await _load(turn, str(turn.data.get("esc", "")))
    if escalation is None or escalation.claimed_by is None:
        turn.goto("menu" if turn.onboarded else "limited")
        await turn.prompt()
        return
    await relay_to_claimer(turn, escalation, text)


async def relay_to_claimer(turn: Turn, escalation: Escalation, text: str) -> None:
    """Pass the resident's words to the counselor who claimed their case."""
    counselor = await turn.session.get(Person, escalation.claimed_by)
    if counselor is None:
        return
    turn.send_to(
        counselor,
        turn.engine.catalogs.t(
            counselor.language, "escalation.from_resident", code=escalation.case_code, text=text
        ),
        priority=Priority.ESCALATION,
        kind="relay",
    )


async def _signal_during_handover(turn: Turn, signal: RiskSignal, excerpt: str) -> None:
    """A counselor holds the conversation: pass the words on, and raise the level if it rose."""
    opened = await open_escalation(turn, signal, excerpt)
    escalation = opened.escalation
    if excerpt:
        await _resident_to_counselor(turn, excerpt)
    if opened.raised:
        await _post_card(turn, opened)
    if signal.level == RiskLevel.IMMINENT:
        turn.say(
            "escalation.imminent_during_handover",
            lines=hotline_text(turn, turn.site_or_default, emergency_first=True),
            priority=Priority.CRISIS,
            kind="safety",
        )
    del escalation


async def _counselor_to_resident(turn: Turn, text: str) -> None:
    escalation = await _load(turn, str(turn.data.get("esc", "")))
    if (
        escalation is None
        or escalation.status != "claimed"
        or escalation.claimed_by != turn.person.id
    ):
        turn.goto("menu")
        turn.say("escalation.relay_over")
        return
    resident = await turn.session.get(Person, escalation.person_id)
    if resident is None:
        return
    turn.send_to(
        resident,
        turn.engine.catalogs.t(resident.language, "escalation.from_counselor", text=text),
        priority=Priority.ESCALATION,
        kind="relay",
    )
    _audit(turn, "escalation.relay", escalation)


async def _done(turn: Turn, _args: str) -> None:
    if turn.person.state != "relay":
        turn.say("escalation.not_in_relay")
        return
    await _resolve_ask(turn, str(turn.data.get("esc", "")))


# Staff commands -------------------------------------------------------------------------------


async def _oncall(turn: Turn, args: str) -> None:
    if not await _staff_allowed(turn, Action.GO_ON_CALL):
        turn.say("escalation.not_allowed")
        return
    wanted = args.strip().lower()
    current = await turn.session.get(OnCall, turn.person.id)
    if wanted in ("off", "关", "下班"):
        if current is not None:
            await turn.session.delete(current)
        turn.say("escalation.oncall_off")
    elif wanted in ("on", "开", "上班", ""):
        if current is None:
            turn.session.add(
                OnCall(
                    person_id=turn.person.id,  # type: ignore[arg-type]
                    since=turn.now,
                )
            )
        turn.say("escalation.oncall_on")
    else:
        turn.say("escalation.oncall_usage")
        return
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=turn.person.id,
            actor=turn.person.case_code,
            action=f"oncall.{wanted or 'on'}",
        )
    )


async def _queue(turn: Turn, _args: str) -> None:
    if not await _staff_allowed(turn, Action.VIEW_QUEUE):
        turn.say("escalation.not_allowed")
        return
    rows = (
        await turn.session.exec(
            select(Escalation)
            .where(col(Escalation.status) != "resolved")
            .order_by(col(Escalation.level).desc(), col(Escalation.created_at))
        )
    ).all()
    if not rows:
        turn.say("escalation.queue_empty")
        return
    lines = [
        turn.t(
            "escalation.queue_line",
            code=e.case_code,
            level=_level_name(turn.engine, turn.lang, e.level),
            age=_minutes_seconds(as_utc(turn.now) - as_utc(e.created_at)),
            status=turn.t(f"escalation.status.{e.status}"),
            by=e.claimed_by_code or "—",
        )
        for e in rows
    ]
    turn.say("escalation.queue", count=len(rows), lines="\n".join(lines))


async def claim_times(session: AsyncSession, since: datetime) -> list[float]:
    """Seconds from alert to claim for escalations claimed since ``since``."""
    rows = (
        await session.exec(
            select(Escalation.created_at, Escalation.claimed_at)
            .where(col(Escalation.claimed_at).is_not(None))
            .where(col(Escalation.created_at) >= since)
        )
    ).all()
    return [
        (as_utc(claimed) - as_utc(created)).total_seconds()
        for created, claimed in rows
        if claimed is not None
    ]


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


async def _stats(turn: Turn, _args: str) -> None:
    if not await _staff_allowed(turn, Action.VIEW_QUEUE):
        turn.say("escalation.not_allowed")
        return
    since = turn.now - timedelta(days=STATS_DAYS)
    times = await claim_times(turn.session, since)
    opened = (
        await turn.session.exec(
            select(func.count()).select_from(Escalation).where(col(Escalation.created_at) >= since)
        )
    ).one()
    still_open = (
        await turn.session.exec(
            select(func.count()).select_from(Escalation).where(col(Escalation.status) == "open")
        )
    ).one()
    if not times:
        turn.say("escalation.stats_none", opened=int(opened), open=int(still_open))
        return
    turn.say(
        "escalation.stats",
        opened=int(opened),
        claimed=len(times),
        open=int(still_open),
        median=format_number(round(statistics.median(times)), turn.lang),
        p90=format_number(round(percentile(times, 0.9)), turn.lang),
    )


async def _concern(turn: Turn, args: str) -> None:
    if not turn.may(Action.REPORT_CONCERN):
        turn.say("escalation.not_allowed")
        return
    code, _, observation = args.strip().partition(" ")
    if not code or not observation.strip():
        turn.say("escalation.concern_usage")
        return
    resident = (
        await turn.session.exec(select(Person).where(Person.case_code == code.upper()[:16]))
    ).first()
    if resident is None:
        turn.say("admin.no_such_case", code=code.upper()[:16])
        return
    signal = RiskSignal(RiskLevel.MODERATE, "staff_report", ("staff.concern",))
    inner = Turn(
        turn.engine,
        turn.session,
        resident,
        turn.inbound,
        turn.now,
        await roles_of(turn.session, resident, set()),
    )
    opened = await open_escalation(inner, signal, "")
    escalation = opened.escalation
    turn.session.add(
        EscalationNote(
            escalation_id=escalation.id,  # type: ignore[arg-type]
            author_code=turn.person.case_code,
            text=observation.strip()[:2000],
            at=turn.now,
        )
    )
    lang = _staff_lang(turn.engine)
    if opened.created:
        escalation.excerpt = ""
        card = await card_text(turn.session, turn.engine, escalation, raised=False)
        card += "\n" + turn.engine.catalogs.t(
            lang,
            "escalation.card_concern",
            by=turn.person.case_code,
            text=observation.strip()[:500],
        )
        turn.to_staff(
            card,
            kind="escalation",
            buttons=[
                [
                    Button(
                        turn.engine.catalogs.t(lang, "escalation.button_claim"),
                        "esc.claim",
                        str(escalation.id),
                        scope="staff",
                    ),
                    Button(
                        turn.engine.catalogs.t(lang, "escalation.button_resolve"),
                        "esc.resolve",
                        str(escalation.id),
                        scope="staff",
                    ),
                ]
            ],
        )
    _audit(turn, "escalation.concern", escalation)
    turn.out.extend(inner.out)
    turn.say("escalation.concern_done", code=resident.case_code)


async def _note(turn: Turn, args: str) -> None:
    if not await _staff_allowed(turn, Action.VIEW_CASE):
        turn.say("escalation.not_allowed")
        return
    code, _, text = args.strip().partition(" ")
    if not code or not text.strip():
        turn.say("escalation.note_usage")
        return
    escalation = (
        await turn.session.exec(
            select(Escalation)
            .where(Escalation.case_code == code.upper()[:16])
            .order_by(col(Escalation.id).desc())
        )
    ).first()
    if escalation is None:
        turn.say("admin.no_such_case", code=code.upper()[:16])
        return
    turn.session.add(
        EscalationNote(
            escalation_id=escalation.id,  # type: ignore[arg-type]
            author_code=turn.person.case_code,
            text=text.strip()[:2000],
            at=turn.now,
        )
    )
    _audit(turn, "escalation.note", escalation)
    turn.say("escalation.note_saved", code=escalation.case_code)


# Re-paging: nobody is left unowned ------------------------------------------------------------


async def page_due(session: AsyncSession, engine: ConversationEngine, now: datetime) -> int:
    """Re-page unclaimed escalations whose time has come; return how many were paged.

    After ``repage_minutes`` the on-call counselors get a direct message and the staff chat a
    reminder; after ``supervisor_minutes`` the supervisors and the backup chat are paged and
    the resident is told again how to reach a 24-hour line; that repeats while it stays open.
    """
    query = (
        select(Escalation)
        .where(col(Escalation.status) == "open")
        .where(col(Escalation.next_page_at) <= now)
        .order_by(col(Escalation.level).desc(), col(Escalation.id))
        .limit(200)
    )
    if not engine.db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    due = (await session.exec(query)).all()
    config = engine.config
    lang = _staff_lang(engine)
    t = engine.catalogs.t
    out: list[Outbound] = []
    for escalation in due:
        waited = _minutes_seconds(as_utc(now) - as_utc(escalation.created_at))
        level = _level_name(engine, lang, escalation.level)
        on_call = await on_call_people(session)
        if escalation.page_stage == 0:
            text = t(
                lang, "escalation.repage", code=escalation.case_code, level=level, waited=waited
            )
            for counselor in on_call:
                out.append(_direct(counselor, text))
            if config.staff_chat_id:
                names = ", ".join(p.case_code for p in on_call) or t(lang, "escalation.nobody")
                out.append(
                    _staff(
                        config.staff_chat_id,
                        t(
                            lang,
                            "escalation.repage_chat",
                            code=escalation.case_code,
                            level=level,
                            waited=waited,
                            oncall=names,
                        ),
                    )
                )
            escalation.page_stage = 1
            escalation.next_page_at = as_utc(escalation.created_at) + timedelta(
                minutes=config.supervisor_minutes
            )
        else:
            text = t(
                lang,
                "escalation.supervisor_page",
                code=escalation.case_code,
                level=level,
                waited=waited,
            )
            supervisors = await people_with_role(session, Role.SUPERVISOR)
            for supervisor in supervisors:
                out.append(_direct(supervisor, text))
            for chat in (config.backup_chat_id, config.staff_chat_id):
                if chat:
                    out.append(_staff(chat, text))
            resident = await session.get(Person, escalation.person_id)
            if resident is not None:
                out.append(_resident_wait_notice(engine, resident, escalation))
            escalation.page_stage = 2
            escalation.next_page_at = now + timedelta(minutes=config.supervisor_minutes)
        session.add(escalation)
        session.add(
            AuditLog(
                at=now,
                actor="scheduler",
                action="escalation.page",
                subject=escalation.case_code,
                detail=f"escalation {escalation.id}: stage {escalation.page_stage}",
            )
        )
    await queue(session, out, now)
    return len(due)


def _direct(person: Person, text: str) -> Outbound:
    return Outbound(
        channel=person.channel,
        chat_id=person.chat_id,
        text=text,
        priority=Priority.ESCALATION,
        kind="page",
        person_id=person.id,
    )


def _staff(chat_id: str, text: str) -> Outbound:
    return Outbound(
        channel="telegram",
        chat_id=chat_id,
        chat_kind="group",
        text=text,
        priority=Priority.ESCALATION,
        kind="page",
    )


def _resident_wait_notice(
    engine: ConversationEngine, resident: Person, escalation: Escalation
) -> Outbound:
    lang = resident.language or engine.config.default_language
    site = engine.sites.get(resident.site_code) or engine.sites.default()
    lines = []
    for line in site.hotlines:
        if line.open_24h and not line.emergency:
            lines.append(
                engine.catalogs.t(
                    lang,
                    "hotline.line",
                    name=line.name(lang),
                    number=line.number,
                    hours=engine.catalogs.t(lang, "hotline.open_24h"),
                )
            )
    text = engine.catalogs.t(lang, "escalation.still_waiting", lines="\n".join(lines))
    return Outbound(
        channel=resident.channel,
        chat_id=resident.chat_id,
        text=text,
        priority=Priority.CRISIS,
        kind="safety",
        person_id=resident.id,
    )


async def sweep_pages(engine: ConversationEngine) -> int:
    """The scheduler's job: page what is due now, in one transaction."""
    return await engine.sweep(lambda session, now: page_due(session, engine, now))


# Safety plan ----------------------------------------------------------------------------------


async def _plan_start(turn: Turn, _arg: str) -> None:
    turn.goto("safety_plan", step=0, answers={})
    turn.say("plan.intro")
    await _prompt_plan_step(turn)


async def _plan_later(turn: Turn, _arg: str) -> None:
    turn.say("plan.later", buttons=[[turn.menu_button()]])


async def _prompt_plan_step(turn: Turn) -> None:
    step = int(turn.data.get("step", 0))
    turn.say(
        f"plan.step.{PLAN_STEPS[min(step, len(PLAN_STEPS) - 1)]}",
        number=step + 1,
        total=len(PLAN_STEPS),
    )


async def _plan_answer(turn: Turn, text: str) -> None:
    step = int(turn.data.get("step", 0))
    answers: dict[str, Any] = dict(turn.data.get("answers", {}))
    answers[PLAN_STEPS[min(step, len(PLAN_STEPS) - 1)]] = text.strip()[:1000]
    if step + 1 < len(PLAN_STEPS):
        turn.goto("safety_plan", step=step + 1, answers=answers)
        await _prompt_plan_step(turn)
        return
    plan = await turn.session.get(SafetyPlan, turn.person.id)
    if plan is None:
        plan = SafetyPlan(person_id=turn.person.id, updated_at=turn.now)  # type: ignore[arg-type]
    plan.steps = json.dumps(answers, ensure_ascii=False)
    plan.updated_at = turn.now
    turn.session.add(plan)
    turn.goto("menu" if turn.onboarded else "limited")
    turn.say("plan.saved")
    await _plan_show(turn, "")


async def _plan_show(turn: Turn, _args: str) -> None:
    plan = await turn.session.get(SafetyPlan, turn.person.id)
    if plan is None:
        turn.say("plan.none", buttons=[[turn.button("escalation.button_plan", "plan.start")]])
        return
    steps = json.loads(plan.steps)
    lines = [turn.t(f"plan.title.{step}") + "\n" + str(steps.get(step, "—")) for step in PLAN_STEPS]
    lines.append(hotline_text(turn, turn.site_or_default))
    turn.say("plan.show", plan="\n\n".join(lines), buttons=[[turn.menu_button()]])


async def _export_plan(session: AsyncSession, person: Person) -> tuple[str, Any]:
    plan = await session.get(SafetyPlan, person.id)
    return "safety_plan", json.loads(plan.steps) if plan else None


async def _erasure_blocked(session: AsyncSession, person: Person) -> str | None:
    found = (
        await session.exec(select(Escalation.id).where(Escalation.open_person_id == person.id))
    ).first()
    return "privacy.erase_blocked_escalation" if found is not None else None


def triage_hook(triage: Any) -> Any:
    """The engine's triage hook: classify with what the bot last asked as context."""
    from core.triage import TriageContext, to_signal

    def read(turn: Turn, text: str) -> TriageVerdict:
        question = last_question(turn)
        result = triage.classify(
            text, TriageContext(asked_about_suicide=question is not None, last_question=question)
        )
        return TriageVerdict(signal=to_signal(result), level=result.level)

    return read


def urgent_reader(triage: Any) -> Callable[[str], bool]:
    """The engine's ``urgent_text``: whether a message reads as high risk on its own."""
    from core.triage import TriageContext

    context = TriageContext()

    def urgent(text: str) -> bool:
        return bool(triage.classify(text, context).level >= RiskLevel.HIGH)

    return urgent


def staff_may(roles: set[Role], action: Action) -> bool:
    """Whether roles allow a staff action (re-exported for adapters and reports)."""
    return may(roles, action)
