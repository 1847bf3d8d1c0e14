"""Validated questionnaires as plain data, and the scoring of one person's answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.instruments.rules import Rule, RuleOutcome
from core.risk import RiskSignal


class InstrumentError(ValueError):
    """An instrument file, or a set of answers, that cannot be used; the message is one sentence."""


@dataclass(frozen=True)
class Option:
    """One answer choice: the value that is scored and its label per language."""

    value: int
    label: Mapping[str, str]


@dataclass(frozen=True)
class Item:
    """One question, with its text per language and the answer choices offered for it."""

    id: str
    text: Mapping[str, str]
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Band:
    """A range of totals (inclusive) with a label and a plain-words meaning per language."""

    id: str
    min: int
    max: int
    label: Mapping[str, str]
    meaning: Mapping[str, str]


@dataclass(frozen=True)
class Scoring:
    """How answers become a total: each item's value range, reversed items, and the multiplier."""

    item_min: int
    item_max: int
    reverse_items: frozenset[str]
    multiplier: int


@dataclass(frozen=True)
class Audience:
    """Who an instrument may be offered to."""

    roles: frozenset[str]
    min_age: int


@dataclass(frozen=True)
class Translation:
    """Whether one language's texts are a published validated version, and where they come from."""

    validated: bool
    source: str


@dataclass(frozen=True)
class Score:
    """The scored result of one completed instrument."""

    instrument: str
    version: str
    total: int
    band: str
    scaled: int | None
    flags: tuple[str, ...]
    signals: tuple[RiskSignal, ...]
    answers: tuple[int, ...]

    @property
    def offers(self) -> tuple[str, ...]:
        """The ids of instruments this result suggests offering next (from ``offer:<id>`` flags)."""
        return tuple(flag.split(":", 1)[1] for flag in self.flags if flag.startswith("offer:"))


@dataclass(frozen=True)
class OptionText:
    """An answer choice as shown in one language."""

    value: int
    label: str


@dataclass(frozen=True)
class ItemText:
    """A question as shown in one language, with its answer choices."""

    id: str
    text: str
    options: tuple[OptionText, ...]


@dataclass(frozen=True)
class BandText:
    """A band as shown in one language."""

    id: str
    label: str
    meaning: str


@dataclass(frozen=True)
class InstrumentTexts:
    """Everything the chat flow shows for one instrument in one language."""

    language: str
    name: str
    timeframe: str
    stem: str
    items: tuple[ItemText, ...]
    bands: tuple[BandText, ...]
    validated: bool

    def band(self, band_id: str) -> BandText:
        """Return the label and meaning of the band with this id."""
        for band in self.bands:
            if band.id == band_id:
                return band
        raise InstrumentError(f"This instrument has no band '{band_id}'.")


@dataclass(frozen=True, eq=False)
class Instrument:
    """A validated questionnaire loaded from its data file, ready to show and to score.

    ``languages`` are the languages its texts were checked for at load time.
    """

    id: str
    version: str
    name: Mapping[str, str]
    timeframe: Mapping[str, str]
    stem: Mapping[str, str]
    items: tuple[Item, ...]
    scoring: Scoring
    bands: tuple[Band, ...]
    rules: tuple[Rule, ...]
    audience: Audience
    translations: Mapping[str, Translation]
    source: str
    licence: str
    path: str
    languages: tuple[str, ...]

    @property
    def total_range(self) -> tuple[int, int]:
        """The lowest and highest possible raw totals."""
        count = len(self.items)
        return count * self.scoring.item_min, count * self.scoring.item_max

    def score(self, answers: Sequence[int]) -> Score:
        """Score one person's answers (one value per item, in item order) into a total and band.

        Raises ``InstrumentError`` when the number of answers is wrong or a value is not one of
        the item's answer choices.
        """
        values = self._checked(answers)
        total = sum(
            self._scored_value(item, value) for item, value in zip(self.items, values, strict=True)
        )
        scaled = total * self.scoring.multiplier if self.scoring.multiplier != 1 else None
        band = next(band.id for band in self.bands if band.min <= total <= band.max)
        outcome = RuleOutcome()
        item_values = {item.id: value for item, value in zip(self.items, values, strict=True)}
        for rule in self.rules:
            rule.apply(total=total, scaled=scaled, item_values=item_values, outcome=outcome)
        return Score(
            instrument=self.id,
            version=self.version,
            total=total,
            band=band,
            scaled=scaled,
            flags=outcome.flags(),
            signals=outcome.signals(),
            answers=values,
        )

    def texts(self, language: str) -> InstrumentTexts:
        """Return the name, timeframe, stem, questions, answer labels and bands in one language."""
        if language not in self.languages:
            raise InstrumentError(f"Instrument '{self.id}' has no texts in '{language}'.")
        translation = self.translations[language]
        return InstrumentTexts(
            language=language,
            name=self.name[language],
            timeframe=self.timeframe[language],
            stem=self.stem[language],
            items=tuple(
                ItemText(
                    id=item.id,
                    text=item.text[language],
                    options=tuple(
                        OptionText(value=option.value, label=option.label[language])
                        for option in item.options
                    ),
                )
                for item in self.items
            ),
            bands=tuple(
                BandText(id=band.id, label=band.label[language], meaning=band.meaning[language])
                for band in self.bands
            ),
            validated=translation.validated,
        )

    def offered_to(self, role: str, age_min: int) -> bool:
        """Tell whether this instrument may be offered to someone in this role and age band."""
        return role in self.audience.roles and age_min >= self.audience.min_age

    def _checked(self, answers: Sequence[int]) -> tuple[int, ...]:
        if len(answers) != len(self.items):
            raise InstrumentError(
                f"{self.id} needs {len(self.items)} answers, one per question, "
                f"but {len(answers)} were given."
            )
        for position, (item, value) in enumerate(zip(self.items, answers, strict=True), start=1):
            allowed = [option.value for option in item.options]
            if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
                low, high = min(allowed), max(allowed)
                raise InstrumentError(
                    f"Answer {position} of {self.id} is {value!r}, "
                    f"but it must be a whole number from {low} to {high}."
                )
        return tuple(answers)

    def _scored_value(self, item: Item, value: int) -> int:
        if item.id in self.scoring.reverse_items:
            return self.scoring.item_min + self.scoring.item_max - value
        return value
