"""Risk levels and risk signals, shared by triage, assessments and escalation."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class RiskLevel(IntEnum):
    """How urgently a person needs a human; ordered so that max() picks the worst."""

    NONE = 0
    LOW = 1
    MODERATE = 2
    HIGH = 3
    IMMINENT = 4

    @property
    def label(self) -> str:
        """The level's stable lowercase name, as stored and printed (``"high"``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> RiskLevel:
        """Read a level from its lowercase name."""
        return cls[value.strip().upper()]


@dataclass(frozen=True)
class RiskSignal:
    """A reason to look at someone: where it came from, how high, and why.

    ``source`` is ``"triage"``, ``"instrument"``, ``"sos"`` or ``"staff_report"``;
    ``reasons`` are stable identifiers (``"phq9.item9"``, ``"zh.intent.direct"``) that staff
    cards and audits show.
    """

    level: RiskLevel
    source: str
    reasons: tuple[str, ...] = field(default_factory=tuple)
    detail: str = ""
