"""Four processes share one PostgreSQL: a web process takes Telegram's webhook, two delivery
workers send, one scheduler; one worker is SIGKILLed in the middle of the run.

Twenty residents go through the crisis conversation at once. Every reply and every staff card
reaches Telegram exactly once, except a row the killed worker had in flight (sent, not yet
recorded): that one may go twice, and each such copy is counted. The killed worker comes back
after the stale-claim age, as a supervisor would restart it, and puts its rows back in the queue.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import asyncpg

from tests.fakebotapi import FakeBotAPI
from tests.faults.conftest import (
    Fleet,
    audit,
    bot_env,
    counselor_on_call,
    create_schema,
    crisis_script,
    free_port,
    in_flight_rows,
    settled,
    staff_room,
    until,
)

RESIDENTS = 20
FIRST_RESIDENT = 5_500_000
STALE_CLAIM = 1.5  # seconds; longer than any send here takes, so a live worker's rows stay its own
SEED = 4


async def escalations(url: str) -> Counter[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return Counter(r["status"] for r in await conn.fetch("SELECT status FROM escalation"))
    finally:
        await conn.close()


async def test_web_two_workers_and_a_scheduler_on_postgresql_survive_a_killed_worker(
    pg_url: str, api: FakeBotAPI, fleet: Fleet, tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    await create_schema(pg_url)
    web_port = free_port()

    def env(port: int) -> dict[str, str]:
        return bot_env(
            tmp_path, api, pg_url, port=port, public_port=web_port, stale_claim=STALE_CLAIM
        )

    api.delay_next("sendMessage", 0.1, times=None)  # Telegram's latency: sends overlap
    counselor = staff_room(api)
    web = await fleet.start(env(web_port), "web", "web")
    workers = [await fleet.start(env(free_port()), f"worker-{n}", "worker") for n in (1, 2)]
    await fleet.start(env(free_port()), "scheduler", "scheduler")
    await fleet.healthy(web)
    await until(lambda: api.webhook is not None, "the scheduler setting the webhook")
    await counselor_on_call(api, counselor)

    scripts = asyncio.gather(
        *(crisis_script(api, FIRST_RESIDENT + n, counselor, patience=30) for n in range(RESIDENTS))
    )
    # Kill a worker at a random moment once the run is in full swing, while rows are in flight.
    await asyncio.sleep(rng.uniform(0.5, 2.0))

    async def busy() -> bool:
        return len(await in_flight_rows(pg_url)) >= 4

    await until(busy, "rows in flight", every=0.005)
    victim = workers[rng.randrange(2)]
    await fleet.kill(victim)
    # A live worker finishes its sends within milliseconds; what is still 'sending' a moment
    # later was the dead worker's.
    at_kill = set(await in_flight_rows(pg_url))
    await asyncio.sleep(0.5)
    orphaned = at_kill & set(await in_flight_rows(pg_url))
    await asyncio.sleep(STALE_CLAIM)
    await fleet.start(victim.env, f"{victim.name}-restarted", "worker")

    try:
        async with asyncio.timeout(90):
            await scripts
            rows = await settled(pg_url, timeout=30)
    except (AssertionError, TimeoutError) as error:
        raise AssertionError(f"{error}\n{fleet.logs(tail=1500)}") from None
    result = audit(rows, api, Counter(orphaned))
    summary = (
        f"{RESIDENTS} residents, 4 processes, {victim.name} killed with {len(orphaned)} row(s) "
        f"in flight; {result.rows} rows, {result.sends} sends, {result.duplicates} duplicate(s) "
        f"(rows {result.duplicated_rows}); {time.monotonic() - started:.1f}s"
    )
    print(f"\nPostgreSQL processes: {summary}")
    assert not result.problems, f"{summary}\n" + "\n".join(result.problems)
    assert api.stats["webhook_dropped"] == 0
    assert await escalations(pg_url) == Counter({"claimed": RESIDENTS})
    for proc in fleet.started:
        if proc is not victim:
            await fleet.check_running(proc)
