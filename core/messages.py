"""Plain data between channels and core: what came in, and what should go out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

TELEGRAM_TEXT_LIMIT = 4096


class Priority(IntEnum):
    """Delivery order: a crisis never waits behind anything else."""

    CRISIS = 0
    ESCALATION = 1
    REPLY = 2
    REMINDER = 3
    BROADCAST = 4


class InboundKind(StrEnum):
    """What sort of thing a person sent."""

    TEXT = "text"
    COMMAND = "command"
    BUTTON = "button"
    MEDIA = "media"
    EDITED = "edited"


@dataclass(frozen=True)
class Button:
    """An abstract button: a label and the action (with argument) it asks core for."""

    label: str
    action: str
    arg: str = ""
    #: "person": only the person it was drawn for may press it; "staff": anyone in the staff
    #: chat may, and the action checks their role.
    scope: str = "person"


@dataclass(frozen=True)
class Inbound:
    """One thing a person did on a channel, translated by the channel adapter.

    ``update_key`` identifies the platform event (Telegram's ``update_id``, the web chat's
    message id) so that a second copy is handled once.
    """

    channel: str
    external_id: str
    chat_id: str
    kind: InboundKind
    update_key: str | None = None
    text: str = ""
    command: str = ""
    args: str = ""
    token: str = ""
    media: str = ""
    language_hint: str | None = None
    chat_kind: str = "private"


@dataclass
class Outbound:
    """A message core wants delivered: already in the reader's language."""

    channel: str
    chat_id: str
    text: str
    buttons: list[list[Button]] = field(default_factory=list)
    priority: Priority = Priority.REPLY
    kind: str = "reply"
    person_id: int | None = None
    chat_kind: str = "private"
    document: tuple[str, str] | None = None
    dedupe_key: str | None = None
    #: Whose conversation step the buttons belong to, when not the turn's own person
    #: (any object with ``state_seq``, read when the message is queued).
    seq_holder: object | None = None


@dataclass(frozen=True)
class HandleResult:
    """What the adapter needs to know after core handled an inbound event."""

    duplicate: bool = False
    notice: str | None = None
    person_id: int | None = None


def split_text(text: str, limit: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters, at line or word breaks."""
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = rest.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n ")
    if rest:
        parts.append(rest)
    return [p for p in parts if p]
