"""The composition root's parts: build everything from settings, run it, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI

from bot.lease import SchedulerLease
from bot.telegram.channel import TelegramChannel
from bot.telegram.delivery import TelegramSender
from bot.telegram.rooms import TelegramInviteLinks
from bot.web.app import create_app
from bot.web.hub import WebHub
from bot.web.webhook import WEBHOOK_PATH
from core import booking, booking_chat, broadcasts, checkins, escalation, reports, rooms, sweeps
from core.clock import Clock, SystemClock
from core.config import Settings
from core.db import Database
from core.outbox import DeliveryWorker, RateLimits, WebSender
from core.quiet import QuietHold, QuietHours, parse_clock_time
from core.services import Core, build_core

log = logging.getLogger(__name__)


#: What each process role runs. "all" is one process doing everything (SQLite or PostgreSQL);
#: with PostgreSQL, any number of "web" and "worker" processes and exactly one "scheduler".
ROLES: dict[str, dict[str, bool]] = {
    "all": {"serve_http": True, "scheduler": True, "deliver": True, "telegram_updates": True},
    "web": {"serve_http": True, "scheduler": False, "deliver": False, "telegram_updates": False},
    "worker": {"serve_http": False, "scheduler": False, "deliver": True, "telegram_updates": False},
    "scheduler": {
        "serve_http": False,
        "scheduler": True,
        "deliver": False,
        "telegram_updates": True,
    },
}


#: Telegram sends of each second kept for crisis and escalation rows (RateLimits.urgent_reserve):
#: a crisis arriving while replies and a broadcast fill the 30 a second goes at once, and a
#: broadcast still gets 29 a second (bench/README.md, (b) and (c)).
TELEGRAM_URGENT_RESERVE = 1

OUTBOX_CHANNEL = "anxin_outbox"
WEB_CHANNEL = "anxin_web"


class SharedWakeups:
    """Wake-ups for other processes of one deployment, through PostgreSQL NOTIFY.

    Off in a single process; turned on by ``Runtime.start`` for the web/worker/scheduler
    roles. A lost notification only delays work until the next poll (at most a second).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.enabled = False
        self._pending: set[asyncio.Task[None]] = set()

    def send(self, channel: str, payload: str) -> None:
        """Notify the other processes (fire and forget)."""
        if not self.enabled:
            return
        task = asyncio.get_running_loop().create_task(self.db.notify(channel, payload))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


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
    shared: SharedWakeups | None = None
    listeners: list[asyncio.Task[None]] = field(default_factory=list)
    lease: SchedulerLease | None = None
    leading: asyncio.Task[None] | None = None
    polling: asyncio.Task[None] | None = None
    #: How often a standby scheduler tries the lease, and the holder checks it still has it.
    lease_check_seconds: float = 5.0

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

        shared = SharedWakeups(db)

        def wake(channel: str) -> None:
            worker = workers.get(channel)
            if worker is not None:
                worker.wake()
            shared.send(OUTBOX_CHANNEL, channel)

        def delivered_to_web(chat_id: str) -> None:
            hub.notify(chat_id)
            shared.send(WEB_CHANNEL, chat_id)

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
                db,
                TelegramSender(telegram.bot),
                clock,
                telegram_limits or RateLimits(urgent_reserve=TELEGRAM_URGENT_RESERVE),
                hold=QuietHold(QuietHours.from_text(settings.quiet_hours), core.sites),
                stale_claim=timedelta(seconds=settings.outbox_stale_claim_seconds),
            )
        workers["web"] = DeliveryWorker(
            db,
            WebSender(db, delivered_to_web),
            clock,
            RateLimits(global_per_second=1000, chat_per_second=50, chat_burst=50),
            hold=QuietHold(QuietHours.from_text(settings.quiet_hours), core.sites),
            stale_claim=timedelta(seconds=settings.outbox_stale_claim_seconds),
        )
        return cls(
            settings=settings,
            clock=clock,
            db=db,
            core=core,
            web_hub=hub,
            telegram=telegram,
            workers=workers,
            shared=shared,
        )

    def app(self) -> FastAPI:
        """The FastAPI application for this runtime."""
        return create_app(self)

    async def start(
        self,
        *,
        serve_http: bool = True,
        scheduler: bool = True,
        deliver: bool = True,
        telegram_updates: bool = True,
    ) -> None:
        """Start delivery, the scheduler, Telegram (polling or webhook) and the web server.

        Several processes can share one PostgreSQL database by each starting only some parts
        (see ``ROLES``); exactly one of them runs the scheduler and receives Telegram's updates.
        """
        await self.db.ping()
        # What start-up built (aiogram's and SQLAlchemy's classes, catalogs, lexicons) lives as
        # long as the process: the cyclic collector's full passes need not walk it each time.
        gc.collect()
        gc.freeze()
        if self.shared is not None and not (serve_http and deliver):
            # Parts of the deployment run in other processes: wake them through PostgreSQL.
            self.shared.enabled = True
            if deliver:
                self.listeners.append(
                    asyncio.create_task(self.db.listen(OUTBOX_CHANNEL, self._wake_worker))
                )
            if serve_http:
                self.listeners.append(
                    asyncio.create_task(self.db.listen(WEB_CHANNEL, self.web_hub.notify))
                )
        if deliver:
            for worker in self.workers.values():
                self.tasks.append(asyncio.create_task(worker.run_forever()))
        if scheduler:
            # Exactly one scheduler per deployment (bot/lease.py): the sweeps and Telegram's
            # updates go with the lease; a second scheduler process stands by.
            self.lease = SchedulerLease(self.db, check_seconds=self.lease_check_seconds)
            if await self.lease.try_acquire():
                await self._lead(telegram_updates)
            # Otherwise _keep_lead stands by (the lease says so in the log, once).
            self.leading = asyncio.create_task(self._keep_lead(telegram_updates))
            self.tasks.append(self.leading)
        elif self.telegram is not None and telegram_updates:
            await self._receive_telegram()
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

    async def _lead(self, telegram_updates: bool) -> None:
        """Start what the lease holder runs: the scheduler and Telegram's updates."""
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
        for job_id, job, seconds, job_args in (
            ("booking_reminders", booking.sweep_reminders, 30, [self.core.engine]),
            ("booking_chats", booking_chat.sweep_chats, 60, [self.core.engine]),
            ("room_reminders", rooms.sweep_room_reminders, 30, [self.core.engine]),
        ):
            self.scheduler.add_job(
                job,
                "interval",
                seconds=seconds,
                args=job_args,
                id=job_id,
                replace_existing=True,
                max_instances=1,
                coalesce=True,
            )
        if self.telegram is not None:
            # Invite links are made outside the joining transaction, seconds after a join.
            self.scheduler.add_job(
                rooms.sweep_invites,
                "interval",
                seconds=3,
                args=[self.core.engine, TelegramInviteLinks(self.telegram.bot)],
                id="room_invites",
                replace_existing=True,
                max_instances=1,
                coalesce=True,
            )
        care_jobs: list[tuple[Callable[..., Awaitable[object]], int, list[Any]]] = [
            (checkins.sweep, 30, [self.core.engine]),
            (broadcasts.sweep, 5, [self.core.engine]),
            (
                reports.sweep,
                60,
                [self.core.engine, parse_clock_time(self.settings.report_time)],
            ),
        ]
        for care_job, seconds, args in care_jobs:
            self.scheduler.add_job(
                care_job,
                "interval",
                seconds=seconds,
                args=args,
                id=f"{care_job.__module__.rsplit('.', 1)[-1]}_sweep",
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
        if self.telegram is not None and telegram_updates:
            await self._receive_telegram()

    async def _keep_lead(self, telegram_updates: bool) -> None:
        """Stand by for the lease, lead while it is held, and stand by again if it is lost.

        Returns (and so stops the process, for its supervisor to restart) if Telegram
        polling ends on its own.
        """
        assert self.lease is not None
        while True:
            if not self.lease.held:
                await self.lease.acquire()
                log.warning("this process now runs the scheduler")
                await self._lead(telegram_updates)
            watch = asyncio.create_task(self.lease.lost())
            waiting: list[asyncio.Task[None]] = [watch]
            if self.polling is not None:
                waiting.append(self.polling)
            try:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
            if watch not in done:
                return
            await self._stop_leading()

    async def _stop_leading(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self.telegram is not None:
            await self.telegram.stop_polling()
        if self.polling is not None:
            # Let an update being handled finish; it was already confirmed to Telegram.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.polling, timeout=5)
            self.polling = None

    async def _receive_telegram(self) -> None:
        assert self.telegram is not None
        if self.settings.use_webhook:
            url = self.settings.public_url.rstrip("/") + WEBHOOK_PATH
            await self.telegram.set_webhook(url, self.settings.webhook_secret)
        else:
            self.polling = asyncio.create_task(self.telegram.run_polling())

    def _wake_worker(self, channel: str) -> None:
        worker = self.workers.get(channel)
        if worker is not None:
            worker.wake()

    async def stop(self) -> None:
        """Stop everything, letting in-flight deliveries finish their bookkeeping."""
        if self.server is not None:
            self.server.should_exit = True
        if self.leading is not None:
            self.leading.cancel()
        await self._stop_leading()
        for worker in self.workers.values():
            worker.stop()
        for task in self.listeners:
            task.cancel()
        for task in [*self.tasks, *self.listeners]:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        if self.lease is not None:
            await self.lease.release()
        if self.telegram is not None:
            await self.telegram.close()
        await self.db.dispose()

    async def serve_until_signalled(self, role: str = "all") -> None:
        """Run ``role``'s parts until SIGINT or SIGTERM, then stop cleanly."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stopping.set)
        await self.start(**ROLES[role])
        parts = ROLES[role]
        telegram = (
            "webhook"
            if self.settings.use_webhook
            else ("long polling" if self.telegram else "off, no token")
        )
        serving = (
            f"web chat at http://{self.settings.host}:{self.settings.port}/"
            if parts["serve_http"]
            else "no web server in this role"
        )
        log.warning("Anxin is running (role %s): %s (telegram: %s)", role, serving, telegram)
        waiter = asyncio.create_task(stopping.wait())
        await asyncio.wait([waiter, *self.tasks], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await self.stop()


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the runtime owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
