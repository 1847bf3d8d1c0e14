"""The ``anxin`` command: the one composition root."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from core.clock import Clock
from core.config import ConfigError, Settings, load_settings, unknown_variables

log = logging.getLogger("anxin")
T = TypeVar("T")

DESCRIPTION = """Anxin (安心): psychological support for people in isolation.

Configuration comes from ANXIN_* environment variables or a .env file (see README).
With no Telegram token, `anxin run` serves the web chat on http://127.0.0.1:8080."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anxin", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run everything in one process: web chat, Telegram, delivery, scheduler"
    )
    run.add_argument(
        "--no-migrate", action="store_true", help="do not upgrade the database schema at start-up"
    )
    run.add_argument(
        "--role",
        choices=["all", "web", "worker", "scheduler"],
        default="all",
        help="what this process runs: all (default, one process), or with PostgreSQL any\n"
        "number of web and worker processes and exactly one scheduler",
    )

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply migrations up to the newest schema")

    qr = sub.add_parser("qr", help="write a printable poster with QR codes for a site's door")
    qr.add_argument("site", help="the site code from the sites file")
    qr.add_argument("--out", type=Path, help="PNG file to write (default: poster-SITE.png)")

    sub.add_parser("triage", help="read messages (one per line) on stdin, print risk as JSON lines")

    instruments = sub.add_parser("instruments", help="questionnaires: list them, score answers")
    inst_sub = instruments.add_subparsers(dest="inst_command", metavar="ACTION")
    inst_sub.add_parser("list", help="list the instruments this deployment has")
    score = inst_sub.add_parser("score", help="score answers and print one JSON object")
    score.add_argument("instrument", help="instrument id, e.g. phq9")
    score.add_argument("answers", help="item values in item order, comma-separated: 1,0,2,…")

    sub.add_parser("check", help="check the configuration and the database, then exit")

    token = sub.add_parser("token", help="admin API bearer tokens: create, list, revoke")
    token.add_argument("token_command", choices=("create", "list", "revoke"), metavar="ACTION")
    token.add_argument("name", nargs="?", default="", help="the token's name (create, revoke)")
    token.add_argument("--role", choices=("admin", "supervisor"), default="admin")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anxin`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "triage":
        return _triage()
    if args.command == "instruments":
        return _instruments(args, parser)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"anxin: configuration problem: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in unknown_variables(dict(os.environ)):
        log.warning("%s is not a setting Anxin reads (a typo?); see README, Configuration", name)
    try:
        if args.command == "run":
            return _run(settings, migrate=not args.no_migrate, role=args.role)
        if args.command == "db":
            if args.db_command != "upgrade":
                parser.parse_args(["db", "--help"])
            return _upgrade(settings)
        if args.command == "qr":
            return _qr(settings, args.site, args.out)
        if args.command == "check":
            return _check(settings)
        if args.command == "token":
            from bot.web.admin_api import token_command

            _prepare(settings)
            return token_command(settings, args.token_command, args.name, args.role)
    except _Stop as stop:
        print(f"anxin: {stop}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


class _Stop(Exception):
    """A start-up problem with one sentence for the operator."""


def _prepare(settings: Settings) -> None:
    if settings.is_sqlite and not settings.database_url:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _Stop(
                f"cannot create the data folder {settings.data_dir}: {exc.strerror}."
            ) from None


def _upgrade(settings: Settings) -> int:
    from core.db import upgrade

    _prepare(settings)
    try:
        upgrade(settings.effective_database_url)
    except Exception as exc:
        raise _Stop(
            f"cannot upgrade the database at {_safe_url(settings)}: {str(exc).splitlines()[0]}"
        ) from None
    print(f"anxin: database schema is up to date ({_safe_url(settings)})")
    return 0


def _check(settings: Settings) -> int:
    from core.db import Database, DatabaseUnavailable
    from core.i18n import CatalogError
    from core.services import build_core
    from core.sites import SitesError

    _prepare(settings)

    async def check() -> None:
        db = Database(settings.effective_database_url)
        try:
            await db.ping()
            build_core(settings, db, _clock())
        finally:
            await db.dispose()

    try:
        asyncio.run(check())
    except (DatabaseUnavailable, SitesError, CatalogError, ValueError) as exc:
        raise _Stop(str(exc)) from None
    print("anxin: configuration and database are fine")
    return 0


def _run(settings: Settings, *, migrate: bool, role: str = "all") -> int:
    from bot.lease import LeaseHeld
    from bot.runtime import Runtime
    from core.db import DatabaseUnavailable
    from core.i18n import CatalogError
    from core.sites import SitesError

    _prepare(settings)
    if role != "all" and settings.is_sqlite:
        raise _Stop(
            f"--role {role} needs PostgreSQL (ANXIN_DATABASE_URL); with SQLite one process "
            "runs everything: use `anxin run`."
        )
    if migrate:
        _upgrade_quietly(settings)
    try:
        runtime = Runtime.build(settings)
    except (SitesError, CatalogError, ValueError) as exc:
        raise _Stop(str(exc)) from None
    try:
        run_async(runtime.serve_until_signalled(role), settings.event_loop)
    except DatabaseUnavailable as exc:
        raise _Stop(f"{exc} ({_safe_url(settings)}).") from None
    except LeaseHeld as exc:
        raise _Stop(str(exc)) from None
    except OSError as exc:
        raise _Stop(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}.") from None
    return 0


def run_async(main: Coroutine[Any, Any, T], event_loop: str = "auto") -> T:
    """Run ``main`` to the end on a new event loop: uvloop where it is installed.

    uvloop comes with ``uvicorn[standard]`` (not on Windows). The bot's own work per update is
    Python either way; uvloop takes less of the process for sockets, timers and task switches
    (bench/README.md, (a)). ``event_loop="asyncio"`` (ANXIN_EVENT_LOOP) keeps the standard one.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise _Stop("ANXIN_EVENT_LOOP=uvloop, but uvloop is not installed.") from None
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _upgrade_quietly(settings: Settings) -> None:
    from core.db import upgrade

    try:
        upgrade(settings.effective_database_url)
    except Exception as exc:
        raise _Stop(
            f"cannot reach or upgrade the database at {_safe_url(settings)}: "
            f"{str(exc).splitlines()[0]}"
        ) from None


def _qr(settings: Settings, site_code: str, out: Path | None) -> int:
    from bot.poster import write_poster
    from core.i18n import load_catalogs
    from core.sites import SitesError, load_sites

    try:
        sites = load_sites(settings.sites_file)
    except SitesError as exc:
        raise _Stop(str(exc)) from None
    site = sites.get(site_code)
    if site is None:
        raise _Stop(
            f"there is no site {site_code!r} in {sites.source}; sites: {', '.join(sites.sites)}."
        )
    catalogs = load_catalogs(settings.resolved_locales_dir, ("zh_Hans", "en"))
    path = out or Path(f"poster-{site.code}.png")
    write_poster(settings, site, catalogs, path)
    print(f"anxin: poster for {site.code} written to {path}")
    return 0


def _triage() -> int:
    from core.triage import cli_main

    return cli_main(sys.stdin, sys.stdout)


def _instruments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from core.instruments import (
        InstrumentError,
        InstrumentRegistry,
        bundled_dir,
        cli_list,
        cli_score,
    )

    try:
        settings = load_settings()
        extra = list(settings.instruments_dirs)
    except ConfigError:
        extra = []
    try:
        registry = InstrumentRegistry.load([bundled_dir(), *extra])
    except InstrumentError as exc:
        print(f"anxin: {exc}", file=sys.stderr)
        return 2
    if args.inst_command == "list":
        return cli_list(registry, sys.stdout)
    if args.inst_command == "score":
        return cli_score(registry, args.instrument, args.answers, sys.stdout, sys.stderr)
    parser.parse_args(["instruments", "--help"])
    return 2


def _clock() -> Clock:
    from core.clock import SystemClock

    return SystemClock()


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.effective_database_url).render_as_string(hide_password=True)


if __name__ == "__main__":
    raise SystemExit(main())
