"""``GET /metrics`` through the real app: exact figures, the exposition format, who may read it,
the database away, and the cost of a scrape over 100,000 outbox rows (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlmodel import col, select, update
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from bot.runtime import Runtime
from bot.web import metrics as web_metrics
from core import api_tokens
from core.access import Role
from core.booking import Booking, Slot
from core.broadcasts import Broadcast
from core.checkins import Checkin
from core.clock import FakeClock
from core.config import Settings
from core.escalation import Escalation, OnCall
from core.messages import Priority
from core.models import InboundSeen, OutboxMessage, Person, RoleGrant
from tests.drivers import EngineChat
from tests.integration.conftest import free_port

STAFF_CHAT = "-100777"
REMOTE = ("203.0.113.7", 50123)
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yaml"

Series = tuple[str, frozenset[tuple[str, str]]]


# The exposition format (text 0.0.4), parsed strictly -----------------------------------------

_METRIC = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP = re.compile(rf"^# HELP ({_METRIC}) (.*)$")
_TYPE = re.compile(rf"^# TYPE ({_METRIC}) (counter|gauge|histogram|summary|untyped)$")
_SAMPLE = re.compile(rf"^({_METRIC})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse(text: str) -> dict[Series, float]:
    """Every sample of a Prometheus text exposition; fails on anything out of shape."""
    assert text.endswith("\n") and "\r" not in text
    helped: set[str] = set()
    typed: dict[str, str] = {}
    finished: set[str] = set()
    current: str | None = None
    samples: dict[Series, float] = {}
    for line in text.splitlines():
        if m := _HELP.match(line):
            name = m.group(1)
            assert name not in helped and name not in finished, f"family twice: {line}"
            if current is not None and current != name:
                finished.add(current)
            helped.add(name)
            current = name
            continue
        if m := _TYPE.match(line):
            name = m.group(1)
            assert name == current and name not in typed, f"TYPE out of place: {line}"
            typed[name] = m.group(2)
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"not a sample line: {line!r}"
        name, raw_labels, raw_value = m.groups()
        assert name == current and typed.get(name) == "gauge", f"sample outside its family: {line}"
        labels: list[tuple[str, str]] = []
        if raw_labels:
            position = 0
            while position < len(raw_labels):
                lm = _LABEL.match(raw_labels, position)
                assert lm is not None, f"bad labels in {line!r}"
                labels.append((lm.group(1), lm.group(2)))
                position = lm.end()
        assert len({k for k, _ in labels}) == len(labels), f"label twice: {line}"
        value = float(raw_value)  # NaN, +Inf, -Inf and numbers
        key = (name, frozenset(labels))
        assert key not in samples, f"series twice: {line}"
        samples[key] = value
    return samples


def series(name: str, **labels: str) -> Series:
    return (name, frozenset(labels.items()))


def family(samples: dict[Series, float], name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


# The app ----------------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=db_url,
        telegram_token="1:x",  # type: ignore[call-arg]
        staff_chat_id=STAFF_CHAT,
        outbox_stale_claim_seconds=60,
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


def client_for(app: Any, client: tuple[str, int] = ("127.0.0.1", 40000)) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://anxin.test")


@pytest.fixture
async def local(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(runtime.app()) as http:
        yield http


@pytest.fixture
async def remote(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(runtime.app(), REMOTE) as http:
        yield http


async def bearer(runtime: Runtime, name: str, role: Role = Role.ADMIN) -> dict[str, str]:
    now = runtime.clock.now()
    issued = await runtime.db.run(lambda s: api_tokens.issue(s, name, role, now))
    return {"Authorization": f"Bearer {issued}"}


async def scrape(http: httpx.AsyncClient, **kw: Any) -> dict[Series, float]:
    response = await http.get("/metrics", **kw)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


# Seeding ----------------------------------------------------------------------------------------


def outbox_row(
    now: datetime,
    *,
    channel: str = "telegram",
    priority: Priority = Priority.REPLY,
    status: str = "pending",
    created: timedelta = timedelta(0),
    due: timedelta | None = None,
    claimed: timedelta | None = None,
    chat_id: str = "500",
) -> dict[str, Any]:
    """One outbox row for a core INSERT; ``created``/``due``/``claimed`` are offsets from now."""
    return {
        "channel": channel,
        "chat_id": chat_id,
        "chat_kind": "private",
        "person_id": None,
        "priority": int(priority),
        "kind": "reply",
        "text": "",
        "buttons": "[]",
        "status": status,
        "attempts": 0,
        "due_at": now + (created if due is None else due),
        "created_at": now + created,
        "claimed_at": None if claimed is None else now + claimed,
    }


async def insert_outbox(runtime: Runtime, rows: list[dict[str, Any]]) -> None:
    async def work(session: Any) -> None:
        for start in range(0, len(rows), 5000):
            await session.execute(OutboxMessage.__table__.insert(), rows[start : start + 5000])  # type: ignore[attr-defined]

    await runtime.db.run(work)


def person(now: datetime, n: int) -> Person:
    return Person(
        channel="telegram",
        external_id=str(9000 + n),
        chat_id=str(9000 + n),
        case_code=f"R-SEED{n}",
        created_at=now,
        last_seen_at=now,
    )


S = timedelta(seconds=1)


async def seed(runtime: Runtime) -> list[str]:
    """A known state of everything /metrics counts; returns the case codes used."""
    now = runtime.clock.now()
    rows = [
        # crisis: the oldest due one waited 40 s (telegram), a newer one on the web chat
        outbox_row(now, priority=Priority.CRISIS, created=-40 * S),
        outbox_row(now, channel="web", priority=Priority.CRISIS, created=-10 * S),
        # escalation card waiting 5 s; a reply waiting out a retry since 70 s ago
        outbox_row(now, chat_id=STAFF_CHAT, priority=Priority.ESCALATION, created=-5 * S),
        outbox_row(now, channel="web", created=-70 * S),
        outbox_row(now, channel="web", created=0 * S),
        outbox_row(now, channel="wecom", created=-1 * S),  # a channel this version lacks
        # a reminder held for quiet hours (due in 2 h): pending, but not late
        outbox_row(now, priority=Priority.REMINDER, created=-600 * S, due=2 * 3600 * S),
        # broadcast rows due 100 s ago
        *[outbox_row(now, priority=Priority.BROADCAST, created=-100 * S) for _ in range(3)],
        # in flight: one claimed 90 s ago (stale at 60 s), one 10 s ago, one at exactly 60 s
        outbox_row(now, status="sending", claimed=-90 * S, created=-95 * S),
        outbox_row(now, status="sending", claimed=-10 * S, created=-10 * S),
        outbox_row(now, status="sending", claimed=-60 * S, created=-60 * S, channel="web"),
        # finished
        outbox_row(now, priority=Priority.ESCALATION, status="failed", created=-3600 * S),
        *[outbox_row(now, priority=Priority.BROADCAST, status="blocked") for _ in range(2)],
        outbox_row(now, priority=Priority.BROADCAST, status="cancelled"),
        *[outbox_row(now, status="sent", created=-(n + 1) * 1000 * S) for n in range(5)],
    ]
    await insert_outbox(runtime, rows)

    async def more(session: Any) -> list[str]:
        people = [person(now, n) for n in range(8)]
        session.add_all(people)
        await session.flush()
        ids = [p.id for p in people]
        escalations = [
            # open high, 7 minutes, its re-page 30 s overdue; open imminent, 2 minutes
            (0, 3, "open", -420, -30),
            (1, 4, "open", -120, 60),
            (2, 4, "open", -20, 100),
            (3, 2, "claimed", -900, None),
            (4, 3, "resolved", -5000, None),
        ]
        for index, level, status, created, page in escalations:
            session.add(
                Escalation(
                    person_id=ids[index],
                    open_person_id=ids[index] if status != "resolved" else None,
                    case_code=people[index].case_code,
                    level=level,
                    source="text",
                    status=status,
                    next_page_at=None if page is None else now + page * S,
                    created_at=now + created * S,
                    claimed_at=now if status != "open" else None,
                    claimed_by=ids[7] if status != "open" else None,
                )
            )
        session.add_all([OnCall(person_id=ids[6], since=now), OnCall(person_id=ids[7], since=now)])
        for n, (channel, ago) in enumerate(
            [
                ("telegram", 10),
                ("telegram", 299),
                ("telegram", 301),
                ("web", 0),
                ("web", 3600),
                ("wecom", 5),
            ]
        ):
            session.add(InboundSeen(channel=channel, key=f"k{n}", seen_at=now - ago * S))
        slot_times = [2, 30, 3, -2]  # hours from now
        for n, hours in enumerate(slot_times):
            slot = Slot(
                counselor_id=ids[7],
                starts_at=now + hours * 3600 * S,
                ends_at=now + (hours * 3600 + 3000) * S,
                status="booked",
                created_at=now,
            )
            session.add(slot)
            await session.flush()
            session.add(
                Booking(
                    slot_id=slot.id,
                    active_slot_id=slot.id if n != 2 else None,
                    resident_id=ids[n],
                    counselor_id=ids[7],
                    starts_at=slot.starts_at,
                    ends_at=slot.ends_at,
                    status="cancelled" if n == 2 else "booked",
                    created_at=now,
                )
            )
        session.add_all(
            [
                Checkin(person_id=ids[0], local_date="2026-01-05", sent_at=now - 3600 * S),
                Checkin(person_id=ids[1], local_date="2026-01-05", sent_at=now),
                Checkin(person_id=ids[0], local_date="2026-01-04", sent_at=now - 25 * 3600 * S),
            ]
        )
        for status in ("scheduled", "sending", "sending", "done", "draft"):
            session.add(
                Broadcast(
                    status=status,
                    audience_kind="everyone",
                    send_at=now,
                    created_by="test",
                    created_at=now,
                )
            )
        return [p.case_code for p in people]

    return await runtime.db.run(more)


# Figures ----------------------------------------------------------------------------------------


async def test_seeded_rows_give_exact_figures(
    runtime: Runtime, local: httpx.AsyncClient, clock: FakeClock
) -> None:
    codes = await seed(runtime)
    response = await local.get("/metrics")
    assert response.status_code == 200
    for code in codes:
        assert code not in response.text
    got = parse(response.text)

    assert got[series("anxin_up")] == 1
    assert got[series("anxin_database_up")] == 1
    assert family(got, "anxin_build_info") == {frozenset({("version", "0.1.0")}): 1}
    assert 0 <= got[series("anxin_scrape_duration_seconds")] < 5

    pending = {
        (dict(labels)["channel"], dict(labels)["priority"]): value
        for labels, value in family(got, "anxin_outbox_pending").items()
    }
    expected = {(c, p.name.lower()): 0.0 for c in ("telegram", "web") for p in Priority}
    expected |= {
        ("telegram", "crisis"): 1,
        ("web", "crisis"): 1,
        ("telegram", "escalation"): 1,
        ("web", "reply"): 2,
        ("telegram", "reminder"): 1,
        ("telegram", "broadcast"): 3,
        ("other", "reply"): 1,
    }
    assert pending == expected
    ages = {
        dict(labels)["priority"]: value
        for labels, value in family(got, "anxin_outbox_oldest_pending_age_seconds").items()
    }
    assert ages == {"crisis": 40, "escalation": 5, "reply": 70, "reminder": 0, "broadcast": 100}
    assert family(got, "anxin_outbox_sending") == {
        frozenset({("channel", "telegram")}): 2,
        frozenset({("channel", "web")}): 1,
    }
    assert family(got, "anxin_outbox_stale_claims") == {
        frozenset({("channel", "telegram")}): 1,
        frozenset({("channel", "web")}): 0,  # claimed exactly 60 s ago: not yet stale
    }
    undelivered = {
        (dict(labels)["status"], dict(labels)["priority"]): value
        for labels, value in family(got, "anxin_outbox_undelivered").items()
        if value
    }
    assert undelivered == {
        ("failed", "escalation"): 1,
        ("blocked", "broadcast"): 2,
        ("cancelled", "broadcast"): 1,
    }
    assert len(family(got, "anxin_outbox_undelivered")) == 3 * len(Priority)

    assert family(got, "anxin_escalations_unclaimed") == {
        frozenset({("level", "moderate")}): 0,
        frozenset({("level", "high")}): 1,
        frozenset({("level", "imminent")}): 2,
    }
    assert got[series("anxin_escalation_oldest_unclaimed_age_seconds")] == 420
    assert got[series("anxin_escalation_repage_overdue_seconds")] == 30
    assert family(got, "anxin_escalations_claimed") == {
        frozenset({("level", "moderate")}): 1,
        frozenset({("level", "high")}): 0,
        frozenset({("level", "imminent")}): 0,
    }
    assert got[series("anxin_counselors_on_call")] == 2
    assert family(got, "anxin_inbound_updates_5m") == {
        frozenset({("channel", "telegram")}): 2,
        frozenset({("channel", "web")}): 1,
        frozenset({("channel", "other")}): 1,
    }
    assert got[series("anxin_bookings_upcoming_24h")] == 1
    assert got[series("anxin_checkins_queued_24h")] == 2
    assert family(got, "anxin_broadcasts") == {
        frozenset({("status", "scheduled")}): 1,
        frozenset({("status", "sending")}): 2,
    }

    # The same rows 3 minutes later: every age moves by 180 s, windows close, the reminder's
    # quiet hours have not ended, the other in-flight rows are stale now too.
    clock.advance(minutes=3)
    later = await scrape(local)
    ages = {
        dict(labels)["priority"]: value
        for labels, value in family(later, "anxin_outbox_oldest_pending_age_seconds").items()
    }
    assert ages == {"crisis": 220, "escalation": 185, "reply": 250, "reminder": 0, "broadcast": 280}
    assert later[series("anxin_escalation_oldest_unclaimed_age_seconds")] == 600
    assert later[series("anxin_escalation_repage_overdue_seconds")] == 210
    assert family(later, "anxin_outbox_stale_claims") == {
        frozenset({("channel", "telegram")}): 2,
        frozenset({("channel", "web")}): 1,
    }
    assert family(later, "anxin_inbound_updates_5m") == {
        frozenset({("channel", "telegram")}): 1,  # seen 190 s ago; the 479 s one is too old
        frozenset({("channel", "web")}): 1,
        frozenset({("channel", "other")}): 1,
    }


async def test_an_empty_deployment_has_every_alerting_series_at_zero(
    local: httpx.AsyncClient,
) -> None:
    got = await scrape(local)
    for priority in ("crisis", "escalation"):
        assert got[series("anxin_outbox_oldest_pending_age_seconds", priority=priority)] == 0
        for channel in ("telegram", "web"):
            assert got[series("anxin_outbox_pending", channel=channel, priority=priority)] == 0
    assert got[series("anxin_escalation_oldest_unclaimed_age_seconds")] == 0
    assert got[series("anxin_escalations_unclaimed", level="imminent")] == 0
    assert got[series("anxin_counselors_on_call")] == 0
    assert got[series("anxin_database_up")] == 1


async def test_a_real_sos_shows_as_an_unclaimed_card_until_a_counselor_claims_it(
    runtime: Runtime, local: httpx.AsyncClient, clock: FakeClock
) -> None:
    async def in_staff_chat(channel: str, external_id: str) -> bool:  # no Telegram here
        return external_id == "900"

    runtime.core.engine.staff_member = in_staff_chat
    counselor = EngineChat(runtime.core, "900")
    await counselor.command("start")

    async def grant(session: Any) -> None:
        found = (await session.exec(select(Person).where(Person.external_id == "900"))).one()
        session.add(RoleGrant(person_id=found.id, role="counselor", granted_at=clock.now()))

    await runtime.db.run(grant)
    await counselor.command("oncall", "on")
    resident = EngineChat(runtime.core, "100")
    await resident.onboard()
    await resident.command("sos")
    clock.advance(seconds=75)

    got = await scrape(local)
    assert got[series("anxin_escalations_unclaimed", level="imminent")] == 1
    assert got[series("anxin_escalation_oldest_unclaimed_age_seconds")] == 75
    assert got[series("anxin_counselors_on_call")] == 1
    # Nothing delivers in this test: the safety reply waits as a crisis row since the SOS, and
    # the card as an escalation row.
    assert got[series("anxin_outbox_oldest_pending_age_seconds", priority="crisis")] == 75
    assert got[series("anxin_outbox_oldest_pending_age_seconds", priority="escalation")] == 75
    assert got[series("anxin_outbox_pending", channel="telegram", priority="crisis")] >= 1

    async with runtime.db.session() as session:
        cards = (
            await session.exec(select(OutboxMessage).where(OutboxMessage.chat_id == STAFF_CHAT))
        ).all()
    claim = next(
        button["token"]
        for row in reversed(cards)
        for line in json.loads(row.buttons)
        for button in line
        if "认领" in button["label"]
    )
    await counselor.press(claim, chat_kind="group")
    got = await scrape(local)
    assert got[series("anxin_escalations_unclaimed", level="imminent")] == 0
    assert got[series("anxin_escalations_claimed", level="imminent")] == 1
    assert got[series("anxin_escalation_oldest_unclaimed_age_seconds")] == 0

    # Delivered (marked sent as a worker would): the crisis age drops to zero.
    async def sent(session: Any) -> None:
        await session.exec(
            update(OutboxMessage)
            .where(col(OutboxMessage.status) == "pending")
            .values(status="sent", sent_at=clock.now())
        )

    await runtime.db.run(sent)
    got = await scrape(local)
    assert got[series("anxin_outbox_oldest_pending_age_seconds", priority="crisis")] == 0


# Who may read it --------------------------------------------------------------------------------


async def test_another_host_needs_a_valid_token(
    runtime: Runtime, remote: httpx.AsyncClient
) -> None:
    refused = await remote.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.headers["content-type"].startswith("text/plain")
    assert refused.text.count("\n") == 1 and "anxin_" not in refused.text

    for wrong in ("Bearer anxin_not-a-token", "Bearer nope", "Basic YWRtaW46YWRtaW4="):
        response = await remote.get("/metrics", headers={"Authorization": wrong})
        assert response.status_code in (401, 403), wrong
        assert response.text.count("\n") == 1 and "anxin_" not in response.text

    admin = await bearer(runtime, "prometheus")
    assert (await scrape(remote, headers=admin))[series("anxin_database_up")] == 1
    supervisor = await bearer(runtime, "lead", Role.SUPERVISOR)
    assert (await scrape(remote, headers=supervisor))[series("anxin_up")] == 1

    await runtime.db.run(lambda s: api_tokens.revoke(s, "prometheus", runtime.clock.now()))
    assert (await remote.get("/metrics", headers=admin)).status_code == 401


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "127.0.0.53", "::ffff:127.0.0.1"])
async def test_loopback_needs_no_token(runtime: Runtime, host: str) -> None:
    async with client_for(runtime.app(), (host, 40000)) as http:
        assert (await scrape(http))[series("anxin_up")] == 1


@pytest.mark.parametrize("host", ["10.0.0.5", "172.17.0.1", "192.168.1.2", "2001:db8::1"])
async def test_private_addresses_are_not_local(runtime: Runtime, host: str) -> None:
    async with client_for(runtime.app(), (host, 40000)) as http:
        assert (await http.get("/metrics")).status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "127.0.0.1"},  # a proxy passing a forged header through
        {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"},  # a proxy appending the real client
        {"X-Forwarded-For": "203.0.113.9"},  # a proxy setting it
        {"Forwarded": "for=127.0.0.1"},
        {"X-Real-IP": "127.0.0.1"},
    ],
)
async def test_a_proxied_request_is_never_local(runtime: Runtime, headers: dict[str, str]) -> None:
    # As uvicorn serves it (proxy_headers=True): a proxy on 127.0.0.1 is trusted, so the
    # client address becomes the forwarded one; a forged 127.0.0.1 must not open the page.
    app = ProxyHeadersMiddleware(runtime.app(), trusted_hosts="127.0.0.1,::1")  # type: ignore[arg-type]
    async with client_for(app) as http:
        response = await http.get("/metrics", headers=headers)
        assert response.status_code == 401, response.text
        token = await bearer(runtime, "through-proxy")
        assert (await scrape(http, headers={**headers, **token}))[series("anxin_up")] == 1


# The database away ------------------------------------------------------------------------------


@pytest.fixture
def unreachable_url(db_url: str, tmp_path: Path) -> str:
    """A URL of the same kind as ``db_url`` whose database cannot be reached."""
    if db_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_path / 'no-such-folder' / 'anxin.sqlite3'}"
    return f"postgresql+asyncpg://anxin:anxin@127.0.0.1:{free_port()}/anxin"


async def test_an_unreachable_database_gives_503_and_database_up_0(
    settings: Settings, clock: FakeClock, unreachable_url: str
) -> None:
    runtime = Runtime.build(settings.model_copy(update={"database_url": unreachable_url}), clock)
    try:
        async with client_for(runtime.app()) as http:
            response = await http.get("/metrics")
            assert response.status_code == 503
            assert "Traceback" not in response.text and "Error" not in response.text
            got = parse(response.text)
            assert got == {
                series("anxin_up"): 1,
                series("anxin_build_info", version="0.1.0"): 1,
                series("anxin_database_up"): 0,
            }
        async with client_for(runtime.app(), REMOTE) as http:
            assert (await http.get("/metrics")).status_code == 401
            token = {"Authorization": "Bearer anxin_" + "x" * 43}
            response = await http.get("/metrics", headers=token)
            assert response.status_code == 503
            assert response.text.count("\n") == 1 and "anxin_" not in response.text
    finally:
        await runtime.db.dispose()
        settle_aiosqlite_threads()


def settle_aiosqlite_threads() -> None:
    """Let aiosqlite's threads of connections that failed to open finish before the loop closes.

    aiosqlite stops such a connection by queueing a last call on its thread, which then posts
    its result to this test's event loop; if the loop has closed by then, the thread raises.
    """
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            thread.join(timeout=5)


async def test_a_database_that_does_not_answer_gives_503_before_prometheus_gives_up(
    runtime: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    if db_url.startswith("sqlite"):
        # Another connection holds the file exclusively: each of the scrape's two tries waits
        # out SQLite's 1 s busy timeout, then it answers 503 (within its 5 s budget).
        await runtime.db.dispose()  # (the pool's idle connection would stop the lock)
        locker = sqlite3.connect(db_url.split(":///", 1)[1], isolation_level=None)
        locker.execute("PRAGMA locking_mode=EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        release = locker.close
        stuck = runtime
    else:
        # A server that accepts the connection and then says nothing, like a host half gone:
        # the scrape's own budget (0.5 s here, 5 s in production) ends the wait.
        monkeypatch.setattr(web_metrics, "TIMEOUT_SECONDS", 0.5)
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        url = f"postgresql+asyncpg://anxin:anxin@127.0.0.1:{port}/anxin"
        stuck = Runtime.build(runtime.settings.model_copy(update={"database_url": url}), clock)
        release = silent.close
    try:
        async with client_for(stuck.app()) as http:
            started = time.perf_counter()
            response = await http.get("/metrics")
            took = time.perf_counter() - started
        assert response.status_code == 503
        assert parse(response.text)[series("anxin_database_up")] == 0
        assert took < web_metrics.TIMEOUT_SECONDS + 1  # not the driver's minute-long timeout
    finally:
        release()
        if stuck is not runtime:
            await stuck.db.dispose()
    async with client_for(runtime.app()) as http:  # and it recovers
        assert (await scrape(http))[series("anxin_database_up")] == 1


# Cost at scale ----------------------------------------------------------------------------------


async def test_a_scrape_over_100000_outbox_rows_takes_well_under_a_second(
    runtime: Runtime, local: httpx.AsyncClient, db_url: str
) -> None:
    now = runtime.clock.now()
    # A big broadcast under way (60,000 rows waiting), 30,000 already sent, and the rest spread
    # over what a busy day leaves: blocked people, a few failures, rows in flight.
    rows = [
        outbox_row(now, priority=Priority.BROADCAST, created=-n * S / 10, chat_id=str(n))
        for n in range(60_000)
    ]
    rows += [outbox_row(now, status="sent", created=-n * S, chat_id=str(n)) for n in range(30_000)]
    rows += [
        outbox_row(now, priority=Priority.BROADCAST, status="blocked", chat_id=str(n))
        for n in range(9_000)
    ]
    rows += [outbox_row(now, status="failed", priority=Priority.REMINDER) for _ in range(500)]
    rows += [outbox_row(now, status="sending", claimed=-5 * S) for _ in range(490)]
    rows += [outbox_row(now, priority=Priority.CRISIS, created=-3 * S) for _ in range(10)]
    assert len(rows) == 100_000
    await insert_outbox(runtime, rows)

    await scrape(local)  # a first scrape warms the connection pool and the caches
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        got = await scrape(local)
        timings.append(time.perf_counter() - started)
    best = min(timings)
    print(f"\n/metrics over 100,000 outbox rows ({db_url.split(':')[0]}): {best * 1000:.0f} ms")
    assert best < 0.5, timings
    assert got[series("anxin_outbox_pending", channel="telegram", priority="broadcast")] == 60_000
    assert got[series("anxin_outbox_oldest_pending_age_seconds", priority="broadcast")] == 5999.9
    assert got[series("anxin_outbox_pending", channel="telegram", priority="crisis")] == 10
    assert got[series("anxin_outbox_oldest_pending_age_seconds", priority="crisis")] == 3
    assert got[series("anxin_outbox_undelivered", status="blocked", priority="broadcast")] == 9_000
    assert got[series("anxin_outbox_undelivered", status="failed", priority="reminder")] == 500
    assert got[series("anxin_outbox_sending", channel="telegram")] == 490


# The example alert rules --------------------------------------------------------------------------


async def test_the_example_alert_rules_use_only_metrics_that_exist(
    runtime: Runtime, local: httpx.AsyncClient
) -> None:
    exposed = {name for name, _ in await scrape(local)}
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert alerts and all({"alert", "expr", "labels", "annotations"} <= set(r) for r in alerts)
    used = set()
    for rule in alerts:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", rule["alert"]), rule["alert"]
        used |= set(re.findall(r"\b(anxin_[a-z0-9_]+)", rule["expr"]))
    assert used and used <= exposed, used - exposed
    names = {rule["alert"] for rule in alerts}
    assert {"AnxinEscalationUnclaimed", "AnxinCrisisMessageStuck", "AnxinDown"} <= names
