"""``python -m tests.fakebotapi --port N --token T``: run the fake Bot API until killed.

Prints ``FAKEBOTAPI_READY <base_url>`` on stdout once listening (use ``--port 0`` and read that
line to learn the port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from .server import DEFAULT_TOKEN, FakeBotAPI


async def _serve(args: argparse.Namespace) -> None:
    api = FakeBotAPI(
        args.token,
        username=args.username,
        host=args.host,
        port=args.port,
        strict_chats=not args.lenient,
    )
    await api.start()
    print(f"FAKEBOTAPI_READY {api.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await api.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakebotapi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--username", default="anxin_test_bot")
    parser.add_argument(
        "--lenient", action="store_true", help="allow sending to chats that were never seen"
    )
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
