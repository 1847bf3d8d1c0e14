"""Online group-support rooms: sessions to join, one-person invite links, and safety inside.

An admin defines a room (topic, language, description, rules, capacity, facilitator, and a
Telegram group where the bot is an admin or an external link) and its sessions. Residents
browse upcoming sessions, accept the rules and take a seat: seats are numbered 1…capacity and
unique per session, so the database refuses an extra member however many join at once. A
Telegram room gets a one-person, expiring invite link, made outside the member's transaction
by :func:`sweep_invites` through the :class:`InviteLinks` port that the Telegram adapter
implements; a link room sends its link with the reminder. Messages in a room's group are read
for risk; a high-risk one alerts the staff chat (never a reply in the group).
"""

from __future__ import annotations

import functools
import logging
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import CheckConstraint, Column, DateTime, Text, UniqueConstraint
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.access import Action, Role
from core.booking import person_tz, when_label
from core.clock import as_utc
from core.conversation import ConversationEngine, MenuEntry, Turn
from core.messages import Button, HandleResult, Inbound, InboundKind, Outbound, Priority
from core.models import AuditLog, InboundSeen, Person
from core.outbox import queue
from core.risk import RiskLevel
from core.safety import hotline_text
from core.timephrase import PhraseError, parse_availability

log = logging.getLogger(__name__)

TOPICS = ("sleep", "worry", "bereavement", "parents", "frontline", "other")
STAFF_ROLES = frozenset({Role.STAFF, Role.COUNSELOR, Role.SUPERVISOR, Role.ADMIN})
BROWSE_DAYS = 14
SESSIONS_SHOWN = 8
REMIND_BEFORE = timedelta(hours=1)
FACILITATOR_BEFORE = timedelta(hours=2)
INVITE_CLAIM_STALE = timedelta(seconds=60)
INVITE_ATTEMPTS = 5
MAX_CAPACITY = 200
MAX_WEEKS = 12
TEXT_LIMIT = 3000


def _ts(nullable: bool = False) -> Any:
    return Field(
        default=None if nullable else ...,
        sa_column=Column(DateTime(timezone=True), nullable=nullable),
    )


class Room(SQLModel, table=True):
    """A support group: what it is about, its rules, its size, who leads it, where it meets."""

    __tablename__ = "room"

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=32, unique=True)
    title: str = Field(max_length=120)
    topic: str = Field(default="other", max_length=32)
    language: str = Field(default="zh_Hans", max_length=16)
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    rules: str = Field(default="", sa_column=Column(Text, nullable=False))
    capacity: int = 10
    facilitator_id: int | None = Field(default=None, foreign_key="person.id", ondelete="SET NULL")
    telegram_chat_id: str | None = Field(default=None, max_length=64, index=True)
    link: str = Field(default="", max_length=500)
    staff_only: bool = False
    active: bool = True
    created_at: datetime = _ts()


class RoomSession(SQLModel, table=True):
    """One meeting of a room."""

    __tablename__ = "room_session"

    id: int | None = Field(default=None, primary_key=True)
    room_id: int = Field(foreign_key="room.id", index=True, ondelete="CASCADE")
    starts_at: datetime = _ts()
    ends_at: datetime = _ts()
    facilitator_due_at: datetime = _ts()
    facilitator_told_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()


class RoomMember(SQLModel, table=True):
    """A person's seat in one session; seats 1…capacity are unique, so capacity holds."""

    __tablename__ = "room_member"
    __table_args__ = (
        UniqueConstraint("session_id", "seat", name="uq_room_member_seat"),
        UniqueConstraint("session_id", "person_id", name="uq_room_member_person"),
        CheckConstraint("seat >= 1", name="ck_room_member_seat"),
    )

    id: int | None = Field(default=None, primary_key=True)
    session_id: int = Field(foreign_key="room_session.id", index=True, ondelete="CASCADE")
    person_id: int = Field(foreign_key="person.id", index=True, ondelete="CASCADE")
    seat: int
    accepted_rules_at: datetime = _ts()
    joined_at: datetime = _ts()
    remind_at: datetime = _ts()
    reminded_at: datetime | None = _ts(nullable=True)


class RoomInvite(SQLModel, table=True):
    """A one-person invite link to a room's Telegram group, waiting to be made or made."""

    __tablename__ = "room_invite"

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="room_member.id", index=True, ondelete="CASCADE")
    chat_id: str = Field(max_length=64)
    name: str = Field(max_length=32)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    link: str | None = Field(default=None, max_length=200)
    expire_at: datetime = _ts()
    due_at: datetime = _ts()
    claimed_at: datetime | None = _ts(nullable=True)
    sent_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()


class InviteLinks(Protocol):
    """Makes a one-person, expiring invite link to a group (the Telegram adapter does)."""

    async def create_invite_link(self, chat_id: str, *, name: str, expire_at: datetime) -> str:
        """Return a new invite link for one member, valid until ``expire_at``."""
        ...


def register(engine: ConversationEngine) -> None:
    """Plug rooms into the engine: menu entry, browse/join/leave, /room, and group safety."""
    engine.menu.append(
        MenuEntry(
            "rooms",
            "rooms.menu",
            "rooms.browse",
            visible=lambda person, _roles: person.age_band != "under_16",
        )
    )
    engine.state("room_rules", _prompt_rules)
    engine.action("rooms.browse", _browse, any_step=True)
    engine.action("rooms.session", _choose_session)
    engine.action("rooms.join", _join)
    engine.action("rooms.mine", _mine, any_step=True)
    engine.action("rooms.leave", _leave, any_step=True)
    engine.command("room", _room_command, before_onboarding=True)
    engine.command("rooms", _rooms_command)
    engine.export_hooks.append(export_rooms)
    engine.group_messages = lambda inbound: read_group_message(engine, inbound)


# Browsing and joining ------------------------------------------------------------------------


def _sees(room: Room, person: Person, roles: set[Role], default_language: str) -> bool:
    if not room.active:
        return False
    if room.staff_only:
        return bool(roles & STAFF_ROLES)
    return bool(roles & STAFF_ROLES) or room.language == (person.language or default_language)


async def seats_taken(session: AsyncSession, session_ids: Sequence[int]) -> dict[int, int]:
    """How many seats are taken in each session."""
    if not session_ids:
        return {}
    rows = await session.exec(
        select(RoomMember.session_id, func.count())
        .where(col(RoomMember.session_id).in_(set(session_ids)))
        .group_by(col(RoomMember.session_id))
    )
    return {sid: int(n) for sid, n in rows.all()}


async def _upcoming(turn: Turn) -> list[tuple[RoomSession, Room]]:
    rows = await turn.session.exec(
        select(RoomSession, Room)
        .join(Room, col(Room.id) == col(RoomSession.room_id))
        .where(col(RoomSession.starts_at) > turn.now.astimezone(UTC))
        .where(
            col(RoomSession.starts_at) <= (turn.now + timedelta(days=BROWSE_DAYS)).astimezone(UTC)
        )
        .order_by(col(RoomSession.starts_at), col(RoomSession.id))
    )
    default = turn.engine.config.default_language
    return [(s, r) for s, r in rows.all() if _sees(r, turn.person, turn.roles, default)]


async def _browse(turn: Turn, _arg: str) -> None:
    if not turn.onboarded:
        await turn.prompt()
        return
    if turn.person.state == "room_rules":
        turn.goto("menu")
    upcoming = (await _upcoming(turn))[:SESSIONS_SHOWN]
    mine = await _my_members(turn)
    rows: list[list[Button]] = []
    if mine:
        rows.append([turn.button("rooms.button_mine", "rooms.mine")])
    if not upcoming:
        rows.append([turn.menu_button()])
        turn.say("rooms.none", buttons=rows)
        return
    tz = person_tz(turn.engine, turn.person)
    taken = await seats_taken(turn.session, [_id(s) for s, _ in upcoming])
    for room_session, room in upcoming:
        left = max(0, room.capacity - taken.get(_id(room_session), 0))
        rows.append(
            [
                turn.button(
                    "rooms.button_session" if left else "rooms.button_session_full",
                    "rooms.session",
                    str(room_session.id),
                    title=room.title,
                    when=when_label(room_session.starts_at, turn.lang, tz),
                    left=left,
                )
            ]
        )
    rows.append([turn.menu_button()])
    turn.say("rooms.browse", buttons=rows)


async def _rooms_command(turn: Turn, args: str) -> None:
    await _browse(turn, args)


async def _valid_session(turn: Turn, arg: str) -> tuple[RoomSession, Room] | None:
    """The session a button names, if it is still upcoming and visible to this person."""
    try:
        room_session = await turn.session.get(RoomSession, int(arg))
    except ValueError:
        room_session = None
    room = await turn.session.get(Room, room_session.room_id) if room_session else None
    default = turn.engine.config.default_language
    if room_session is None or room is None or not _sees(room, turn.person, turn.roles, default):
        turn.say("rooms.gone")
        return None
    if as_utc(room_session.starts_at) <= turn.now:
        turn.say("rooms.started")
        return None
    return room_session, room


async def _choose_session(turn: Turn, arg: str) -> None:
    found = await _valid_session(turn, arg)
    if found is None:
        await _browse(turn, "")
        return
    turn.goto("room_rules", session=found[0].id)
    await _prompt_rules(turn)


async def _prompt_rules(turn: Turn) -> None:
    room_session = await turn.session.get(RoomSession, int(turn.data.get("session") or 0))
    room = await turn.session.get(Room, room_session.room_id) if room_session else None
    if room_session is None or room is None:
        turn.goto("menu")
        await _browse(turn, "")
        return
    tz = person_tz(turn.engine, turn.person)
    taken = (await seats_taken(turn.session, [_id(room_session)])).get(_id(room_session), 0)
    turn.say(
        "rooms.details",
        title=room.title,
        topic=turn.t(f"rooms.topic.{room.topic}"),
        when=when_label(room_session.starts_at, turn.lang, tz),
        minutes=int((as_utc(room_session.ends_at) - as_utc(room_session.starts_at)).seconds // 60),
        where=turn.t("rooms.where_telegram" if room.telegram_chat_id else "rooms.where_link"),
        left=max(0, room.capacity - taken),
        description=room.description or "—",
        rules=room.rules or turn.t("rooms.default_rules"),
        buttons=[
            [turn.button("rooms.button_accept", "rooms.join", str(room_session.id))],
            [turn.button("rooms.button_back", "rooms.browse"), turn.menu_button()],
        ],
    )


async def _join(turn: Turn, arg: str) -> None:
    found = await _valid_session(turn, arg)
    if found is None:
        turn.goto("menu")
        await _browse(turn, "")
        return
    room_session, room = found
    turn.goto("menu")
    already = (
        await turn.session.exec(
            select(RoomMember)
            .where(RoomMember.session_id == room_session.id)
            .where(RoomMember.person_id == turn.person.id)
        )
    ).first()
    if already is not None:
        turn.say("rooms.already", title=room.title, buttons=[[turn.menu_button()]])
        return
    member = await take_seat(
        turn.session,
        turn.engine.db.is_sqlite,
        room_session,
        room.capacity,
        _pid(turn.person),
        turn.now,
    )
    if member is None:
        turn.say("rooms.full", title=room.title)
        await _browse(turn, "")
        return
    tz = person_tz(turn.engine, turn.person)
    when = when_label(room_session.starts_at, turn.lang, tz)
    if room.telegram_chat_id:
        turn.session.add(
            RoomInvite(
                member_id=_id(member),
                chat_id=room.telegram_chat_id,
                name=f"Anxin {turn.person.case_code}"[:32],
                expire_at=max(as_utc(room_session.ends_at), turn.now + timedelta(hours=1)),
                due_at=turn.now,
                created_at=turn.now,
            )
        )
        turn.say(
            "rooms.joined_telegram", title=room.title, when=when, buttons=[[turn.menu_button()]]
        )
    else:
        turn.say("rooms.joined_link", title=room.title, when=when, buttons=[[turn.menu_button()]])
    if room_session.facilitator_told_at is not None:
        await _tell_facilitator(turn, room, "rooms.facilitator_late_join", when=when)
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=turn.person.id,
            actor=turn.person.case_code,
            action="rooms.join",
            subject=room.code,
            detail=f"session {room_session.id}",
        )
    )


async def take_seat(
    session: AsyncSession,
    is_sqlite: bool,
    room_session: RoomSession,
    capacity: int,
    person_id: int,
    now: datetime,
) -> RoomMember | None:
    """Take the lowest free seat (1…capacity) in the session; None when every seat is taken.

    Each seat is an ``INSERT … ON CONFLICT DO NOTHING`` against the unique (session, seat):
    two people reaching for the same seat get one each, or one of them none.
    """
    taken = set(
        (
            await session.exec(
                select(RoomMember.seat).where(RoomMember.session_id == room_session.id)
            )
        ).all()
    )
    insert = sqlite.insert if is_sqlite else postgresql.insert
    starts = as_utc(room_session.starts_at)
    for seat in range(1, capacity + 1):
        if seat in taken:
            continue
        statement = (
            insert(RoomMember)
            .values(
                session_id=room_session.id,
                person_id=person_id,
                seat=seat,
                accepted_rules_at=now,
                joined_at=now,
                remind_at=max(starts - REMIND_BEFORE, now),
            )
            .on_conflict_do_nothing()
            .returning(col(RoomMember.id))
        )
        member_id = (await session.exec(statement)).scalar()
        if member_id is not None:
            return await session.get(RoomMember, member_id)
    return None


async def _my_members(turn: Turn) -> list[tuple[RoomMember, RoomSession, Room]]:
    rows = await turn.session.exec(
        select(RoomMember, RoomSession, Room)
        .join(RoomSession, col(RoomSession.id) == col(RoomMember.session_id))
        .join(Room, col(Room.id) == col(RoomSession.room_id))
        .where(RoomMember.person_id == turn.person.id)
        .where(col(RoomSession.ends_at) > turn.now.astimezone(UTC))
        .order_by(col(RoomSession.starts_at))
    )
    return list(rows.all())


async def _mine(turn: Turn, _arg: str) -> None:
    mine = await _my_members(turn)
    if not mine:
        turn.say("rooms.mine_none", buttons=[[turn.button("rooms.menu", "rooms.browse")]])
        return
    tz = person_tz(turn.engine, turn.person)
    lines = []
    rows: list[list[Button]] = []
    for member, room_session, room in mine:
        when = when_label(room_session.starts_at, turn.lang, tz)
        lines.append(turn.t("rooms.mine_line", title=room.title, when=when))
        rows.append(
            [turn.button("rooms.button_leave", "rooms.leave", str(member.id), title=room.title)]
        )
    rows.append([turn.menu_button()])
    turn.say("rooms.mine", lines="\n".join(lines), buttons=rows)


async def _leave(turn: Turn, arg: str) -> None:
    try:
        member = await turn.session.get(RoomMember, int(arg))
    except ValueError:
        member = None
    if member is None or member.person_id != turn.person.id:
        turn.say("rooms.not_member", buttons=[[turn.menu_button()]])
        return
    room_session = await turn.session.get(RoomSession, member.session_id)
    room = await turn.session.get(Room, room_session.room_id) if room_session else None
    await turn.session.delete(member)
    title = room.title if room else "—"
    turn.say("rooms.left", title=title, buttons=[[turn.menu_button()]])
    if room is not None and room_session is not None and room_session.facilitator_told_at:
        tz = person_tz(turn.engine, turn.person)
        await _tell_facilitator(
            turn,
            room,
            "rooms.facilitator_left",
            when=when_label(room_session.starts_at, turn.lang, tz),
        )


async def _tell_facilitator(turn: Turn, room: Room, key: str, *, when: str) -> None:
    if room.facilitator_id is None:
        return
    facilitator = await turn.session.get(Person, room.facilitator_id)
    if facilitator is None:
        return
    lang = facilitator.language or turn.engine.config.default_language
    turn.send_to(
        facilitator,
        turn.engine.catalogs.t(lang, key, title=room.title, when=when, code=turn.person.case_code),
        kind="rooms",
    )


# Admin: /room ---------------------------------------------------------------------------------


async def _room_command(turn: Turn, args: str) -> None:
    """``/room add|text|session|off|list …``: define rooms and their sessions (admins)."""
    if not turn.may(Action.MANAGE_ROOMS):
        turn.say("admin.not_allowed")
        return
    try:
        words = shlex.split(args)
    except ValueError:
        words = []
    verb = words[0].lower() if words else ""
    if verb == "add" and len(words) >= 2:
        await _room_add(turn, words[1].lower()[:32], words[2:])
    elif verb == "text" and len(words) >= 4 and words[2] in ("description", "rules"):
        room = await _room_by_code(turn, words[1])
        if room is not None:
            text = args.split(words[2], 1)[1].strip()[:TEXT_LIMIT]
            setattr(room, words[2], text)
            turn.session.add(room)
            turn.say("rooms.admin_saved", code=room.code)
    elif verb == "session" and len(words) >= 3:
        room = await _room_by_code(turn, words[1])
        if room is not None:
            await _room_sessions(turn, room, words[2:])
    elif verb == "off" and len(words) == 2:
        room = await _room_by_code(turn, words[1])
        if room is not None:
            room.active = False
            turn.session.add(room)
            turn.say("rooms.admin_off", code=room.code)
    elif verb == "list":
        await _room_list(turn)
    else:
        turn.say("rooms.admin_usage")


async def _room_by_code(turn: Turn, code: str) -> Room | None:
    room = (await turn.session.exec(select(Room).where(Room.code == code.lower()[:32]))).first()
    if room is None:
        turn.say("rooms.admin_no_room", code=code[:32])
    return room


async def _room_add(turn: Turn, code: str, options: list[str]) -> None:
    values: dict[str, Any] = {}
    for word in options:
        name, sep, value = word.partition("=")
        if not sep or not value:
            turn.say("rooms.admin_usage")
            return
        if name == "title":
            values["title"] = value[:120]
        elif name == "topic" and value in TOPICS:
            values["topic"] = value
        elif name in ("lang", "language") and value in turn.engine.config.languages:
            values["language"] = value
        elif name == "capacity" and value.isdigit() and 1 <= int(value) <= MAX_CAPACITY:
            values["capacity"] = int(value)
        elif name == "facilitator":
            person = (
                await turn.session.exec(select(Person).where(Person.case_code == value.upper()))
            ).first()
            if person is None:
                turn.say("admin.no_such_case", code=value.upper()[:16])
                return
            values["facilitator_id"] = person.id
        elif name == "telegram" and value.lstrip("-").isdigit():
            values["telegram_chat_id"] = value
        elif name == "link" and value.startswith(("https://", "http://")):
            values["link"] = value[:500]
        elif name in ("staff", "staff_only") and value in ("yes", "no"):
            values["staff_only"] = value == "yes"
        else:
            turn.say("rooms.admin_usage")
            return
    room = (await turn.session.exec(select(Room).where(Room.code == code))).first()
    if room is None:
        if "title" not in values or not ({"telegram_chat_id", "link"} & set(values)):
            turn.say("rooms.admin_usage")
            return
        room = Room(code=code, title=values["title"], created_at=turn.now)
    for name, value in values.items():
        setattr(room, name, value)
    room.active = True
    turn.session.add(room)
    turn.say("rooms.admin_saved", code=code)


async def _room_sessions(turn: Turn, room: Room, words: list[str]) -> None:
    weeks = 1
    phrase_words = []
    for word in words:
        if word.startswith("weeks=") and word[6:].isdigit():
            weeks = max(1, min(MAX_WEEKS, int(word[6:])))
        else:
            phrase_words.append(word)
    tz = person_tz(turn.engine, turn.person)
    try:
        found = parse_availability(
            " ".join(phrase_words), turn.now.astimezone(tz).date(), default_minutes=None
        )
    except PhraseError as exc:
        turn.say(f"booking.phrase_error.{exc.reason}")
        return
    first_start, first_end = found.window(tz)
    if first_start <= turn.now:
        turn.say("booking.phrase_error.past")
        return
    added = []
    for week in range(weeks):
        starts = (first_start + timedelta(weeks=week)).astimezone(UTC)
        ends = (first_end + timedelta(weeks=week)).astimezone(UTC)
        added.append(
            RoomSession(
                room_id=_id(room),
                starts_at=starts,
                ends_at=ends,
                facilitator_due_at=starts - FACILITATOR_BEFORE,
                created_at=turn.now,
            )
        )
    turn.session.add_all(added)
    turn.say(
        "rooms.admin_sessions",
        code=room.code,
        count=len(added),
        when=when_label(first_start, turn.lang, tz),
    )


async def _room_list(turn: Turn) -> None:
    rooms = (await turn.session.exec(select(Room).order_by(col(Room.code)))).all()
    if not rooms:
        turn.say("rooms.admin_empty")
        return
    lines = []
    for room in rooms:
        count = (
            await turn.session.exec(
                select(func.count())
                .select_from(RoomSession)
                .where(RoomSession.room_id == room.id)
                .where(col(RoomSession.starts_at) > turn.now.astimezone(UTC))
            )
        ).one()
        lines.append(
            turn.t(
                "rooms.admin_line",
                code=room.code,
                title=room.title,
                capacity=room.capacity,
                sessions=int(count),
                state=turn.t("rooms.state_on" if room.active else "rooms.state_off"),
            )
        )
    turn.say("rooms.admin_list", lines="\n".join(lines))


# Invite links: made outside the member's transaction ------------------------------------------


async def sweep_invites(engine: ConversationEngine, links: InviteLinks) -> int:
    """Make and send the invite links that are due; return how many went out.

    A row is claimed (status "issuing") in one transaction, the link is made, and the message
    with the link is queued in a second; a worker that died mid-way leaves a stale claim that
    is taken again after a minute (at worst an unused, expiring link is made twice).
    """
    now = engine.clock.now()
    claimed = await engine.db.run(lambda s: _claim_invites(s, engine.db.is_sqlite, now))
    sent = 0
    for invite_id, chat_id, name, expire_at in claimed:
        try:
            link = await links.create_invite_link(chat_id, name=name, expire_at=expire_at)
        except Exception as exc:  # the platform said no or is away: try again later
            log.warning("invite link for room chat %s failed: %s", chat_id, exc)
            failed = functools.partial(_invite_failed, engine=engine, invite_id=invite_id, now=now)
            await engine.db.run(functools.partial(failed, error=str(exc)))
            continue
        made = functools.partial(_invite_made, engine=engine, invite_id=invite_id, now=now)
        if await engine.db.run(functools.partial(made, link=link)):
            sent += 1
    if claimed:
        engine.notify("telegram")
        engine.notify("web")
    return sent


async def _claim_invites(
    session: AsyncSession, is_sqlite: bool, now: datetime
) -> list[tuple[int, str, str, datetime]]:
    query = (
        select(RoomInvite)
        .where(
            (col(RoomInvite.status) == "pending") & (col(RoomInvite.due_at) <= now.astimezone(UTC))
            | (col(RoomInvite.status) == "issuing")
            & (col(RoomInvite.claimed_at) < (now - INVITE_CLAIM_STALE).astimezone(UTC))
        )
        .order_by(col(RoomInvite.id))
        .limit(50)
    )
    if not is_sqlite:
        query = query.with_for_update(skip_locked=True)
    claimed = []
    for invite in (await session.exec(query)).all():
        invite.status = "issuing"
        invite.claimed_at = now
        invite.attempts += 1
        session.add(invite)
        claimed.append((_id(invite), invite.chat_id, invite.name, as_utc(invite.expire_at)))
    return claimed


async def _invite_parts(
    session: AsyncSession, invite_id: int
) -> tuple[RoomInvite, Person, Room] | None:
    invite = await session.get(RoomInvite, invite_id)
    if invite is None or invite.status != "issuing":
        return None  # the member left meanwhile (the row went with them)
    member = await session.get(RoomMember, invite.member_id)
    room_session = await session.get(RoomSession, member.session_id) if member else None
    room = await session.get(Room, room_session.room_id) if room_session else None
    person = await session.get(Person, member.person_id) if member else None
    if person is None or room is None:
        return None
    return invite, person, room


async def _invite_made(
    session: AsyncSession, engine: ConversationEngine, invite_id: int, link: str, now: datetime
) -> bool:
    parts = await _invite_parts(session, invite_id)
    if parts is None:
        return False
    invite, person, room = parts
    invite.status = "sent"
    invite.link = link
    invite.sent_at = now
    session.add(invite)
    lang = person.language or engine.config.default_language
    text = engine.catalogs.t(
        lang,
        "rooms.invite",
        title=room.title,
        link=link,
        until=when_label(invite.expire_at, lang, person_tz(engine, person)),
    )
    await queue(
        session,
        [
            Outbound(
                channel=person.channel,
                chat_id=person.chat_id,
                text=text,
                priority=Priority.REPLY,
                kind="room_invite",
                person_id=person.id,
                dedupe_key=f"room-invite:{invite.id}",
            )
        ],
        now,
    )
    return True


async def _invite_failed(
    session: AsyncSession, engine: ConversationEngine, invite_id: int, now: datetime, error: str
) -> None:
    parts = await _invite_parts(session, invite_id)
    if parts is None:
        return
    invite, person, room = parts
    if invite.attempts < INVITE_ATTEMPTS:
        invite.status = "pending"
        invite.due_at = now + timedelta(seconds=30 * invite.attempts)
        session.add(invite)
        return
    invite.status = "failed"
    session.add(invite)
    lang = person.language or engine.config.default_language
    out = [
        Outbound(
            channel=person.channel,
            chat_id=person.chat_id,
            text=engine.catalogs.t(lang, "rooms.invite_failed", title=room.title),
            kind="room_invite",
            person_id=person.id,
        )
    ]
    facilitator = await session.get(Person, room.facilitator_id) if room.facilitator_id else None
    if facilitator is not None:
        flang = facilitator.language or engine.config.default_language
        out.append(
            Outbound(
                channel=facilitator.channel,
                chat_id=facilitator.chat_id,
                text=engine.catalogs.t(
                    flang,
                    "rooms.invite_failed_facilitator",
                    title=room.title,
                    code=person.case_code,
                ),
                kind="rooms",
                person_id=facilitator.id,
            )
        )
    log.error("giving up on an invite link for room %s: %s", room.code, error)
    await queue(session, out, now)


# Reminders: members 1 h before (with the link for link rooms), the facilitator's list ---------


async def send_due_room_reminders(
    session: AsyncSession, engine: ConversationEngine, now: datetime
) -> int:
    """Queue due member reminders and facilitator lists; each goes once, however often run."""
    utc_now = now.astimezone(UTC)
    member_query = (
        select(RoomMember, RoomSession, Room, Person)
        .join(RoomSession, col(RoomSession.id) == col(RoomMember.session_id))
        .join(Room, col(Room.id) == col(RoomSession.room_id))
        .join(Person, col(Person.id) == col(RoomMember.person_id))
        .where(col(RoomMember.reminded_at).is_(None))
        .where(col(RoomMember.remind_at) <= utc_now)
        .order_by(col(RoomMember.id))
        .limit(300)
    )
    session_query = (
        select(RoomSession, Room)
        .join(Room, col(Room.id) == col(RoomSession.room_id))
        .where(col(RoomSession.facilitator_told_at).is_(None))
        .where(col(RoomSession.facilitator_due_at) <= utc_now)
        .order_by(col(RoomSession.id))
        .limit(100)
    )
    if not engine.db.is_sqlite:
        member_query = member_query.with_for_update(skip_locked=True, of=RoomMember)
        session_query = session_query.with_for_update(skip_locked=True, of=RoomSession)
    t = engine.catalogs.t
    out: list[Outbound] = []
    for member, room_session, room, person in (await session.exec(member_query)).all():
        member.reminded_at = now
        session.add(member)
        if as_utc(room_session.ends_at) <= now or not room.active:
            continue
        lang = person.language or engine.config.default_language
        where = (
            t(lang, "rooms.reminder_where_telegram")
            if room.telegram_chat_id
            else t(lang, "rooms.reminder_where_link", link=room.link)
        )
        out.append(
            Outbound(
                channel=person.channel,
                chat_id=person.chat_id,
                text=t(
                    lang,
                    "rooms.reminder",
                    title=room.title,
                    when=when_label(room_session.starts_at, lang, person_tz(engine, person)),
                    where=where,
                ),
                priority=Priority.REMINDER,
                kind="reminder",
                person_id=person.id,
                dedupe_key=f"room-reminder:{member.id}",
            )
        )
    for room_session, room in (await session.exec(session_query)).all():
        room_session.facilitator_told_at = now
        session.add(room_session)
        facilitator = (
            await session.get(Person, room.facilitator_id) if room.facilitator_id else None
        )
        if facilitator is None or not room.active:
            continue
        codes = (
            await session.exec(
                select(Person.case_code)
                .join(RoomMember, col(RoomMember.person_id) == col(Person.id))
                .where(RoomMember.session_id == room_session.id)
                .order_by(col(RoomMember.seat))
            )
        ).all()
        lang = facilitator.language or engine.config.default_language
        out.append(
            Outbound(
                channel=facilitator.channel,
                chat_id=facilitator.chat_id,
                text=t(
                    lang,
                    "rooms.facilitator_list",
                    title=room.title,
                    when=when_label(room_session.starts_at, lang, person_tz(engine, facilitator)),
                    count=len(codes),
                    capacity=room.capacity,
                    codes=", ".join(codes) or "—",
                ),
                priority=Priority.REMINDER,
                kind="reminder",
                person_id=facilitator.id,
                dedupe_key=f"room-facilitator:{room_session.id}",
            )
        )
    await queue(session, out, now)
    return len(out)


async def sweep_room_reminders(engine: ConversationEngine) -> int:
    """The scheduler's job: queue the room reminders due now, in one transaction."""
    return await engine.sweep(lambda session, now: send_due_room_reminders(session, engine, now))


# Safety inside rooms ----------------------------------------------------------------------------


async def read_group_message(engine: ConversationEngine, inbound: Inbound) -> HandleResult:
    """Read a message written in a group for risk; only room groups count, nothing is said there.

    A high-risk message in a room's group alerts the staff chat, naming the room and the
    member's case code when the member talks to the bot (their escalation is opened, and they
    get the crisis lines privately); the facilitator is told too. Other groups leave no trace.
    """

    async def work(session: AsyncSession) -> HandleResult:
        room = (
            await session.exec(
                select(Room).where(Room.telegram_chat_id == inbound.chat_id).where(col(Room.active))
            )
        ).first()
        if room is None or engine.triage is None or not inbound.text.strip():
            return HandleResult()
        now = engine.clock.now()
        if inbound.update_key:
            key = inbound.update_key[:96]
            if await session.get(InboundSeen, (inbound.channel, key)) is not None:
                return HandleResult(duplicate=True)
            session.add(InboundSeen(channel=inbound.channel, key=key, seen_at=now))
        person = (
            await session.exec(
                select(Person)
                .where(Person.channel == inbound.channel)
                .where(Person.external_id == inbound.external_id)
            )
        ).first()
        stand_in = person or Person(
            channel=inbound.channel,
            external_id=inbound.external_id,
            chat_id=inbound.external_id,
            case_code="—",
            created_at=now,
            last_seen_at=now,
        )
        private = Inbound(
            channel=inbound.channel,
            external_id=inbound.external_id,
            chat_id=stand_in.chat_id,
            kind=InboundKind.TEXT,
            text=inbound.text,
            chat_kind="private",
        )
        turn = Turn(engine, session, stand_in, private, now, {Role.RESIDENT})
        verdict = engine.triage(turn, inbound.text)
        signal = verdict.signal
        if signal is None or signal.level < RiskLevel.HIGH:
            return HandleResult()
        await _alert_from_room(turn, room, person, signal, inbound.text)
        await queue(session, turn.out, now)
        return HandleResult(person_id=person.id if person else None)

    try:
        result = await engine.db.run(work)
    except IntegrityError:  # another worker took the same update at the same moment
        return HandleResult(duplicate=True)
    engine.notify("telegram")
    return result


async def _alert_from_room(
    turn: Turn, room: Room, person: Person | None, signal: Any, text: str
) -> None:
    from core.escalation import card_text, open_escalation

    engine = turn.engine
    lang = engine.config.default_language
    t = engine.catalogs.t
    level = t(lang, f"escalation.level.{RiskLevel(signal.level).label}")
    header = t(
        lang,
        "rooms.alert_staff",
        title=room.title,
        code=person.case_code if person else t(lang, "rooms.alert_unknown_member"),
        level=level,
    )
    if person is not None and person.id is not None:
        opened = await open_escalation(turn, signal, text)
        card = await card_text(turn.session, engine, opened.escalation, raised=opened.raised)
        escalation_id = str(opened.escalation.id)
        turn.to_staff(
            header + "\n\n" + card,
            kind="escalation",
            buttons=[
                [
                    Button(
                        t(lang, "escalation.button_claim"),
                        "esc.claim",
                        escalation_id,
                        scope="staff",
                    ),
                    Button(
                        t(lang, "escalation.button_resolve"),
                        "esc.resolve",
                        escalation_id,
                        scope="staff",
                    ),
                ]
            ],
        )
        turn.say(
            "rooms.safety_private",
            title=room.title,
            lines=hotline_text(turn, turn.site_or_default, emergency_first=True),
            priority=Priority.CRISIS,
            kind="safety",
        )
    else:
        turn.to_staff(header + "\n" + t(lang, "rooms.alert_not_registered"), kind="escalation")
    facilitator = (
        await turn.session.get(Person, room.facilitator_id) if room.facilitator_id else None
    )
    if facilitator is not None:
        flang = facilitator.language or lang
        turn.send_to(
            facilitator,
            t(
                flang,
                "rooms.alert_facilitator",
                title=room.title,
                code=person.case_code if person else t(flang, "rooms.alert_unknown_member"),
            ),
            priority=Priority.ESCALATION,
            kind="escalation",
        )
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor="room:" + room.code,
            action="rooms.alert",
            subject=person.case_code if person else "",
            detail=f"{RiskLevel(signal.level).label}",
        )
    )


# Data export -----------------------------------------------------------------------------------


async def export_rooms(session: AsyncSession, person: Person) -> tuple[str, Any]:
    """The group sessions the person signed up for, for their data download."""
    rows = (
        await session.exec(
            select(RoomMember, RoomSession, Room)
            .join(RoomSession, col(RoomSession.id) == col(RoomMember.session_id))
            .join(Room, col(Room.id) == col(RoomSession.room_id))
            .where(RoomMember.person_id == person.id)
            .order_by(col(RoomSession.starts_at))
        )
    ).all()
    return "group_sessions", [
        {
            "room": room.title,
            "starts_at": as_utc(room_session.starts_at).isoformat(),
            "joined_at": as_utc(member.joined_at).isoformat(),
            "accepted_rules_at": as_utc(member.accepted_rules_at).isoformat(),
        }
        for member, room_session, room in rows
    ]


def _id(row: RoomSession | RoomMember | RoomInvite | Room) -> int:
    assert row.id is not None
    return row.id


def _pid(person: Person) -> int:
    assert person.id is not None
    return person.id
