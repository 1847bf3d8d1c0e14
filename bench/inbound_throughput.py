"""(a) Inbound throughput and latency: Anxin beside a bare aiogram echo bot, same everything.

N simulated residents each send a mix of ordinary messages ("你好", "今天有点累", "/menu",
"谢谢", and a press of the menu's Help button), one at a time: POST the update to the bot's
webhook (uvicorn for Anxin, aiogram's aiohttp handler for the echo bot; real HTTP on
127.0.0.1, one shared aiohttp client), then wait until every reply to it has reached the fake
Bot API, then send the next. Latency is from the POST to the last reply reaching the fake API;
the rate is messages handled per second of the whole run.

The bot runs in its own process; the load generator and the fake Bot API share this one. Rate
limits are lifted on both sides (the fake enforces none, Anxin's RateLimits are 100,000/s),
since Telegram's per-chat limit of ~1 message a second would measure Telegram, not us.

    python bench/inbound_throughput.py --db both
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from _harness import (
    FIRST_USER,
    SECRET,
    BenchAPI,
    BotProcess,
    Updates,
    cpu_seconds,
    database,
    latency_line,
    machine,
    person_row,
    seed,
    start_bot,
)

LIFTED = {"global_per_second": 100_000, "chat_per_second": 100_000, "chat_burst": 100_000}
MIX = ("你好", "今天有点累", "press:help", "/menu", "谢谢")


class Load:
    """Residents talking to one bot through one HTTP client."""

    def __init__(self, api: BenchAPI, bot: BotProcess, client: aiohttp.ClientSession) -> None:
        self.api = api
        self.bot = bot
        self.client = client
        self.updates = Updates(start=int(time.time() * 1000) % 10**9 * 10)
        self.help_data: dict[int, str] = {}
        self.replies_per: dict[str, int] = {}

    async def post(self, update: dict[str, Any]) -> None:
        for attempt in range(3):
            try:
                await self._post(update)
                return
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # A kept-alive connection the server closed as we reused it; the update id
                # makes a second POST harmless (Telegram retries the same way).
                if attempt == 2:
                    raise

    async def _post(self, update: dict[str, Any]) -> None:
        async with self.client.post(
            self.bot.webhook,
            data=json.dumps(update, ensure_ascii=False).encode(),
            headers={
                "Content-Type": "application/json",
                "X-Telegram-Bot-Api-Secret-Token": SECRET,
            },
        ) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"webhook answered {response.status}")

    def update_for(self, user: int, item: str) -> dict[str, Any]:
        if item == "press:help":
            update = self.updates.press(user, self.help_data.get(user, "help"))
            query = update["callback_query"]
            self.api._queries[query["id"]] = query  # the fake answers only queries it issued
            return update
        return self.updates.text(user, item)

    async def settle(self, user: int, quiet: float = 0.4, limit: float = 5.0) -> int:
        """Wait until no new message reached ``user`` for ``quiet`` seconds; return the count."""
        deadline = time.monotonic() + limit
        count = len(self.api.by_chat[user])
        while time.monotonic() < deadline:
            await asyncio.sleep(quiet)
            now = len(self.api.by_chat[user])
            if now == count:
                return count
            count = now
        return count

    async def warm_up(self, users: list[int], help_label: str | None) -> None:
        """Everyone opens the menu once (Anxin also plans their check-ins then)."""
        await asyncio.gather(*(self.post(self.updates.text(u, "/menu")) for u in users))
        await asyncio.gather(*(self.settle(u) for u in users))
        for user in users:
            data = None
            for got in reversed(self.api.by_chat[user]):
                if isinstance(got.markup, dict):
                    for row in got.markup.get("inline_keyboard", []):
                        for button in row:
                            if help_label is None or button.get("text") == help_label:
                                data = button.get("callback_data")
                if data:
                    break
            if data:
                self.help_data[user] = data
        # How many messages each kind of input gets back (replies are counted, not guessed).
        probe = users[0]
        for item in MIX:
            before = len(self.api.by_chat[probe])
            await self.post(self.update_for(probe, item))
            self.replies_per[item] = await self.settle(probe) - before

    async def resident(self, index: int, user: int, messages: int, out: list[float]) -> None:
        for i in range(messages):
            item = MIX[(i + index) % len(MIX)]
            expected = len(self.api.by_chat[user]) + self.replies_per[item]
            start = time.monotonic()
            await self.post(self.update_for(user, item))
            await self.api.wait_count(user, expected, timeout=60)
            out.append(time.monotonic() - start)


async def run_one(
    kind: str,
    api: BenchAPI,
    url: str,
    users: list[int],
    messages: int,
    workdir: Path,
    help_label: str | None,
    event_loop: str,
) -> dict[str, Any]:
    config: dict[str, Any] = {"api_url": api.base_url, "limits": LIFTED, "event_loop": event_loop}
    if kind == "anxin":
        config.update(database_url=url, data_dir=str(workdir))
    bot = await start_bot(kind, config)
    try:
        connector = aiohttp.TCPConnector(limit=len(users) + 8, keepalive_timeout=2)
        async with aiohttp.ClientSession(connector=connector) as client:
            load = Load(api, bot, client)
            await load.warm_up(users, help_label if kind == "anxin" else None)
            latencies: list[float] = []
            sent_before = api.total
            cpu_before = cpu_seconds()
            bot_before = bot.cpu()
            start = time.monotonic()
            await asyncio.gather(
                *(load.resident(i, u, messages, latencies) for i, u in enumerate(users))
            )
            elapsed = time.monotonic() - start
            harness_cpu = cpu_seconds() - cpu_before
            bot_cpu = bot.cpu() - bot_before
            replies = api.total - sent_before
    finally:
        child = bot.stop()
    return {
        "gc_seconds": child.get("gc_seconds"),
        "bot": kind,
        "messages": len(latencies),
        "replies": replies,
        "seconds": elapsed,
        "rate": len(latencies) / elapsed,
        "latencies": latencies,
        "replies_per": load.replies_per,
        "harness_cpu": harness_cpu / elapsed,
        "bot_cpu": bot_cpu / elapsed,
    }


async def bench(
    db_kind: str, residents: int, messages: int, rounds: int, loops: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` runs of each bot on one seeded database, echo and Anxin taking turns."""
    from core.config import SUPPORTED_LANGUAGES
    from core.i18n import load_catalogs

    locales = Path(__file__).resolve().parents[1] / "locales"  # noqa: ASYNC240
    catalogs = load_catalogs(locales, SUPPORTED_LANGUAGES)
    help_label = catalogs.t("zh_Hans", "menu.help")
    users = [FIRST_USER + i for i in range(residents)]
    results: dict[str, list[dict[str, Any]]] = {"echo": [], "anxin": []}
    with tempfile.TemporaryDirectory(prefix="anxin-bench-") as tmp:
        workdir = Path(tmp)
        async with BenchAPI() as api, database(db_kind, workdir) as url:
            now = datetime.now(UTC)
            await seed(url, (person_row(u, i, now) for i, u in enumerate(users)))
            for _ in range(rounds):
                for kind in ("echo", "anxin"):
                    results[kind].append(
                        await run_one(
                            kind, api, url, users, messages, workdir, help_label, loops[kind]
                        )
                    )
    return results


def report(db_kind: str, results: dict[str, list[dict[str, Any]]]) -> None:
    rounds = len(results["anxin"])
    print(f"\n== {db_kind}: {len(results['anxin'][0]['latencies'])} messages per bot and round ==")
    for index in range(rounds):
        for kind in ("echo", "anxin"):
            r = results[kind][index]
            cpu_ms = r["bot_cpu"] * r["seconds"] / r["messages"] * 1000
            print(
                f"{index + 1} {kind:6s} {r['rate']:7.1f} msg/s ({r['replies'] / r['seconds']:6.1f} "
                f"replies/s)  {latency_line(r['latencies'])}  [CPU: bot {r['bot_cpu'] * 100:.0f}% "
                f"= {cpu_ms:.2f} ms/msg, harness {r['harness_cpu'] * 100:.0f}% of a core]"
            )
        ratio = results["anxin"][index]["rate"] / results["echo"][index]["rate"]
        print(f"  round {index + 1} ratio {ratio:.2f}")
    print(f"replies per input (anxin): {results['anxin'][0]['replies_per']}")
    gc_seconds = [r.get("gc_seconds") for r in results["anxin"]]
    if all(g is not None for g in gc_seconds):
        print(f"anxin's process spent {statistics.median(gc_seconds):.2f} s (median) in cyclic GC")
    echo = statistics.median(r["rate"] for r in results["echo"])
    anxin = statistics.median(r["rate"] for r in results["anxin"])
    ratio = anxin / echo
    verdict = "met" if ratio >= 0.5 else "MISSED"
    print(
        f"median of {rounds} rounds: echo {echo:.1f}, anxin {anxin:.1f} msg/s; "
        f"ratio anxin/echo: {ratio:.2f}  (target >= 0.50: {verdict})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--residents", type=int, default=50, help="concurrent residents")
    parser.add_argument("--messages", type=int, default=60, help="messages per resident")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each bot, taking turns; the medians are compared (a shared VM's speed "
        "drifts by a third within minutes)",
    )
    parser.add_argument(
        "--echo-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the echo bot's event loop (default: the standard one, as aiohttp's web.run_app)",
    )
    parser.add_argument(
        "--anxin-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="Anxin's event loop (default: as `anxin run`, uvloop where installed)",
    )
    args = parser.parse_args()
    loops = {"echo": args.echo_loop, "anxin": args.anxin_loop}
    print(machine())
    print(
        f"{args.residents} residents x {args.messages} messages, {args.rounds} rounds; rate "
        "limits lifted (fake API: none; Anxin RateLimits 100,000/s); event loops: echo "
        f"{args.echo_loop}, anxin {args.anxin_loop}"
    )
    kinds = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    for db_kind in kinds:
        report(db_kind, await bench(db_kind, args.residents, args.messages, args.rounds, loops))


if __name__ == "__main__":
    asyncio.run(main())
