"""Every word a person reads: Babel catalogs in ``locales/``, dates and numbers per language."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_datetime
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

DOMAIN = "anxin"
PLACEHOLDER = re.compile(r"\{(\w+)\}")
BABEL_LOCALES = {"zh_Hans": "zh_Hans_CN", "en": "en"}


class CatalogError(ValueError):
    """A catalog is missing or broken; the message names the file."""


@dataclass(frozen=True)
class Catalogs:
    """Translations per language, keyed by message id (``"onboarding.welcome"``)."""

    messages: dict[str, dict[str, str]]
    fallback: str = "en"

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages that have a catalog."""
        return tuple(self.messages)

    def has(self, lang: str, key: str) -> bool:
        """Whether ``lang``'s catalog translates ``key``."""
        return bool(self.messages.get(lang, {}).get(key))

    def t(self, lang: str | None, key: str, /, **params: object) -> str:
        """Return ``key`` translated into ``lang`` with ``{placeholders}`` filled in."""
        text = self.messages.get(lang or self.fallback, {}).get(key) or self.messages.get(
            self.fallback, {}
        ).get(key)
        if not text:
            raise KeyError(f"no catalog has a message {key!r}")
        if params:
            return text.format_map({k: _fmt(v, lang or self.fallback) for k, v in params.items()})
        return text


def load_catalogs(locales_dir: Path, languages: tuple[str, ...]) -> Catalogs:
    """Read every ``locales/<lang>/LC_MESSAGES/*.po`` for each language (one per feature).

    ``anxin.po`` must exist for every language; a message id defined in two files of one
    language is refused, so features cannot silently overwrite each other's words.
    """
    messages: dict[str, dict[str, str]] = {}
    for lang in languages:
        folder = locales_dir / lang / "LC_MESSAGES"
        main = folder / f"{DOMAIN}.po"
        if not main.exists():
            raise CatalogError(f"The catalog {main} for language {lang!r} is missing.")
        merged: dict[str, str] = {}
        origin: dict[str, Path] = {}
        for path in sorted(folder.glob("*.po")):
            try:
                with path.open("rb") as handle:
                    catalog = read_po(handle, locale=BABEL_LOCALES.get(lang, lang))
            except Exception as exc:  # babel raises several types for a broken file
                raise CatalogError(f"The catalog {path} cannot be read: {exc}.") from None
            for message in catalog:
                if not message.id or not isinstance(message.string, str):
                    continue
                key = str(message.id)
                if key in merged:
                    raise CatalogError(
                        f"The message {key!r} is defined in both {origin[key]} and {path}."
                    )
                merged[key] = str(message.string)
                origin[key] = path
        messages[lang] = merged
    return Catalogs(messages=messages, fallback="en" if "en" in messages else languages[0])


def placeholders(text: str) -> set[str]:
    """The ``{names}`` a message text expects."""
    return set(PLACEHOLDER.findall(text))


def babel_locale(lang: str | None) -> Locale:
    """The Babel locale used to format dates and numbers for a language."""
    return Locale.parse(BABEL_LOCALES.get(lang or "en", lang or "en"))


def format_when(moment: datetime, lang: str | None, tz: ZoneInfo) -> str:
    """Format a moment as a person reads a date and time in their language and timezone."""
    local = moment.astimezone(tz)
    pattern = "yyyy年M月d日 HH:mm" if lang == "zh_Hans" else "d MMM yyyy, HH:mm"
    return format_datetime(local, pattern, locale=babel_locale(lang))


def format_number(value: float, lang: str | None) -> str:
    """Format a number for a language (``1,234.5``)."""
    return format_decimal(value, locale=babel_locale(lang))


def _fmt(value: object, lang: str) -> object:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return format_number(value, lang)
    return value
