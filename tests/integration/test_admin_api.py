"""The admin API through the real FastAPI app: tokens, broadcasts, the daily report CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from bot.runtime import Runtime
from bot.web.admin_api import token_command
from core import api_tokens
from core.access import Role
from core.api_tokens import ApiToken
from core.clock import FakeClock
from core.config import Settings
from core.models import OutboxMessage
from tests.drivers import EngineChat

STAFF_CHAT = "-100555"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=db_url,
        telegram_token="1:x",  # type: ignore[call-arg]
        staff_chat_id=STAFF_CHAT,
        _env_file=None,
    )


@pytest.fixture
async def runtime(settings: Settings, clock: FakeClock) -> AsyncIterator[Runtime]:
    built = Runtime.build(settings, clock)
    await built.db.create_all()
    try:
        yield built
    finally:
        await built.db.dispose()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=runtime.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://anxin.test") as http:
        yield http


async def token(runtime: Runtime, name: str, role: Role = Role.ADMIN) -> dict[str, str]:
    now = runtime.clock.now()
    issued = await runtime.db.run(lambda s: api_tokens.issue(s, name, role, now))
    return {"Authorization": f"Bearer {issued}"}


async def a_resident(runtime: Runtime, external_id: str = "700") -> None:
    chat = EngineChat(runtime.core, external_id)
    await chat.onboard()


BODY: dict[str, Any] = {
    "texts": {"zh_Hans": "今晚八点有线上放松小组。", "en": "Relaxation group at 8 pm."},
    "audience": {"kind": "everyone"},
}


async def test_a_call_without_a_token_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/broadcasts", json=BODY)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_wrong_token_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/me", headers={"Authorization": "Bearer anxin_nope"})
    assert response.status_code == 401


async def test_tokens_are_stored_hashed_and_revocable(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    headers = await token(runtime, "ops")
    raw = headers["Authorization"].removeprefix("Bearer ")
    async with runtime.db.session() as s:
        stored = (await s.exec(select(ApiToken))).one()
    assert stored.token_hash != raw and raw not in stored.token_hash
    assert (await client.get("/api/me", headers=headers)).json() == {
        "name": "ops",
        "role": "admin",
    }
    await runtime.db.run(lambda s: api_tokens.revoke(s, "ops", runtime.clock.now()))
    assert (await client.get("/api/me", headers=headers)).status_code == 401


async def test_a_supervisor_token_cannot_broadcast(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    headers = await token(runtime, "lead", Role.SUPERVISOR)
    response = await client.post("/api/broadcasts", json=BODY, headers=headers)
    assert response.status_code == 403


async def test_a_broadcast_is_previewed_confirmed_and_cancelled(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    await a_resident(runtime)
    headers = await token(runtime, "ops")
    created = await client.post("/api/broadcasts", json=BODY, headers=headers)
    assert created.status_code == 201
    draft = created.json()
    assert draft["status"] == "draft" and draft["progress"]["recipients"] == 1
    confirmed = await client.post(f"/api/broadcasts/{draft['id']}/confirm", headers=headers)
    assert confirmed.json()["status"] == "scheduled"
    again = await client.post(f"/api/broadcasts/{draft['id']}/confirm", headers=headers)
    assert again.status_code == 409
    cancelled = await client.post(f"/api/broadcasts/{draft['id']}/cancel", headers=headers)
    assert cancelled.json()["status"] == "cancelled"
    async with runtime.db.session() as s:
        staff = (
            await s.exec(select(OutboxMessage.text).where(OutboxMessage.chat_id == STAFF_CHAT))
        ).all()
    assert any("api:ops" in t for t in staff)


async def test_an_over_long_broadcast_is_refused_with_a_clear_message(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    headers = await token(runtime, "ops")
    body = {**BODY, "texts": {"zh_Hans": "长" * 4097}}
    response = await client.post("/api/broadcasts", json=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"] == "broadcast.too_long"
    assert "4,097" in response.json()["message"] and "4,096" in response.json()["message"]


async def test_an_empty_audience_cannot_be_confirmed(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    headers = await token(runtime, "ops")
    body = {**BODY, "audience": {"kind": "language", "value": "en"}}
    draft = (await client.post("/api/broadcasts", json=body, headers=headers)).json()
    assert draft["progress"]["recipients"] == 0
    response = await client.post(f"/api/broadcasts/{draft['id']}/confirm", headers=headers)
    assert response.status_code == 409 and response.json()["error"] == "broadcast.empty"


async def test_the_daily_report_is_a_csv_for_supervisors(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    await a_resident(runtime)
    headers = await token(runtime, "lead", Role.SUPERVISOR)
    day = runtime.clock.now().date().isoformat()
    response = await client.get(f"/api/reports/daily.csv?date={day}", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    [row] = list(csv.DictReader(io.StringIO(response.text)))
    assert row["site"] == "example" and row["date"] == day and row["new_residents"] == "1"


async def test_the_openapi_documents_the_admin_routes(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/api/broadcasts" in schema["paths"] and "/api/reports/daily.csv" in schema["paths"]
    assert (await client.get("/docs")).status_code == 200


def test_the_anxin_command_issues_a_token_once(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from core.db import Database

    async def tables() -> None:
        db = Database(settings.effective_database_url)
        await db.create_all()
        await db.dispose()

    asyncio.run(tables())
    assert token_command(settings, "create", "ops", "admin") == 0
    assert "anxin_" in capsys.readouterr().out
    assert token_command(settings, "create", "ops", "admin") == 2
    assert "exists" in capsys.readouterr().err
    assert token_command(settings, "list", "", "admin") == 0
    assert "ops\tadmin\tactive" in capsys.readouterr().out
