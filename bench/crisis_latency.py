"""(b) Crisis latency under load: a high-risk message to the safety reply and to the staff card.

Anxin runs in its own process (webhook, delivery worker, scheduler) with Telegram's default
RateLimits, against the fake Bot API enforcing Telegram-like limits (30/s overall, 1/s per
chat after a burst of 3, 20 a minute per group). Meanwhile:

* a broadcast to all 10,000 seeded residents is in progress (confirmed before the start; the
  scheduler fans it out into the outbox and it goes at broadcast priority);
* ordinary traffic ("你好", "今天有点累", "/menu", "谢谢") arrives open-loop at
  ``--ordinary-rate`` messages a second (default: 80% of the rate (a) measured on this
  machine on SQLite) from 1,000 residents;
* every ``--crisis-interval`` seconds a different resident writes "我不想活了".

For each crisis message: the time from its POST to the webhook to (1) the safety reply and
(2) the staff card reaching the fake Bot API. The staff chat is one Telegram group, which
Telegram lets a bot write to 20 times a minute, so crisis messages come at most ~17 a minute
(one every 3.5 s by default; 200 take ~12 minutes). Re-pages are set to 600 minutes so that
they do not compete with cards for the group's 20 a minute (nobody claims the cards here).
Quiet hours are off.

    python bench/crisis_latency.py --crisis 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from _harness import (
    FIRST_USER,
    SECRET,
    STAFF_CHAT,
    BenchAPI,
    Updates,
    database,
    latency_line,
    machine,
    percentile,
    person_row,
    seed,
    start_bot,
)

from bot.runtime import TELEGRAM_URGENT_RESERVE  # importable once _harness put the root on the path

BROADCAST_TEXT = "今晚八点有线上放松小组，欢迎参加。"
CRISIS_TEXT = "我不想活了"
ORDINARY = ("你好", "今天有点累", "/menu", "谢谢")
RESIDENTS = 10_000
ORDINARY_RESIDENTS = 1_000
MEASURED_A_RATE = 664.2  # msg/s: (a) on SQLite here, median of 5 rounds (2026-11-23 20:20)


async def prepare(url: str, crisis: int) -> int:
    from core import broadcasts
    from core.clock import SystemClock
    from core.config import Settings
    from core.db import Database
    from core.services import build_core

    now = datetime.now(UTC)
    total = max(RESIDENTS, ORDINARY_RESIDENTS + crisis)
    await seed(url, (person_row(FIRST_USER + i, i, now) for i in range(total)))
    settings = Settings(
        database_url=url, telegram_token="1:x", staff_chat_id=str(STAFF_CHAT), _env_file=None
    )  # type: ignore[call-arg]
    db = Database(url)
    engine = build_core(settings, db, SystemClock()).engine

    async def compose(session: Any) -> int:
        draft = await broadcasts.create_draft(
            session,
            engine,
            texts={"zh_Hans": BROADCAST_TEXT},
            audience=broadcasts.Audience("everyone"),
            send_at=None,
            created_by="bench",
            now=engine.clock.now(),
        )
        await session.flush()
        await broadcasts.confirm(session, engine, draft.id, "bench", engine.clock.now())
        return int(draft.recipients)

    recipients = await db.run(compose)
    await db.dispose()
    return recipients


async def bench(db_kind: str, crisis: int, interval: float, rate: float, reserve: int) -> None:
    with tempfile.TemporaryDirectory(prefix="anxin-bench-") as tmp:
        async with BenchAPI() as api, database(db_kind, Path(tmp)) as url:
            api.enforce_limits(global_per_second=30)
            recipients = await prepare(url, crisis)
            bot = await start_bot(
                "anxin",
                {
                    "api_url": api.base_url,
                    "database_url": url,
                    "data_dir": tmp,
                    "staff_chat_id": STAFF_CHAT,
                    "scheduler": True,
                    "repage_minutes": 600,
                    "supervisor_minutes": 600,
                    "limits": {"urgent_reserve": reserve},
                },
            )
            try:
                await run_load(api, bot.webhook, crisis, interval, rate, recipients, db_kind)
            finally:
                bot.stop()


async def run_load(
    api: BenchAPI,
    webhook: str,
    crisis: int,
    interval: float,
    rate: float,
    recipients: int,
    db_kind: str,
) -> None:
    updates = Updates(start=int(time.time() * 1000) % 10**9 * 10)
    headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET}
    ordinary_users = [FIRST_USER + i for i in range(ORDINARY_RESIDENTS)]
    crisis_users = [FIRST_USER + ORDINARY_RESIDENTS + i for i in range(crisis)]
    rng = random.Random(7)
    stats = {"ordinary_sent": 0, "ordinary_errors": 0, "crisis_errors": 0}
    connector = aiohttp.TCPConnector(limit=300)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def post(update: dict[str, Any]) -> int:
            async with client.post(
                webhook, data=json.dumps(update, ensure_ascii=False).encode(), headers=headers
            ) as response:
                await response.read()
                return response.status

        # The broadcast is in progress before anything is measured.
        start = time.monotonic()
        while time.monotonic() - start < 60:
            if any(r.text == BROADCAST_TEXT for u in ordinary_users[:50] for r in api.by_chat[u]):
                break
            await asyncio.sleep(0.2)
        stop = asyncio.Event()
        inflight = asyncio.Semaphore(250)

        async def one_ordinary() -> None:
            try:
                status = await post(updates.text(rng.choice(ordinary_users), rng.choice(ORDINARY)))
                if status != 200:
                    stats["ordinary_errors"] += 1
            except aiohttp.ClientError:
                stats["ordinary_errors"] += 1
            finally:
                inflight.release()

        async def ordinary() -> None:
            tasks: set[asyncio.Task[None]] = set()
            begin = time.monotonic()
            while not stop.is_set():
                due = begin + stats["ordinary_sent"] / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await inflight.acquire()
                task = asyncio.create_task(one_ordinary())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                stats["ordinary_sent"] += 1
            await asyncio.gather(*tasks, return_exceptions=True)

        replies: list[float] = []
        cards: list[float] = []
        missing = {"reply": 0, "card": 0}

        async def one_crisis(index: int, user: int) -> None:
            code = f"R-Z{ORDINARY_RESIDENTS + index:07d}"
            since = time.monotonic()
            reply = asyncio.create_task(
                api.wait_match(user, lambda r: r.text != BROADCAST_TEXT, since, timeout=120)
            )
            card = asyncio.create_task(
                api.wait_match(STAFF_CHAT, lambda r, c=code: c in r.text, since, timeout=180)
            )
            status = await post(updates.text(user, CRISIS_TEXT))
            if status != 200:
                stats["crisis_errors"] += 1
            for what, task, out in (("reply", reply, replies), ("card", card, cards)):
                try:
                    got = await task
                    out.append(got.at - since)
                except TimeoutError:
                    missing[what] += 1

        load = asyncio.create_task(ordinary())
        crisis_tasks = []
        begin = time.monotonic()
        for index, user in enumerate(crisis_users):
            await asyncio.sleep(max(0.0, begin + index * interval - time.monotonic()))
            crisis_tasks.append(asyncio.create_task(one_crisis(index, user)))
        await asyncio.gather(*crisis_tasks)
        elapsed = time.monotonic() - begin
        stop.set()
        await load
        broadcast_sent = sum(
            1
            for u in range(FIRST_USER, FIRST_USER + recipients)
            for r in api.by_chat.get(u, [])
            if r.text == BROADCAST_TEXT
        )

    print(f"\n== {db_kind}: {len(crisis_users)} crisis messages over {elapsed:.0f} s ==")
    print(
        f"ordinary traffic: {stats['ordinary_sent'] / elapsed:.1f} msg/s offered "
        f"({stats['ordinary_sent']:,} sent, {stats['ordinary_errors']} not answered 200); "
        f"broadcast: {broadcast_sent:,} of {recipients:,} delivered meanwhile; 429s from the "
        f"fake: {api.stats['rate_limited']} "
        f"({dict((k, v) for k, v in api.stats.items() if k.startswith('rate_limited:'))})"
    )
    print(f"safety reply: {latency_line(replies)}  (n={len(replies)}, missing {missing['reply']})")
    print(f"staff card:   {latency_line(cards)}  (n={len(cards)}, missing {missing['card']})")
    ok_reply = percentile(replies, 0.99) < 1.0 and not missing["reply"]
    ok_card = percentile(cards, 0.99) < 2.0 and not missing["card"]
    print(
        f"target p99 < 1 s (reply): {'met' if ok_reply else 'MISSED'}; "
        f"p99 < 2 s (card): {'met' if ok_card else 'MISSED'}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--crisis", type=int, default=200)
    parser.add_argument("--crisis-interval", type=float, default=3.5)
    parser.add_argument("--ordinary-rate", type=float, default=0.8 * MEASURED_A_RATE)
    parser.add_argument(
        "--urgent-reserve",
        type=int,
        default=TELEGRAM_URGENT_RESERVE,
        help=f"RateLimits.urgent_reserve for Anxin (as deployed: {TELEGRAM_URGENT_RESERVE})",
    )
    args = parser.parse_args()
    print(machine())
    print(
        f"ordinary {args.ordinary_rate:.1f} msg/s, a crisis every {args.crisis_interval} s, "
        f"broadcast to {RESIDENTS:,}; Telegram limits on (fake and ours); "
        f"urgent_reserve={args.urgent_reserve}"
    )
    with contextlib.suppress(KeyboardInterrupt):
        await bench(
            args.db, args.crisis, args.crisis_interval, args.ordinary_rate, args.urgent_reserve
        )


if __name__ == "__main__":
    asyncio.run(main())
