"""A fork server for ``anxin run`` processes: import once, fork a fresh process per start.

``python -m bot run`` spends seconds importing aiogram's types before it does anything; the
fault tests start the bot more than fifty times, so they run this module once instead
(``python -m tests.faults.forkserver``): it imports everything ``bot.cli.main(["run", ...])``
needs, says ``{"ready": true}``, then for every request forks a child that sets its own
environment, working directory and log file and calls ``bot.cli.main(argv)`` — the same code
path as ``python -m bot run``, in a real process of its own that SIGKILL ends with no shutdown
code running. The server itself never starts an event loop or a thread, so forking is safe.

Requests and answers are JSON lines on stdin/stdout:

- ``{"op": "spawn", "argv": [...], "env": {...}, "cwd": "...", "log": "...", "unlimited": true}``
  -> ``{"pid": N}`` (``unlimited``: Telegram's flood limits lifted, see ``_lift_flood_limits``)
- ``{"op": "kill", "pid": N}``: SIGKILL and reap -> ``{"pid": N, "status": S}``
- ``{"op": "stop", "pid": N, "grace": 10}``: SIGTERM, SIGKILL after ``grace`` s, reap
- ``{"op": "poll", "pid": N}`` -> ``{"pid": N, "alive": bool, "status": S | null}``

At end of input every child still running is stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any


def _preload() -> None:
    """Import what ``anxin run`` imports, so that a forked child starts in milliseconds."""
    import aiosqlite  # noqa: F401
    import asyncpg  # noqa: F401
    import sqlalchemy.dialects.postgresql.asyncpg
    import sqlalchemy.dialects.sqlite.aiosqlite  # noqa: F401
    import uvicorn.lifespan.off
    import uvicorn.protocols.http.h11_impl
    import uvicorn.protocols.websockets.auto  # noqa: F401

    import bot.cli
    import bot.runtime  # noqa: F401
    import core.db
    import core.services  # noqa: F401


def _lift_flood_limits() -> None:
    """Telegram's flood limits off (as ``unlimited()`` in the in-process fixtures).

    ``Runtime.build`` makes ``RateLimits()`` for Telegram; explicit arguments (the web
    channel's) still win over these defaults.
    """
    import functools

    import bot.runtime
    from core.outbox import RateLimits

    bot.runtime.RateLimits = functools.partial(  # type: ignore[attr-defined,assignment]
        RateLimits,
        global_per_second=100_000,
        chat_per_second=100_000,
        chat_burst=100_000,
        group_per_minute=6_000_000,
    )


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become ``anxin run`` with the request's environment; never return."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("unlimited"):
            _lift_flood_limits()
        from bot.cli import main

        code = int(main(list(request["argv"])) or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def _stop(pid: int, grace: float) -> int | None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    status = _reap(pid, grace)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        status = _reap(pid, 10)
    return status


def serve() -> None:
    _preload()
    children: set[int] = set()
    out = sys.stdout

    def answer(payload: dict[str, Any]) -> None:
        out.write(json.dumps(payload) + "\n")
        out.flush()

    answer({"ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "spawn":
                out.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request)
                children.add(pid)
                answer({"pid": pid})
            elif op == "kill":
                pid = int(request["pid"])
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                answer({"pid": pid, "status": _reap(pid, 10)})
                children.discard(pid)
            elif op == "stop":
                pid = int(request["pid"])
                answer({"pid": pid, "status": _stop(pid, float(request.get("grace", 10)))})
                children.discard(pid)
            elif op == "poll":
                pid = int(request["pid"])
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    children.discard(pid)
                    answer(
                        {"pid": pid, "alive": False, "status": os.waitstatus_to_exitcode(status)}
                    )
                else:
                    answer({"pid": pid, "alive": True, "status": None})
            else:
                answer({"error": f"unknown op {op!r}"})
        except ChildProcessError:
            children.discard(int(request.get("pid", 0)))
            answer({"pid": request.get("pid"), "alive": False, "status": None})
    for pid in list(children):
        _stop(pid, 5)


if __name__ == "__main__":
    serve()
