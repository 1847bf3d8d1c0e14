"""A booked session held as a chat through the bot, for counselors who meet that way.

From a few minutes before the start, the counselor opens the session (the button on the
1-hour reminder, or on the booking in ``/slots``). From then on what the resident writes to
the bot goes to the counselor's private chat with the bot, signed with the resident's case
code, and what the counselor writes there goes to the resident, signed with the counselor's
display name or "your counselor": neither sees the other's platform name or id. The
resident's words are still read for risk first: a risky message raises the normal escalation
(safety reply, card in the staff chat) and reaches the counselor flagged. Either side ends it
with ``/end`` or a button; a session nobody ends is closed by the scheduler some time after
its booked end (``BookingChat.close_at``, a due row). Ending tells both and asks the counselor
whether the session was held, then for a staff-only note.

Like escalation's relay, both people are in "holding" states while it lasts, so the bot's
own menus stay away; every message goes through the outbox.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import exists, update
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.access import Action
from core.booking import (
    Booking,
    BookingChat,
    BookingFlow,
    BookingRules,
    Counselor,
    _mark_buttons,
    booking_named,
    chat_start_button,
    person_tz,
    time_label,
    when_label,
)
from core.clock import as_utc
from core.conversation import ConversationEngine, Turn
from core.escalation import claimed_case, relay_to_claimer, staff_command_while_talking
from core.messages import Button, Outbound, Priority
from core.models import AuditLog, ButtonToken, Person
from core.outbox import queue
from core.risk import RiskLevel
from core.safety import hotline_text

RESIDENT = "bchat_resident"
COUNSELOR = "bchat_counselor"
END_WORDS = ("end", "bchat.end")
#: A resident writing after their session's start reminds the counselor this often at most.
NUDGE_EVERY = timedelta(minutes=5)
#: The person fact "has a booked session that is held in chat" (see ``waiting``).
BOOKED_CHAT = "booking.chat_booked"
NUDGED_KEY = "bchat_nudged"


def register(engine: ConversationEngine, rules: BookingRules) -> None:
    """Plug chat sessions into the engine (called by ``core.booking.register``)."""
    flow = ChatFlow(rules)
    engine.state(RESIDENT, flow.prompt_resident, flow.from_resident, holding=flow.resident_holds)
    engine.state(
        COUNSELOR,
        flow.prompt_counselor,
        flow.from_counselor,
        holding=flow.counselor_holds,
        triage=False,
    )
    engine.action("bchat.open", flow.open, any_step=True)
    engine.action("bchat.end", flow.end_button, any_step=True)
    engine.command("end", flow.end_command, before_onboarding=True)
    engine.free_text_hooks.append(flow.waiting)
    engine.person_fact(
        BOOKED_CHAT,
        exists()
        .where(col(Booking.resident_id) == col(Person.id))
        .where(col(Booking.status) == "booked")
        .where(col(Booking.counselor_id) == col(Counselor.person_id))
        .where(col(Counselor.meet) == "chat"),
    )
    engine.erasure_hooks.append(flow.before_erasure)


class ChatFlow:
    """Opening, relaying and ending booked chat sessions."""

    def __init__(self, rules: BookingRules) -> None:
        self.rules = rules

    # Opening ------------------------------------------------------------------------------

    async def open(self, turn: Turn, arg: str) -> None:
        """The counselor's "Start session": open it (or rejoin it), once its time has come."""
        booking = await booking_named(turn.session, arg)
        if (
            booking is None
            or booking.counselor_id != turn.person.id
            or not turn.may(Action.MANAGE_SLOTS)
        ):
            _audit(turn.session, turn.now, turn.person, "booking.chat_open.refused", arg)
            turn.say("booking.chat_not_yours")
            return
        chat = await turn.session.get(BookingChat, booking.id)
        resident = await turn.session.get(Person, booking.resident_id)
        if booking.status != "booked" or resident is None or (chat and chat.status != "open"):
            turn.say("booking.chat_stale")
            return
        tz = person_tz(turn.engine, turn.person)
        opens = as_utc(booking.starts_at) - self.rules.chat_opens_before
        if turn.now < opens:
            turn.say(
                "booking.chat_too_early",
                when=when_label(booking.starts_at, turn.lang, tz),
                opens=time_label(opens, turn.lang, tz),
            )
            return
        if chat is None and turn.now >= as_utc(booking.ends_at) + self.rules.chat_grace:
            turn.say("booking.chat_stale")
            return
        if chat is None:
            if resident.state in turn.engine.holding_states:
                turn.say("booking.chat_resident_busy", code=resident.case_code)
                return
            turn.session.add(
                BookingChat(
                    booking_id=booking.id,  # type: ignore[arg-type]
                    opened_at=turn.now,
                    close_at=as_utc(booking.ends_at) + self.rules.chat_grace,
                )
            )
            _audit(turn.session, turn.now, turn.person, "booking.chat_open", str(booking.id))
            turn.move(resident, RESIDENT, booking=booking.id)
            name = await _counselor_name(turn.engine, turn.session, booking, resident)
            turn.send_to(
                resident,
                _t(turn.engine, resident, "booking.chat_opened_resident", name=name),
                buttons=[[_end_button(turn.engine, resident, booking)]],
            )
        turn.goto(COUNSELOR, booking=booking.id)
        turn.say(
            "booking.chat_opened_counselor",
            code=resident.case_code,
            topic=BookingFlow._topic_text(turn.t, booking.topic),
            flag=turn.t("booking.flag_high_risk") if booking.high_risk else "",
            buttons=[[_end_button(turn.engine, turn.person, booking)]],
        )

    # While it lasts --------------------------------------------------------------------------

    async def _current(self, turn: Turn) -> Booking | None:
        """The booking of the open session this person's state points at; when that session
        is over (ended by the other side meanwhile), back to the menu, saying so."""
        booking_id = int(turn.data.get("booking") or 0)
        chat = await turn.session.get(BookingChat, booking_id)
        booking = await turn.session.get(Booking, booking_id)
        if chat is None or chat.status != "open" or booking is None:
            await self._leave(turn)
            return None
        return booking

    async def _leave(self, turn: Turn) -> None:
        """The session this state points at is over: back to the menu, saying so."""
        turn.goto("menu" if turn.onboarded else "limited")
        turn.say("booking.chat_over", buttons=[[turn.menu_button()]])

    async def prompt_resident(self, turn: Turn) -> None:
        """Remind the resident that they are in a session, and how to end it or get help."""
        booking = await self._current(turn)
        if booking is None:
            return
        name = await _counselor_name(turn.engine, turn.session, booking, turn.person)
        turn.say(
            "booking.chat_resident_active",
            name=name,
            buttons=[[_end_button(turn.engine, turn.person, booking)]],
        )

    async def prompt_counselor(self, turn: Turn) -> None:
        """Remind the counselor whom they are talking with, and how to end it."""
        booking = await self._current(turn)
        resident = await turn.session.get(Person, booking.resident_id) if booking else None
        if booking is None:
            return
        turn.say(
            "booking.chat_counselor_active",
            code=resident.case_code if resident else "—",
            buttons=[[_end_button(turn.engine, turn.person, booking)]],
        )

    async def from_resident(self, turn: Turn, text: str) -> None:
        """Pass the resident's words (already read for risk) to their counselor.

        Escalation calls this too when the words raised an alert, with ``text`` empty when
        the alert came from a button (SOS); the counselor then reads it flagged. A counselor
        on call who claimed the resident's case meanwhile reads along.
        """
        booking = await self._current(turn)
        counselor = await turn.session.get(Person, booking.counselor_id) if booking else None
        if booking is None or counselor is None:
            return
        code = turn.person.case_code
        if turn.risk_level < RiskLevel.HIGH:
            key, priority = "booking.chat_from_resident", Priority.REPLY
        elif text.strip():
            key, priority = "booking.chat_from_resident_alert", Priority.ESCALATION
        else:
            key, priority = "booking.chat_resident_sos", Priority.ESCALATION
        turn.send_to(
            counselor,
            _t(turn.engine, counselor, key, code=code, text=text),
            priority=priority,
            kind="relay",
        )
        case = await claimed_case(turn.session, turn.person)
        if case is not None and case.claimed_by != booking.counselor_id and text.strip():
            await relay_to_claimer(turn, case, text)

    async def from_counselor(self, turn: Turn, text: str) -> None:
        """Pass the counselor's words to the resident, signed with the counselor's name."""
        booking = await self._current(turn)
        resident = await turn.session.get(Person, booking.resident_id) if booking else None
        if booking is None or resident is None:
            return
        name = await _counselor_name(turn.engine, turn.session, booking, resident)
        turn.send_to(
            resident,
            _t(turn.engine, resident, "booking.chat_from_counselor", name=name, text=text),
            kind="relay",
        )

    async def resident_holds(self, turn: Turn, what: str) -> None:
        """A command or button from the resident during the session: /end ends it."""
        if what in END_WORDS:
            await self._end_held(turn, what)
            return
        await self.prompt_resident(turn)

    async def counselor_holds(self, turn: Turn, what: str) -> None:
        """A command or button from the counselor: /end ends it; staff commands still work."""
        if what in END_WORDS:
            await self._end_held(turn, what)
        elif not await staff_command_while_talking(turn, what):
            await self.prompt_counselor(turn)

    # Ending ------------------------------------------------------------------------------

    async def _end_held(self, turn: Turn, what: str) -> None:
        """/end or an End button during a session; an End button of an earlier one is stale."""
        booking_id = int(turn.data.get("booking") or 0)
        if what == "bchat.end":
            token = await turn.session.get(ButtonToken, turn.inbound.token[:32])
            if token is None or token.arg != str(booking_id):
                turn.say("booking.chat_old_button")
                await turn.prompt()
                return
        chat = await turn.session.get(BookingChat, booking_id)
        if chat is None or chat.status != "open":
            await self._leave(turn)
            return
        await self._end(turn, chat)

    async def end_button(self, turn: Turn, arg: str) -> None:
        """An End button pressed outside the session's state: it ends that session if open."""
        try:
            chat = await turn.session.get(BookingChat, int(arg))
        except ValueError:
            chat = None
        if chat is None or chat.status != "open" or not await _takes_part(turn, chat):
            turn.say("booking.chat_already_ended", buttons=[[turn.menu_button()]])
            return
        await self._end(turn, chat)

    async def end_command(self, turn: Turn, _args: str) -> None:
        """``/end`` outside a session's state: end the person's open session, if they have one."""
        found = next(iter(await _open_chats_of(turn.session, turn.person)), None)
        if found is None:
            turn.say("booking.chat_none_open", buttons=[[turn.menu_button()]])
            return
        await self._end(turn, found)

    async def _end(self, turn: Turn, chat: BookingChat) -> None:
        booking = await turn.session.get(Booking, chat.booking_id)
        by = "counselor" if booking and booking.counselor_id == turn.person.id else "resident"
        state = turn.person.state
        out = await end_chat(turn.session, turn.engine, chat, turn.now, by)
        if out is None:
            turn.say("booking.chat_already_ended", buttons=[[turn.menu_button()]])
            return
        if turn.person.state != state:
            turn.data = {}  # moved out of the session by end_chat
        _audit(turn.session, turn.now, turn.person, f"booking.chat_end.{by}", chat.booking_id)
        turn.out.extend(out)

    # Before the session is open ------------------------------------------------------------

    async def waiting(self, turn: Turn, _text: str) -> bool:
        """A resident writes before their chat session is open: say when it starts and how to
        get help now, never silence (the engine's free-text hook)."""
        if not turn.facts.get(BOOKED_CHAT, True):
            return False  # no chat session booked: no query for everyone else
        found = (
            await turn.session.exec(
                select(Booking, Counselor)
                .join(Counselor, col(Counselor.person_id) == col(Booking.counselor_id))
                .where(col(Booking.resident_id) == turn.person.id)
                .where(col(Booking.status) == "booked")
                .where(col(Counselor.meet) == "chat")
                .where(col(Booking.ends_at) > (turn.now - self.rules.chat_grace).astimezone(UTC))
                .order_by(col(Booking.starts_at))
            )
        ).first()
        if found is None or await turn.session.get(BookingChat, found[0].id) is not None:
            return False
        booking = found[0]
        tz = person_tz(turn.engine, turn.person)
        starts = as_utc(booking.starts_at)
        same_day = starts.astimezone(tz).date() == turn.now.astimezone(tz).date()
        when = time_label(starts, turn.lang, tz) if same_day else when_label(starts, turn.lang, tz)
        turn.say(
            "booking.chat_waiting" if turn.now < starts else "booking.chat_waiting_late",
            when=when,
            lines=hotline_text(turn, turn.site_or_default),
            buttons=[[turn.button("menu.sos", "sos")], [turn.menu_button()]],
        )
        if turn.now >= starts:
            await self._nudge_counselor(turn, booking)
        return True

    async def _nudge_counselor(self, turn: Turn, booking: Booking) -> None:
        """The session's time has come and the resident is writing: tell the counselor, with
        the button that opens it (at most once every few minutes, however much they write)."""
        last = turn.data.get(NUDGED_KEY)
        if isinstance(last, dict) and last.get("booking") == booking.id:
            since = turn.now - datetime.fromisoformat(str(last.get("at")))
            if since < NUDGE_EVERY:
                return
        counselor = await turn.session.get(Person, booking.counselor_id)
        if counselor is None:
            return
        lang = counselor.language or turn.engine.config.default_language
        code = turn.person.case_code
        turn.send_to(
            counselor,
            turn.engine.catalogs.t(
                lang,
                "booking.chat_resident_waiting",
                code=code,
                when=time_label(as_utc(booking.starts_at), lang, person_tz(turn.engine, counselor)),
            ),
            buttons=[[chat_start_button(turn.engine, lang, booking, code)]],
            kind="booking",
        )
        turn.data[NUDGED_KEY] = {"booking": booking.id, "at": turn.now.isoformat()}

    async def before_erasure(self, turn: Turn) -> None:
        """A person about to be erased: any session of theirs ends without a word to them."""
        for chat in await _open_chats_of(turn.session, turn.person):
            await end_chat(turn.session, turn.engine, chat, turn.now, "erased")


# Ending, from a turn or from the scheduler -----------------------------------------------------


async def end_chat(
    session: AsyncSession,
    engine: ConversationEngine,
    chat: BookingChat,
    now: datetime,
    by: str,
    *,
    lock: bool = False,
) -> list[Outbound] | None:
    """End an open session: one UPDATE decides (None when it had already ended); both people
    leave the session's states; the messages saying so are returned for the caller to queue.

    ``lock`` (the scheduler) takes both people's rows first, so a turn of theirs in flight
    finishes before their state is changed.
    """
    result = await session.exec(
        update(BookingChat)
        .where(col(BookingChat.booking_id) == chat.booking_id, col(BookingChat.status) == "open")
        .values(status="ended", ended_at=now, ended_by=by)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:
        return None
    booking = await session.get(Booking, chat.booking_id)
    if booking is None:
        return []
    resident = await _person(session, engine, booking.resident_id, lock)
    counselor = await _person(session, engine, booking.counselor_id, lock)
    for person, state in ((resident, RESIDENT), (counselor, COUNSELOR)):
        if person is not None and person.state == state:
            if json.loads(person.state_data or "{}").get("booking") == booking.id:
                back = "menu" if person.consent_version is not None else "limited"
                _move(session, person, back)
    if by == "erased":
        return []
    out: list[Outbound] = []
    t = engine.catalogs.t
    if resident is not None:
        lang = resident.language or engine.config.default_language
        name = await _counselor_name(engine, session, booking, resident)
        out.append(
            _to(
                resident,
                t(lang, f"booking.chat_ended_resident.{by}", name=name),
                [
                    [Button(t(lang, "booking.button_book_again"), "book.start")],
                    [Button(t(lang, "button.menu"), "menu")],
                ],
            )
        )
    if counselor is not None:
        lang = counselor.language or engine.config.default_language
        code = resident.case_code if resident else "—"
        buttons = []
        if booking.status == "booked":
            buttons.append(_mark_buttons(lambda key: t(lang, key), booking, code))
        why = t(lang, f"booking.chat_why.{by}")
        text = t(lang, "booking.chat_ended_counselor", code=code, why=why)
        out.append(_to(counselor, text, buttons))
    return out


async def close_due_chats(session: AsyncSession, engine: ConversationEngine, now: datetime) -> int:
    """End every open session whose ``close_at`` has passed; return how many were ended."""
    query = (
        select(BookingChat)
        .where(col(BookingChat.status) == "open")
        .where(col(BookingChat.close_at) <= now.astimezone(UTC))
        .order_by(col(BookingChat.close_at))
        .limit(100)
    )
    if not engine.db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    due = (await session.exec(query)).all()
    out: list[Outbound] = []
    ended = 0
    for chat in due:
        messages = await end_chat(session, engine, chat, now, "timeout", lock=True)
        if messages is None:
            continue
        ended += 1
        out.extend(messages)
        _audit(session, now, None, "booking.chat_end.timeout", chat.booking_id)
    await queue(session, out, now)
    return ended


async def sweep_chats(engine: ConversationEngine) -> int:
    """The scheduler's job: close the sessions nobody ended, in one transaction."""
    return await engine.sweep(lambda session, now: close_due_chats(session, engine, now))


# Small helpers ---------------------------------------------------------------------------------


async def _counselor_name(
    engine: ConversationEngine, session: AsyncSession, booking: Booking, reader: Person
) -> str:
    """What the resident calls the counselor: the display name, else "your counselor"."""
    profile = await session.get(Counselor, booking.counselor_id)
    if profile is not None and profile.display_name:
        return profile.display_name
    return _t(engine, reader, "booking.chat_your_counselor")


def _t(engine: ConversationEngine, reader: Person, key: str, /, **params: object) -> str:
    return engine.catalogs.t(reader.language or engine.config.default_language, key, **params)


def _end_button(engine: ConversationEngine, reader: Person, booking: Booking) -> Button:
    return Button(_t(engine, reader, "booking.button_chat_end"), "bchat.end", str(booking.id))


def _to(person: Person, text: str, buttons: list[list[Button]]) -> Outbound:
    """A message about the session to one of its people (buttons bound to their new step)."""
    where = (person.channel, person.chat_id, text, buttons, Priority.REPLY, "booking", person.id)
    return Outbound(*where, seq_holder=person)


async def _person(
    session: AsyncSession, engine: ConversationEngine, person_id: int, lock: bool
) -> Person | None:
    if not lock or engine.db.is_sqlite:
        return await session.get(Person, person_id)
    query = (
        select(Person)
        .where(col(Person.id) == person_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.exec(query)).first()


def _move(session: AsyncSession, person: Person, state: str) -> None:
    person.state = state
    person.state_data = "{}"
    person.state_seq += 1
    session.add(person)


async def _takes_part(turn: Turn, chat: BookingChat) -> bool:
    booking = await turn.session.get(Booking, chat.booking_id)
    return booking is not None and turn.person.id in (booking.resident_id, booking.counselor_id)


async def _open_chats_of(session: AsyncSession, person: Person) -> list[BookingChat]:
    """The open sessions a person takes part in, as resident or as counselor."""
    found = await session.exec(
        select(BookingChat)
        .join(Booking, col(Booking.id) == col(BookingChat.booking_id))
        .where(col(BookingChat.status) == "open")
        .where(or_(col(Booking.resident_id) == person.id, col(Booking.counselor_id) == person.id))
    )
    return list(found.all())


def _audit(
    session: AsyncSession, now: datetime, actor: Person | None, action: str, booking: object
) -> None:
    """An audit row about a session; ``actor`` None is the scheduler."""
    who = (actor.id, actor.case_code) if actor is not None else (None, "scheduler")
    subject = f"booking {booking}"[:64]
    session.add(
        AuditLog(at=now, actor_person_id=who[0], actor=who[1], action=action, subject=subject)
    )
