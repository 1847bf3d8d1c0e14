"""The deployment files say what the code does: commands that parse, settings that exist.

No Docker engine runs where the tests run, so these check the files against the code; the
README says how they were tried by hand.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import _parser
from bot.runtime import ROLES
from core.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KNOWN = {f"ANXIN_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def anxin_args(command: list[str]) -> list[str]:
    assert command[0] == "anxin", command
    return command[1:]


def test_compose_runs_each_role_and_one_scheduler(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"db", "migrate", "web", "worker", "scheduler"} <= set(services)
    parser = _parser()
    roles = {}
    for name in ("web", "worker", "scheduler"):
        args = parser.parse_args(anxin_args(services[name]["command"]))
        assert args.command == "run" and args.no_migrate, name
        roles[name] = args.role
        assert args.role in ROLES
    assert roles == {"web": "web", "worker": "worker", "scheduler": "scheduler"}
    assert services["scheduler"]["deploy"]["replicas"] == 1
    migrate = parser.parse_args(anxin_args(services["migrate"]["command"]))
    assert (migrate.command, migrate.db_command) == ("db", "upgrade")
    for name in ("web", "worker", "scheduler"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_compose_containers_listen_on_every_interface_whatever_the_env_file(
    compose: dict[str, Any],
) -> None:
    # anxin.env.example is written for systemd (127.0.0.1, /var/lib/anxin); `environment`
    # overrides `env_file` in compose, so the containers must set these themselves.
    for name in ("migrate", "web", "worker", "scheduler"):
        env = compose["services"][name]["environment"]
        assert env["ANXIN_HOST"] == "0.0.0.0", name
        assert env["ANXIN_DATA_DIR"] == "/data", name
        assert env["ANXIN_DATABASE_URL"].startswith("postgresql+asyncpg://"), name
        assert set(env) <= KNOWN, name


def test_every_variable_in_the_deploy_files_is_a_setting() -> None:
    names: set[str] = set()
    for path in (DEPLOY / "anxin.env.example", DEPLOY / "Dockerfile"):
        names |= set(re.findall(r"\bANXIN_[A-Z_]+(?==)", path.read_text(encoding="utf-8")))
    assert names, "the files name settings"
    assert names <= KNOWN, names - KNOWN


def test_dockerfile_copies_what_the_package_needs() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    copied = {
        part.rstrip("/").removeprefix("./")
        for line in text.splitlines()
        if line.startswith("COPY ")
        for part in shlex.split(line)[1:-1]
    }
    # Python packages, the catalogs read at start-up, migrations run by `anxin db upgrade`,
    # and what pip needs to install the project.
    assert {"bot", "core", "locales", "migrations", "pyproject.toml", "README.md"} <= copied
    assert re.search(r"^CMD \[\"anxin\", \"run\"\]$", text, re.M)


def test_systemd_unit_upgrades_then_runs_one_process() -> None:
    unit = (DEPLOY / "systemd" / "anxin.service").read_text(encoding="utf-8")
    pre = re.search(r"^ExecStartPre=\S+/anxin (.+)$", unit, re.M)
    start = re.search(r"^ExecStart=\S+/anxin (.+)$", unit, re.M)
    assert pre is not None and start is not None
    parser = _parser()
    assert parser.parse_args(pre.group(1).split()).db_command == "upgrade"
    run = parser.parse_args(start.group(1).split())
    assert run.command == "run" and run.no_migrate and run.role == "all"
