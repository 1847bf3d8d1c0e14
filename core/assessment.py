"""Self-assessment: validated questionnaires one question at a time, results, and history.

A person picks a short screen (PHQ-2, GAD-2; K6, WHO-5 for staff; PCL-5 after something
frightening), answers one question per message, and sees what the result means and what to do
next. A positive screen offers the full questionnaire without asking its first questions again.
The answers in progress live in the step data (``turn.data["assessment"]``), so a restart or a
detour through the menu loses nothing; a finished questionnaire is stored as an
``AssessmentResult`` in the same transaction as its replies and any risk signal it raised.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, DateTime, Text, UniqueConstraint
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.access import Role
from core.i18n import Catalogs, format_when
from core.instruments import Instrument, InstrumentError, InstrumentRegistry, Score
from core.messages import Button
from core.models import Person
from core.risk import RiskLevel, RiskSignal
from core.safety import hotline_text

if TYPE_CHECKING:
    # Imported for types only: core.db imports this module to create its table, and the
    # conversation engine imports core.db.
    from core.conversation import ConversationEngine, Turn

DRAFT_KEY = "assessment"
HISTORY_LIMIT = 20

#: Roles whose holders are offered the staff instruments, whatever they said at onboarding.
STAFF_ROLES = frozenset({Role.STAFF, Role.COUNSELOR, Role.SUPERVISOR})
#: The short screens each audience is offered first, in the order they are listed.
STARTERS: dict[str, tuple[str, ...]] = {
    "resident": ("phq2", "gad2", "pcl5"),
    "family": ("phq2", "gad2", "pcl5"),
    "site_staff": ("k6", "who5", "pcl5"),
}
# How worrying a band is, by band id across the bundled instruments. A dropped-in instrument's
# other band ids count as "worth talking to someone", the cautious middle.
CALM_BANDS = frozenset({"minimal", "negative", "low", "adequate"})
HIGH_BANDS = frozenset({"moderately_severe", "severe", "serious", "likely_depression"})


class AssessmentResult(SQLModel, table=True):
    """One finished questionnaire of one person, with the instrument version it was scored by.

    ``attempt`` is drawn when the questionnaire starts, so the same attempt is never stored
    twice even when two workers take the last answer at the same moment.
    """

    __tablename__ = "assessment_result"
    __table_args__ = (UniqueConstraint("person_id", "attempt", name="uq_assessment_attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True, ondelete="CASCADE")
    instrument: str = Field(max_length=32)
    version: str = Field(max_length=16)
    attempt: str = Field(max_length=32)
    answers: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    total: int
    band: str = Field(max_length=32)
    scaled: int | None = None
    flags: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


@dataclass
class Draft:
    """A questionnaire in progress: which instrument, and the answers given so far."""

    instrument: str
    version: str
    attempt: str
    answers: list[int]

    @classmethod
    def read(cls, raw: object) -> Draft | None:
        """Read a draft from step data, or None when there is none or it is not readable."""
        if not isinstance(raw, dict):
            return None
        answers = raw.get("answers")
        if not isinstance(answers, list) or not all(isinstance(a, int) for a in answers):
            return None
        try:
            return cls(
                str(raw["instrument"]), str(raw["version"]), str(raw["attempt"]), list(answers)
            )
        except KeyError:
            return None

    def data(self) -> dict[str, Any]:
        """The draft as JSON-ready step data."""
        return {
            "instrument": self.instrument,
            "version": self.version,
            "attempt": self.attempt,
            "answers": list(self.answers),
        }


# Who may take what ---------------------------------------------------------------------------


def audience_role(person: Person, roles: set[Role]) -> str:
    """The instrument audience this person belongs to: ``site_staff`` for anyone on staff."""
    if person.relation == "site_staff" or roles & STAFF_ROLES:
        return "site_staff"
    return person.relation or "resident"


def allowed_instruments(
    registry: InstrumentRegistry, person: Person, roles: set[Role]
) -> list[Instrument]:
    """The instruments this person may take now: none before consent or under 16."""
    if person.consent_version is None or person.age_band is None:
        return []
    try:
        return registry.for_person(audience_role(person, roles), person.age_band)
    except InstrumentError:
        return []


def carried_items(screen: Instrument, full: Instrument) -> int:
    """How many of ``full``'s first questions ``screen`` already asked (PHQ-2 in PHQ-9: 2)."""
    count = len(screen.items)
    if count == 0 or count > len(full.items):
        return 0
    same = all(
        s.text == f.text and s.options == f.options
        for s, f in zip(screen.items, full.items[:count], strict=True)
    )
    return count if same else 0


def _draft_in(raw_state_data: str) -> Draft | None:
    try:
        data = json.loads(raw_state_data or "{}")
    except ValueError:
        return None
    return Draft.read(data.get(DRAFT_KEY)) if isinstance(data, dict) else None


# Registration ---------------------------------------------------------------------------------


def register(engine: ConversationEngine, registry: InstrumentRegistry) -> None:
    """Register the self-check flow, /results, its menu entries and its privacy hooks."""
    from core.conversation import MenuEntry

    flow = AssessmentFlow(registry, engine.catalogs)
    engine.state("assess_choose", flow.prompt_choose, flow.typed_elsewhere)
    engine.state("assess_q", flow.prompt_question, flow.typed_answer)
    engine.state("assess_resume", flow.prompt_resume, flow.typed_elsewhere)
    engine.state("assess_result", flow.prompt_result, flow.typed_elsewhere)
    engine.action("assess", flow.open, any_step=True)
    engine.action("assess.continue", flow.continue_draft, any_step=True)
    engine.action("assess.results", flow.show_results, any_step=True)
    engine.action("assess.restart", flow.start_over)
    engine.action("assess.start", flow.start)
    engine.action("assess.answer", flow.answer)
    engine.action("assess.back", flow.back)
    engine.action("assess.pause", flow.pause)
    engine.action("assess.cancel", flow.cancel)
    engine.action("assess.offer", flow.take_offer)
    engine.action("assess.offer_later", flow.offer_later)
    engine.command("results", flow.show_results)
    engine.after_turn.append(flow.keep_draft)

    def may_assess(person: Person, roles: set[Role]) -> bool:
        return bool(allowed_instruments(registry, person, roles))

    entries = [
        MenuEntry(
            "assess",
            "menu.assess",
            "assess",
            lambda p, r: may_assess(p, r) and _draft_in(p.state_data) is None,
        ),
        MenuEntry(
            "assess_continue",
            "menu.assess_continue",
            "assess.continue",
            lambda p, r: may_assess(p, r) and _draft_in(p.state_data) is not None,
        ),
        MenuEntry("assess_results", "menu.assess_results", "assess.results", may_assess),
    ]
    # Just after SOS, so the self-check is near the top of the menu.
    at = next((i + 1 for i, e in enumerate(engine.menu) if e.key == "sos"), len(engine.menu))
    engine.menu[at:at] = entries
    engine.export_hooks.append(_export_results)
    engine.case_lines.append(flow.scores_line)


# The flow -------------------------------------------------------------------------------------


class AssessmentFlow:
    """The self-check conversation, bound to the instruments loaded at start-up."""

    def __init__(self, registry: InstrumentRegistry, catalogs: Catalogs) -> None:
        self.registry = registry
        self.catalogs = catalogs

    # Entry points ---------------------------------------------------------------------------

    async def open(self, turn: Turn, _arg: str) -> None:
        """Menu "Self-check": offer to continue a draft, or list the questionnaires."""
        if not await self._may_start(turn):
            return
        if self._draft(turn) is not None:
            turn.goto("assess_resume", **{DRAFT_KEY: turn.data[DRAFT_KEY]})
            await self.prompt_resume(turn)
            return
        turn.goto("assess_choose")
        await self.prompt_choose(turn)

    async def continue_draft(self, turn: Turn, _arg: str) -> None:
        """Menu "Continue where you left off": ask the next unanswered question."""
        if not await self._may_start(turn):
            return
        draft = self._draft(turn)
        if draft is None:
            await self.open(turn, "")
            return
        instrument = self._instrument_for(turn, draft)
        if instrument is None:
            return
        turn.goto("assess_q", **{DRAFT_KEY: draft.data()})
        turn.say("assess.resumed", name=instrument.texts(turn.lang).name)
        await self.prompt_question(turn)

    async def start_over(self, turn: Turn, _arg: str) -> None:
        """Drop the draft and list the questionnaires again."""
        turn.goto("assess_choose", **{DRAFT_KEY: None})
        await self.prompt_choose(turn)

    async def start(self, turn: Turn, instrument_id: str) -> None:
        """Begin the chosen questionnaire: its timeframe and instructions, then question 1."""
        if not await self._may_start(turn):
            return
        if instrument_id not in {i.id for i in await self._choices_with_history(turn)}:
            await turn.prompt()
            return
        await self._begin(turn, self.registry.get(instrument_id), [])

    # Questions ------------------------------------------------------------------------------

    async def prompt_question(self, turn: Turn) -> None:
        """Show the next unanswered question with its answer buttons and progress."""
        draft = self._draft(turn)
        instrument = self._instrument_for(turn, draft) if draft is not None else None
        if draft is None or instrument is None:
            turn.goto("menu", **{DRAFT_KEY: None})
            await turn.engine.prompt(turn)
            return
        texts = instrument.texts(turn.lang)
        index = len(draft.answers)
        item = texts.items[index]
        rows = [
            [Button(option.label, "assess.answer", f"{index}:{option.value}")]
            for option in item.options
        ]
        controls = [turn.button("assess.button_pause", "assess.pause")]
        if index > 0:
            controls.insert(0, turn.button("assess.button_back", "assess.back", str(index)))
        rows.append(controls)
        rows.append(
            [turn.button("assess.button_cancel", "assess.cancel"), turn.button("menu.sos", "sos")]
        )
        turn.say(
            "assess.question",
            progress=f"{index + 1}/{len(texts.items)}",
            timeframe=texts.timeframe,
            question=item.text,
            buttons=rows,
        )

    async def answer(self, turn: Turn, arg: str) -> None:
        """Record one answer, then ask the next question or show the result."""
        draft = self._draft(turn)
        instrument = self._instrument_for(turn, draft) if draft is not None else None
        if draft is None or instrument is None or turn.person.state != "assess_q":
            await turn.prompt()
            return
        index_text, _, value_text = arg.partition(":")
        item = instrument.items[len(draft.answers)]
        allowed = {option.value for option in item.options}
        if (
            index_text != str(len(draft.answers))
            or not value_text.lstrip("-").isdigit()
            or int(value_text) not in allowed
        ):
            # Only reachable with a token from another question of this same step.
            turn.notice = turn.t("input.button_stale")
            turn.say("input.button_stale")
            await self.prompt_question(turn)
            return
        draft.answers.append(int(value_text))
        if len(draft.answers) == len(instrument.items):
            await self._complete(turn, instrument, draft)
            return
        turn.goto("assess_q", **{DRAFT_KEY: draft.data()})
        await self.prompt_question(turn)

    async def back(self, turn: Turn, _arg: str) -> None:
        """Go back one question so the person can change their previous answer."""
        draft = self._draft(turn)
        if draft is None or turn.person.state != "assess_q" or not draft.answers:
            await turn.prompt()
            return
        previous = draft.answers.pop()
        instrument = self._instrument_for(turn, draft)
        if instrument is None:
            return
        item = instrument.texts(turn.lang).items[len(draft.answers)]
        label = next((o.label for o in item.options if o.value == previous), "")
        turn.goto("assess_q", **{DRAFT_KEY: draft.data()})
        turn.say("assess.went_back", answer=label)
        await self.prompt_question(turn)

    async def typed_answer(self, turn: Turn, _text: str) -> None:
        """Text where an answer button is expected: ask the same question again, kindly."""
        turn.say("assess.use_buttons")
        await self.prompt_question(turn)

    async def typed_elsewhere(self, turn: Turn, _text: str) -> None:
        """Text on a choice screen of the flow: point to the buttons and show them again."""
        turn.say("assess.use_buttons_choice")
        await turn.prompt()

    async def pause(self, turn: Turn, _arg: str) -> None:
        """Keep the answers so far and leave; the menu then offers to continue."""
        draft = self._draft(turn)
        if draft is None:
            await turn.prompt()
            return
        turn.goto("menu", **{DRAFT_KEY: draft.data()})
        turn.say(
            "assess.paused",
            buttons=[
                [turn.button("assess.button_continue", "assess.continue")],
                [turn.menu_button()],
            ],
        )

    async def cancel(self, turn: Turn, _arg: str) -> None:
        """Throw the answers so far away and leave."""
        turn.goto("menu", **{DRAFT_KEY: None})
        turn.say("assess.cancelled", buttons=[[turn.menu_button()]])

    # Resume ---------------------------------------------------------------------------------

    async def prompt_resume(self, turn: Turn) -> None:
        """Ask whether to continue the questionnaire in progress or start over."""
        draft = self._draft(turn)
        instrument = self._instrument_for(turn, draft) if draft is not None else None
        if draft is None or instrument is None:
            turn.goto("assess_choose", **{DRAFT_KEY: None})
            await self.prompt_choose(turn)
            return
        turn.say(
            "assess.resume",
            name=instrument.texts(turn.lang).name,
            done=len(draft.answers),
            count=len(instrument.items),
            buttons=[
                [turn.button("assess.button_continue", "assess.continue")],
                [turn.button("assess.button_restart", "assess.restart")],
                [turn.menu_button()],
            ],
        )

    # Choice ---------------------------------------------------------------------------------

    async def prompt_choose(self, turn: Turn) -> None:
        """List the questionnaires this person may take, with who each one is for."""
        choices = await self._choices_with_history(turn)
        catalogs = turn.engine.catalogs
        about = [
            turn.t(f"assess.about.{i.id}")
            for i in choices
            if catalogs.has(turn.lang, f"assess.about.{i.id}")
        ]
        rows = [
            [
                Button(
                    turn.t("assess.choice", topic=self._topic(turn, i), count=len(i.items)),
                    "assess.start",
                    i.id,
                )
            ]
            for i in choices
        ]
        rows.append([turn.button("menu.assess_results", "assess.results")])
        rows.append([turn.menu_button(), turn.button("menu.sos", "sos")])
        turn.say("assess.choose", about="\n".join(about), buttons=rows)

    # Results --------------------------------------------------------------------------------

    async def prompt_result(self, turn: Turn) -> None:
        """Show again what the person can do after a result."""
        turn.say("assess.after_result", buttons=self._after_result_buttons(turn))

    async def take_offer(self, turn: Turn, _arg: str) -> None:
        """Start the fuller questionnaire a screen suggested, with the screen's answers in it."""
        offer = turn.data.get("offer")
        if not isinstance(offer, dict) or not await self._may_start(turn):
            await turn.prompt()
            return
        target = str(offer.get("to", ""))
        if target not in {
            i.id for i in allowed_instruments(self.registry, turn.person, turn.roles)
        }:
            await turn.prompt()
            return
        carry = [int(a) for a in offer.get("carry", []) if isinstance(a, int)]
        await self._begin(turn, self.registry.get(target), carry)

    async def offer_later(self, turn: Turn, _arg: str) -> None:
        """Decline the fuller questionnaire for now: say where help is, back to the menu."""
        turn.goto("menu")
        turn.say("assess.next_talk", buttons=[[turn.menu_button(), turn.button("menu.sos", "sos")]])

    async def show_results(self, turn: Turn, _arg: str) -> None:
        """``/results``: past results with dates, and the change since the time before."""
        if not allowed_instruments(self.registry, turn.person, turn.roles):
            await self._not_for_you(turn)
            return
        rows = (
            await turn.session.exec(
                select(AssessmentResult)
                .where(AssessmentResult.person_id == turn.person.id)
                .order_by(col(AssessmentResult.created_at).desc(), col(AssessmentResult.id).desc())
                .limit(HISTORY_LIMIT)
            )
        ).all()
        buttons = [[turn.button("menu.assess", "assess")], [turn.menu_button()]]
        if not rows:
            turn.say("assess.history_empty", buttons=buttons)
            return
        tz = turn.site_or_default.tz
        lines = []
        for row in rows:
            lines.append(
                turn.t(
                    "assess.history_line",
                    when=format_when(_aware(row.created_at), turn.lang, tz),
                    name=self._short(turn, row.instrument),
                    total=row.total,
                    band=self._band_label(turn, row.instrument, row.band),
                )
            )
        changes = []
        for instrument_id in dict.fromkeys(row.instrument for row in rows):
            same = [row for row in rows if row.instrument == instrument_id]
            if len(same) >= 2:
                changes.append(
                    turn.t(
                        "assess.history_change",
                        name=self._short(turn, instrument_id),
                        before=same[1].total,
                        after=same[0].total,
                    )
                )
        text = turn.t("assess.history_title", count=len(rows)) + "\n" + "\n".join(lines)
        if changes:
            text += "\n\n" + turn.t("assess.history_changes") + "\n" + "\n".join(changes)
        turn.send(text, buttons=buttons)

    # Draft kept across detours ---------------------------------------------------------------

    async def keep_draft(self, turn: Turn) -> None:
        """After any turn: keep the answers in progress when another flow replaced the step data.

        Only this flow ends a draft (by writing ``assessment: None``); leaving through the menu
        or another feature keeps it, so the menu can offer to continue where the person left.
        Withdrawing consent or erasure drops it.
        """
        if turn.erased or not turn.onboarded or DRAFT_KEY in turn.data:
            return
        draft = _draft_in(turn.person.state_data)
        if draft is not None:
            turn.data[DRAFT_KEY] = draft.data()

    # Internals ------------------------------------------------------------------------------

    async def _may_start(self, turn: Turn) -> bool:
        if not turn.onboarded:
            turn.say("onboarding.finish_first")
            await turn.prompt()
            return False
        if not allowed_instruments(self.registry, turn.person, turn.roles):
            await self._not_for_you(turn)
            return False
        return True

    async def _not_for_you(self, turn: Turn) -> None:
        # Children get the child-safe path: a grown-up at the site, not a questionnaire.
        site = turn.site_or_default
        contact = site.contact.get(turn.lang) or turn.t("child.no_contact")
        turn.say(
            "assess.not_for_you",
            contact=contact,
            buttons=[
                [turn.button("button.child_staff", "child.staff")],
                [turn.button("menu.sos", "sos")],
                [turn.menu_button()],
            ],
        )

    def _draft(self, turn: Turn) -> Draft | None:
        return Draft.read(turn.data.get(DRAFT_KEY))

    def _instrument_for(self, turn: Turn, draft: Draft) -> Instrument | None:
        """The draft's instrument, or None (after telling the person) when it cannot go on."""
        if draft.instrument in self.registry:
            instrument = self.registry.get(draft.instrument)
            if instrument.version == draft.version and len(draft.answers) < len(instrument.items):
                return instrument
        turn.goto("menu", **{DRAFT_KEY: None})
        turn.say(
            "assess.unavailable",
            buttons=[[turn.button("menu.assess", "assess")], [turn.menu_button()]],
        )
        return None

    def _choices(self, turn: Turn) -> list[Instrument]:
        allowed = {i.id: i for i in allowed_instruments(self.registry, turn.person, turn.roles)}
        starters = STARTERS.get(audience_role(turn.person, turn.roles), STARTERS["resident"])
        # Full questionnaires a screen leads to are reached through the screen.
        follow_ups = {rule.offer for i in self.registry for rule in i.rules if rule.offer}
        every_starter = {i for ids in STARTERS.values() for i in ids}
        chosen = [allowed[i] for i in starters if i in allowed]
        chosen += [
            i for i in allowed.values() if i.id not in every_starter and i.id not in follow_ups
        ]
        return chosen

    async def _choices_with_history(self, turn: Turn) -> list[Instrument]:
        """The choices, with a screen replaced by its full version once that was taken before.

        Someone followed up on the PHQ-9 sees the PHQ-9 again, so the change can be measured.
        """
        done = set(
            (
                await turn.session.exec(
                    select(AssessmentResult.instrument).where(
                        AssessmentResult.person_id == turn.person.id
                    )
                )
            ).all()
        )
        allowed = {i.id for i in allowed_instruments(self.registry, turn.person, turn.roles)}
        result = []
        for screen in self._choices(turn):
            full = next(
                (
                    self.registry.get(r.offer)
                    for r in screen.rules
                    if r.offer in done
                    and r.offer in allowed
                    and carried_items(screen, self.registry.get(r.offer))
                ),
                None,
            )
            result.append(full or screen)
        return result

    async def _begin(self, turn: Turn, instrument: Instrument, carried: Sequence[int]) -> None:
        draft = Draft(instrument.id, instrument.version, secrets.token_hex(8), list(carried))
        texts = instrument.texts(turn.lang)
        turn.goto("assess_q", **{DRAFT_KEY: draft.data()})
        turn.say(
            "assess.intro",
            name=texts.name,
            stem=texts.stem,
            count=len(instrument.items) - len(carried),
        )
        if not texts.validated:
            turn.say("assess.unvalidated")
        await self.prompt_question(turn)

    async def _complete(self, turn: Turn, instrument: Instrument, draft: Draft) -> None:
        """Score, raise any risk signal, store the result and show it: all in this turn."""
        score = instrument.score(draft.answers)
        assert turn.person.id is not None  # an onboarded person has a row
        previous = (
            await turn.session.exec(
                select(AssessmentResult)
                .where(AssessmentResult.person_id == turn.person.id)
                .where(AssessmentResult.instrument == instrument.id)
                .order_by(col(AssessmentResult.created_at).desc(), col(AssessmentResult.id).desc())
                .limit(1)
            )
        ).first()
        turn.session.add(
            AssessmentResult(
                person_id=turn.person.id,
                instrument=score.instrument,
                version=score.version,
                attempt=draft.attempt,
                answers=json.dumps(list(score.answers)),
                total=score.total,
                band=score.band,
                scaled=score.scaled,
                flags=json.dumps(list(score.flags)),
                created_at=turn.now,
            )
        )
        signal = _combined(score.signals)
        if signal is not None:
            # The crisis reply goes first; the escalation engine hooks into the same call.
            await turn.engine.raise_signal(turn, signal, excerpt="")
        offer = self._offer(turn, instrument, score)
        turn.goto("assess_result", **{DRAFT_KEY: None}, offer=offer)
        turn.send(
            self._result_text(turn, instrument, score, previous, offer),
            buttons=self._after_result_buttons(turn),
        )

    def _offer(self, turn: Turn, screen: Instrument, score: Score) -> dict[str, Any] | None:
        allowed = {i.id for i in allowed_instruments(self.registry, turn.person, turn.roles)}
        for target_id in score.offers:
            if target_id in allowed:
                carried = carried_items(screen, self.registry.get(target_id))
                return {"to": target_id, "carry": list(score.answers[:carried])}
        return None

    def _result_text(
        self,
        turn: Turn,
        instrument: Instrument,
        score: Score,
        previous: AssessmentResult | None,
        offer: dict[str, Any] | None,
    ) -> str:
        texts = instrument.texts(turn.lang)
        band = texts.band(score.band)
        _low, high = instrument.total_range
        parts = [
            turn.t(
                "assess.result",
                name=texts.name,
                total=score.total,
                max=high,
                band=band.label,
                meaning=band.meaning,
            )
        ]
        if score.scaled is not None:
            parts.append(
                turn.t(
                    "assess.result_scaled",
                    scaled=score.scaled,
                    max=high * instrument.scoring.multiplier,
                )
            )
        if previous is not None:
            when = format_when(_aware(previous.created_at), turn.lang, turn.site_or_default.tz)
            parts.append(
                turn.t("assess.result_change", when=when, before=previous.total, after=score.total)
            )
        parts.append(turn.t("assess.not_diagnosis"))
        if offer is not None:
            target = self.registry.get(str(offer["to"]))
            parts.append(
                turn.t(
                    "assess.next_offer",
                    name=target.texts(turn.lang).name,
                    count=len(target.items) - len(offer["carry"]),
                )
            )
        else:
            parts.append(self._next_steps(turn, score))
        return "\n\n".join(parts)

    def _next_steps(self, turn: Turn, score: Score) -> str:
        level = max((s.level for s in score.signals), default=RiskLevel.NONE)
        if level >= RiskLevel.HIGH:
            # The crisis lines were just sent at crisis priority; do not repeat them here.
            return turn.t("assess.next_urgent")
        if score.band in HIGH_BANDS:
            return turn.t("assess.next_high", lines=hotline_text(turn, turn.site_or_default))
        concern = level > RiskLevel.NONE or any(not f.startswith("offer:") for f in score.flags)
        if score.band in CALM_BANDS and not concern:
            return turn.t("assess.next_calm")
        single_band = len(self.registry.get(score.instrument).bands) == 1
        if single_band and not concern:
            return turn.t("assess.next_calm")
        return turn.t("assess.next_talk")

    def _after_result_buttons(self, turn: Turn) -> list[list[Button]]:
        rows: list[list[Button]] = []
        offer = turn.data.get("offer")
        if isinstance(offer, dict) and str(offer.get("to", "")) in self.registry:
            target = self.registry.get(str(offer["to"]))
            rows.append(
                [
                    turn.button(
                        "assess.button_offer",
                        "assess.offer",
                        name=self._short(turn, target.id),
                        count=len(target.items) - len(offer.get("carry", [])),
                    )
                ]
            )
            rows.append([turn.button("assess.button_offer_later", "assess.offer_later")])
        rows.append([turn.button("menu.assess_results", "assess.results")])
        rows.append([turn.menu_button(), turn.button("menu.sos", "sos")])
        return rows

    def _topic(self, turn: Turn, instrument: Instrument) -> str:
        key = f"assess.topic.{instrument.id}"
        if turn.engine.catalogs.has(turn.lang, key):
            return turn.t(key)
        return instrument.texts(turn.lang).name

    def _short(self, turn: Turn, instrument_id: str) -> str:
        return self._short_in(turn.engine.catalogs, turn.lang, instrument_id)

    def _short_in(self, catalogs: Catalogs, lang: str, instrument_id: str) -> str:
        key = f"assess.short.{instrument_id}"
        if catalogs.has(lang, key):
            return catalogs.t(lang, key)
        if instrument_id in self.registry:
            return self.registry.get(instrument_id).texts(lang).name
        return instrument_id

    def _band_label(self, turn: Turn, instrument_id: str, band_id: str) -> str:
        return self._band_in(turn.lang, instrument_id, band_id)

    def _band_in(self, lang: str, instrument_id: str, band_id: str) -> str:
        if instrument_id not in self.registry:
            return band_id
        try:
            return self.registry.get(instrument_id).texts(lang).band(band_id).label
        except InstrumentError:
            return band_id

    async def scores_line(self, session: AsyncSession, person_id: int, lang: str) -> str:
        """The latest results (up to three) for a staff card, in the staff's language, each
        with the change since the same questionnaire before it."""
        catalogs = self.catalogs
        parts = []
        for row in (await result_summary(session, person_id))[:3]:
            instrument_id = str(row["instrument"])
            parts.append(
                catalogs.t(
                    lang,
                    "assess.card_score" if row["previous_total"] is None else "assess.card_change",
                    name=self._short_in(catalogs, lang, instrument_id),
                    total=row["total"],
                    before=row["previous_total"],
                    band=self._band_in(lang, instrument_id, str(row["band"])),
                )
            )
        return catalogs.t(lang, "assess.card_separator").join(parts)


def _combined(signals: Sequence[RiskSignal]) -> RiskSignal | None:
    """One signal at the highest level with every reason, so the person gets one safety reply."""
    if not signals:
        return None
    top = max(signal.level for signal in signals)
    reasons = tuple(reason for signal in signals for reason in signal.reasons)
    detail = "; ".join(signal.detail for signal in signals if signal.detail)
    return RiskSignal(top, "instrument", reasons, detail)


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# For other features -------------------------------------------------------------------------


def _result_dict(row: AssessmentResult) -> dict[str, Any]:
    return {
        "instrument": row.instrument,
        "version": row.version,
        "at": _aware(row.created_at).isoformat(),
        "answers": json.loads(row.answers),
        "total": row.total,
        "band": row.band,
        "scaled": row.scaled,
        "flags": json.loads(row.flags),
    }


async def result_summary(session: AsyncSession, person_id: int) -> list[dict[str, Any]]:
    """A person's results for the staff case view, newest first, each with the change since
    the same instrument's result before it (``previous_total``, ``change``; None if first)."""
    rows = (
        await session.exec(
            select(AssessmentResult)
            .where(AssessmentResult.person_id == person_id)
            .order_by(col(AssessmentResult.created_at), col(AssessmentResult.id))
        )
    ).all()
    last_total: dict[str, int] = {}
    summary: list[dict[str, Any]] = []
    for row in rows:
        entry = _result_dict(row)
        before = last_total.get(row.instrument)
        entry["previous_total"] = before
        entry["change"] = None if before is None else row.total - before
        last_total[row.instrument] = row.total
        summary.append(entry)
    summary.reverse()
    return summary


async def _export_results(session: AsyncSession, person: Person) -> tuple[str, Any]:
    """The person's results for their data download."""
    rows = (
        await session.exec(
            select(AssessmentResult)
            .where(AssessmentResult.person_id == person.id)
            .order_by(col(AssessmentResult.created_at), col(AssessmentResult.id))
        )
    ).all()
    return "assessments", [_result_dict(row) for row in rows]
