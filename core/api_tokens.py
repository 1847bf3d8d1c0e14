"""Bearer tokens for the admin API: issued by the ``anxin`` command, stored only as hashes.

A token is 32 random bytes shown once when issued; the database keeps its SHA-256 (a slow
hash adds nothing for a random secret of that length), its name, its role and when it was last
used. Revoking keeps the row for the audit trail.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from sqlalchemy import Column, DateTime
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.access import Role
from core.models import AuditLog

TOKEN_PREFIX = "anxin_"
API_ROLES = (Role.ADMIN, Role.SUPERVISOR)


class ApiToken(SQLModel, table=True):
    """One admin-API token: its name, role and hash; the token itself is never stored."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    role: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    last_used_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class TokenError(ValueError):
    """A token cannot be issued or revoked; the message says why in one sentence."""


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def issue(session: AsyncSession, name: str, role: Role, now: datetime) -> str:
    """Create a token called ``name`` for ``role`` and return it (the only time it is shown)."""
    name = name.strip()
    if not name or len(name) > 64:
        raise TokenError("a token needs a name of 1 to 64 characters.")
    if role not in API_ROLES:
        raise TokenError(f"API tokens are for {', '.join(r.value for r in API_ROLES)} only.")
    taken = await session.exec(select(ApiToken.id).where(ApiToken.name == name))
    if taken.first() is not None:
        raise TokenError(f"a token called {name!r} exists; revoke it or choose another name.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, role=role.value, token_hash=hash_token(token), created_at=now))
    session.add(AuditLog(at=now, actor="cli", action="api_token.issue", subject=name[:64]))
    return token


async def revoke(session: AsyncSession, name: str, now: datetime) -> None:
    """Revoke the token called ``name``."""
    found = (await session.exec(select(ApiToken).where(ApiToken.name == name))).first()
    if found is None or found.revoked_at is not None:
        raise TokenError(f"there is no active token called {name!r}.")
    found.revoked_at = now
    session.add(found)
    session.add(AuditLog(at=now, actor="cli", action="api_token.revoke", subject=name[:64]))


async def listing(session: AsyncSession) -> list[ApiToken]:
    """Every token, newest first (hashes included; never the tokens)."""
    return list((await session.exec(select(ApiToken).order_by(col(ApiToken.id).desc()))).all())


async def authenticate(session: AsyncSession, token: str, now: datetime) -> ApiToken | None:
    """The active token matching ``token``, with its last use recorded; None if none."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    found = (await session.exec(select(ApiToken).where(ApiToken.token_hash == digest))).first()
    if found is None or found.revoked_at is not None:
        return None
    if not hmac.compare_digest(found.token_hash, digest):
        return None
    found.last_used_at = now
    session.add(found)
    return found
