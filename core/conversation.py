"""The conversation engine: one inbound event in, state change and replies out, one commit.

Flows register commands, button actions and per-state text handlers on the engine; the engine
looks after idempotency, the person, button tokens, the state sequence and the outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, bindparam
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.access import Action, Role, granted_roles, may, roles_from
from core.bulk import insert_returning
from core.clock import Clock
from core.db import Database, DatabaseUnavailable
from core.i18n import Catalogs
from core.messages import Button, HandleResult, Inbound, InboundKind, Outbound, Priority
from core.models import ButtonToken, InboundSeen, Person, WebTranscript
from core.outbox import queue, queue_many
from core.risk import RiskLevel, RiskSignal
from core.safety import HotlineResponder, RiskResponder
from core.sites import Site, SiteDirectory

log = logging.getLogger(__name__)

CASE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
MAX_STORED_TEXT = 20_000

Handler = Callable[["Turn", str], Awaitable[None]]


@dataclass
class ActionSpec:
    """A button action: its handler, and whether old buttons for it stay valid."""

    handler: Handler
    any_step: bool = False


@dataclass(frozen=True)
class MenuEntry:
    """One main-menu entry of a feature that exists; hidden when ``visible`` says so."""

    key: str
    label_key: str
    action: str
    visible: Callable[[Person, set[Role]], bool] = lambda _p, _r: True


class _Waiting(NamedTuple):
    """An event waiting for its turn (``ConversationEngine.handle``)."""

    inbound: Inbound
    future: asyncio.Future[HandleResult]
    urgent: bool


@dataclass(frozen=True)
class TriageVerdict:
    """What the triage hook found in a message."""

    signal: RiskSignal | None
    level: RiskLevel = RiskLevel.NONE


TriageHook = Callable[["Turn", str], TriageVerdict]


@dataclass(frozen=True)
class _Step:
    """The step a turn's buttons belong to (a ``seq_holder`` for ``queue_many``)."""

    state_seq: int


@dataclass
class EngineConfig:
    """Deployment facts the engine needs."""

    default_language: str = "zh_Hans"
    languages: tuple[str, ...] = ("zh_Hans", "en")
    admins: dict[str, set[str]] = field(default_factory=dict)
    staff_chat_id: str = ""
    backup_chat_id: str = ""
    repage_minutes: float = 2.0
    supervisor_minutes: float = 5.0


class Turn:
    """One inbound event being handled: the person, their state, and what to send back."""

    def __init__(
        self,
        engine: ConversationEngine,
        session: AsyncSession,
        person: Person,
        inbound: Inbound,
        now: datetime,
        roles: set[Role],
        facts: dict[str, bool] | None = None,
    ) -> None:
        self.engine = engine
        self.session = session
        self.person = person
        self.inbound = inbound
        self.now = now
        self.roles = roles
        #: What the engine's person facts said when the turn began (see ``person_fact``).
        self.facts = facts or {}
        self.out: list[Outbound] = []
        self.notice: str | None = None
        self.state_changed = False
        self.risk_level = RiskLevel.NONE
        self.erased = False
        self.data: dict[str, Any] = json.loads(person.state_data or "{}")

    @property
    def lang(self) -> str:
        """The person's language (the deployment default until they choose)."""
        return self.person.language or self.engine.config.default_language

    @property
    def site(self) -> Site | None:
        """The person's site, if chosen and still configured."""
        return self.engine.sites.get(self.person.site_code)

    @property
    def site_or_default(self) -> Site:
        """The person's site, or the first configured site for its crisis lines."""
        return self.site or self.engine.sites.default()

    @property
    def onboarded(self) -> bool:
        """Whether onboarding is complete (consent given and the questions answered)."""
        return self.person.consent_version is not None and self.person.age_band is not None

    def t(self, key: str, /, **params: object) -> str:
        """Translate ``key`` into the person's language."""
        return self.engine.catalogs.t(self.lang, key, **params)

    def may(self, action: Action) -> bool:
        """Whether this person may do ``action``."""
        return may(self.roles, action)

    def button(self, key: str, action: str, arg: str = "", **params: object) -> Button:
        """A button labelled with catalog text ``key`` that asks for ``action``."""
        return Button(self.t(key, **params), action, arg)

    def menu_button(self) -> Button:
        """The button back to the main menu."""
        return self.button("button.menu", "menu")

    def say(
        self,
        key: str,
        /,
        *,
        buttons: list[list[Button]] | None = None,
        priority: Priority = Priority.REPLY,
        kind: str = "reply",
        **params: object,
    ) -> None:
        """Queue catalog text ``key`` to this person."""
        self.send(self.t(key, **params), buttons=buttons, priority=priority, kind=kind)

    def send(
        self,
        text: str,
        *,
        buttons: list[list[Button]] | None = None,
        priority: Priority = Priority.REPLY,
        kind: str = "reply",
        document: tuple[str, str] | None = None,
    ) -> None:
        """Queue already-translated text to this person, in the chat they wrote from."""
        in_group = self.inbound.chat_kind != "private" and self.inbound.channel == "telegram"
        self.out.append(
            Outbound(
                channel=self.person.channel,
                chat_id=self.inbound.chat_id if in_group else self.person.chat_id,
                chat_kind="group" if in_group else "private",
                text=text,
                buttons=buttons or [],
                priority=priority,
                kind=kind,
                person_id=self.person.id,
                document=document,
            )
        )

    def send_to(
        self,
        person: Person,
        text: str,
        *,
        buttons: list[list[Button]] | None = None,
        priority: Priority = Priority.REPLY,
        kind: str = "reply",
    ) -> None:
        """Queue already-translated text to another person's private chat."""
        self.out.append(
            Outbound(
                channel=person.channel,
                chat_id=person.chat_id,
                text=text,
                buttons=buttons or [],
                priority=priority,
                kind=kind,
                person_id=person.id,
                seq_holder=person,
            )
        )

    def move(self, person: Person, state: str, **data: Any) -> None:
        """Move another person's conversation to ``state`` (their old buttons go stale)."""
        person.state = state
        person.state_data = json.dumps(data, ensure_ascii=False)
        person.state_seq += 1
        self.session.add(person)

    def to_staff(
        self,
        text: str,
        *,
        priority: Priority = Priority.ESCALATION,
        buttons: list[list[Button]] | None = None,
        kind: str = "staff",
    ) -> bool:
        """Queue a message to the staff chat; False when no staff chat is configured."""
        if not self.engine.config.staff_chat_id:
            return False
        self.out.append(
            Outbound(
                channel="telegram",
                chat_id=self.engine.config.staff_chat_id,
                chat_kind="group",
                text=text,
                buttons=buttons or [],
                priority=priority,
                kind=kind,
                person_id=None,
            )
        )
        return True

    def goto(self, state: str, **data: Any) -> None:
        """Move the conversation to ``state`` with fresh step data; older buttons go stale."""
        self.person.state = state
        self.data = dict(data)
        self.state_changed = True

    async def prompt(self) -> None:
        """Show the current step again (its question and buttons)."""
        await self.engine.prompt(self)


class ConversationEngine:
    """Handles inbound events: idempotent, one transaction each, replies via the outbox."""

    def __init__(
        self,
        db: Database,
        catalogs: Catalogs,
        sites: SiteDirectory,
        clock: Clock,
        config: EngineConfig,
        *,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.db = db
        self.catalogs = catalogs
        self.sites = sites
        self.clock = clock
        self.config = config
        self.notify = notify or (lambda _channel: None)
        self.commands: dict[str, Handler] = {}
        self.actions: dict[str, ActionSpec] = {}
        self.text_handlers: dict[str, Handler] = {}
        self.prompts: dict[str, Callable[[Turn], Awaitable[None]]] = {}
        self.menu: list[MenuEntry] = []
        self.open_commands: set[str] = set()
        #: States in which a human holds the conversation: the bot's own menus stay away.
        self.holding_states: dict[str, Handler] = {}
        #: States whose typed text is not read for the typist's own risk (a counselor's relay).
        self.untriaged_states: set[str] = set()
        #: Commands that work even while a human holds the conversation.
        self.always_commands: set[str] = {"sos"}
        #: Commands handled before the other turns waiting (``urgent_text`` for commands).
        self.urgent_commands: set[str] = {"sos"}
        #: Asks the staff chat whether a platform user is a member (set by the Telegram adapter).
        self.staff_member: Callable[[str, str], Awaitable[bool]] | None = None
        self.triage: TriageHook | None = None
        self.risk: RiskResponder = HotlineResponder()
        self.after_turn: list[Callable[[Turn], Awaitable[None]]] = []
        #: Feature modules add what they keep about a person to the data export.
        self.export_hooks: list[Callable[[AsyncSession, Person], Awaitable[tuple[str, Any]]]] = []
        #: Feature modules say why erasure must wait (a catalog key), or None.
        self.erasure_blockers: list[Callable[[AsyncSession, Person], Awaitable[str | None]]] = []
        #: Feature modules settle what involves others just before the turn's person is erased
        #: (a booking cancelled, its counselor told); what they queue to others is sent.
        self.erasure_hooks: list[Callable[[Turn], Awaitable[None]]] = []
        #: Feature modules may answer text typed outside any step first (True: answered), such
        #: as a resident writing before their booked chat session is open.
        self.free_text_hooks: list[Callable[[Turn, str], Awaitable[bool]]] = []
        #: Feature modules add a line about a person to staff cards (person id, staff language).
        self.case_lines: list[Callable[[AsyncSession, int, str], Awaitable[str]]] = []
        #: Reads text written in a group chat (a support room); nothing is ever said there.
        self.group_messages: Callable[[Inbound], Awaitable[HandleResult]] | None = None
        #: Most turns handled together in one transaction (1: each in its own).
        self.batch_turns = 32
        #: Whether a message reads as high risk on its own (without what the bot last asked):
        #: such turns, and /sos, go before the others waiting, in a batch of their own.
        self.urgent_text: Callable[[str], bool] | None = None
        self._waiting: list[_Waiting] = []
        self._draining: asyncio.Task[None] | None = None
        #: Yes/no facts about a person read with the person in each turn's first query, so that
        #: a hook that matters for few people (a booked chat session, a missing check-in plan)
        #: costs the others no query of its own.
        self.person_facts: dict[str, ColumnElement[bool]] = {}
        self._person_query: Select[*tuple[Any, ...]] | None = None

    # Registration -----------------------------------------------------------------------

    def command(self, name: str, handler: Handler, *, before_onboarding: bool = False) -> None:
        """Register ``/name``; ``before_onboarding`` lets it run before onboarding ends."""
        self.commands[name] = handler
        if before_onboarding:
            self.open_commands.add(name)

    def person_fact(self, name: str, clause: ColumnElement[bool]) -> None:
        """Read ``clause`` (an EXISTS correlated to ``Person``) with the person each turn, as
        ``turn.facts[name]``; False for someone new."""
        self.person_facts[name] = clause
        self._person_query = None

    def action(self, name: str, handler: Handler, *, any_step: bool = False) -> None:
        """Register a button action; ``any_step`` keeps its old buttons valid."""
        self.actions[name] = ActionSpec(handler, any_step)

    def state(
        self,
        name: str,
        prompt: Callable[[Turn], Awaitable[None]],
        on_text: Handler | None = None,
        *,
        holding: Handler | None = None,
        triage: bool = True,
    ) -> None:
        """Register a conversation state: how to show it, and what typed text does there.

        ``holding`` marks a state in which a human holds the conversation: commands and menu
        buttons are answered by it instead of the bot's flows. ``triage=False`` skips reading
        the typist's text for their own risk (a counselor relaying to a resident).
        """
        self.prompts[name] = prompt
        if on_text is not None:
            self.text_handlers[name] = on_text
        if holding is not None:
            self.holding_states[name] = holding
        if not triage:
            self.untriaged_states.add(name)

    # Handling ----------------------------------------------------------------------------

    async def handle(self, inbound: Inbound) -> HandleResult:
        """Handle one inbound event and wake delivery.

        Events that arrive while others are being handled wait, and are then handled together,
        one after the other, in one transaction (at most ``batch_turns``, never two of one
        person): under load a turn costs its own work, not a transaction's. Should one of them
        fail, each is handled again alone, so one person's trouble never holds up another's.
        """
        if inbound.chat_kind in ("group", "supergroup") and inbound.kind == InboundKind.TEXT:
            # Chatter in a group is not a conversation with the bot: only a room reads it.
            if self.group_messages is None:
                return HandleResult()
            return await self.group_messages(inbound)
        if self.batch_turns <= 1:
            return await self._handle_alone(inbound)
        future: asyncio.Future[HandleResult] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(inbound, future, self._urgent(inbound)))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _handle_alone(self, inbound: Inbound) -> HandleResult:
        for attempt in (1, 2):
            try:
                [result] = await self.db.run(lambda s: self._handle_many(s, [inbound]))
            except IntegrityError:
                # Another process wrote the same row at the same moment (the first message of
                # someone new, in two web processes): once more, and it is there to be read.
                if attempt == 2:
                    log.exception("update %s conflicts twice; dropped", inbound.update_key)
                    return HandleResult(duplicate=True)
            else:
                self._woken([(inbound, result)])
                return result
        raise AssertionError("unreachable")

    def _woken(self, handled: list[tuple[Inbound, HandleResult]]) -> None:
        channels = {i.channel for i, r in handled if not r.duplicate}
        if channels and self.config.staff_chat_id:
            channels.add("telegram")
        for channel in sorted(channels):
            self.notify(channel)

    def _urgent(self, inbound: Inbound) -> bool:
        if inbound.kind == InboundKind.COMMAND:
            return inbound.command in self.urgent_commands
        return (
            inbound.kind in (InboundKind.TEXT, InboundKind.EDITED)
            and self.urgent_text is not None
            and bool(inbound.text.strip())
            and self.urgent_text(inbound.text)
        )

    def _next_batch(self) -> list[_Waiting]:
        """Take the next batch from what waits: urgent turns first, in a batch of their own.

        Never two events of one person in a batch, and a person's events in the order they
        came: an urgent event waits for its person's earlier ones like any other.
        """
        batch = self._take(urgent_only=True) if any(i.urgent for i in self._waiting) else []
        return batch or self._take(urgent_only=False)

    def _take(self, *, urgent_only: bool) -> list[_Waiting]:
        """Take up to ``batch_turns`` waiting events (only urgent ones, if so told), at most one
        of each person, and each person's first waiting event only; the rest wait on."""
        batch: list[_Waiting] = []
        later: list[_Waiting] = []
        people: set[tuple[str, str]] = set()
        for item in self._waiting:
            who = (item.inbound.channel, item.inbound.external_id)
            if (
                (item.urgent or not urgent_only)
                and who not in people
                and len(batch) < self.batch_turns
            ):
                batch.append(item)
            else:  # a person's next event waits for the next batch, in order
                later.append(item)
            people.add(who)
        if batch:
            self._waiting = later
        return batch

    async def _drain(self) -> None:
        """Handle what waits, a batch at a time, until nothing does."""
        while self._waiting:
            batch = self._next_batch()
            try:
                await self._handle_batch(batch)
            except BaseException as exc:  # never leave a caller waiting for an answer
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    for item in self._waiting:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    self._waiting = []
                    raise

    async def _handle_batch(self, batch: list[_Waiting]) -> None:
        inbounds = [item.inbound for item in batch]
        if len(batch) > 1:
            try:
                results = await self.db.run(lambda session: self._handle_many(session, inbounds))
            except DatabaseUnavailable:
                raise
            except Exception:
                log.warning("a batch of %d turns failed; handling each alone", len(batch))
            else:
                for item, result in zip(batch, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(result)
                self._woken(list(zip(inbounds, results, strict=True)))
                return
        for inbound, future, _urgent in batch:
            try:
                result = await self._handle_alone(inbound)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    async def _handle_many(
        self, session: AsyncSession, inbounds: list[Inbound]
    ) -> list[HandleResult]:
        """Handle ``inbounds`` (of different people) in order, in the session's transaction."""
        now = self.clock.now()
        fresh = await self._fresh(session, inbounds, now)
        found = await self._people(
            session, [i for i, new in zip(inbounds, fresh, strict=True) if new]
        )
        results: list[HandleResult] = []
        out: list[Outbound] = []
        for inbound, new in zip(inbounds, fresh, strict=True):
            if not new:
                results.append(HandleResult(duplicate=True))
                continue
            known = found.get((inbound.channel, inbound.external_id))
            if known is None:
                person = await self._new_person(session, inbound, now)
                granted, facts = None, dict.fromkeys(self.person_facts, False)
            else:
                person, granted, facts = known
                self._seen(person, inbound, now)
            roles = roles_from(granted, person, self.config.admins.get(inbound.channel, set()))
            turn = Turn(self, session, person, inbound, now, roles, facts)
            if inbound.channel == "web" and inbound.kind in (InboundKind.TEXT, InboundKind.COMMAND):
                if inbound.text.strip():  # what the person typed, so a reload shows it again
                    session.add(
                        WebTranscript(
                            chat_id=person.chat_id,
                            direction="in",
                            text=inbound.text[:MAX_STORED_TEXT],
                            created_at=now,
                        )
                    )
            await self._dispatch(turn)
            for hook in self.after_turn:
                await hook(turn)
            out.extend(await self._finish(turn))
            results.append(HandleResult(notice=turn.notice, person_id=person.id))
        # Every turn's replies in one go, in the order of the turns.
        await queue_many(session, out, now)
        return results

    async def _fresh(
        self, session: AsyncSession, inbounds: list[Inbound], now: datetime
    ) -> list[bool]:
        """Which of ``inbounds`` were not handled before (their update keys are recorded).

        On PostgreSQL a key another transaction is recording waits for that transaction, so of
        two copies at the same moment exactly one is fresh.
        """
        keys = [(i.channel, i.update_key[:96]) for i in inbounds if i.update_key]
        new: set[tuple[str, str]] = set()
        if keys:
            rows = await insert_returning(
                session,
                InboundSeen.__table__,  # type: ignore[attr-defined]
                ("channel", "key"),
                keys,
                ("channel", "key"),
                same={"seen_at": now},
                skip_conflicts_on=("channel", "key"),
            )
            new = {(str(c), str(k)) for c, k in rows}
        fresh = []
        for inbound in inbounds:
            if not inbound.update_key:
                fresh.append(True)
                continue
            key = (inbound.channel, inbound.update_key[:96])
            fresh.append(key in new)
            new.discard(key)  # a second copy in the same batch is not fresh
        return fresh

    def person_query(self) -> Select[*tuple[Any, ...]]:
        """People of one channel, with their granted roles and facts (built once, bound with
        ``channel`` and the list ``external_ids``)."""
        if self._person_query is None:
            names = list(self.person_facts)
            query = (
                sa_select(
                    Person,
                    granted_roles(),
                    *(self.person_facts[n].label(f"fact_{i}") for i, n in enumerate(names)),
                )
                .where(col(Person.channel) == bindparam("channel"))
                .where(col(Person.external_id).in_(bindparam("external_ids", expanding=True)))
                .order_by(col(Person.id))
            )
            if not self.db.is_sqlite:
                # Two events of one person (a double tap) are handled one after the other;
                # people are locked in the order of their ids.
                query = query.with_for_update(of=Person)
            self._person_query = query
        return self._person_query

    async def _people(
        self, session: AsyncSession, inbounds: list[Inbound]
    ) -> dict[tuple[str, str], tuple[Person, str | None, dict[str, bool]]]:
        """The known people of ``inbounds``, with their granted roles and facts."""
        by_channel: dict[str, list[str]] = {}
        for inbound in inbounds:
            by_channel.setdefault(inbound.channel, []).append(inbound.external_id)
        found: dict[tuple[str, str], tuple[Person, str | None, dict[str, bool]]] = {}
        for channel, external_ids in by_channel.items():
            rows = await session.execute(
                self.person_query(), {"channel": channel, "external_ids": external_ids}
            )
            for row in rows:
                person = row[0]
                facts = {n: bool(v) for n, v in zip(self.person_facts, row[2:], strict=True)}
                found[(channel, person.external_id)] = (person, row[1], facts)
        return found

    @staticmethod
    def _seen(person: Person, inbound: Inbound, now: datetime) -> None:
        person.last_seen_at = now
        person.blocked_at = None
        if person.chat_id != inbound.chat_id and inbound.chat_kind == "private":
            person.chat_id = inbound.chat_id

    async def _new_person(self, session: AsyncSession, inbound: Inbound, now: datetime) -> Person:
        person = Person(
            channel=inbound.channel,
            external_id=inbound.external_id,
            # Someone first seen in a group gets replies in their private chat, whose id on
            # Telegram is their user id.
            chat_id=inbound.chat_id if inbound.chat_kind == "private" else inbound.external_id,
            case_code=await self._new_case_code(session),
            language=guess_language(inbound.language_hint, self.config),
            created_at=now,
            last_seen_at=now,
        )
        session.add(person)
        await session.flush()
        return person

    async def _new_case_code(self, session: AsyncSession) -> str:
        for length in (4, 4, 4, 5, 5, 6, 6, 8):
            code = "R-" + "".join(secrets.choice(CASE_ALPHABET) for _ in range(length))
            taken = await session.exec(select(Person.id).where(Person.case_code == code))
            if taken.first() is None:
                return code
        raise RuntimeError("could not find a free case code")

    async def _dispatch(self, turn: Turn) -> None:
        inbound = turn.inbound
        if inbound.kind == InboundKind.BUTTON:
            await self._button(turn)
        elif inbound.kind == InboundKind.COMMAND:
            await self._command(turn)
        elif inbound.kind == InboundKind.TEXT:
            await self._text(turn)
        elif inbound.kind == InboundKind.EDITED:
            if not await self._read_for_risk(turn, inbound.text):
                turn.say("input.edited")
        else:
            await self.note_then_prompt(turn, "input.media")

    async def _button(self, turn: Turn) -> None:
        token = await turn.session.get(ButtonToken, turn.inbound.token[:32])
        staff_button = token is not None and token.person_id is None
        if token is None or (not staff_button and token.person_id != turn.person.id):
            # Unknown or someone else's: never reveal which, never act on it.
            turn.notice = turn.t("input.button_invalid")
            turn.say("input.button_invalid")
            await self.prompt(turn)
            return
        spec = self.actions.get(token.action)
        if spec is None:
            turn.notice = turn.t("input.button_invalid")
            await self.prompt(turn)
            return
        holding = self.holding_states.get(turn.person.state)
        if holding is not None and not staff_button and token.action not in self.always_commands:
            await holding(turn, token.action)
            return
        if not staff_button and not spec.any_step and token.state_seq != turn.person.state_seq:
            turn.notice = turn.t("input.button_stale")
            turn.say("input.button_stale")
            await self.prompt(turn)
            return
        await spec.handler(turn, token.arg)

    async def _command(self, turn: Turn) -> None:
        name = turn.inbound.command.lower()
        handler = self.commands.get(name)
        if handler is None:
            await self.note_then_prompt(turn, "input.unknown_command", command=name[:32])
            return
        holding = self.holding_states.get(turn.person.state)
        if holding is not None and name not in self.always_commands:
            await holding(turn, name)
            return
        if not turn.onboarded and name not in self.open_commands:
            turn.say("onboarding.finish_first")
            await self.prompt(turn)
            return
        await handler(turn, turn.inbound.args)

    async def _text(self, turn: Turn) -> None:
        text = turn.inbound.text
        if await self._read_for_risk(turn, text):
            return
        if not text.strip():
            await self.note_then_prompt(turn, "input.empty")
            return
        handler = self.text_handlers.get(turn.person.state)
        if handler is not None:
            await handler(turn, text)
            return
        if turn.risk_level < RiskLevel.MODERATE:
            for answer in self.free_text_hooks:
                if await answer(turn, text):
                    return
            await self.note_then_prompt(turn, "input.free_text")

    async def _read_for_risk(self, turn: Turn, text: str) -> bool:
        """Run triage on a message; True when a high-risk answer replaced the normal reply."""
        if self.triage is None or not text.strip() or turn.person.state in self.untriaged_states:
            return False
        verdict = self.triage(turn, text)
        turn.risk_level = verdict.level
        if verdict.signal is None or verdict.signal.level < RiskLevel.MODERATE:
            return False
        await self.risk.respond(turn, verdict.signal, text)
        return verdict.signal.level >= RiskLevel.HIGH

    async def sweep(self, due: Callable[[AsyncSession, datetime], Awaitable[int]]) -> int:
        """Run a scheduler sweep in one transaction at "now"; wake delivery if it queued."""
        now = self.clock.now()
        count = await self.db.run(lambda session: due(session, now))
        if count:
            self.notify("telegram")
            self.notify("web")
        return count

    async def raise_signal(self, turn: Turn, signal: RiskSignal, excerpt: str = "") -> None:
        """Answer a risk signal from any source (SOS, an instrument, a staff report)."""
        turn.risk_level = max(turn.risk_level, signal.level)
        await self.risk.respond(turn, signal, excerpt)

    async def note_then_prompt(self, turn: Turn, key: str, /, **params: object) -> None:
        """Say ``key`` (why the input was not taken) and show the current step again, as one
        message when the step is one message: the note above the step's text and buttons
        ("you can also choose below" with the choices right under it)."""
        before = len(turn.out)
        turn.send(turn.t(key, **params))
        await self.prompt(turn)
        if len(turn.out) != before + 2:
            return
        note, step = turn.out[before], turn.out[before + 1]
        if (
            not note.buttons
            and step.document is None
            and (note.channel, note.chat_id, note.priority, note.kind)
            == (step.channel, step.chat_id, step.priority, step.kind)
        ):
            step.text = f"{note.text}\n\n{step.text}"
            del turn.out[before]

    async def prompt(self, turn: Turn) -> None:
        """Show the person's current step again."""
        prompt = self.prompts.get(turn.person.state) or self.prompts.get("menu")
        if prompt is not None:
            await prompt(turn)

    async def _finish(self, turn: Turn) -> list[Outbound]:
        """Settle the person's step; return the replies to queue (bound to that step)."""
        if turn.erased:
            await queue(turn.session, turn.out, turn.now)
            return []
        person = turn.person
        if turn.state_changed:
            person.state_seq += 1
        person.state_data = json.dumps(turn.data, ensure_ascii=False)
        turn.session.add(person)
        step = _Step(person.state_seq)  # as it is now, whatever a later turn does to it
        for message in turn.out:
            if message.seq_holder is None:
                message.seq_holder = step
        return turn.out

    def visible_menu(self, turn: Turn) -> list[MenuEntry]:
        """The main-menu entries this person sees."""
        return [e for e in self.menu if e.visible(turn.person, turn.roles)]


def guess_language(hint: str | None, config: EngineConfig) -> str:
    """Guess a language from the platform's hint ("zh-hans", "en-GB", "zh-CN,zh;q=0.9")."""
    if hint:
        first = hint.split(",")[0].strip().lower()
        if first.startswith("zh"):
            return "zh_Hans" if "zh_Hans" in config.languages else config.default_language
        if first.startswith("en") and "en" in config.languages:
            return "en"
    return config.default_language
