"""The admin API under ``/api``: broadcasts and the daily report, for tokens issued by ``anxin``.

Every call carries ``Authorization: Bearer <token>``; tokens come from ``anxin token create``
and are stored hashed (``core.api_tokens``). Broadcasts need an admin token, reports an admin
or supervisor token. The routes only translate HTTP into core calls; core decides. OpenAPI
documentation is served at ``/docs``.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run time,
# and the dependency aliases (``Admin``, ``Caller``) are local to ``admin_router``.
import asyncio
import sys
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import api_tokens, broadcasts, reports
from core.access import Role
from core.api_tokens import ApiToken, authenticate
from core.broadcasts import Audience, Broadcast, BroadcastError
from core.clock import SystemClock, as_utc
from core.config import Settings
from core.db import Database
from core.services import Core

bearer = HTTPBearer(auto_error=False, description="A token from `anxin token create NAME`.")


class AudienceIn(BaseModel):
    """Who a broadcast is for."""

    kind: str = Field(description="everyone, site, role, language or risk", examples=["site"])
    value: str = Field(default="", description="site code, role, language or risk tier")


class BroadcastIn(BaseModel):
    """A broadcast to prepare: a text per language, an audience and when to send it."""

    texts: dict[str, str] = Field(
        description="text per language code; the default language is required",
        examples=[{"zh_Hans": "今晚八点有线上放松小组。", "en": "Relaxation group tonight at 8."}],
    )
    audience: AudienceIn
    send_at: datetime | None = Field(
        default=None, description="when to start (ISO 8601 with offset); now if omitted"
    )


class BroadcastOut(BaseModel):
    """A broadcast and how far it has gone."""

    id: int
    status: str
    audience: dict[str, str]
    texts: dict[str, str]
    send_at: str
    created_by: str
    progress: dict[str, int]


def admin_router(core: Core) -> APIRouter:
    """The ``/api`` routes over a built core."""
    router = APIRouter(prefix="/api", tags=["admin"])
    engine = core.engine

    async def caller(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiToken:
        """The token making the call, or 401."""
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        now = core.clock.now()

        async def work(session: AsyncSession) -> ApiToken | None:
            return await authenticate(session, credentials.credentials, now)

        token = await core.db.run(work)
        if token is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "unknown or revoked token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return token

    async def admin(token: Annotated[ApiToken, Depends(caller)]) -> ApiToken:
        """An admin token, or 403."""
        if token.role != Role.ADMIN.value:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "broadcasts need an admin token")
        return token

    Admin = Annotated[ApiToken, Depends(admin)]
    Caller = Annotated[ApiToken, Depends(caller)]

    def refused(error: BroadcastError, code: int = 422) -> Any:
        return JSONResponse(
            {"error": error.key, "message": engine.catalogs.t("en", error.key, **error.params)},
            status_code=code,
        )

    async def out(session: AsyncSession, broadcast: Broadcast) -> dict[str, Any]:
        return broadcasts.describe(broadcast, await broadcasts.progress(session, broadcast))

    @router.get("/me")
    async def me(token: Caller) -> dict[str, str]:
        """Say which token is calling and with which role."""
        return {"name": token.name, "role": token.role}

    @router.post(
        "/broadcasts",
        status_code=status.HTTP_201_CREATED,
        response_model=BroadcastOut,
        responses={422: {"description": "refused, with the reason"}},
    )
    async def create_broadcast(body: BroadcastIn, token: Admin) -> Any:
        """Prepare a broadcast and return its preview and recipient count (not sent yet)."""
        now = core.clock.now()

        async def work(session: AsyncSession) -> dict[str, Any]:
            broadcast = await broadcasts.create_draft(
                session,
                engine,
                texts=body.texts,
                audience=Audience(body.audience.kind, body.audience.value),
                send_at=body.send_at,
                created_by=f"api:{token.name}",
                now=now,
            )
            return await out(session, broadcast)

        try:
            return await core.db.run(work)
        except BroadcastError as error:
            return refused(error)

    @router.post(
        "/broadcasts/{broadcast_id}/confirm",
        response_model=BroadcastOut,
        responses={409: {"description": "empty audience, or not a draft"}},
    )
    async def confirm_broadcast(broadcast_id: int, token: Admin) -> Any:
        """Confirm a prepared broadcast; it goes out at its time, progress in the staff chat."""
        now = core.clock.now()

        async def work(session: AsyncSession) -> dict[str, Any]:
            broadcast = await broadcasts.confirm(
                session, engine, broadcast_id, f"api:{token.name}", now
            )
            return await out(session, broadcast)

        try:
            result = await core.db.run(work)
        except BroadcastError as error:
            code = 404 if error.key == "broadcast.unknown" else status.HTTP_409_CONFLICT
            return refused(error, code)
        engine.notify("telegram")
        return result

    @router.post("/broadcasts/{broadcast_id}/cancel", response_model=BroadcastOut)
    async def cancel_broadcast(broadcast_id: int, token: Admin) -> Any:
        """Cancel a broadcast; messages not yet sent are dropped."""
        now = core.clock.now()

        async def work(session: AsyncSession) -> dict[str, Any]:
            await broadcasts.cancel(session, engine, broadcast_id, f"api:{token.name}", now)
            broadcast = await session.get(Broadcast, broadcast_id)
            assert broadcast is not None
            return await out(session, broadcast)

        try:
            result = await core.db.run(work)
        except BroadcastError as error:
            code = 404 if error.key == "broadcast.unknown" else status.HTTP_409_CONFLICT
            return refused(error, code)
        engine.notify("telegram")
        return result

    @router.get("/broadcasts/{broadcast_id}", response_model=BroadcastOut)
    async def get_broadcast(broadcast_id: int, _token: Admin) -> Any:
        """A broadcast with its progress: sent, failed, left."""

        async def work(session: AsyncSession) -> dict[str, Any] | None:
            broadcast = await session.get(Broadcast, broadcast_id)
            return None if broadcast is None else await out(session, broadcast)

        found = await core.db.run(work)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such broadcast")
        return found

    @router.get("/broadcasts", response_model=list[BroadcastOut])
    async def list_broadcasts(_token: Admin, limit: int = Query(20, ge=1, le=200)) -> Any:
        """The newest broadcasts, with progress."""

        async def work(session: AsyncSession) -> list[dict[str, Any]]:
            found = await session.exec(
                select(Broadcast).order_by(col(Broadcast.id).desc()).limit(limit)
            )
            return [await out(session, b) for b in found.all()]

        return await core.db.run(work)

    @router.get(
        "/reports/daily.csv",
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}, "description": "one row per site"}},
    )
    async def daily_report_csv(
        token: Caller,
        day: Annotated[
            date | None, Query(alias="date", description="local date; yesterday if omitted")
        ] = None,
        site: Annotated[str | None, Query(description="site code; every site if omitted")] = None,
    ) -> Response:
        """The daily report (日报) as CSV: one row per site for a local calendar day."""
        if token.role not in (Role.ADMIN.value, Role.SUPERVISOR.value):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "reports need a supervisor token")
        chosen = list(engine.sites.sites.values())
        if site is not None:
            found = engine.sites.get(site)
            if found is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"no site {site[:32]!r}")
            chosen = [found]
        now = core.clock.now()

        async def work(session: AsyncSession) -> list[reports.DailyFigures]:
            rows = []
            for place in chosen:
                local_day = day or (as_utc(now).astimezone(place.tz).date() - timedelta(days=1))
                rows.append(await reports.compute(session, place, local_day, now))
            return rows

        figures = await core.db.run(work)
        name = f"anxin-daily-{(day or figures[0].day) if figures else 'report'}.csv"
        return Response(
            reports.to_csv(figures),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return router


def token_command(settings: Settings, action: str, name: str, role: str) -> int:
    """``anxin token create|list|revoke``: print the result, return the exit status."""
    clock = SystemClock()

    async def run() -> str:
        db = Database(settings.effective_database_url)
        try:
            if action == "create":
                token = await db.run(lambda s: api_tokens.issue(s, name, Role(role), clock.now()))
                return (
                    f"anxin: token {name!r} ({role}) created. Keep it safe; it is not shown "
                    f"again:\n{token}"
                )
            if action == "revoke":
                await db.run(lambda s: api_tokens.revoke(s, name, clock.now()))
                return f"anxin: token {name!r} revoked."
            tokens = await db.run(api_tokens.listing)
            lines = [
                f"{t.name}\t{t.role}\t"
                f"{'revoked' if t.revoked_at else 'active'}\t"
                f"last used {t.last_used_at.isoformat() if t.last_used_at else 'never'}"
                for t in tokens
            ]
            return "\n".join(lines) or "anxin: no tokens yet."
        finally:
            await db.dispose()

    try:
        print(asyncio.run(run()))
    except api_tokens.TokenError as exc:
        print(f"anxin: {exc}", file=sys.stderr)
        return 2
    return 0
