"""Reading one instrument data file (TOML) and refusing it, in one sentence, when it is unsafe."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from core.instruments.instrument import (
    Audience,
    Band,
    Instrument,
    InstrumentError,
    Item,
    Option,
    Scoring,
    Translation,
)
from core.instruments.rules import RULE_TYPES, Rule
from core.risk import RiskLevel

KNOWN_ROLES = frozenset({"resident", "family", "site_staff"})

_Table = Mapping[str, object]


def load_instrument(
    path: Path,
    languages: Sequence[str],
    thresholds: Mapping[str, int] | None = None,
) -> Instrument:
    """Read and check one instrument file; raise ``InstrumentError`` naming the file if unsafe."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise InstrumentError(f"{path}: the file is not valid TOML ({exc}).") from exc
    except OSError as exc:
        raise InstrumentError(f"{path}: the file cannot be read ({exc.strerror}).") from exc
    return _Reader(path, tuple(languages)).instrument(raw, thresholds or {})


class _Reader:
    """Turns the parsed TOML of one file into an ``Instrument``, checking as it goes."""

    def __init__(self, path: Path, languages: tuple[str, ...]) -> None:
        self.path = path
        self.languages = languages

    def fail(self, problem: str) -> InstrumentError:
        return InstrumentError(f"{self.path}: {problem}.")

    def instrument(self, raw: _Table, thresholds: Mapping[str, int]) -> Instrument:
        instrument_id = self.text(raw, "id", "the instrument")
        version = self.text(raw, "version", "the instrument")
        name = self.texts(raw, "name", "the instrument")
        timeframe = self.texts(raw, "timeframe", "the instrument")
        stem = self.texts(raw, "stem", "the instrument")
        scoring = self.scoring(self.table(raw, "scoring", "the instrument"))
        shared = self.options(raw.get("options"), scoring, "the instrument", required=False)
        items = self.items(raw, scoring, shared)
        instrument = Instrument(
            id=instrument_id,
            version=version,
            name=name,
            timeframe=timeframe,
            stem=stem,
            items=items,
            scoring=scoring,
            bands=(),
            rules=(),
            audience=self.audience(self.table(raw, "audience", "the instrument")),
            translations=self.translations(self.table(raw, "languages", "the instrument")),
            source=self.text(raw, "source", "the instrument"),
            licence=self.text(raw, "licence", "the instrument"),
            path=str(self.path),
            languages=self.languages,
        )
        reverse_unknown = scoring.reverse_items - {item.id for item in items}
        if reverse_unknown:
            raise self.fail(f"reverse_items names unknown item '{sorted(reverse_unknown)[0]}'")
        bands = self.bands(raw.get("bands"), instrument.total_range)
        rules = self.rules(raw.get("rules"), instrument, thresholds)
        return replace(instrument, bands=bands, rules=rules)

    # -- fields ---------------------------------------------------------------------------

    def table(self, raw: _Table, key: str, where: str) -> _Table:
        value = raw.get(key)
        if not isinstance(value, dict):
            raise self.fail(f"{where} has no [{key}] table")
        return value

    def list_of_tables(self, value: object, key: str, where: str) -> list[_Table]:
        if not isinstance(value, list) or not value:
            raise self.fail(f"{where} has no [[{key}]] entries")
        if not all(isinstance(entry, dict) for entry in value):
            raise self.fail(f"every entry of {key} in {where} must be a table")
        return value

    def text(self, raw: _Table, key: str, where: str) -> str:
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where} needs a non-empty text '{key}'")
        return value

    def integer(self, raw: _Table, key: str, where: str) -> int:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{where} needs a whole number '{key}'")
        return value

    def texts(self, raw: _Table, key: str, where: str) -> dict[str, str]:
        value = raw.get(key)
        if not isinstance(value, dict):
            raise self.fail(f"{where} has no '{key}' texts")
        for language in self.languages:
            text = value.get(language)
            if not isinstance(text, str) or not text.strip():
                raise self.fail(f"{where} has no '{language}' text for '{key}'")
        return {lang: text for lang, text in value.items() if isinstance(text, str)}

    def scoring(self, raw: _Table) -> Scoring:
        method = raw.get("method")
        if method != "sum":
            raise self.fail(f'scoring method {method!r} is not supported (only "sum")')
        item_min = self.integer(raw, "item_min", "[scoring]")
        item_max = self.integer(raw, "item_max", "[scoring]")
        if item_min >= item_max:
            raise self.fail("[scoring] item_min must be below item_max")
        multiplier = raw.get("multiplier", 1)
        if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 1:
            raise self.fail("[scoring] multiplier must be a whole number of at least 1")
        reverse = raw.get("reverse_items", [])
        if not isinstance(reverse, list) or not all(isinstance(i, str) for i in reverse):
            raise self.fail("[scoring] reverse_items must be a list of item ids")
        return Scoring(item_min, item_max, frozenset(reverse), multiplier)

    def options(
        self, value: object, scoring: Scoring, where: str, *, required: bool
    ) -> tuple[Option, ...] | None:
        if value is None and not required:
            return None
        options: list[Option] = []
        for raw in self.list_of_tables(value, "options", where):
            option_value = self.integer(raw, "value", f"an option of {where}")
            if not scoring.item_min <= option_value <= scoring.item_max:
                raise self.fail(
                    f"option value {option_value} of {where} is outside the scoring range "
                    f"{scoring.item_min}–{scoring.item_max}"
                )
            if any(option.value == option_value for option in options):
                raise self.fail(f"option value {option_value} appears twice in {where}")
            label = self.texts(raw, "label", f"option {option_value} of {where}")
            options.append(Option(option_value, label))
        missing = set(range(scoring.item_min, scoring.item_max + 1)) - {o.value for o in options}
        if missing:
            raise self.fail(f"{where} has no option for value {min(missing)}")
        return tuple(options)

    def items(
        self, raw: _Table, scoring: Scoring, shared: tuple[Option, ...] | None
    ) -> tuple[Item, ...]:
        items: list[Item] = []
        for entry in self.list_of_tables(raw.get("items"), "items", "the instrument"):
            item_id = self.text(entry, "id", "an item")
            where = f"item '{item_id}'"
            if any(item.id == item_id for item in items):
                raise self.fail(f"item id '{item_id}' appears twice")
            own = self.options(entry.get("options"), scoring, where, required=False)
            options = own if own is not None else shared
            if options is None:
                raise self.fail(f"{where} has no options and the instrument has no shared options")
            items.append(Item(item_id, self.texts(entry, "text", where), options))
        return tuple(items)

    def bands(self, value: object, total_range: tuple[int, int]) -> tuple[Band, ...]:
        bands: list[Band] = []
        for raw in self.list_of_tables(value, "bands", "the instrument"):
            band_id = self.text(raw, "id", "a band")
            where = f"band '{band_id}'"
            if any(band.id == band_id for band in bands):
                raise self.fail(f"band id '{band_id}' appears twice")
            low, high = self.integer(raw, "min", where), self.integer(raw, "max", where)
            if low > high:
                raise self.fail(f"{where} has min {low} above max {high}")
            label, meaning = self.texts(raw, "label", where), self.texts(raw, "meaning", where)
            bands.append(Band(band_id, low, high, label, meaning))
        bands.sort(key=lambda band: band.min)
        lowest, highest = total_range
        outside = next((b for b in bands if b.min < lowest or b.max > highest), None)
        if outside is not None:
            raise self.fail(
                f"band '{outside.id}' goes beyond the possible totals {lowest}–{highest}"
            )
        expected = lowest
        for previous, band in zip([None, *bands], bands, strict=False):
            if previous is not None and band.min <= previous.max:
                raise self.fail(f"bands '{previous.id}' and '{band.id}' overlap at {band.min}")
            if band.min > expected:
                raise self.fail(f"no band covers totals {expected}–{band.min - 1}")
            expected = band.max + 1
        if expected <= highest:
            raise self.fail(f"no band covers totals {expected}–{highest}")
        return tuple(bands)

    def rules(
        self, value: object, instrument: Instrument, thresholds: Mapping[str, int]
    ) -> tuple[Rule, ...]:
        if value is None:
            return ()
        rules: list[Rule] = []
        item_ids = {item.id for item in instrument.items}
        for raw in self.list_of_tables(value, "rules", "the instrument"):
            rule_id = self.text(raw, "id", "a rule")
            where = f"rule '{rule_id}'"
            if any(rule.id == rule_id for rule in rules):
                raise self.fail(f"rule id '{rule_id}' appears twice")
            rule_type = self.text(raw, "type", where)
            if rule_type not in RULE_TYPES:
                known = ", ".join(sorted(RULE_TYPES))
                raise self.fail(f"{where} has unknown type '{rule_type}' (known: {known})")
            for required in sorted(RULE_TYPES[rule_type]):
                if required not in raw:
                    raise self.fail(f"{where} of type '{rule_type}' needs '{required}'")
            rule = Rule(
                id=rule_id,
                type=rule_type,
                threshold=self.integer(raw, "threshold", where) if "threshold" in raw else None,
                item=self.text(raw, "item", where) if "item" in raw else None,
                signal_levels=self.signal_levels(raw.get("signal_levels", {}), where),
                signal=self.level(raw["signal"], where) if "signal" in raw else None,
                flag=self.text(raw, "flag", where) if "flag" in raw else None,
                offer=self.text(raw, "offer", where) if "offer" in raw else None,
            )
            if rule.item is not None and rule.item not in item_ids:
                raise self.fail(f"{where} names unknown item '{rule.item}'")
            if rule_type == "scaled_at_most" and instrument.scoring.multiplier == 1:
                raise self.fail(f"{where} needs a scaled score, but the multiplier is 1")
            if rule_id in thresholds:
                if rule.threshold is None:
                    raise self.fail(f"{where} has no threshold a deployment could change")
                rule = rule.with_threshold(thresholds[rule_id])
            rules.append(rule)
        return tuple(rules)

    def signal_levels(self, value: object, where: str) -> dict[int, RiskLevel]:
        if not isinstance(value, dict):
            raise self.fail(f"{where} signal_levels must be a table of value = level")
        levels: dict[int, RiskLevel] = {}
        for key, level in value.items():
            if not key.lstrip("-").isdigit():
                raise self.fail(f"{where} signal_levels key '{key}' is not a whole number")
            levels[int(key)] = self.level(level, where)
        return levels

    def level(self, value: object, where: str) -> RiskLevel:
        try:
            return RiskLevel.parse(str(value))
        except KeyError:
            raise self.fail(f"{where} names unknown risk level {value!r}") from None

    def audience(self, raw: _Table) -> Audience:
        roles = raw.get("roles")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise self.fail("[audience] roles must be a non-empty list of roles")
        unknown = set(roles) - KNOWN_ROLES
        if unknown:
            raise self.fail(f"[audience] names unknown role '{sorted(unknown)[0]}'")
        return Audience(frozenset(roles), self.integer(raw, "min_age", "[audience]"))

    def translations(self, raw: _Table) -> dict[str, Translation]:
        translations: dict[str, Translation] = {}
        for language, entry in raw.items():
            if not isinstance(entry, dict):
                raise self.fail(f"[languages.{language}] must be a table")
            validated = entry.get("validated")
            if not isinstance(validated, bool):
                raise self.fail(f"[languages.{language}] needs validated = true or false")
            source = self.text(entry, "translation_source", f"[languages.{language}]")
            translations[language] = Translation(validated, source)
        for language in self.languages:
            if language not in translations:
                raise self.fail(f"there is no [languages.{language}] table")
        return translations
