"""Builds the product from its parts: the engine with every flow registered."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from core import (
    admin,
    assessment,
    booking,
    broadcasts,
    checkins,
    escalation,
    onboarding,
    privacy,
    reports,
    rooms,
    selfhelp,
)
from core.clock import Clock
from core.config import SUPPORTED_LANGUAGES, Settings
from core.conversation import ConversationEngine, EngineConfig
from core.db import Database
from core.i18n import Catalogs, load_catalogs
from core.instruments import InstrumentRegistry, bundled_dir
from core.sites import SiteDirectory, load_sites
from core.triage import Triage


@dataclass
class Core:
    """Everything core offers the channels, built once by the composition root."""

    settings: Settings
    db: Database
    clock: Clock
    catalogs: Catalogs
    sites: SiteDirectory
    engine: ConversationEngine


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's view of the settings."""
    return EngineConfig(
        default_language=settings.default_language,
        languages=SUPPORTED_LANGUAGES,
        admins={"telegram": settings.admin_ids("telegram"), "web": settings.admin_ids("web")},
        staff_chat_id=settings.staff_chat_id if settings.telegram_token else "",
        backup_chat_id=settings.backup_chat_id if settings.telegram_token else "",
        repage_minutes=settings.repage_minutes,
        supervisor_minutes=settings.supervisor_minutes,
    )


@functools.cache
def load_triage() -> Triage:
    """The bundled triage lexicons, compiled once per process (they are read-only)."""
    return Triage.load()


def build_core(
    settings: Settings,
    db: Database,
    clock: Clock,
    *,
    notify: Callable[[str], None] | None = None,
) -> Core:
    """Load catalogs and sites, and build the engine with every flow registered."""
    catalogs = load_catalogs(settings.resolved_locales_dir, SUPPORTED_LANGUAGES)
    sites = load_sites(settings.sites_file)
    engine = ConversationEngine(db, catalogs, sites, clock, engine_config(settings), notify=notify)
    onboarding.register(engine)
    privacy.register(engine)
    admin.register(engine)
    instruments = InstrumentRegistry.load(
        [bundled_dir(), *settings.instruments_dirs], languages=SUPPORTED_LANGUAGES
    )
    assessment.register(engine, instruments)
    escalation.register(engine)
    booking.register(engine, booking.BookingRules.from_settings(settings))
    rooms.register(engine)
    checkins.register(engine, checkins.CheckinConfig.from_settings(settings))
    selfhelp.register(
        engine, selfhelp.SelfHelpLibrary.load(selfhelp.bundled_dir(), SUPPORTED_LANGUAGES)
    )
    broadcasts.register(engine)
    reports.register(engine)
    triage = load_triage()
    engine.triage = escalation.triage_hook(triage)
    engine.urgent_text = escalation.urgent_reader(triage)
    return Core(
        settings=settings, db=db, clock=clock, catalogs=catalogs, sites=sites, engine=engine
    )
