"""(d) Check-ins due at once: 100,000 residents whose check-in falls in the same minute.

Seeds onboarded residents with an active check-in plan due now (in a child process), then, in a
fresh child process, calls ``core.checkins.queue_due_checkins`` once: what the scheduler's
check-in sweep runs to queue due check-ins (a check-in row, an outbox row with five mood
buttons, and the next slot, per person), in transactions of ``CHECKIN_BATCH`` plans until
nothing is due. It reports the time from the call to all of them queued and the process's peak
memory: the RSS high-water mark from ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the
measuring process (which holds only the core, not the seeding).

    python bench/checkins_due.py --db sqlite --residents 100000
    python bench/checkins_due.py --db postgres --residents 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _harness import FIRST_USER, ROOT, database, machine, person_row, seed

TARGET_SECONDS = 10.0
TARGET_MB = 250.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def seed_phase(url: str, residents: int) -> None:
    from sqlalchemy import insert

    from core.checkins import CheckinPlan
    from core.db import Database

    now = datetime.now(UTC)
    start = time.monotonic()
    await seed(url, (person_row(FIRST_USER + i, i, now) for i in range(residents)))
    db = Database(url)
    due = now - timedelta(seconds=30)  # every plan falls due within the same minute

    async def plans(session: Any, first: int, last: int) -> None:
        await session.execute(
            insert(CheckinPlan),
            [
                {
                    "person_id": pid,
                    "local_time": "20:00",
                    "status": "active",
                    "tier": "low",
                    "next_due_at": due,
                    "planned_at": now,
                    "low_streak": 0,
                    "created_at": now - timedelta(days=3),
                }
                for pid in range(first, last)
            ],
        )

    for first in range(1, residents + 1, 5000):
        last = min(residents + 1, first + 5000)
        await db.run(lambda s, a=first, b=last: plans(s, a, b))
    await db.dispose()
    print(f"seeded {residents:,} residents with plans due in {time.monotonic() - start:.1f} s")


async def measure_phase(url: str, limit_seconds: float) -> dict[str, Any]:
    from sqlalchemy import func
    from sqlmodel import select

    from core import checkins
    from core.clock import SystemClock
    from core.config import Settings
    from core.db import Database
    from core.models import OutboxMessage
    from core.services import build_core

    settings = Settings(database_url=url, quiet_hours="", _env_file=None)  # type: ignore[call-arg]
    db = Database(url)
    core = build_core(settings, db, SystemClock())
    engine = core.engine
    baseline = rss_mb()
    finished = True
    start = time.monotonic()
    try:
        queued = await asyncio.wait_for(
            checkins.queue_due_checkins(engine, engine.clock.now()), timeout=limit_seconds
        )
    except TimeoutError:  # too slow: count what the committed batches queued
        finished = False
        queued = -1
    elapsed = time.monotonic() - start
    async with db.session() as session:
        rows = (await session.exec(select(func.count()).select_from(OutboxMessage))).one()
    await db.dispose()
    if queued < 0:
        queued = int(rows)
    return {
        "queued": queued,
        "outbox_rows": int(rows),
        "batch": checkins.CHECKIN_BATCH,
        "seconds": elapsed,
        "finished": finished,
        "rss_baseline_mb": baseline,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(phase: str, url: str, residents: int, limit: float) -> dict[str, Any] | None:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--phase",
            phase,
            "--url",
            url,
            "--residents",
            str(residents),
            "--limit",
            str(limit),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=str(ROOT),
    ).stdout
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line.removeprefix("RESULT ")))
        print(line)
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db", choices=("sqlite", "postgresql", "postgres", "both"), default="sqlite"
    )
    parser.add_argument("--residents", type=int, default=100_000)
    parser.add_argument("--limit", type=float, default=600.0, help="give up after (seconds)")
    parser.add_argument("--phase", choices=("seed", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "seed":
        await seed_phase(args.url, args.residents)
        return
    if args.phase == "measure":
        print("RESULT " + json.dumps(await measure_phase(args.url, args.limit)), flush=True)
        return
    print(machine())
    kinds = {"both": ("sqlite", "postgresql"), "postgres": ("postgresql",)}.get(args.db, (args.db,))
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix="anxin-bench-") as tmp:
            async with database(kind, Path(tmp)) as url:
                await asyncio.to_thread(child, "seed", url, args.residents, args.limit)
                r = await asyncio.to_thread(child, "measure", url, args.residents, args.limit)
        assert r is not None
        rate = r["queued"] / r["seconds"]
        print(
            f"{kind}: queued {r['queued']:,} check-ins ({r['outbox_rows']:,} outbox rows) in "
            f"{r['seconds']:.1f} s = {rate:,.0f}/s in transactions of {r['batch']:,} plans"
            + ("" if r["finished"] else f" (STOPPED at the {args.limit:.0f} s limit)")
        )
        full = args.residents / rate
        print(
            f"  time for all {args.residents:,}: {full:.1f} s (target < {TARGET_SECONDS:.0f} s: "
            f"{'met' if full < TARGET_SECONDS else 'MISSED'})"
        )
        print(
            f"  peak RSS (ru_maxrss) {r['rss_peak_mb']:.0f} MB, of which {r['rss_baseline_mb']:.0f}"
            f" MB after loading the core (target < {TARGET_MB:.0f} MB: "
            f"{'met' if r['rss_peak_mb'] < TARGET_MB else 'MISSED'})"
        )


if __name__ == "__main__":
    asyncio.run(main())
