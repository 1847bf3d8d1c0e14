"""The triage engine: reads one message and says how urgently a human should look."""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from core.risk import RiskLevel, RiskSignal
from core.triage.lexicon import Cue, Lexicon, load_lexicon

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[a-z]")
# "dieeee" → "die": people stretch words for emphasis; the lexicon spells them once.
_REPEATED_LETTER = re.compile(r"([a-z])\1{2,}")
# "k m s", "s.u.i.c.i.d.e" → "kms", "suicide": letters spaced out to dodge filters.
_SPACED_LETTERS = re.compile(r"\b[a-z](?:[\s.\-_*~]+[a-z]\b){2,}")
_LETTER_SEPARATORS = re.compile(r"[\s.\-_*~]+")
# "想 死", "想.死", "想~死": separators between Chinese characters carry no meaning there.
_CJK_SEPARATOR = re.compile(r"(?<=[\u3400-\u9fff])[\s.\-_*·•~|/\\'\"^+=#@]+(?=[\u3400-\u9fff])")
_SPACES = re.compile(r"\s+")

_FIRST = "first"
_THIRD = "third"
_FICTION = "fiction"
_NEGATION_WINDOW = 60


@dataclass(frozen=True)
class TriageResult:
    """How urgent one message is, the reason ids that fired, and its language."""

    level: RiskLevel
    reasons: tuple[str, ...]
    language: str


@dataclass(frozen=True)
class TriageContext:
    """What the bot last asked this person, so a bare "yes" can be read correctly.

    ``last_question`` is ``"suicidal_thoughts"``, ``"plan"``, ``"means"`` or ``"timeframe"``;
    ``asked_about_suicide`` alone means the suicidal-thoughts question.
    """

    asked_about_suicide: bool = False
    last_question: str | None = None


@dataclass(frozen=True, slots=True)
class _Hit:
    cue: Cue
    start: int
    end: int


class Triage:
    """Reads messages for risk with lexicons and rules loaded from data files."""

    def __init__(self, lexicon: Lexicon) -> None:
        """Wrap an already compiled lexicon (use ``Triage.load`` to read the data files)."""
        self._lex = lexicon

    @classmethod
    def load(cls, path: Path | None = None) -> Triage:
        """Build the engine from the data directory (default: the packaged data files).

        Raises ``ValueError`` naming the file and rule when a data file is broken.
        """
        return cls(load_lexicon(path))

    def normalise(self, text: str) -> str:
        """Return the form of ``text`` the lexicon patterns are written against."""
        text = unicodedata.normalize("NFKC", text).translate(self._lex.delete_and_replace).lower()
        text = _REPEATED_LETTER.sub(r"\1", text)
        text = _SPACED_LETTERS.sub(lambda m: _LETTER_SEPARATORS.sub("", m.group()), text)
        text = _CJK_SEPARATOR.sub("", text)
        return _SPACES.sub(" ", text).strip()

    def classify(self, text: str, context: TriageContext | None = None) -> TriageResult:
        """Read one message and return its risk level, the reasons, and its language."""
        lex = self._lex
        norm = self.normalise(text)
        language = self._language(text, norm)

        hits: list[_Hit] = []
        masks: list[tuple[int, int]] = []
        groups = lex.cues_by_group
        by_first_char = lex.by_first_char
        for candidate in lex.first_chars.finditer(norm):
            position = candidate.start()
            match = by_first_char[norm[position]].match(norm, position)
            if match is None or match.lastgroup is None:
                continue
            cue = groups[match.lastgroup]
            if cue.kind == "hyperbole":
                masks.append(match.span())
            hits.append(_Hit(cue, position, match.end()))
        if lex.anywhere is not None:
            for match in lex.anywhere.finditer(norm):
                if match.lastgroup is not None:
                    cue = groups[match.lastgroup]
                    start, end = match.span(match.lastgroup)
                    if cue.kind == "hyperbole":
                        masks.append((start, end))
                    hits.append(_Hit(cue, start, end))

        level = RiskLevel.NONE
        reasons: list[str] = []
        active: list[_Hit] = []
        if hits:
            level = self._weigh(norm, hits, masks, reasons, active)
        if context is not None:
            level = self._apply_context(norm, context, level, reasons)
        return TriageResult(level, tuple(dict.fromkeys(reasons)), language)

    def _weigh(
        self,
        norm: str,
        hits: list[_Hit],
        masks: list[tuple[int, int]],
        reasons: list[str],
        active: list[_Hit],
    ) -> RiskLevel:
        """Turn raw hits into a level, filling ``reasons`` and the hits about the speaker."""
        lex = self._lex
        level = RiskLevel.NONE
        breaks: list[int] | None = None
        fiction_in_message: bool | None = None

        for hit in hits:
            cue = hit.cue
            if cue.kind == "hyperbole":
                reasons.append(cue.id)
                continue
            if any(start <= hit.start and hit.end <= end for start, end in masks):
                continue
            if breaks is None:
                breaks = [m.end() for m in lex.clause.finditer(norm)]
            at = bisect_right(breaks, hit.start) - 1
            clause_start = breaks[at] if at >= 0 else 0
            prefix = norm[clause_start : hit.start]

            if lex.negation.search(prefix[-_NEGATION_WINDOW:]):
                if cue.kind not in ("means", "timeframe"):
                    reasons.append("negated")
                    level = max(level, cue.negated_level)
                continue

            if cue.kind == "third_party" or cue.subject != "any":
                who = self._subject(prefix)
                if who is None and clause_start and lex.reported.search(prefix):
                    who = self._subject(norm[:clause_start])
                if cue.subject == "other":
                    # Violence against the speaker needs a person doing it, not "the news".
                    if who != _THIRD:
                        continue
                elif cue.kind == "third_party" or who in (_THIRD, _FICTION):
                    if who != _FICTION:
                        if fiction_in_message is None:
                            fiction_in_message = lex.fiction.search(norm) is not None
                        if fiction_in_message:
                            who = _FICTION
                    if cue.level >= RiskLevel.MODERATE:
                        if who == _FICTION:
                            reasons.append("third_party.film")
                            level = max(level, lex.third_party_film_level)
                        else:
                            reasons.append("third_party.risk")
                            level = max(level, lex.third_party_risk_level)
                    continue

            active.append(hit)
            if cue.kind not in ("means", "timeframe"):
                reasons.append(cue.id)
                level = max(level, cue.level)

        for rule in lex.combine:
            if level >= rule.level:
                continue
            desire = [h for h in active if h.cue.kind in rule.if_kinds]
            if not desire:
                continue
            # The partner must be a separate phrase: the pills inside "攒了一瓶安眠药" are
            # part of that one plan, not a second element of it.
            partners = [
                h
                for h in active
                if h.cue.kind in rule.with_kinds
                and any(h.end <= d.start or d.end <= h.start for d in desire)
            ]
            if partners:
                level = rule.level
                reasons.extend(h.cue.id for h in partners)
        return level

    def _subject(self, prefix: str) -> str | None:
        """Say who the clause before a cue is about: first, third, fiction, or None."""
        who: str | None = None
        for match in self._lex.subjects.finditer(prefix):
            if match.lastgroup != "neutral":
                who = match.lastgroup
        return who

    def _apply_context(
        self, norm: str, context: TriageContext, level: RiskLevel, reasons: list[str]
    ) -> RiskLevel:
        """Read a short answer to the bot's own safety question."""
        question = context.last_question
        if question is None and context.asked_about_suicide:
            question = "suicidal_thoughts"
        lex = self._lex
        if question not in lex.affirm_level:
            return level
        if lex.deny.search(norm):
            return level
        if lex.affirm.search(norm):
            reasons.append("context.affirmed")
            return max(level, lex.affirm_level[question])
        if lex.unsure.search(norm):
            reasons.append("context.unsure")
            return max(level, lex.unsure_level)
        return level

    def _language(self, original: str, norm: str) -> str:
        """Name the message's script: zh_Hans, zh_Hant, en, or und."""
        if _CJK.search(norm):
            if not self._lex.traditional_keys.isdisjoint(original):
                return "zh_Hant"
            return "zh_Hans"
        if _LATIN.search(norm):
            return "en"
        return "und"


def to_signal(result: TriageResult) -> RiskSignal | None:
    """Turn a triage result into a risk signal for escalation, or None when there is no risk."""
    if result.level == RiskLevel.NONE:
        return None
    return RiskSignal(level=result.level, source="triage", reasons=result.reasons)
