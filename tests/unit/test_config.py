"""Configuration: the documented names, and one clear sentence when it cannot work."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from bot.cli import main, run_async
from core.config import ConfigError, load_settings, unknown_variables
from core.sites import SitesError, load_sites


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ANXIN_") and name != "ANXIN_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_embedded_deployment(tmp_path: Path) -> None:
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert not settings.use_webhook and settings.default_language == "zh_Hans"


def test_environment_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANXIN_PORT", "9000")
    monkeypatch.setenv("ANXIN_ADMINS", "111, 222;telegram:333,web:w1")
    monkeypatch.setenv("ANXIN_DEFAULT_LANGUAGE", "en")
    settings = load_settings()
    assert settings.port == 9000 and settings.default_language == "en"
    assert settings.admin_ids("telegram") == {"111", "222", "333"}
    assert settings.admin_ids("web") == {"w1"}


def test_webhook_url_without_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANXIN_TELEGRAM_TOKEN", "123:abc")
    monkeypatch.setenv("ANXIN_PUBLIC_URL", "https://anxin.example.org")
    with pytest.raises(ConfigError, match="ANXIN_WEBHOOK_SECRET"):
        load_settings()


def test_unknown_default_language_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANXIN_DEFAULT_LANGUAGE", "fr")
    with pytest.raises(ConfigError, match="zh_Hans, en"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"), [("ANXIN_PORT", "not-a-port"), ("ANXIN_EVENT_LOOP", "tokio")]
)
def test_anxin_run_stops_with_one_sentence_on_bad_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"anxin: configuration problem: {name}")
    assert len(err.splitlines()) == 1


def test_anxin_run_stops_with_one_sentence_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANXIN_DATABASE_URL", "postgresql+asyncpg://x:y@127.0.0.1:1/nothing")
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach or upgrade the database" in err and "y@" not in err
    assert len(err.splitlines()) == 1


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"),
        ("asyncio", "asyncio"),
    ],
)
def test_anxin_runs_on_uvloop_where_installed_unless_told(choice: str, expected: str) -> None:
    assert run_async(_loop_module(), choice) == expected


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("run", "db", "qr", "triage", "instruments"):
        assert command in out


def test_sites_file_without_a_hotline_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sites.toml"
    path.write_text('[[site]]\ncode = "a1"\nname = "A1"\n', encoding="utf-8")
    with pytest.raises(SitesError, match="no hotline"):
        load_sites(path)


def test_builtin_example_site_has_a_24_hour_line() -> None:
    sites = load_sites(None)
    assert sites.is_example and sites.default().has_24h_line()


def test_qr_writes_a_poster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANXIN_TELEGRAM_BOT_USERNAME", "anxin_bot")
    out = tmp_path / "poster.png"
    assert main(["qr", "example", "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (1240, 1754)


def test_qr_for_an_unknown_site_says_which_sites_exist(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["qr", "nowhere"]) == 2
    assert "example" in capsys.readouterr().err


def test_misspelt_variables_are_named_not_silently_ignored(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# a comment\nANXIN_PORT=8081\nexport ANXIN_STAF_CHAT_ID=-100\nOTHER=1\n", encoding="utf-8"
    )
    environ = {
        "ANXIN_STAFF_CHATID": "-1001",
        "ANXIN_TELEGRAM_TOKEN": "1:a",
        "ANXIN_TEST_POSTGRES_URL": "postgresql+asyncpg://x",
        "ANXIN_BENCH_PYSPY": "/tmp/x",
        "PATH": "/usr/bin",
    }
    assert unknown_variables(environ, env_file) == ["ANXIN_STAFF_CHATID", "ANXIN_STAF_CHAT_ID"]
    assert unknown_variables({"ANXIN_QUIET_HOURS": ""}, None) == []
