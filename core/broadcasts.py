"""Admin broadcasts: one message, per language, to an audience, through the outbox.

An admin composes a broadcast in the chat (``/broadcast``) or through the admin API: a text per
language, an audience (everyone, a site, a role, a language, a risk tier) and a time. They see
a preview with the recipient count and confirm. The scheduler's sweep then fans it out in
batches: each batch queues one outbox row per recipient (dedupe key ``bc:<id>:<person>``) and
moves the broadcast's cursor in the same transaction, so a crash repeats at most an
uncommitted batch and nobody is queued twice. Rows go at broadcast priority, behind every
crisis, reply and reminder, within the platform's rate limits; quiet hours hold them per
person (see ``core.quiet``); people who sent /stop or blocked the bot are skipped. Progress
(sent / failed / left) is posted in the staff chat, with a button to cancel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, DateTime, Index, Text, exists, func, update
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from core.access import Action, Role
from core.checkins import high_tier_clause, moderate_tier_clause
from core.clock import as_utc
from core.conversation import ConversationEngine, Turn
from core.i18n import format_when
from core.messages import TELEGRAM_TEXT_LIMIT, Button, Outbound, Priority
from core.models import AuditLog, OutboxMessage, Person, RoleGrant
from core.outbox import queue

log = logging.getLogger(__name__)

AUDIENCE_KINDS = ("everyone", "site", "role", "language", "risk")
RISK_TIERS = ("high", "moderate", "low")
RELATIONS = ("resident", "family", "site_staff")
FAN_OUT_BATCH = 500
BATCHES_PER_SWEEP = 40
PROGRESS_EVERY = timedelta(seconds=60)
PREVIEW_CHARS = 300


class BroadcastError(ValueError):
    """A broadcast cannot be made as asked; ``key`` and ``params`` say why, in the catalogs."""

    def __init__(self, key: str, **params: object) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


class Broadcast(SQLModel, table=True):
    """One broadcast, from draft to done, with its fan-out cursor and progress."""

    __tablename__ = "broadcast"
    __table_args__ = (Index("ix_broadcast_due", "status", "send_at"),)

    id: int | None = Field(default=None, primary_key=True)
    #: draft, scheduled, sending, done or cancelled
    status: str = Field(default="draft", max_length=16)
    texts: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    audience_kind: str = Field(max_length=16)
    audience_value: str = Field(default="", max_length=32)
    send_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    created_by: str = Field(max_length=64)
    creator_person_id: int | None = Field(
        default=None, foreign_key="person.id", ondelete="SET NULL"
    )
    recipients: int = 0
    cursor: int = 0
    queued: int = 0
    fanned_out: bool = False
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    confirmed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    progress_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )

    @property
    def text_by_language(self) -> dict[str, str]:
        """The text per language."""
        loaded: dict[str, str] = json.loads(self.texts)
        return loaded

    @property
    def dedupe_prefix(self) -> str:
        """The prefix of this broadcast's outbox dedupe keys."""
        return f"bc:{self.id}:"


@dataclass(frozen=True)
class Audience:
    """Who a broadcast is for."""

    kind: str
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Audience:
        """Read ``everyone``, ``site A12``, ``role counselor``, ``language en``, ``risk high``."""
        kind, _, value = text.strip().partition(" ")
        kind = {"all": "everyone", "所有人": "everyone", "全部": "everyone"}.get(kind, kind)
        audience = cls(kind.lower(), value.strip())
        audience.check()
        return audience

    def check(self) -> None:
        """Raise BroadcastError when the audience makes no sense."""
        if self.kind not in AUDIENCE_KINDS:
            raise BroadcastError("broadcast.audience_bad")
        if self.kind == "everyone":
            return
        if not self.value:
            raise BroadcastError("broadcast.audience_bad")
        if self.kind == "role" and self.value not in {r.value for r in Role} | set(RELATIONS):
            raise BroadcastError("broadcast.audience_bad")
        if self.kind == "risk" and self.value not in RISK_TIERS:
            raise BroadcastError("broadcast.audience_bad")

    def describe(self) -> str:
        """A short label for staff: ``site:a12``."""
        return self.kind if self.kind == "everyone" else f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class Progress:
    """How far a broadcast has gone."""

    recipients: int
    sent: int
    failed: int
    left: int
    cancelled: int

    def as_dict(self) -> dict[str, int]:
        """JSON-ready figures."""
        return {
            "recipients": self.recipients,
            "sent": self.sent,
            "failed": self.failed,
            "left": self.left,
            "cancelled": self.cancelled,
        }


# Audience -------------------------------------------------------------------------------------


def reachable_clause() -> ColumnElement[bool]:
    """People a broadcast may reach: consented, onboarded, not stopped, not blocked."""
    return (
        col(Person.consent_version).is_not(None)
        & col(Person.consent_withdrawn_at).is_(None)
        & col(Person.age_band).is_not(None)
        & col(Person.paused).is_(False)
        & col(Person.blocked_at).is_(None)
    )


def audience_clause(
    audience: Audience, now: datetime, default_language: str
) -> ColumnElement[bool]:
    """The SQL condition on ``Person`` for an audience."""
    base = reachable_clause()
    if audience.kind == "site":
        return base & (col(Person.site_code) == audience.value.lower())
    if audience.kind == "language":
        return base & (func.coalesce(col(Person.language), default_language) == audience.value)
    if audience.kind == "role":
        if audience.value in RELATIONS:
            return base & (col(Person.relation) == audience.value)
        return base & exists().where(
            col(RoleGrant.person_id) == col(Person.id), col(RoleGrant.role) == audience.value
        )
    if audience.kind == "risk":
        high, moderate = high_tier_clause(now), moderate_tier_clause(now)
        if audience.value == "high":
            return base & high
        if audience.value == "moderate":
            return base & moderate & ~high
        return base & ~high & ~moderate
    return base


def _recipients_query(
    broadcast: Broadcast, now: datetime, default_language: str
) -> SelectOfScalar[Person]:
    audience = Audience(broadcast.audience_kind, broadcast.audience_value)
    return select(Person).where(audience_clause(audience, now, default_language))


async def count_recipients(
    session: AsyncSession, audience: Audience, now: datetime, default_language: str
) -> int:
    """How many people an audience reaches now."""
    found = await session.exec(
        select(func.count())
        .select_from(Person)
        .where(audience_clause(audience, now, default_language))
    )
    return int(found.one())


# Composing ------------------------------------------------------------------------------------


def check_texts(texts: dict[str, str], languages: Sequence[str], default_language: str) -> None:
    """Refuse texts that are missing, in an unknown language, or longer than Telegram allows."""
    for lang, text in texts.items():
        if lang not in languages:
            raise BroadcastError("broadcast.language_bad", language=lang[:16])
        if len(text) > TELEGRAM_TEXT_LIMIT:
            raise BroadcastError(
                "broadcast.too_long", language=lang, length=len(text), limit=TELEGRAM_TEXT_LIMIT
            )
    if not texts.get(default_language, "").strip():
        raise BroadcastError("broadcast.default_missing", language=default_language)


async def create_draft(
    session: AsyncSession,
    engine: ConversationEngine,
    *,
    texts: dict[str, str],
    audience: Audience,
    send_at: datetime | None,
    created_by: str,
    now: datetime,
    creator_person_id: int | None = None,
) -> Broadcast:
    """Check and store a draft with its recipient count; nothing is sent until it is confirmed."""
    config = engine.config
    cleaned = {lang: text.strip() for lang, text in texts.items() if text.strip()}
    check_texts(cleaned, config.languages, config.default_language)
    audience.check()
    if audience.kind == "site" and engine.sites.get(audience.value) is None:
        raise BroadcastError("broadcast.site_unknown", site=audience.value[:32])
    if audience.kind == "language" and audience.value not in config.languages:
        raise BroadcastError("broadcast.language_bad", language=audience.value[:16])
    when = as_utc(send_at) if send_at is not None else now
    if when < now:
        when = now
    broadcast = Broadcast(
        texts=json.dumps(cleaned, ensure_ascii=False),
        audience_kind=audience.kind,
        audience_value=audience.value.lower() if audience.kind == "site" else audience.value,
        send_at=when,
        created_by=created_by[:64],
        creator_person_id=creator_person_id,
        recipients=await count_recipients(session, audience, now, config.default_language),
        created_at=now,
    )
    session.add(broadcast)
    await session.flush()
    return broadcast


async def confirm(
    session: AsyncSession, engine: ConversationEngine, broadcast_id: int, by: str, now: datetime
) -> Broadcast:
    """Schedule a draft; refuse an empty audience, or one already confirmed or cancelled."""
    broadcast = await session.get(Broadcast, broadcast_id)
    if broadcast is None:
        raise BroadcastError("broadcast.unknown", id=broadcast_id)
    if broadcast.status != "draft":
        raise BroadcastError("broadcast.not_draft", id=broadcast_id)
    audience = Audience(broadcast.audience_kind, broadcast.audience_value)
    broadcast.recipients = await count_recipients(
        session, audience, now, engine.config.default_language
    )
    if broadcast.recipients == 0:
        raise BroadcastError("broadcast.empty")
    broadcast.status = "scheduled"
    broadcast.confirmed_at = now
    broadcast.send_at = max(as_utc(broadcast.send_at), as_utc(now))
    session.add(broadcast)
    _audit(session, now, by, "broadcast.confirm", broadcast)
    lang = engine.config.default_language
    await queue(
        session,
        _staff(
            engine,
            engine.catalogs.t(
                lang,
                "broadcast.scheduled_staff",
                id=broadcast.id,
                by=by,
                count=broadcast.recipients,
                audience=audience.describe(),
                when=format_when(broadcast.send_at, lang, engine.sites.default().tz),
            ),
            buttons=[[_cancel_button(engine, broadcast)]],
        ),
        now,
    )
    return broadcast


async def cancel(
    session: AsyncSession, engine: ConversationEngine, broadcast_id: int, by: str, now: datetime
) -> Progress:
    """Cancel a broadcast: what is not yet sent is dropped; return where it stopped."""
    broadcast = await session.get(Broadcast, broadcast_id)
    if broadcast is None:
        raise BroadcastError("broadcast.unknown", id=broadcast_id)
    if broadcast.status in ("done", "cancelled"):
        raise BroadcastError("broadcast.already_over", id=broadcast_id)
    broadcast.status = "cancelled"
    broadcast.finished_at = now
    session.add(broadcast)
    await session.exec(
        update(OutboxMessage)
        .where(col(OutboxMessage.dedupe_key).startswith(broadcast.dedupe_prefix))
        .where(col(OutboxMessage.status) == "pending")
        .values(status="cancelled", error="broadcast cancelled")
    )
    _audit(session, now, by, "broadcast.cancel", broadcast)
    figures = await progress(session, broadcast)
    lang = engine.config.default_language
    await queue(
        session,
        _staff(
            engine,
            engine.catalogs.t(
                lang,
                "broadcast.cancelled_staff",
                id=broadcast.id,
                by=by,
                sent=figures.sent,
                cancelled=figures.cancelled,
            ),
        ),
        now,
    )
    return figures


async def progress(session: AsyncSession, broadcast: Broadcast) -> Progress:
    """Sent, failed and left for a broadcast (left counts people not yet queued too)."""
    rows = (
        await session.exec(
            select(OutboxMessage.status, func.count())
            .where(col(OutboxMessage.dedupe_key).startswith(broadcast.dedupe_prefix))
            .group_by(col(OutboxMessage.status))
        )
    ).all()
    by_status = {status: int(n) for status, n in rows}
    sent = by_status.get("sent", 0)
    failed = by_status.get("failed", 0) + by_status.get("blocked", 0)
    cancelled = by_status.get("cancelled", 0)
    in_outbox = by_status.get("pending", 0) + by_status.get("sending", 0)
    not_queued = 0
    if not broadcast.fanned_out and broadcast.status in ("scheduled", "sending"):
        not_queued = max(0, broadcast.recipients - broadcast.queued)
    return Progress(broadcast.recipients, sent, failed, in_outbox + not_queued, cancelled)


def _audit(session: AsyncSession, now: datetime, by: str, action: str, b: Broadcast) -> None:
    session.add(
        AuditLog(
            at=now,
            actor=by[:64],
            action=action,
            subject=f"broadcast {b.id}",
            detail=f"{b.audience_kind}:{b.audience_value} recipients={b.recipients}",
        )
    )


def _staff(
    engine: ConversationEngine, text: str, buttons: list[list[Button]] | None = None
) -> list[Outbound]:
    chat = engine.config.staff_chat_id
    if not chat:
        return []
    return [
        Outbound(
            channel="telegram",
            chat_id=chat,
            chat_kind="group",
            text=text,
            buttons=buttons or [],
            priority=Priority.REPLY,
            kind="broadcast_progress",
        )
    ]


def _cancel_button(engine: ConversationEngine, broadcast: Broadcast) -> Button:
    label = engine.catalogs.t(engine.config.default_language, "broadcast.button_cancel")
    return Button(label, "bc.cancel", str(broadcast.id), scope="staff")


def preview_text(engine: ConversationEngine, lang: str, broadcast: Broadcast) -> str:
    """The preview an admin confirms: audience, count, time, and each language's text."""
    t = engine.catalogs.t
    texts = broadcast.text_by_language
    parts = [
        t(
            lang,
            "broadcast.preview",
            id=broadcast.id,
            audience=Audience(broadcast.audience_kind, broadcast.audience_value).describe(),
            count=broadcast.recipients,
            when=format_when(broadcast.send_at, lang, engine.sites.default().tz),
        )
    ]
    for language in engine.config.languages:
        text = texts.get(language)
        shown = text if text is not None else t(lang, "broadcast.uses_default")
        if len(shown) > PREVIEW_CHARS:
            shown = shown[:PREVIEW_CHARS] + "…"
        parts.append(f"[{language}] {shown}")
    return "\n\n".join(parts)


# Fan-out and progress: the scheduler's work ---------------------------------------------------


async def fan_out_batch(
    session: AsyncSession,
    engine: ConversationEngine,
    broadcast_id: int,
    now: datetime,
    size: int = FAN_OUT_BATCH,
) -> int:
    """Queue the next batch of a sending broadcast and move its cursor; return rows queued."""
    query = select(Broadcast).where(Broadcast.id == broadcast_id)
    if not engine.db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    broadcast = (await session.exec(query)).first()
    if broadcast is None or broadcast.status != "sending" or broadcast.fanned_out:
        return 0
    default = engine.config.default_language
    people = (
        await session.exec(
            _recipients_query(broadcast, now, default)
            .where(col(Person.id) > broadcast.cursor)
            .order_by(col(Person.id))
            .limit(size)
        )
    ).all()
    texts = broadcast.text_by_language
    out = [
        Outbound(
            channel=person.channel,
            chat_id=person.chat_id,
            text=texts.get(person.language or default) or texts[default],
            priority=Priority.BROADCAST,
            kind="broadcast",
            person_id=person.id,
            dedupe_key=f"{broadcast.dedupe_prefix}{person.id}",
        )
        for person in people
    ]
    await queue(session, out, now)
    if people:
        broadcast.cursor = int(people[-1].id or broadcast.cursor)
        broadcast.queued += len(people)
    if len(people) < size:
        broadcast.fanned_out = True
    session.add(broadcast)
    return len(out)


async def start_due(session: AsyncSession, engine: ConversationEngine, now: datetime) -> list[int]:
    """Mark scheduled broadcasts whose time has come as sending; return their ids."""
    due = (
        await session.exec(
            select(Broadcast)
            .where(Broadcast.status == "scheduled")
            .where(col(Broadcast.send_at) <= now)
        )
    ).all()
    for broadcast in due:
        broadcast.status = "sending"
        session.add(broadcast)
    return [b.id for b in due if b.id is not None]


async def post_progress(
    session: AsyncSession, engine: ConversationEngine, broadcast_id: int, now: datetime
) -> Progress | None:
    """Post sent / failed / left in the staff chat (each minute, and once when done)."""
    broadcast = await session.get(Broadcast, broadcast_id)
    if broadcast is None or broadcast.status != "sending":
        return None
    figures = await progress(session, broadcast)
    finished = broadcast.fanned_out and figures.left == 0
    recently = broadcast.progress_at is not None and (
        as_utc(now) - as_utc(broadcast.progress_at) < PROGRESS_EVERY
    )
    if recently and not finished:
        return figures
    lang = engine.config.default_language
    key = "broadcast.done_staff" if finished else "broadcast.progress_staff"
    text = engine.catalogs.t(
        lang,
        key,
        id=broadcast.id,
        sent=figures.sent,
        failed=figures.failed,
        left=figures.left,
        total=figures.recipients,
    )
    buttons = None if finished else [[_cancel_button(engine, broadcast)]]
    await queue(session, _staff(engine, text, buttons), now)
    broadcast.progress_at = now
    if finished:
        broadcast.status = "done"
        broadcast.finished_at = now
    session.add(broadcast)
    return figures


async def sweep(engine: ConversationEngine) -> int:
    """The scheduler's job: start due broadcasts, fan out in batches, post progress.

    Every batch is its own transaction (a crash repeats at most one uncommitted batch, and the
    dedupe keys make even that harmless); the sweep returns how many rows it queued.
    """
    now = engine.clock.now()
    db = engine.db
    await db.run(lambda s: start_due(s, engine, now))
    sending = await db.run(_sending_ids)
    queued = 0
    for broadcast_id in sending:

        async def batch(session: AsyncSession, b: int = broadcast_id) -> int:
            return await fan_out_batch(session, engine, b, now)

        async def report(session: AsyncSession, b: int = broadcast_id) -> Progress | None:
            return await post_progress(session, engine, b, now)

        for _ in range(BATCHES_PER_SWEEP):
            added = await db.run(batch)
            queued += added
            if added < FAN_OUT_BATCH:
                break
            engine.notify("telegram")
            engine.notify("web")
        await db.run(report)
    engine.notify("telegram")
    engine.notify("web")
    return queued


async def _sending_ids(session: AsyncSession) -> list[int]:
    found = await session.exec(select(Broadcast.id).where(Broadcast.status == "sending"))
    return [i for i in found.all() if i is not None]


# The chat side: /broadcast for admins ---------------------------------------------------------


def register(engine: ConversationEngine) -> None:
    """Register ``/broadcast`` (compose, status, cancel) and its buttons; admins only."""
    engine.state("bc_compose", _prompt_compose, _compose_text, triage=False)
    engine.state("bc_when", _prompt_when, _typed_when, triage=False)
    engine.command("broadcast", _broadcast_command, before_onboarding=True)
    engine.action("bc.skip", _skip_language)
    engine.action("bc.now", _send_now)
    engine.action("bc.confirm", _confirm_button)
    engine.action("bc.discard", _discard_button)
    engine.action("bc.cancel", _cancel_button_pressed, any_step=True)


async def _refuse(turn: Turn, what: str) -> bool:
    if turn.may(Action.BROADCAST):
        return False
    turn.say("broadcast.not_allowed")
    turn.notice = turn.t("broadcast.not_allowed")
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=turn.person.id,
            actor=turn.person.case_code,
            action=f"broadcast.{what}.refused",
        )
    )
    return True


async def _broadcast_command(turn: Turn, args: str) -> None:
    if await _refuse(turn, "compose"):
        return
    words = args.split()
    if len(words) == 2 and words[0].lower() in ("cancel", "status") and words[1].isdigit():
        if words[0].lower() == "cancel":
            await _cancel(turn, int(words[1]))
        else:
            await _status(turn, int(words[1]))
        return
    try:
        audience = Audience.parse(args)
    except BroadcastError:
        turn.say("broadcast.usage")
        return
    turn.goto("bc_compose", audience=[audience.kind, audience.value], texts={}, index=0)
    await _prompt_compose(turn)


def _compose_language(turn: Turn) -> str | None:
    languages = turn.engine.config.languages
    index = int(turn.data.get("index", 0))
    return languages[index] if index < len(languages) else None


async def _prompt_compose(turn: Turn) -> None:
    lang = _compose_language(turn)
    if lang is None:
        turn.goto("bc_when", **turn.data)
        await _prompt_when(turn)
        return
    default = turn.engine.config.default_language
    buttons = None if lang == default else [[turn.button("broadcast.button_skip", "bc.skip", lang)]]
    turn.say(
        "broadcast.ask_text",
        language=turn.engine.catalogs.t(lang, "language.self_name"),
        limit=TELEGRAM_TEXT_LIMIT,
        buttons=buttons,
    )


async def _compose_text(turn: Turn, text: str) -> None:
    lang = _compose_language(turn)
    if lang is None:
        return
    if len(text) > TELEGRAM_TEXT_LIMIT:
        turn.say("broadcast.too_long", language=lang, length=len(text), limit=TELEGRAM_TEXT_LIMIT)
        await _prompt_compose(turn)
        return
    texts = dict(turn.data.get("texts", {}))
    texts[lang] = text
    turn.goto("bc_compose", **{**turn.data, "texts": texts, "index": turn.data["index"] + 1})
    await _prompt_compose(turn)


async def _skip_language(turn: Turn, _arg: str) -> None:
    if await _refuse(turn, "compose") or turn.person.state != "bc_compose":
        return
    turn.goto("bc_compose", **{**turn.data, "index": int(turn.data.get("index", 0)) + 1})
    await _prompt_compose(turn)


async def _prompt_when(turn: Turn) -> None:
    tz = turn.engine.sites.default().tz
    turn.say(
        "broadcast.ask_when",
        timezone=str(tz),
        buttons=[[turn.button("broadcast.button_now", "bc.now")]],
    )


async def _typed_when(turn: Turn, text: str) -> None:
    tz = turn.engine.sites.default().tz
    try:
        local = datetime.strptime(text.strip().replace("：", ":"), "%Y-%m-%d %H:%M")
    except ValueError:
        turn.say("broadcast.when_bad")
        await _prompt_when(turn)
        return
    await _make_draft(turn, local.replace(tzinfo=tz).astimezone(UTC))


async def _send_now(turn: Turn, _arg: str) -> None:
    if await _refuse(turn, "compose") or turn.person.state != "bc_when":
        return
    await _make_draft(turn, None)


async def _make_draft(turn: Turn, when: datetime | None) -> None:
    kind, value = turn.data.get("audience", ["everyone", ""])
    try:
        broadcast = await create_draft(
            turn.session,
            turn.engine,
            texts=dict(turn.data.get("texts", {})),
            audience=Audience(str(kind), str(value)),
            send_at=when,
            created_by=turn.person.case_code,
            now=turn.now,
            creator_person_id=turn.person.id,
        )
    except BroadcastError as error:
        turn.goto("menu")
        turn.send(turn.t(error.key, **error.params))
        return
    turn.goto("menu")
    preview = preview_text(turn.engine, turn.lang, broadcast)
    if broadcast.recipients == 0:
        broadcast.status = "cancelled"
        turn.session.add(broadcast)
        turn.send(preview)
        turn.say("broadcast.empty")
        return
    turn.send(
        preview,
        buttons=[
            [
                turn.button("broadcast.button_confirm", "bc.confirm", str(broadcast.id)),
                turn.button("broadcast.button_discard", "bc.discard", str(broadcast.id)),
            ]
        ],
    )


async def _confirm_button(turn: Turn, arg: str) -> None:
    if await _refuse(turn, "confirm") or not arg.isdigit():
        return
    try:
        broadcast = await confirm(
            turn.session, turn.engine, int(arg), turn.person.case_code, turn.now
        )
    except BroadcastError as error:
        turn.send(turn.t(error.key, **error.params))
        return
    turn.say("broadcast.confirmed", id=broadcast.id, count=broadcast.recipients)


async def _discard_button(turn: Turn, arg: str) -> None:
    if await _refuse(turn, "discard") or not arg.isdigit():
        return
    broadcast = await turn.session.get(Broadcast, int(arg))
    if broadcast is not None and broadcast.status == "draft":
        broadcast.status = "cancelled"
        turn.session.add(broadcast)
    turn.say("broadcast.discarded")


async def _cancel_button_pressed(turn: Turn, arg: str) -> None:
    if await _refuse(turn, "cancel") or not arg.isdigit():
        return
    await _cancel(turn, int(arg))


async def _cancel(turn: Turn, broadcast_id: int) -> None:
    try:
        figures = await cancel(
            turn.session, turn.engine, broadcast_id, turn.person.case_code, turn.now
        )
    except BroadcastError as error:
        turn.notice = turn.t(error.key, **error.params)
        turn.send(turn.t(error.key, **error.params))
        return
    turn.notice = turn.t("broadcast.cancelled", id=broadcast_id, sent=figures.sent)
    if not turn.engine.config.staff_chat_id or turn.inbound.chat_kind == "private":
        turn.say("broadcast.cancelled", id=broadcast_id, sent=figures.sent)


async def _status(turn: Turn, broadcast_id: int) -> None:
    broadcast = await turn.session.get(Broadcast, broadcast_id)
    if broadcast is None:
        turn.say("broadcast.unknown", id=broadcast_id)
        return
    figures = await progress(turn.session, broadcast)
    turn.say(
        "broadcast.status",
        id=broadcast_id,
        status=broadcast.status,
        sent=figures.sent,
        failed=figures.failed,
        left=figures.left,
        total=figures.recipients,
    )


def describe(broadcast: Broadcast, figures: Progress) -> dict[str, Any]:
    """A broadcast as plain JSON-ready data (for the admin API)."""
    return {
        "id": broadcast.id,
        "status": broadcast.status,
        "audience": {"kind": broadcast.audience_kind, "value": broadcast.audience_value},
        "texts": broadcast.text_by_language,
        "send_at": as_utc(broadcast.send_at).isoformat(),
        "created_by": broadcast.created_by,
        "progress": figures.as_dict(),
    }
