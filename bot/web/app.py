"""The FastAPI application: health, the Telegram webhook, and the web chat."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from bot.web.admin_api import admin_router
from bot.web.chat import WebChat
from bot.web.metrics import metrics_router
from bot.web.webhook import TelegramWebhook
from core.db import DatabaseUnavailable

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)


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

    # Telegram's updates: plain ASGI ahead of the routing (bot/web/webhook.py).
    app.add_middleware(
        TelegramWebhook, channel=lambda: runtime.telegram, secret=lambda: settings.webhook_secret
    )
    return app
