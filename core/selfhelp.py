"""The self-help library: psychoeducation and guided exercises, as Markdown data files.

Topics live in ``core/data/selfhelp/<language>/<topic>.md`` (see the README there). A guided
exercise is split by ``+++ pause N`` lines into steps; each step is an outbox row due N seconds
after the one before, so the pauses survive a restart and nothing sleeps in memory. The
library has a menu entry, and check-ins and questionnaire results point into it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from sqlmodel import col

from core.access import Role
from core.conversation import ConversationEngine, MenuEntry, Turn
from core.messages import TELEGRAM_TEXT_LIMIT, Button, Outbound, Priority
from core.models import OutboxMessage, Person
from core.outbox import queue
from core.risk import RiskLevel

PAUSE_LINE = re.compile(r"^\+\+\+\s*pause\s+(\d{1,3})\s*s?\s*$", re.MULTILINE)
ORDER_LINE = re.compile(r"^order:\s*(\d+)\s*$")
STAFF_FIRST = ("frontline",)


class SelfHelpError(ValueError):
    """The library's files cannot be used; the message names the file."""


@dataclass(frozen=True)
class Step:
    """One message of a topic, sent ``pause`` seconds after the step before it."""

    pause: int
    text: str


@dataclass(frozen=True)
class Topic:
    """One topic in one language: its title and its steps."""

    id: str
    title: str
    order: int
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class SelfHelpLibrary:
    """Every topic in every language."""

    topics: dict[str, dict[str, Topic]]

    @classmethod
    def load(cls, folder: Path, languages: tuple[str, ...]) -> SelfHelpLibrary:
        """Read every ``<language>/<topic>.md``; each topic must exist in every language."""
        topics: dict[str, dict[str, Topic]] = {}
        for lang in languages:
            for path in sorted((folder / lang).glob("*.md")):
                topics.setdefault(path.stem, {})[lang] = read_topic(path)
        if not topics:
            raise SelfHelpError(f"The self-help folder {folder} has no topics.")
        for topic_id, per_lang in topics.items():
            missing = [lang for lang in languages if lang not in per_lang]
            if missing:
                raise SelfHelpError(
                    f"The self-help topic {topic_id!r} is missing in {', '.join(missing)}."
                )
        return cls(topics)

    def ids(self, *, staff: bool = False) -> list[str]:
        """Topic ids in menu order (staff see the frontline topic first)."""
        order = sorted(self.topics, key=lambda t: (next(iter(self.topics[t].values())).order, t))
        if staff:
            order = [t for t in STAFF_FIRST if t in self.topics] + [
                t for t in order if t not in STAFF_FIRST
            ]
        return order

    def get(self, topic_id: str, lang: str) -> Topic | None:
        """The topic in ``lang`` (or in any language when ``lang`` lacks it), or None."""
        per_lang = self.topics.get(topic_id)
        if not per_lang:
            return None
        return per_lang.get(lang) or next(iter(per_lang.values()))


def bundled_dir() -> Path:
    """The self-help content shipped with Anxin."""
    return Path(__file__).parent / "data" / "selfhelp"


def read_topic(path: Path) -> Topic:
    """Read one topic file: a ``# Title`` line, optional ``order: N``, then the steps."""
    text = path.read_text(encoding="utf-8").strip()
    first, _, rest = text.partition("\n")
    if not first.startswith("# "):
        raise SelfHelpError(f"The self-help file {path} must start with a '# Title' line.")
    order = 100
    lines = rest.lstrip("\n").split("\n", 1)
    found = ORDER_LINE.match(lines[0].strip()) if lines else None
    if found:
        order = int(found.group(1))
        rest = lines[1] if len(lines) > 1 else ""
    pieces = PAUSE_LINE.split(rest)
    steps = [Step(0, pieces[0].strip())]
    for index in range(1, len(pieces), 2):
        steps.append(Step(int(pieces[index]), pieces[index + 1].strip()))
    for step in steps:
        if not step.text or len(step.text) > TELEGRAM_TEXT_LIMIT - 200:
            raise SelfHelpError(
                f"A step in {path} is empty or longer than {TELEGRAM_TEXT_LIMIT - 200} characters."
            )
    return Topic(path.stem, first[2:].strip(), order, tuple(steps))


def _is_staff(person: Person, roles: set[Role]) -> bool:
    return person.relation == "site_staff" or bool(roles - {Role.RESIDENT})


def register(engine: ConversationEngine, library: SelfHelpLibrary) -> None:
    """Plug the library into the engine: menu entry, topic buttons, pointers after results."""
    flow = SelfHelpFlow(library)
    engine.action("selfhelp", flow.menu, any_step=True)
    engine.action("selfhelp.open", flow.open, any_step=True)
    engine.action("selfhelp.stop", flow.stop, any_step=True)
    engine.command("selfhelp", flow.menu)
    engine.after_turn.append(flow.after_assessment)
    # Before the housekeeping entries (language, privacy, help), after the care ones.
    at = next((i for i, e in enumerate(engine.menu) if e.key == "language"), len(engine.menu))
    engine.menu.insert(
        at,
        MenuEntry(
            "selfhelp",
            "menu.selfhelp",
            "selfhelp",
            lambda p, _r: p.consent_version is not None and p.age_band is not None,
        ),
    )


class SelfHelpFlow:
    """The resident's side of the library."""

    def __init__(self, library: SelfHelpLibrary) -> None:
        self.library = library

    def topic_buttons(self, turn: Turn, ids: list[str]) -> list[list[Button]]:
        """One button per topic, titled in the person's language."""
        rows: list[list[Button]] = []
        for topic_id in ids:
            topic = self.library.get(topic_id, turn.lang)
            if topic is not None:
                rows.append([Button(topic.title, "selfhelp.open", topic_id)])
        return rows

    async def menu(self, turn: Turn, _arg: str) -> None:
        """List the topics."""
        ids = self.library.ids(staff=_is_staff(turn.person, turn.roles))
        turn.say(
            "selfhelp.menu",
            buttons=[*self.topic_buttons(turn, ids), [turn.menu_button()]],
        )

    async def open(self, turn: Turn, topic_id: str) -> None:
        """Send a topic: its first step now, each later step after its pause."""
        topic = self.library.get(topic_id, turn.lang)
        if topic is None:
            await self.menu(turn, "")
            return
        person = turn.person
        run = secrets.token_hex(4)
        guided = len(topic.steps) > 1
        stop = [[turn.button("selfhelp.button_stop", "selfhelp.stop", run)]] if guided else []
        after = [
            [turn.button("selfhelp.button_more", "selfhelp")],
            [turn.menu_button()],
        ]
        first = topic.steps[0]
        turn.send(f"{topic.title}\n\n{first.text}", buttons=stop if guided else after)
        delay = 0
        for index, step in enumerate(topic.steps[1:], start=1):
            delay += step.pause
            last = index == len(topic.steps) - 1
            message = Outbound(
                channel=person.channel,
                chat_id=person.chat_id,
                text=step.text,
                buttons=after if last else stop,
                priority=Priority.REPLY,
                kind="selfhelp",
                person_id=person.id,
                seq_holder=person,
                dedupe_key=f"sh:{person.id}:{run}:{index}",
            )
            await queue(turn.session, [message], turn.now + timedelta(seconds=delay))

    async def stop(self, turn: Turn, run: str) -> None:
        """Stop a guided exercise: its steps not yet sent are dropped."""
        if not re.fullmatch(r"[0-9a-f]{8}", run):
            return
        await turn.session.exec(
            update(OutboxMessage)
            .where(col(OutboxMessage.dedupe_key).startswith(f"sh:{turn.person.id}:{run}:"))
            .where(col(OutboxMessage.status) == "pending")
            .values(status="cancelled")
        )
        turn.say(
            "selfhelp.stopped",
            buttons=[[turn.button("selfhelp.button_more", "selfhelp")], [turn.menu_button()]],
        )

    async def after_assessment(self, turn: Turn) -> None:
        """After a questionnaire result, add a way into the library to the result's buttons.

        Not when a crisis reply went out: then the crisis lines come first, and alone.
        """
        if (
            turn.erased
            or not turn.state_changed
            or turn.person.state != "assess_result"
            or turn.risk_level >= RiskLevel.HIGH
        ):
            return
        for message in reversed(turn.out):
            if message.person_id == turn.person.id and message.priority == Priority.REPLY:
                row = [turn.button("selfhelp.button_from_result", "selfhelp")]
                message.buttons.insert(max(0, len(message.buttons) - 1), row)
                return
