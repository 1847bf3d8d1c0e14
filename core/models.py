"""Database tables. Every table the product keeps is declared here, in one metadata."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def _ts(nullable: bool = False, index: bool = False) -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=nullable, index=index)


class Person(SQLModel, table=True):
    """Someone who talks to the bot on one channel; staff see only the case code."""

    __tablename__ = "person"
    __table_args__ = (UniqueConstraint("channel", "external_id", name="uq_person_channel_ext"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    external_id: str = Field(max_length=128)
    chat_id: str = Field(max_length=128)
    case_code: str = Field(max_length=16, unique=True)
    language: str | None = Field(default=None, max_length=16)
    language_confirmed: bool = False
    site_code: str | None = Field(default=None, max_length=32)
    relation: str | None = Field(default=None, max_length=16)
    age_band: str | None = Field(default=None, max_length=16)
    consent_version: int | None = None
    consent_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    consent_withdrawn_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    state: str = Field(default="new", max_length=48)
    state_data: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    state_seq: int = 0
    blocked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    paused: bool = False
    created_at: datetime = Field(sa_column=_ts())
    last_seen_at: datetime = Field(sa_column=_ts())


class RoleGrant(SQLModel, table=True):
    """A role an admin gave a person (staff, counselor, supervisor, admin)."""

    __tablename__ = "role_grant"
    __table_args__ = (UniqueConstraint("person_id", "role", name="uq_role_grant"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True, ondelete="CASCADE")
    role: str = Field(max_length=16)
    granted_by: int | None = None
    granted_at: datetime = Field(sa_column=_ts())


class InboundSeen(SQLModel, table=True):
    """A platform update already handled; a second copy of it is dropped."""

    __tablename__ = "inbound_seen"

    channel: str = Field(primary_key=True, max_length=16)
    key: str = Field(primary_key=True, max_length=96)
    seen_at: datetime = Field(sa_column=_ts(index=True))


class OutboxMessage(SQLModel, table=True):
    """A message waiting to go out, or the record that it went.

    Rows commit with the state change that produced them; a delivery worker sends them in
    ``priority`` order (0 crisis … 4 broadcast) and marks each sent once.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "status", "priority", "id"),
        Index("ix_outbox_chat", "channel", "chat_id", "status"),
        # Ids are never reused, so a row erased with its person cannot alias a later one.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    chat_id: str = Field(max_length=128)
    chat_kind: str = Field(default="private", max_length=16)
    person_id: int | None = Field(default=None, index=True)
    priority: int = 2
    kind: str = Field(default="reply", max_length=32)
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    buttons: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    document_name: str | None = Field(default=None, max_length=128)
    document_body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    due_at: datetime = Field(sa_column=_ts())
    hold_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    created_at: datetime = Field(sa_column=_ts())
    claimed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    sent_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    platform_message_id: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=500)
    dedupe_key: str | None = Field(default=None, max_length=128, unique=True)


class ButtonToken(SQLModel, table=True):
    """What a button means, kept server-side so that button data cannot be forged.

    The platform only ever carries the random token; the token is bound to one person and to
    the conversation step (``state_seq``) it was drawn for.
    """

    __tablename__ = "button_token"

    token: str = Field(primary_key=True, max_length=32)
    # None: a staff-chat button anyone may press; its action checks their role.
    person_id: int | None = Field(
        default=None, foreign_key="person.id", index=True, ondelete="CASCADE"
    )
    action: str = Field(max_length=48)
    arg: str = Field(default="", max_length=256)
    state_seq: int
    created_at: datetime = Field(sa_column=_ts(index=True))


class WebTranscript(SQLModel, table=True):
    """The web chat's conversation as the page shows it, so a reload resumes it."""

    __tablename__ = "web_transcript"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: int | None = Field(default=None, primary_key=True)
    chat_id: str = Field(max_length=128, index=True)
    direction: str = Field(max_length=4)
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    buttons: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    document_name: str | None = Field(default=None, max_length=128)
    document_body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    outbox_id: int | None = Field(default=None, unique=True)
    created_at: datetime = Field(sa_column=_ts())


class AuditLog(SQLModel, table=True):
    """Who did what to whom, and when: staff reads, grants, escalation actions, erasures."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=_ts(index=True))
    actor_person_id: int | None = None
    actor: str = Field(default="", max_length=64)
    action: str = Field(max_length=48)
    subject: str = Field(default="", max_length=64)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False))
