"""SIGKILL ``anxin run`` at random moments of a crisis conversation, fifty times over.

One SQLite database and one fake Telegram for the whole run. Each trial is a new resident
going through onboarding, a high-risk message, a follow-up answer and a counselor's claim in
the staff chat, while the bot process is killed at a seeded random moment and started again
(``--no-migrate``, as a supervisor would). At the end what Telegram received is compared with
what the database says was sent: every row went out, and a row went out more than once only if
a kill found it ``sending`` (the documented at-least-once window: the send completed, its
record did not).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

from tests.fakebotapi import FakeBotAPI
from tests.faults.conftest import (
    BOUND,
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
)

TRIALS = int(os.environ.get("ANXIN_FAULT_TRIALS", "50"))
SEED = 20_260_107
FIRST_RESIDENT = 5_300_000
SEND_LATENCY = 0.03  # seconds the fake Telegram takes per sendMessage, as over the internet


def escalation_statuses(path: Path) -> Counter[str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return Counter(s for (s,) in conn.execute("SELECT status FROM escalation"))


async def test_sigkill_at_random_moments_of_a_crisis_conversation_loses_no_message(
    api: FakeBotAPI, fleet: Fleet, tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    db_path = tmp_path / "anxin.sqlite3"
    url = f"sqlite+aiosqlite:///{db_path}"
    env = bot_env(tmp_path, api, url, port=free_port())
    api.delay_next("sendMessage", SEND_LATENCY, times=None)
    counselor = staff_room(api)

    await create_schema(url)
    bot = await fleet.start(env, "bot-0")
    await fleet.healthy(bot)
    await counselor_on_call(api, counselor)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await crisis_script(api, FIRST_RESIDENT, counselor)  # no kill: how long a script takes
    duration = loop.time() - began
    await settled(url)

    in_flight: Counter[int] = Counter()
    kills_with_rows_in_flight = 0
    for trial in range(1, TRIALS + 1):
        kill_at = rng.uniform(0.0, duration)
        script = asyncio.create_task(crisis_script(api, FIRST_RESIDENT + trial, counselor))
        await asyncio.wait({script}, timeout=kill_at)
        await fleet.kill(bot)
        flying = await in_flight_rows(url)
        in_flight.update(flying)
        kills_with_rows_in_flight += bool(flying)
        bot = await fleet.start(env, f"bot-{trial}")
        try:
            await fleet.healthy(bot)
            await asyncio.wait_for(script, 2 * BOUND)
            await settled(url)
        except (AssertionError, TimeoutError) as error:
            script.cancel()
            raise AssertionError(
                f"trial {trial} (killed at {kill_at:.3f}s): {error}\n{fleet.logs(tail=2000)}"
            ) from None

    rows = await settled(url)
    result = audit(rows, api, in_flight)
    summary = (
        f"{TRIALS} kills, {kills_with_rows_in_flight} with rows in flight "
        f"({sum(in_flight.values())} rows); {result.rows} rows, {result.sends} sends, "
        f"{result.duplicates} duplicate(s) (rows {result.duplicated_rows}); "
        f"script {duration:.2f}s; {time.monotonic() - started:.1f}s in all"
    )
    print(f"\nSIGKILL trials: {summary}")
    assert not result.problems, f"{summary}\n" + "\n".join(result.problems)
    assert api.stats["webhook_dropped"] == 0
    assert fleet.kills == TRIALS
    # Every resident's case was opened once and claimed once.
    assert escalation_statuses(db_path) == Counter({"claimed": TRIALS + 1})
