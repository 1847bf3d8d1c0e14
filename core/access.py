"""Roles, and the one function that answers "may this person do this?"."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import ScalarSelect, func
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.models import Person, RoleGrant


class Role(StrEnum):
    """What an admin can make someone; everyone is a resident by default."""

    RESIDENT = "resident"
    STAFF = "staff"
    COUNSELOR = "counselor"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class Action(StrEnum):
    """Everything that needs a role."""

    USE_BOT = "use_bot"
    REPORT_CONCERN = "report_concern"
    VIEW_QUEUE = "view_queue"
    CLAIM_ESCALATION = "claim_escalation"
    RESOLVE_ESCALATION = "resolve_escalation"
    VIEW_CASE = "view_case"
    GO_ON_CALL = "go_on_call"
    VIEW_STATS = "view_stats"
    MANAGE_SLOTS = "manage_slots"
    FACILITATE_ROOM = "facilitate_room"
    MANAGE_ROOMS = "manage_rooms"
    BROADCAST = "broadcast"
    GRANT_ROLES = "grant_roles"
    VIEW_REPORTS = "view_reports"


_CLINICAL = frozenset({Role.COUNSELOR, Role.SUPERVISOR, Role.ADMIN})
PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.USE_BOT: frozenset(Role),
    Action.REPORT_CONCERN: frozenset({Role.STAFF}) | _CLINICAL,
    Action.VIEW_QUEUE: _CLINICAL,
    Action.CLAIM_ESCALATION: _CLINICAL,
    Action.RESOLVE_ESCALATION: _CLINICAL,
    Action.VIEW_CASE: _CLINICAL,
    Action.GO_ON_CALL: _CLINICAL,
    Action.VIEW_STATS: frozenset({Role.SUPERVISOR, Role.ADMIN}),
    Action.MANAGE_SLOTS: _CLINICAL,
    Action.FACILITATE_ROOM: _CLINICAL,
    Action.MANAGE_ROOMS: frozenset({Role.ADMIN}),
    Action.BROADCAST: frozenset({Role.ADMIN}),
    Action.GRANT_ROLES: frozenset({Role.ADMIN}),
    Action.VIEW_REPORTS: frozenset({Role.SUPERVISOR, Role.ADMIN}),
}


def may(roles: set[Role] | frozenset[Role], action: Action) -> bool:
    """Whether someone holding ``roles`` may do ``action``."""
    return bool(PERMISSIONS[action] & roles)


async def roles_of(session: AsyncSession, person: Person, configured_admins: set[str]) -> set[Role]:
    """Every role a person holds: granted ones, plus admin when configured as a first admin."""
    granted: list[str] = []
    if person.id is not None:
        rows = await session.exec(select(RoleGrant.role).where(RoleGrant.person_id == person.id))
        granted = list(rows.all())
    return roles_from(",".join(granted), person, configured_admins)


def granted_roles() -> ScalarSelect[str | None]:
    """A column for a query of ``Person``: their granted roles, comma-separated (or NULL)."""
    return (
        sa_select(func.aggregate_strings(col(RoleGrant.role), ","))
        .where(col(RoleGrant.person_id) == col(Person.id))
        .scalar_subquery()
    )


def roles_from(granted: str | None, person: Person, configured_admins: set[str]) -> set[Role]:
    """The roles of ``person`` from ``granted_roles()``, plus admin when configured as one."""
    roles = {Role.RESIDENT}
    if granted:
        roles.update(Role(r) for r in granted.split(",") if r in Role._value2member_map_)
    if person.external_id in configured_admins:
        roles.add(Role.ADMIN)
    return roles


async def person_may(
    session: AsyncSession, person: Person, action: Action, configured_admins: set[str]
) -> bool:
    """Whether this person may do ``action`` now."""
    return may(await roles_of(session, person, configured_admins), action)
