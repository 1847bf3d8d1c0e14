"""Hypothesis-generated updates through the webhook: no crash, never an unhandled 500.

Random Unicode (huge, empty, control characters, emoji), random callback data, commands,
edits, unknown update types and malformed structures go through the real FastAPI route,
aiogram's parsing and core; each answer must be one of the deliberate ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.runtime import Runtime
from core.config import Settings
from core.db import upgrade

SECRET = "fuzz-secret_0123456789abcdef"
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
ALLOWED = {200, 400, 401, 413}

texts = st.one_of(
    st.text(max_size=50),
    st.text(min_size=4000, max_size=12000),
    st.sampled_from(
        [
            "",
            " ",
            "/start",
            "/start site_example",
            "/sos",
            "/privacy",
            "/unknown",
            "/grant R-XXXX admin",
            "我想死",
            "kms",
            "\u200b\u200b",
            "\x00\x01",
            "🆘" * 50,
        ]
    ),
)
ids = st.integers(min_value=-(2**40), max_value=2**40)


def user(uid: int) -> dict[str, Any]:
    return {"id": uid, "is_bot": False, "first_name": "F", "language_code": "zh-hans"}


@st.composite
def updates(draw: st.DrawFn) -> Any:
    uid = draw(st.integers(min_value=1, max_value=50))
    update_id = draw(st.integers(min_value=0, max_value=2**31))
    chat = {
        "id": draw(st.sampled_from([uid, -100123, uid])),
        "type": draw(st.sampled_from(["private", "private", "group", "supergroup", "channel"])),
    }
    message = {
        "message_id": draw(ids),
        "date": 1_700_000_000,
        "chat": chat,
        "from": user(uid),
        "text": draw(texts),
    }
    kind = draw(
        st.sampled_from(
            [
                "message",
                "edited_message",
                "callback_query",
                "channel_post",
                "sticker",
                "unknown",
                "broken",
                "garbage",
            ]
        )
    )
    if kind in ("message", "edited_message", "channel_post"):
        return {"update_id": update_id, kind: message}
    if kind == "sticker":
        message.pop("text")
        message["sticker"] = {
            "file_id": "x",
            "file_unique_id": "y",
            "type": "regular",
            "width": 1,
            "height": 1,
            "is_animated": False,
            "is_video": False,
        }
        return {"update_id": update_id, "message": message}
    if kind == "callback_query":
        data = draw(
            st.one_of(
                st.text(max_size=64),
                st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
                st.just("t:" + "A" * 16),
            )
        )
        return {
            "update_id": update_id,
            "callback_query": {
                "id": str(draw(ids)),
                "from": user(uid),
                "chat_instance": "ci",
                "data": data,
                "message": message,
            },
        }
    if kind == "unknown":
        return {"update_id": update_id, draw(st.text(min_size=1, max_size=20)): {"x": 1}}
    if kind == "broken":
        return {"update_id": update_id, "message": {"text": draw(texts)}}
    return draw(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=12,
        )
    )


@dataclass
class Client:
    """The app behind an httpx client, on one event loop kept for the whole module."""

    loop: asyncio.AbstractEventLoop
    http: httpx.AsyncClient

    def post(self, body: bytes) -> httpx.Response:
        return self.loop.run_until_complete(
            self.http.post("/telegram/webhook", content=body, headers=HEADERS)
        )

    def get(self, path: str) -> httpx.Response:
        return self.loop.run_until_complete(self.http.get(path))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite+aiosqlite:///{tmp / 'fuzz.sqlite3'}"
    upgrade(url)
    runtime = Runtime.build(
        Settings(  # type: ignore[call-arg]
            data_dir=tmp,
            database_url=url,
            telegram_token="123:fuzz",
            telegram_api_url="http://127.0.0.1:9",
            public_url="https://anxin.example.org",
            webhook_secret=SECRET,
            staff_chat_id="-100123",
            _env_file=None,
        )
    )
    loop = asyncio.new_event_loop()
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=runtime.app()), base_url="http://anxin.test"
    )
    try:
        yield Client(loop, http)
    finally:
        loop.run_until_complete(http.aclose())
        loop.run_until_complete(runtime.db.dispose())
        if runtime.telegram is not None:
            loop.run_until_complete(runtime.telegram.bot.session.close())
        loop.close()


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(update=updates())
def test_random_updates_never_cause_a_server_error(client: Client, update: Any) -> None:
    response = client.post(json.dumps(update).encode())
    assert response.status_code in ALLOWED, (response.status_code, response.text[:300])


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=2000))
def test_random_bytes_are_refused_without_a_server_error(client: Client, body: bytes) -> None:
    response = client.post(body)
    assert response.status_code in ALLOWED


def test_health_stays_up_after_the_fuzzing(client: Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
