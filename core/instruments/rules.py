"""Special scoring rules: rule types live in code, their thresholds and levels in the data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from core.risk import RiskLevel, RiskSignal

#: Rule types a data file may name, each with the fields it requires besides ``id`` and ``type``.
RULE_TYPES: Mapping[str, frozenset[str]] = {
    "total_at_least": frozenset({"threshold"}),
    "total_below": frozenset({"threshold"}),
    "scaled_at_most": frozenset({"threshold"}),
    "item_value": frozenset({"item", "signal_levels"}),
}


@dataclass
class RuleOutcome:
    """Flags and risk signals collected while the rules of one instrument run."""

    _flags: list[str] = field(default_factory=list)
    _signals: dict[str, RiskSignal] = field(default_factory=dict)

    def add_flag(self, flag: str) -> None:
        """Record a flag once, keeping the order rules raised them in."""
        if flag not in self._flags:
            self._flags.append(flag)

    def add_signal(self, signal: RiskSignal) -> None:
        """Record a risk signal, keeping only the highest level for the same reasons."""
        key = ",".join(signal.reasons)
        current = self._signals.get(key)
        if current is None or signal.level > current.level:
            self._signals[key] = signal

    def flags(self) -> tuple[str, ...]:
        """Return the flags raised, in order."""
        return tuple(self._flags)

    def signals(self) -> tuple[RiskSignal, ...]:
        """Return the risk signals raised, highest level first."""
        return tuple(sorted(self._signals.values(), key=lambda s: s.level, reverse=True))


@dataclass(frozen=True)
class Rule:
    """One special rule of an instrument, read from its data file.

    ``id`` doubles as the reason given in a risk signal (``"phq9.item9"``). A rule that matches
    adds ``flag`` and ``offer:<offer>`` to the flags and, where the data gives a level, a risk
    signal with source ``"instrument"``.
    """

    id: str
    type: str
    threshold: int | None = None
    item: str | None = None
    signal_levels: Mapping[int, RiskLevel] = field(default_factory=dict)
    signal: RiskLevel | None = None
    flag: str | None = None
    offer: str | None = None

    def with_threshold(self, threshold: int) -> Rule:
        """Return a copy of this rule with a deployment's threshold in place of the bundled one."""
        return Rule(
            id=self.id,
            type=self.type,
            threshold=threshold,
            item=self.item,
            signal_levels=self.signal_levels,
            signal=self.signal,
            flag=self.flag,
            offer=self.offer,
        )

    def apply(
        self,
        *,
        total: int,
        scaled: int | None,
        item_values: Mapping[str, int],
        outcome: RuleOutcome,
    ) -> None:
        """Add this rule's flags and risk signal to ``outcome`` when the result meets it."""
        if self.type == "item_value":
            assert self.item is not None
            value = item_values[self.item]
            level = self.signal_levels.get(value)
            if level is None:
                return
            detail = f"{self.item} = {value}"
        else:
            matched = _THRESHOLD_CHECKS[self.type](total, scaled, self._threshold())
            if not matched:
                return
            level = self.signal
            measured = scaled if self.type == "scaled_at_most" else total
            detail = f"{self.type} {self._threshold()}: {measured}"
        if self.flag is not None:
            outcome.add_flag(self.flag)
        if self.offer is not None:
            outcome.add_flag(f"offer:{self.offer}")
        if level is not None and level > RiskLevel.NONE:
            outcome.add_signal(RiskSignal(level, "instrument", (self.id,), detail))

    def _threshold(self) -> int:
        assert self.threshold is not None
        return self.threshold


def _total_at_least(total: int, scaled: int | None, threshold: int) -> bool:
    return total >= threshold


def _total_below(total: int, scaled: int | None, threshold: int) -> bool:
    return total < threshold


def _scaled_at_most(total: int, scaled: int | None, threshold: int) -> bool:
    return scaled is not None and scaled <= threshold


_THRESHOLD_CHECKS: Mapping[str, Callable[[int, int | None, int], bool]] = {
    "total_at_least": _total_at_least,
    "total_below": _total_below,
    "scaled_at_most": _scaled_at_most,
}
