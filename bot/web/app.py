"""The FastAPI application: health, the Telegram webhook, and the web chat."""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from bot.web.admin_api import admin_router
from bot.web.chat import WebChat
from bot.web.metrics import metrics_router
from core.db import DatabaseUnavailable

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1_000_000


def create_app(runtime: Runtime) -> FastAPI:
    """Build the web application over an already built runtime."""
    app = FastAPI(title="Anxin", docs_url="/docs", redoc_url=None)
    settings = runtime.settings
    chat = WebChat(
        runtime.core.engine,
        runtime.web_hub,
        secure_cookie=settings.public_url.startswith("https://"),
        public_url=settings.public_url,
    )
    app.include_router(chat.router)
    app.include_router(admin_router(runtime.core))
    app.include_router(metrics_router(runtime))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        """Say whether the database answers (200) or not (503)."""
        try:
            await runtime.db.ping()
        except DatabaseUnavailable as exc:
            return JSONResponse({"status": "unavailable", "database": str(exc)}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "telegram": runtime.telegram is not None,
                "example_configuration": runtime.core.sites.is_example,
            }
        )

    @app.post(WEBHOOK_PATH, include_in_schema=False)
    async def telegram_webhook(request: Request) -> Response:
        """Take one update from Telegram: secret checked in constant time, then core."""
        channel = runtime.telegram
        secret = settings.webhook_secret
        if channel is None or not secret:
            return Response(status_code=404)
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            return Response(status_code=401)
        body = await request.body()
        if len(body) > MAX_UPDATE_BYTES:
            return Response(status_code=413)
        try:
            payload: Any = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "malformed JSON"}, status_code=400)
        if not isinstance(payload, dict) or not isinstance(payload.get("update_id"), int):
            return JSONResponse({"error": "not a Telegram update"}, status_code=400)
        try:
            await channel.feed_webhook(payload)
        except ValidationError:
            return JSONResponse({"error": "not a Telegram update"}, status_code=400)
        except DatabaseUnavailable:
            # Telegram retries a 5xx, so the update is not lost while the database is away.
            return JSONResponse({"error": "temporarily unavailable"}, status_code=503)
        return JSONResponse({"ok": True})

    return app
