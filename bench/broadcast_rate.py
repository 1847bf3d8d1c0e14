"""(c) Broadcast rate against Telegram's 30 messages a second.

Seeds N onboarded residents, confirms a broadcast to everyone, and runs the real runtime (the
scheduler's broadcast sweep fans it out into the outbox; the real Telegram DeliveryWorker with
Telegram's default RateLimits sends it through aiogram) against the fake Bot API enforcing
Telegram-like flood limits (30/s overall, 1/s per chat after a burst of 3, 20/min per group).
Reports the sustained rate of broadcast messages reaching the fake API against the 30/s cap,
the most in any one-second window, and the 429s the fake answered (each one caused by us).
Quiet hours are off (they would hold messages depending on the time of day of the run).

    python bench/broadcast_rate.py --residents 3000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from _harness import (
    FIRST_USER,
    STAFF_CHAT,
    TOKEN,
    BenchAPI,
    database,
    machine,
    person_row,
    seed,
)

TEXT = "今晚八点有线上放松小组，欢迎参加。"
CAP = 30.0


def most_in_window(times: list[float], window: float = 1.0) -> int:
    best, recent = 0, deque[float]()
    for t in sorted(times):
        recent.append(t)
        while recent[0] <= t - window:
            recent.popleft()
        best = max(best, len(recent))
    return best


async def bench(db_kind: str, residents: int, limit: float) -> None:
    from bot.runtime import Runtime
    from core import broadcasts
    from core.config import Settings

    with tempfile.TemporaryDirectory(prefix="anxin-bench-") as tmp:
        async with BenchAPI() as api, database(db_kind, Path(tmp)) as url:
            api.enforce_limits(global_per_second=CAP)
            now = datetime.now(UTC)
            await seed(url, (person_row(FIRST_USER + i, i, now) for i in range(residents)))
            settings = Settings(
                data_dir=Path(tmp),
                database_url=url,
                telegram_token=TOKEN,
                telegram_api_url=api.base_url,
                staff_chat_id=str(STAFF_CHAT),
                quiet_hours="",
                log_level="WARNING",
                _env_file=None,
            )
            runtime = Runtime.build(settings)  # Telegram's default RateLimits
            engine = runtime.core.engine

            async def compose(session):  # type: ignore[no-untyped-def]
                draft = await broadcasts.create_draft(
                    session,
                    engine,
                    texts={"zh_Hans": TEXT},
                    audience=broadcasts.Audience("everyone"),
                    send_at=None,
                    created_by="bench",
                    now=engine.clock.now(),
                )
                await session.flush()
                await broadcasts.confirm(session, engine, draft.id, "bench", engine.clock.now())
                return draft.recipients

            recipients = await runtime.db.run(compose)
            start = time.monotonic()
            await runtime.start(
                serve_http=False, scheduler=True, deliver=True, telegram_updates=False
            )
            users = [FIRST_USER + i for i in range(residents)]
            try:
                while time.monotonic() - start < limit:
                    got = sum(1 for u in users if any(r.text == TEXT for r in api.by_chat[u]))
                    if got >= recipients:
                        break
                    await asyncio.sleep(1.0)
            finally:
                await runtime.stop()
            times = sorted(r.at for u in users for r in api.by_chat[u] if r.text == TEXT)
            staff = len(api.by_chat[STAFF_CHAT])
            per_person = [sum(1 for r in api.by_chat[u] if r.text == TEXT) for u in users]
    first, last = times[0], times[-1]
    sustained = (len(times) - 1) / (last - first)
    inner = [t for t in times if first + 5 <= t <= last - 5]
    steady = (len(inner) - 1) / (inner[-1] - inner[0]) if len(inner) > 1 else float("nan")
    print(f"\n== {db_kind}: broadcast to {recipients:,} residents ==")
    print(
        f"delivered {len(times):,} (each resident exactly once: {all(n == 1 for n in per_person)})"
        f" in {last - first:.1f} s; first message {first - start:.1f} s after start"
    )
    print(
        f"sustained {sustained:.2f} msg/s = {sustained / CAP * 100:.1f}% of the {CAP:.0f}/s cap "
        f"(steady middle: {steady:.2f}/s = {steady / CAP * 100:.1f}%); most in any 1 s window: "
        f"{most_in_window(times)}; staff-chat progress messages: {staff}"
    )
    limited = api.stats["rate_limited"]
    print(
        f"429s from the fake (caused by us): {limited} "
        f"({dict((k, v) for k, v in api.stats.items() if k.startswith('rate_limited:'))})"
    )
    ok = sustained / CAP >= 0.95 and limited == 0
    print(f"target >= 95% of cap and 0 429s: {'met' if ok else 'MISSED'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--residents", type=int, default=3000)
    parser.add_argument("--limit", type=float, default=420.0, help="give up after (seconds)")
    args = parser.parse_args()
    print(machine())
    kinds = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    for kind in kinds:
        await bench(kind, args.residents, args.limit)


if __name__ == "__main__":
    asyncio.run(main())
