"""Sites (isolation sites, communities) and their crisis lines, read from the sites file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EXAMPLE_SITES_FILE = Path(__file__).parent / "data" / "sites.example.toml"


class SitesError(ValueError):
    """The sites file cannot be used; the message says why in one sentence."""


@dataclass(frozen=True)
class Hotline:
    """A phone line a person can call, with its name per language and when it answers."""

    number: str
    names: dict[str, str]
    open_24h: bool
    hours: dict[str, str] = field(default_factory=dict)
    emergency: bool = False

    def name(self, lang: str) -> str:
        """Return the line's name in ``lang``, falling back to English then any."""
        return self.names.get(lang) or self.names.get("en") or next(iter(self.names.values()))

    def hours_text(self, lang: str) -> str:
        """Return the opening hours as written for ``lang`` (empty when open 24 hours)."""
        return self.hours.get(lang) or self.hours.get("en", "")


@dataclass(frozen=True)
class Site:
    """One place Anxin serves, with its timezone, crisis lines and staff contact."""

    code: str
    names: dict[str, str]
    timezone: str
    hotlines: tuple[Hotline, ...]
    contact: dict[str, str] = field(default_factory=dict)

    def name(self, lang: str) -> str:
        """Return the site's name in ``lang``, falling back to English then any."""
        return self.names.get(lang) or self.names.get("en") or self.code

    @property
    def tz(self) -> ZoneInfo:
        """The site's timezone."""
        return ZoneInfo(self.timezone)

    def has_24h_line(self) -> bool:
        """Whether at least one non-emergency line answers around the clock."""
        return any(h.open_24h and not h.emergency for h in self.hotlines)


@dataclass(frozen=True)
class SiteDirectory:
    """All configured sites, and whether they are the built-in example."""

    sites: dict[str, Site]
    is_example: bool
    source: Path

    def get(self, code: str | None) -> Site | None:
        """Return the site with this code (case-insensitive), or None."""
        if not code:
            return None
        return self.sites.get(code.strip().lower())

    def default(self) -> Site:
        """Return the first site, used for lines when a person has not chosen one."""
        return next(iter(self.sites.values()))


def load_sites(path: Path | None) -> SiteDirectory:
    """Read the sites file at ``path``, or the built-in example when ``path`` is None."""
    source = path or EXAMPLE_SITES_FILE
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SitesError(f"The sites file {source} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise SitesError(f"The sites file {source} is not valid TOML: {exc}.") from None
    sites: dict[str, Site] = {}
    for entry in raw.get("site", []):
        site = _read_site(entry, source)
        if site.code in sites:
            raise SitesError(f"The sites file {source} names site {site.code!r} twice.")
        sites[site.code] = site
    if not sites:
        raise SitesError(f"The sites file {source} defines no [[site]].")
    return SiteDirectory(sites=sites, is_example=path is None, source=source)


def _read_site(entry: dict[str, object], source: Path) -> Site:
    code = str(entry.get("code", "")).strip().lower()
    if not code or not code.replace("-", "").replace("_", "").isalnum() or len(code) > 32:
        raise SitesError(
            f"The sites file {source} has a site without a usable code "
            "(letters, digits, - and _, at most 32)."
        )
    names = _texts(entry.get("name"), f"site {code!r} name", source)
    timezone = str(entry.get("timezone", "Asia/Shanghai"))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SitesError(
            f"Site {code!r} in {source} has an unknown timezone {timezone!r}."
        ) from None
    lines: list[Hotline] = []
    for line in _list(entry.get("hotline")):
        number = str(line.get("number", "")).strip()
        if not number:
            raise SitesError(f"Site {code!r} in {source} has a hotline without a number.")
        lines.append(
            Hotline(
                number=number,
                names=_texts(line.get("name"), f"hotline {number} name", source),
                open_24h=bool(line.get("open_24h", False)),
                hours=_texts(line.get("hours", {}), f"hotline {number} hours", source, True),
                emergency=bool(line.get("emergency", False)),
            )
        )
    if not lines:
        raise SitesError(f"Site {code!r} in {source} has no hotline; every site needs one.")
    contact = _texts(entry.get("contact", {}), f"site {code!r} contact", source, True)
    return Site(code=code, names=names, timezone=timezone, hotlines=tuple(lines), contact=contact)


def _list(value: object) -> list[dict[str, object]]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _texts(value: object, what: str, source: Path, optional: bool = False) -> dict[str, str]:
    if isinstance(value, str):
        return {"en": value}
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return {str(k): str(v) for k, v in value.items()}
    if optional and not value:
        return {}
    raise SitesError(f"The {what} in {source} must be a text or a table of texts per language.")
