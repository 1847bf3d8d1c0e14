"""Configuration from ``ANXIN_*`` environment variables and ``.env``, checked at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SUPPORTED_LANGUAGES = ("zh_Hans", "en")
DEFAULT_TELEGRAM_API = "https://api.telegram.org"


class ConfigError(ValueError):
    """Configuration that cannot work; the message is one sentence an operator can act on."""


class Settings(BaseSettings):
    """Everything an operator can set. Built once by the ``anxin`` command, never at import."""

    model_config = SettingsConfigDict(
        env_prefix="ANXIN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(default=Path("data"), description="Folder for the SQLite file etc.")
    database_url: str = Field(default="", description="SQLAlchemy URL; SQLite in data_dir if empty")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    telegram_token: str = ""
    telegram_api_url: str = DEFAULT_TELEGRAM_API
    telegram_bot_username: str = ""
    public_url: str = ""
    webhook_secret: str = ""
    staff_chat_id: str = ""
    backup_chat_id: str = ""
    outbox_stale_claim_seconds: float = Field(default=60.0, gt=0)
    repage_minutes: float = Field(default=2.0, gt=0)
    supervisor_minutes: float = Field(default=5.0, gt=0)
    quiet_hours: str = Field(default="22:00-08:00", description="site time; empty turns off")
    checkin_time: str = Field(default="20:00", description="default daily check-in, site time")
    report_time: str = Field(default="08:00", description="daily report to staff, site time")
    booking_cutoff_minutes: int = Field(
        default=120, ge=0, le=10_080, description="bookings change online until this before"
    )
    admins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    default_language: str = "zh_Hans"
    sites_file: Path | None = None
    locales_dir: Path | None = None
    instruments_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto", description="uvloop where installed (auto), or the standard one"
    )

    @field_validator("admins", mode="before")
    @classmethod
    def _split_admins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
        return value

    @field_validator("instruments_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Path(p) for p in value.split(":") if p.strip()]
        return value

    @field_validator("sites_file", "locales_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.default_language not in SUPPORTED_LANGUAGES:
            raise ValueError(
                f"ANXIN_DEFAULT_LANGUAGE must be one of {', '.join(SUPPORTED_LANGUAGES)}, "
                f"not {self.default_language!r}."
            )
        if self.public_url:
            parsed = urlparse(self.public_url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(
                    f"ANXIN_PUBLIC_URL must be a full URL such as https://anxin.example.org, "
                    f"not {self.public_url!r}."
                )
            if self.telegram_token and len(self.webhook_secret) < 16:
                raise ValueError(
                    "ANXIN_PUBLIC_URL with a Telegram token turns on the webhook, which needs "
                    "ANXIN_WEBHOOK_SECRET of at least 16 characters (letters, digits, _ and -)."
                )
        if self.webhook_secret and not all(
            c.isascii() and (c.isalnum() or c in "_-") for c in self.webhook_secret
        ):
            raise ValueError(
                "ANXIN_WEBHOOK_SECRET may only hold letters, digits, _ and - (Telegram's rule)."
            )
        if self.telegram_token and ":" not in self.telegram_token:
            raise ValueError(
                "ANXIN_TELEGRAM_TOKEN does not look like a bot token "
                "(digits:letters from @BotFather)."
            )
        return self

    @property
    def effective_database_url(self) -> str:
        """The database URL in use: the configured one, or SQLite in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'anxin.sqlite3').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (one process does all the work)."""
        return self.effective_database_url.startswith("sqlite")

    @property
    def use_webhook(self) -> bool:
        """Whether Telegram delivers updates by webhook (else long polling)."""
        return bool(self.telegram_token and self.public_url)

    @property
    def resolved_locales_dir(self) -> Path:
        """Where the Babel catalogs are read from."""
        return self.locales_dir or Path(__file__).resolve().parent.parent / "locales"

    def admin_ids(self, channel: str) -> set[str]:
        """The configured first admins' ids on ``channel`` ("123" or "telegram:123")."""
        ids: set[str] = set()
        for entry in self.admins:
            prefix, sep, rest = entry.partition(":")
            if sep and prefix in ("telegram", "web"):
                if prefix == channel:
                    ids.add(rest)
            elif channel == "telegram":
                ids.add(entry)
        return ids


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, raising ``ConfigError`` with one clear sentence."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if where:
            message = f"ANXIN_{where.upper()}: {message}"
        raise ConfigError(message) from None


#: ``ANXIN_*`` names that are not settings but belong to the test suite and the benchmarks.
_NOT_SETTINGS = ("ANXIN_TEST_", "ANXIN_BENCH_")


def unknown_variables(environ: dict[str, str], env_file: Path | None = Path(".env")) -> list[str]:
    """``ANXIN_*`` names set in the environment or ``.env`` that no setting reads (typos).

    Settings ignore unknown names, so a misspelt ``ANXIN_STAFF_CHATID`` would silently leave
    the staff chat unset; start-up warns about each one instead.
    """
    names = set(environ)
    if env_file is not None and env_file.is_file():
        for line in env_file.read_text(encoding="utf-8", errors="replace").splitlines():
            name, sep, _ = line.strip().removeprefix("export ").partition("=")
            if sep and not name.startswith("#"):
                names.add(name.strip())
    known = {f"ANXIN_{field.upper()}" for field in Settings.model_fields}
    return sorted(
        name
        for name in names
        if name.upper().startswith("ANXIN_")
        and name.upper() not in known
        and not name.upper().startswith(_NOT_SETTINGS)
    )
