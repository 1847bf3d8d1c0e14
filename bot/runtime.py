"""The composition root's parts: build everything from settings, run it, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI

from bot.telegram.channel import TelegramChannel
from bot.telegram.delivery import TelegramSender
from bot.web.app import WEBHOOK_PATH, create_app
from bot.web.hub import WebHub
from core import escalation, sweeps
from core.clock import Clock, SystemClock
from core.config import Settings
from core.db import Database
from core.outbox import DeliveryWorker, RateLimits, WebSender
from core.services import Core, build_core

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """One deployment's live objects, built once and handed down."""

    settings: Settings
    clock: Clock
    db: Database
    core: Core
    web_hub: WebHub
    telegram: TelegramChannel | None
    workers: dict[str, DeliveryWorker] = field(default_factory=dict)
    scheduler: AsyncIOScheduler | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    server: uvicorn.Server | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        clock: Clock | None = None,
        telegram_limits: RateLimits | None = None,
    ) -> Runtime:
        """Build database, core, channels and delivery workers from settings."""
        clock = clock or SystemClock()
        db = Database(settings.effective_database_url)
        hub = WebHub()
        workers: dict[str, DeliveryWorker] = {}

        def wake(channel: str) -> None:
            worker = workers.get(channel)
            if worker is not None:
                worker.wake()

        core = build_core(settings, db, clock, notify=wake)
        telegram = None
        if settings.telegram_token:
            telegram = TelegramChannel(
                settings.telegram_token,
                settings.telegram_api_url,
                core.engine,
                settings.staff_chat_id,
            )
            workers["telegram"] = DeliveryWorker(
                db, TelegramSender(telegram.bot), clock, telegram_limits or RateLimits()
            )
        workers["web"] = DeliveryWorker(
            db,
            WebSender(db, hub.notify),
            clock,
            RateLimits(global_per_second=1000, chat_per_second=50, chat_burst=50),
        )
        return cls(
            settings=settings,
            clock=clock,
            db=db,
            core=core,
            web_hub=hub,
            telegram=telegram,
            workers=workers,
        )

    def app(self) -> FastAPI:
        """The FastAPI application for this runtime."""
        return create_app(self)

    async def start(self, *, serve_http: bool = True, scheduler: bool = True) -> None:
        """Start delivery, the scheduler, Telegram (polling or webhook) and the web server."""
        await self.db.ping()
        for worker in self.workers.values():
            self.tasks.append(asyncio.create_task(worker.run_forever()))
        if scheduler:
            self.scheduler = AsyncIOScheduler(timezone="UTC")
            self.scheduler.add_job(
                sweeps.forget_old_inbound,
                "interval",
                hours=1,
                args=[self.db, self.clock],
                id="forget_old_inbound",
                replace_existing=True,
            )
            self.scheduler.add_job(
                sweeps.forget_old_buttons,
                "interval",
                hours=6,
                args=[self.db, self.clock],
                id="forget_old_buttons",
                replace_existing=True,
            )
            self.scheduler.add_job(
                escalation.sweep_pages,
                "interval",
                seconds=15,
                args=[self.core.engine],
                id="escalation_pages",
                replace_existing=True,
                max_instances=1,
                coalesce=True,
            )
            for name, worker in self.workers.items():
                self.scheduler.add_job(
                    worker.release_stale_claims,
                    "interval",
                    seconds=30,
                    id=f"release_stale_{name}",
                    replace_existing=True,
                )
            self.scheduler.start()
        if self.telegram is not None:
            if self.settings.use_webhook:
                url = self.settings.public_url.rstrip("/") + WEBHOOK_PATH
                await self.telegram.set_webhook(url, self.settings.webhook_secret)
            else:
                self.tasks.append(asyncio.create_task(self.telegram.run_polling()))
        if serve_http:
            config = uvicorn.Config(
                self.app(),
                host=self.settings.host,
                port=self.settings.port,
                log_level=self.settings.log_level.lower(),
                lifespan="off",
                proxy_headers=True,
            )
            self.server = _QuietServer(config)
            self.tasks.append(asyncio.create_task(self.server.serve()))

    async def stop(self) -> None:
        """Stop everything, letting in-flight deliveries finish their bookkeeping."""
        if self.server is not None:
            self.server.should_exit = True
        if self.telegram is not None:
            await self.telegram.stop_polling()
        for worker in self.workers.values():
            worker.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for task in self.tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        if self.telegram is not None:
            await self.telegram.close()
        await self.db.dispose()

    async def serve_until_signalled(self) -> None:
        """Run until SIGINT or SIGTERM, then stop cleanly."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stopping.set)
        await self.start()
        host, port = self.settings.host, self.settings.port
        log.warning(
            "Anxin is running: web chat at http://%s:%s/ (telegram: %s)",
            host,
            port,
            "webhook"
            if self.settings.use_webhook
            else ("long polling" if self.telegram else "off, no token"),
        )
        waiter = asyncio.create_task(stopping.wait())
        await asyncio.wait([waiter, *self.tasks], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await self.stop()


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the runtime owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
