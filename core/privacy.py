"""What is kept about a person: the notice, consent, export, withdrawal and erasure."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.conversation import ConversationEngine, Turn
from core.messages import Outbound, Priority
from core.models import AuditLog, OutboxMessage, Person, RoleGrant, WebTranscript

CONSENT_VERSION = 1


def register(engine: ConversationEngine) -> None:
    """Register /privacy and its buttons."""
    engine.command("privacy", _overview, before_onboarding=True)
    engine.action("privacy", _overview, any_step=True)
    engine.action("privacy.export", _export, any_step=True)
    engine.action("privacy.erase", _erase_ask, any_step=True)
    engine.action("privacy.erase.confirm", _erase_confirm)
    engine.action("privacy.erase.cancel", _erase_cancel)
    engine.action("privacy.withdraw", _withdraw, any_step=True)
    engine.state("privacy_erase", _prompt_erase)


async def _overview(turn: Turn, _arg: str) -> None:
    person = turn.person
    if person.consent_version is not None:
        status = turn.t("privacy.status_given", version=person.consent_version)
    else:
        status = turn.t("privacy.status_none")
    rows = [
        [turn.button("button.privacy_export", "privacy.export")],
        [turn.button("button.privacy_erase", "privacy.erase")],
    ]
    if person.consent_version is not None:
        rows.append([turn.button("button.privacy_withdraw", "privacy.withdraw")])
    else:
        rows.append([turn.button("button.consent_review", "consent.review")])
    rows.append([turn.menu_button()])
    turn.say("privacy.overview", status=status, code=person.case_code, buttons=rows)


async def export_person(
    engine: ConversationEngine, session: AsyncSession, person: Person
) -> dict[str, Any]:
    """Everything Anxin keeps about ``person``, as a JSON-ready dict."""
    grants = (await session.exec(select(RoleGrant).where(RoleGrant.person_id == person.id))).all()
    transcript = (
        (
            await session.exec(
                select(WebTranscript)
                .where(WebTranscript.chat_id == person.chat_id)
                .order_by(col(WebTranscript.id))
            )
        ).all()
        if person.channel == "web"
        else []
    )
    data: dict[str, Any] = {
        "case_code": person.case_code,
        "channel": person.channel,
        "language": person.language,
        "site": person.site_code,
        "relation": person.relation,
        "age_band": person.age_band,
        "consent_version": person.consent_version,
        "consent_at": person.consent_at.isoformat() if person.consent_at else None,
        "created_at": person.created_at.isoformat(),
        "roles": [g.role for g in grants],
        "web_chat": [
            {
                "at": r.created_at.isoformat(),
                "from": "you" if r.direction == "in" else "anxin",
                "text": r.text,
            }
            for r in transcript
        ],
    }
    for hook in engine.export_hooks:
        name, rows = await hook(session, person)
        data[name] = rows
    return data


async def _export(turn: Turn, _arg: str) -> None:
    data = await export_person(turn.engine, turn.session, turn.person)
    body = json.dumps(data, ensure_ascii=False, indent=2)
    turn.send(
        turn.t("privacy.export_ready"), document=(f"anxin-{turn.person.case_code}.json", body)
    )
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=turn.person.id,
            actor=turn.person.case_code,
            action="privacy.export",
            subject=turn.person.case_code,
        )
    )


async def _erase_ask(turn: Turn, _arg: str) -> None:
    for blocker in turn.engine.erasure_blockers:
        reason = await blocker(turn.session, turn.person)
        if reason:
            turn.say(reason, buttons=[[turn.menu_button()]])
            return
    turn.goto("privacy_erase")
    await _prompt_erase(turn)


async def _prompt_erase(turn: Turn) -> None:
    turn.say(
        "privacy.erase_confirm",
        buttons=[
            [turn.button("button.erase_yes", "privacy.erase.confirm")],
            [turn.button("button.erase_no", "privacy.erase.cancel")],
        ],
    )


async def _erase_cancel(turn: Turn, _arg: str) -> None:
    turn.goto("menu" if turn.onboarded else "limited")
    turn.say("privacy.erase_cancelled")
    await turn.prompt()


async def _erase_confirm(turn: Turn, _arg: str) -> None:
    for blocker in turn.engine.erasure_blockers:
        reason = await blocker(turn.session, turn.person)
        if reason:
            turn.goto("menu" if turn.onboarded else "limited")
            turn.say(reason, buttons=[[turn.menu_button()]])
            return
    await erase_person(turn.session, turn.person, turn)


async def erase_person(session: AsyncSession, person: Person, turn: Turn) -> None:
    """Delete everything kept about ``person`` and tell them it is done.

    The confirmation is queued to their chat without a person, since the person is gone; the
    audit log keeps only that the case code was erased.
    """
    confirmation = Outbound(
        channel=person.channel,
        chat_id=person.chat_id,
        text=turn.t("privacy.erased"),
        priority=Priority.REPLY,
        kind="reply",
    )
    turn.out = []
    for hook in turn.engine.erasure_hooks:
        await hook(turn)
    told_others = [m for m in turn.out if m.person_id not in (None, person.id)]
    session.expunge(person)
    await session.exec(
        delete(OutboxMessage).where(
            col(OutboxMessage.person_id) == person.id, col(OutboxMessage.status) != "sending"
        )
    )
    if person.channel == "web":
        await session.exec(
            delete(WebTranscript).where(col(WebTranscript.chat_id) == person.chat_id)
        )
    session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=None,
            actor=person.case_code,
            action="privacy.erase",
            subject=person.case_code,
        )
    )
    await session.exec(delete(Person).where(col(Person.id) == person.id))
    turn.out = [*told_others, confirmation]
    turn.person = Person(  # a detached stand-in so the turn can finish without the row
        channel=person.channel,
        external_id=person.external_id,
        chat_id=person.chat_id,
        case_code=person.case_code,
        created_at=person.created_at,
        last_seen_at=person.last_seen_at,
        language=person.language,
    )
    turn.erased = True


async def _withdraw(turn: Turn, _arg: str) -> None:
    person = turn.person
    person.consent_version = None
    person.consent_withdrawn_at = turn.now
    person.site_code = None
    person.relation = None
    person.age_band = None
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=person.id,
            actor=person.case_code,
            action="privacy.withdraw",
            subject=person.case_code,
        )
    )
    turn.goto("limited")
    turn.say("privacy.withdrawn")
    await turn.prompt()
