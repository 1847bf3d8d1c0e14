"""The set of instruments a deployment offers: bundled ones plus any dropped-in data files."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from core.instruments.instrument import Instrument, InstrumentError
from core.instruments.loading import load_instrument

DEFAULT_LANGUAGES = ("zh_Hans", "en")

_AGE_RANGE = re.compile(r"^\s*(\d+)\s*(?:-|–|_|to)\s*(\d+)\s*$")
_AGE_FROM = re.compile(r"^\s*(\d+)\s*(?:\+|_?plus|_and_over|_or_over)\s*$")
_AGE_UNDER = re.compile(r"^\s*(?:under_?|<\s*)(\d+)\s*$")


def bundled_dir() -> Path:
    """Return the directory of instrument data files that ship with Anxin."""
    return Path(__file__).resolve().parent.parent / "data" / "instruments"


def age_band_minimum(age_band: str) -> int:
    """Return the youngest age an age band can hold ("16-17" → 16, "65+" → 65, "under_16" → 0).

    Onboarding's bands ("16_17", "18_39", "40_64", "65_plus") are read the same way.

    An unknown age ("unknown", "") counts as 0, so it never unlocks adult instruments.
    """
    text = age_band.strip().lower().replace(" ", "")
    if text in {"", "unknown", "none"}:
        return 0
    for pattern in (_AGE_RANGE, _AGE_FROM):
        match = pattern.match(text)
        if match:
            return int(match.group(1))
    if _AGE_UNDER.match(text):
        return 0
    raise InstrumentError(
        f"Age band {age_band!r} is not understood; use a form like '16-17', '65+' or 'under_16'."
    )


class InstrumentRegistry:
    """The instruments loaded at start-up, found by id or by who may be offered them."""

    def __init__(self, instruments: Sequence[Instrument]) -> None:
        self._by_id = {instrument.id: instrument for instrument in instruments}

    @classmethod
    def load(
        cls,
        dirs: Sequence[Path],
        languages: Sequence[str] = DEFAULT_LANGUAGES,
        thresholds: Mapping[str, int] | None = None,
    ) -> InstrumentRegistry:
        """Load every ``*.toml`` instrument in ``dirs`` (bundled first, then deployment ones).

        ``languages`` are the languages every text must exist in; ``thresholds`` lets a
        deployment change a rule's threshold by rule id (``{"pcl5.probable_ptsd": 31}``).
        Raises ``InstrumentError`` naming the file and the problem when any file is unsafe,
        when two files share an id, or when a threshold names no rule.
        """
        thresholds = dict(thresholds or {})
        instruments: dict[str, Instrument] = {}
        for directory in dirs:
            if not directory.is_dir():
                raise InstrumentError(f"{directory}: the instrument directory does not exist.")
            for path in sorted(directory.glob("*.toml")):
                instrument = load_instrument(path, languages, thresholds)
                first = instruments.get(instrument.id)
                if first is not None:
                    raise InstrumentError(
                        f"{path}: instrument id '{instrument.id}' is already used by {first.path}."
                    )
                instruments[instrument.id] = instrument
        rule_ids = {rule.id for i in instruments.values() for rule in i.rules}
        unknown = sorted(set(thresholds) - rule_ids)
        if unknown:
            raise InstrumentError(f"Threshold override '{unknown[0]}' names no loaded rule.")
        for instrument in instruments.values():
            for rule in instrument.rules:
                if rule.offer is not None and rule.offer not in instruments:
                    raise InstrumentError(
                        f"{instrument.path}: rule '{rule.id}' offers unknown instrument "
                        f"'{rule.offer}'."
                    )
        return cls(list(instruments.values()))

    def get(self, instrument_id: str) -> Instrument:
        """Return the instrument with this id, or raise ``InstrumentError`` if none is loaded."""
        try:
            return self._by_id[instrument_id]
        except KeyError:
            known = ", ".join(sorted(self._by_id))
            raise InstrumentError(
                f"There is no instrument '{instrument_id}' (loaded: {known})."
            ) from None

    def for_person(self, role: str, age_band: str) -> list[Instrument]:
        """Return the instruments that may be offered to someone of this role and age band."""
        age_min = age_band_minimum(age_band)
        return [i for i in self if i.offered_to(role, age_min)]

    def __iter__(self) -> Iterator[Instrument]:
        """Iterate over the instruments in id order."""
        return iter(sorted(self._by_id.values(), key=lambda instrument: instrument.id))

    def __len__(self) -> int:
        """Return how many instruments are loaded."""
        return len(self._by_id)

    def __contains__(self, instrument_id: object) -> bool:
        """Tell whether an instrument with this id is loaded."""
        return instrument_id in self._by_id
