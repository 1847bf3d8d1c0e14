"""What every person can always reach: crisis lines, and the answer to a risk signal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from core.messages import Priority
from core.risk import RiskLevel, RiskSignal
from core.sites import Site

if TYPE_CHECKING:
    from core.conversation import Turn


class RiskResponder(Protocol):
    """Answers a risk signal inside the turn that raised it (reply, escalation, both)."""

    async def respond(self, turn: Turn, signal: RiskSignal, excerpt: str) -> None:
        """Queue what must happen for ``signal`` in the turn's transaction."""
        ...


def hotline_text(turn: Turn, site: Site, *, emergency_first: bool = False) -> str:
    """The site's crisis lines in the person's language, 24-hour ones marked."""
    lang = turn.lang
    lines: list[str] = []
    for line in site.hotlines:
        if line.emergency:
            continue
        if line.open_24h:
            when = turn.t("hotline.open_24h")
        else:
            when = line.hours_text(lang) or turn.t("hotline.limited_hours")
        lines.append(turn.t("hotline.line", name=line.name(lang), number=line.number, hours=when))
    emergency = [h for h in site.hotlines if h.emergency]
    text = "\n".join(lines)
    if emergency:
        items = " / ".join(
            turn.t("hotline.emergency_item", number=h.number, name=h.name(lang)) for h in emergency
        )
        numbers = turn.t("hotline.emergency", numbers=items)
        text = f"{numbers}\n{text}" if emergency_first else f"{text}\n{numbers}"
    return text


class HotlineResponder:
    """Shows the site's crisis lines at once; the escalation path builds on this."""

    async def respond(self, turn: Turn, signal: RiskSignal, excerpt: str) -> None:
        """Reply at crisis priority with lines (high/imminent), or a caring offer (moderate)."""
        site = turn.site_or_default
        if signal.level >= RiskLevel.HIGH:
            key = "safety.imminent" if signal.level == RiskLevel.IMMINENT else "safety.high"
            turn.say(
                key,
                lines=hotline_text(turn, site, emergency_first=True),
                priority=Priority.CRISIS,
                kind="safety",
                buttons=[[turn.menu_button()]],
            )
        elif signal.level == RiskLevel.MODERATE:
            turn.say(
                "safety.moderate",
                lines=hotline_text(turn, site),
                priority=Priority.CRISIS,
                kind="safety",
                buttons=[[turn.menu_button()]],
            )
