"""Every word a person reads is in both catalogs, with the same placeholders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import SUPPORTED_LANGUAGES
from core.i18n import load_catalogs, placeholders

ROOT = Path(__file__).resolve().parents[2]
LOCALES = ROOT / "locales"
# Message ids used in code: t("key"), say("key"), button("key", …) and menu entries' labels;
# ids built at run time (role.*, age.*, relation.*) are checked by their own test.
KEY_CALL = re.compile(r"""\b(?:t|say|button|_t)\(\s*["']([a-z0-9_]+(?:\.[a-z0-9_]+)+)["']""")
MENU_ENTRY = re.compile(r"""MenuEntry\(\s*["'][^"']+["']\s*,\s*["']([a-z0-9_.]+)["']""")


def _catalogs():  # type: ignore[no-untyped-def]
    return load_catalogs(LOCALES, SUPPORTED_LANGUAGES)


def _keys_in_code() -> set[str]:
    keys: set[str] = set()
    for folder in ("core", "bot"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            keys.update(KEY_CALL.findall(text))
            keys.update(MENU_ENTRY.findall(text))
    return keys


def test_every_language_has_the_same_message_ids() -> None:
    messages = _catalogs().messages
    reference = set(messages["en"])
    for lang in SUPPORTED_LANGUAGES:
        assert set(messages[lang]) == reference, (
            f"{lang} differs: missing {sorted(reference - set(messages[lang]))}, "
            f"extra {sorted(set(messages[lang]) - reference)}"
        )


@pytest.mark.parametrize("lang", SUPPORTED_LANGUAGES)
def test_no_message_is_empty(lang: str) -> None:
    empty = [k for k, v in _catalogs().messages[lang].items() if not v.strip()]
    assert not empty


def test_placeholders_match_across_languages() -> None:
    messages = _catalogs().messages
    for key, text in messages["en"].items():
        for lang in SUPPORTED_LANGUAGES:
            assert placeholders(messages[lang][key]) == placeholders(text), (lang, key)


def test_every_message_id_used_in_code_is_in_the_catalogs() -> None:
    messages = _catalogs().messages
    dynamic_prefixes = ("role.", "age.", "relation.")
    used = {k for k in _keys_in_code() if not k.endswith(".")}
    missing = sorted(
        k
        for k in used
        if k not in messages["en"] and not any(k == p.rstrip(".") for p in dynamic_prefixes)
    )
    assert not missing, f"used in code but not in the catalogs: {missing}"


def test_dynamic_ids_exist_for_every_role_age_band_and_relation() -> None:
    from core.access import Role
    from core.onboarding import AGE_BANDS, RELATIONS

    messages = _catalogs().messages["zh_Hans"]
    for key in (
        [f"role.{r.value}" for r in Role]
        + [f"age.{a}" for a in AGE_BANDS]
        + [f"relation.{r}" for r in RELATIONS]
    ):
        assert key in messages, key


def test_a_missing_catalog_is_refused_with_its_path(tmp_path: Path) -> None:
    from core.i18n import CatalogError

    with pytest.raises(CatalogError, match=r"anxin\.po"):
        load_catalogs(tmp_path, ("zh_Hans",))
