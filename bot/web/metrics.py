"""``GET /metrics``: the deployment's figures in the Prometheus text format, for operators.

Every figure comes from the database (``core.metrics``), so any web process of a deployment
answers for all of them. Who may read it:

- a client on this host (127.0.0.1 or ::1) that came straight in, not through a proxy: a
  Prometheus on the host or next to it, or ``curl`` in a terminal;
- anyone else with an admin-API bearer token (``anxin token create NAME``), through a proxy too.

uvicorn runs with ``proxy_headers=True``: behind a proxy on this host the client address is the
forwarded one. A request that carries a forwarding header (``X-Forwarded-For``, ``Forwarded``,
``X-Real-IP``) is never taken as local, whatever address it claims, so a proxy that passes a
forged ``X-Forwarded-For: 127.0.0.1`` through does not open the page. A proxy that forwards
without any such header makes every caller look local: do not proxy ``/metrics`` publicly
(``deploy/nginx.conf.example`` answers 404 for it).

When the database cannot be reached the answer is 503, with ``anxin_database_up 0`` for a local
caller; never a 500 or a traceback.
"""

# No ``from __future__ import annotations``: FastAPI reads the route's annotations at run time.
import asyncio
import ipaddress
import logging
import time
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.web.admin_api import bearer
from core import metrics
from core.api_tokens import authenticate
from core.db import DatabaseUnavailable

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
#: A scrape that cannot get its figures in this time answers 503 (Prometheus waits 10 s).
TIMEOUT_SECONDS = 5.0
#: What an unreachable, locked or too slow database raises.
UNREACHABLE = (DatabaseUnavailable, OperationalError, DBAPIError, OSError, TimeoutError)
FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")


def build_version() -> str:
    """The installed package's version, or ``unknown`` when run from a bare checkout."""
    try:
        return version("anxin")
    except PackageNotFoundError:
        return "unknown"


def is_local(request: Request) -> bool:
    """Whether the caller is on this host's loopback and did not come through a proxy."""
    if request.client is None:
        return False
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _plain(status_code: int, message: str, *, challenge: bool = False) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if challenge else None
    return PlainTextResponse(message + "\n", status_code=status_code, headers=headers)


def metrics_router(runtime: "Runtime") -> APIRouter:
    """The ``/metrics`` route over a built runtime."""
    router = APIRouter()
    db = runtime.db
    clock = runtime.clock
    stale_claim = timedelta(seconds=runtime.settings.outbox_stale_claim_seconds)
    release = build_version()
    channels = sorted({*metrics.CHANNELS, *runtime.workers})

    def head(database_up: bool) -> list[metrics.Gauge]:
        return [
            metrics.Gauge("anxin_up", "1 while this process answers.").set(1),
            metrics.Gauge(
                "anxin_build_info", "The running version of Anxin (the value is always 1)."
            ).set(1, version=release),
            metrics.Gauge(
                "anxin_database_up",
                "1 when the figures below could be read from the database, 0 when not.",
            ).set(1 if database_up else 0),
        ]

    @router.get(METRICS_PATH, include_in_schema=False)
    async def scrape(request: Request) -> Response:
        """The figures, to a local caller or one with an admin-API token."""
        token: str | None = None
        if not is_local(request):
            credentials = await bearer(request)
            if credentials is None:
                return _plain(
                    401,
                    "/metrics from another host needs an admin-API bearer token.",
                    challenge=True,
                )
            token = credentials.credentials
        started = time.perf_counter()
        now = clock.now()

        async def work(session: AsyncSession) -> list[metrics.Gauge] | None:
            if token is not None and await authenticate(session, token, now) is None:
                return None
            return await metrics.collect(
                session,
                now,
                stale_claim=stale_claim,
                channels=channels,
            )

        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                figures = await db.run(work, attempts=2)
        except Exception as exc:  # whatever stops the figures is a 503, never a 500
            if isinstance(exc, UNREACHABLE):
                log.warning("/metrics: cannot read the database: %s", _first_line(exc))
            else:
                log.exception("/metrics: reading the figures failed")
            if token is not None:
                return _plain(503, "the database is unavailable, so the token cannot be checked.")
            body = metrics.render(head(database_up=False))
            return PlainTextResponse(body, status_code=503, media_type=metrics.CONTENT_TYPE)
        if figures is None:
            return _plain(401, "unknown or revoked token.", challenge=True)
        took = metrics.Gauge(
            "anxin_scrape_duration_seconds", "Seconds the database queries of this scrape took."
        ).set(round(time.perf_counter() - started, 6))
        body = metrics.render([*head(database_up=True), *figures, took])
        return PlainTextResponse(body, media_type=metrics.CONTENT_TYPE)

    return router


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
