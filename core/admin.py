"""Granting and revoking roles: admins only, every change audited."""

from __future__ import annotations

from sqlalchemy import delete
from sqlmodel import col, select

from core.access import Action, Role
from core.conversation import ConversationEngine, Turn
from core.models import AuditLog, Person, RoleGrant

GRANTABLE = (Role.STAFF, Role.COUNSELOR, Role.SUPERVISOR, Role.ADMIN)


def register(engine: ConversationEngine) -> None:
    """Register /grant and /revoke."""
    engine.command("grant", _grant, before_onboarding=True)
    engine.command("revoke", _revoke, before_onboarding=True)


async def _target(turn: Turn, args: str) -> tuple[Person, Role] | None:
    parts = args.split()
    if len(parts) != 2:
        turn.say("admin.grant_usage", roles=", ".join(r.value for r in GRANTABLE))
        return None
    code, role_name = parts[0].upper(), parts[1].lower()
    if role_name not in {r.value for r in GRANTABLE}:
        turn.say("admin.grant_usage", roles=", ".join(r.value for r in GRANTABLE))
        return None
    found = await turn.session.exec(select(Person).where(Person.case_code == code))
    person = found.first()
    if person is None:
        turn.say("admin.no_such_case", code=code[:16])
        return None
    return person, Role(role_name)


async def _grant(turn: Turn, args: str) -> None:
    if not turn.may(Action.GRANT_ROLES):
        turn.say("admin.not_allowed")
        return
    target = await _target(turn, args)
    if target is None:
        return
    person, role = target
    assert person.id is not None
    exists = await turn.session.exec(
        select(RoleGrant).where(RoleGrant.person_id == person.id, RoleGrant.role == role.value)
    )
    if exists.first() is None:
        turn.session.add(
            RoleGrant(
                person_id=person.id,
                role=role.value,
                granted_by=turn.person.id,
                granted_at=turn.now,
            )
        )
        turn.session.add(
            AuditLog(
                at=turn.now,
                actor_person_id=turn.person.id,
                actor=turn.person.case_code,
                action="role.grant",
                subject=person.case_code,
                detail=role.value,
            )
        )
    turn.say("admin.granted", code=person.case_code, role=turn.t(f"role.{role.value}"))


async def _revoke(turn: Turn, args: str) -> None:
    if not turn.may(Action.GRANT_ROLES):
        turn.say("admin.not_allowed")
        return
    target = await _target(turn, args)
    if target is None:
        return
    person, role = target
    await turn.session.exec(
        delete(RoleGrant).where(
            col(RoleGrant.person_id) == person.id, col(RoleGrant.role) == role.value
        )
    )
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=turn.person.id,
            actor=turn.person.case_code,
            action="role.revoke",
            subject=person.case_code,
            detail=role.value,
        )
    )
    turn.say("admin.revoked", code=person.case_code, role=turn.t(f"role.{role.value}"))
