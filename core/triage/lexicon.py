"""Loading and validating the triage data files into compiled, ready-to-run tables."""

from __future__ import annotations

import importlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.risk import RiskLevel

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "triage"

NORMALISE_FILE = "normalise.toml"
MODIFIERS_FILE = "modifiers.toml"
LEXICON_GLOB = "lexicon_*.toml"

KINDS = frozenset(
    {
        "hyperbole",
        "intent",
        "passive",
        "method",
        "plan",
        "farewell",
        "self_harm",
        "others",
        "abuse",
        "third_party",
        "distress",
        "grief",
        "help",
        "means",
        "timeframe",
    }
)
SUBJECTS = frozenset({"self", "any", "other"})
QUESTIONS = ("suicidal_thoughts", "plan", "means", "timeframe")

# At one position the first alternative that matches wins, so masks (hyperbole) come first
# and the most severe kinds come before the ones they might contain.
_KIND_ORDER = {
    kind: rank
    for rank, kind in enumerate(
        (
            "hyperbole",
            "plan",
            "method",
            "intent",
            "passive",
            "farewell",
            "self_harm",
            "others",
            "abuse",
            "third_party",
            "distress",
            "grief",
            "help",
            "means",
            "timeframe",
        )
    )
}


@dataclass(frozen=True, slots=True)
class Cue:
    """One lexicon entry: the reason id it reports and how it counts."""

    id: str
    kind: str
    level: RiskLevel
    subject: str
    negated_level: RiskLevel


@dataclass(frozen=True, slots=True)
class CombineRule:
    """Two different hits, one of each kind set, raise the message to ``level``."""

    if_kinds: frozenset[str]
    with_kinds: frozenset[str]
    level: RiskLevel


@dataclass(frozen=True, slots=True)
class Lexicon:
    """Everything the triage engine runs on, compiled once at start-up."""

    delete_and_replace: dict[int, str | None]
    traditional_keys: frozenset[str]
    first_chars: re.Pattern[str]
    by_first_char: dict[str, re.Pattern[str]]
    anywhere: re.Pattern[str] | None
    cues_by_group: dict[str, Cue]
    clause: re.Pattern[str]
    negation: re.Pattern[str]
    subjects: re.Pattern[str]
    fiction: re.Pattern[str]
    reported: re.Pattern[str]
    third_party_risk_level: RiskLevel
    third_party_film_level: RiskLevel
    combine: tuple[CombineRule, ...]
    affirm: re.Pattern[str]
    deny: re.Pattern[str]
    unsure: re.Pattern[str]
    unsure_level: RiskLevel
    affirm_level: dict[str, RiskLevel]


def load_lexicon(directory: Path | None = None) -> Lexicon:
    """Read, validate and compile the triage data files in ``directory``.

    Raises ``ValueError`` naming the file and the broken rule when a file is not usable.
    """
    root = directory if directory is not None else DEFAULT_DATA_DIR
    normalise = _read_toml(root / NORMALISE_FILE)
    modifiers = _read_toml(root / MODIFIERS_FILE)
    lexicon_files = sorted(root.glob(LEXICON_GLOB))
    if not lexicon_files:
        raise ValueError(f"{root} holds no {LEXICON_GLOB} file, so triage has no lexicon.")

    table, traditional_keys = _normalise_table(root / NORMALISE_FILE, normalise)
    entries: list[tuple[int, int, Cue, str]] = []
    for path in lexicon_files:
        entries.extend(_cue_entries(path, _read_toml(path), start=len(entries)))
    entries.sort(key=lambda entry: (entry[0], entry[1]))

    cues_by_group: dict[str, Cue] = {}
    # Aho-Corasick in spirit: each cue is filed under the characters it can start with, so a
    # message is scanned once for those characters and only the few cues that can start at a
    # hit are tried there. Cues whose first character cannot be worked out run everywhere.
    by_char: dict[str, list[str]] = {}
    anywhere: list[str] = []
    for number, (_, _, cue, pattern) in enumerate(entries):
        group = f"c{number}"
        cues_by_group[group] = cue
        alternative = f"(?P<{group}>{pattern})"
        starts = _first_chars(pattern)
        if starts is None:
            anywhere.append(alternative)
            continue
        for char in starts:
            by_char.setdefault(char, []).append(alternative)
    compiled: dict[tuple[str, ...], re.Pattern[str]] = {}
    by_first_char = {
        char: compiled.setdefault(tuple(alts), re.compile("|".join(alts)))
        for char, alts in by_char.items()
    }
    first_chars = re.compile("[" + "".join(re.escape(c) for c in sorted(by_char)) + "]")
    # A zero-width lookahead lets finditer report a hit at every position.
    anywhere_pattern = re.compile("(?=" + "|".join(anywhere) + ")") if anywhere else None

    mod_path = root / MODIFIERS_FILE
    subjects = _table(mod_path, modifiers, "subjects")
    subject_pattern = "|".join(
        f"(?P<{name}>{_pattern(mod_path, subjects, name)})"
        for name in ("neutral", "first", "third", "fiction")
    )
    negation = _table(mod_path, modifiers, "negation")
    third_party = _table(mod_path, modifiers, "third_party")
    context = _table(mod_path, modifiers, "context")
    affirm_levels = _table(mod_path, context, "affirm_level")
    missing = [q for q in QUESTIONS if q not in affirm_levels]
    if missing:
        raise ValueError(f"{mod_path}: [context.affirm_level] must give a level for {missing}.")

    return Lexicon(
        delete_and_replace=table,
        traditional_keys=traditional_keys,
        first_chars=first_chars,
        by_first_char=by_first_char,
        anywhere=anywhere_pattern,
        cues_by_group=cues_by_group,
        clause=_compile(
            mod_path, "[clause] pattern", _table(mod_path, modifiers, "clause"), "pattern"
        ),
        negation=_compile_source(
            mod_path,
            "[negation]",
            f"(?:{_pattern(mod_path, negation, 'zh')})|(?:{_pattern(mod_path, negation, 'en')})",
        ),
        subjects=_compile_source(mod_path, "[subjects]", subject_pattern, groups_allowed=True),
        fiction=_compile(mod_path, "[subjects] fiction", subjects, "fiction"),
        reported=_compile(mod_path, "[subjects] reported", subjects, "reported"),
        third_party_risk_level=_level(mod_path, third_party, "risk_level"),
        third_party_film_level=_level(mod_path, third_party, "film_level"),
        combine=_combine_rules(mod_path, modifiers),
        affirm=_compile(mod_path, "[context] affirm", context, "affirm"),
        deny=_compile(mod_path, "[context] deny", context, "deny"),
        unsure=_compile(mod_path, "[context] unsure", context, "unsure"),
        unsure_level=_level(mod_path, context, "unsure_level"),
        affirm_level={q: _level(mod_path, affirm_levels, q) for q in QUESTIONS},
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing, and triage cannot run without it.") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}.") from None


def _table(path: Path, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: the table [{key}] is missing or is not a table.")
    return value


def _pattern(path: Path, data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: '{key}' must be a non-empty string pattern.")
    return value


def _compile(path: Path, where: str, data: dict[str, Any], key: str) -> re.Pattern[str]:
    return _compile_source(path, where, _pattern(path, data, key))


def _compile_source(
    path: Path, where: str, source: str, *, groups_allowed: bool = False
) -> re.Pattern[str]:
    try:
        compiled = re.compile(source)
    except re.error as error:
        raise ValueError(f"{path}: {where} is not a valid regular expression ({error}).") from None
    if not groups_allowed and compiled.groups:
        raise ValueError(f"{path}: {where} has a capturing group; write (?:...) instead.")
    if compiled.fullmatch("") is not None:
        raise ValueError(f"{path}: {where} matches the empty string, so it would match anywhere.")
    return compiled


def _level(path: Path, data: dict[str, Any], key: str) -> RiskLevel:
    value = data.get(key)
    try:
        return RiskLevel.parse(str(value))
    except KeyError:
        raise ValueError(
            f"{path}: '{key}' = {value!r} is not a level (none, low, moderate, high, imminent)."
        ) from None


def _normalise_table(
    path: Path, data: dict[str, Any]
) -> tuple[dict[int, str | None], frozenset[str]]:
    table: dict[int, str | None] = {}
    for char in data.get("delete", []):
        if not isinstance(char, str) or len(char) != 1:
            raise ValueError(
                f"{path}: every 'delete' entry must be a single character, not {char!r}."
            )
        table[ord(char)] = None
    for source, target in data.get("replace", {}).items():
        if len(source) != 1 or not isinstance(target, str):
            raise ValueError(
                f"{path}: [replace] maps one character to a string; {source!r} does not."
            )
        table[ord(source)] = target
    pairs = _table(path, data, "traditional").get("pairs", "")
    if not isinstance(pairs, str):
        raise ValueError(f"{path}: [traditional] pairs must be a string of two-character tokens.")
    keys: set[str] = set()
    for token in pairs.split():
        if len(token) != 2 or token[0] == token[1]:
            raise ValueError(
                f"{path}: [traditional] token {token!r} must be two different characters "
                "(Traditional then Simplified)."
            )
        if token[0] in keys:
            raise ValueError(f"{path}: [traditional] maps {token[0]!r} more than once.")
        keys.add(token[0])
        table[ord(token[0])] = token[1]
    targets = {value for value in table.values() if value}
    if keys & targets:
        raise ValueError(
            f"{path}: [traditional] maps {sorted(keys & targets)} both from and to, "
            "so the result would depend on order."
        )
    return table, frozenset(keys)


def _cue_entries(path: Path, data: dict[str, Any], start: int) -> list[tuple[int, int, Cue, str]]:
    raw_cues = data.get("cue")
    if not isinstance(raw_cues, list) or not raw_cues:
        raise ValueError(f"{path}: a lexicon file must hold at least one [[cue]].")
    entries: list[tuple[int, int, Cue, str]] = []
    for index, raw in enumerate(raw_cues, start=1):
        where = f"cue {index}"
        cue_id = raw.get("id")
        if not isinstance(cue_id, str) or not re.fullmatch(r"[a-z_]+(?:\.[a-z_0-9]+)*", cue_id):
            raise ValueError(f"{path}: {where} needs an id like 'zh.intent.direct'.")
        where = f"cue {index} ({cue_id})"
        kind = raw.get("kind")
        if kind not in KINDS:
            raise ValueError(f"{path}: {where} has kind {kind!r}; use one of {sorted(KINDS)}.")
        level = _level(path, raw, "level")
        subject = raw.get("subject", "self")
        if subject not in SUBJECTS:
            raise ValueError(f"{path}: {where} has subject {subject!r}; use self, any or other.")
        default_negated = RiskLevel.LOW if level >= RiskLevel.HIGH else RiskLevel.NONE
        negated_level = (
            _level(path, raw, "negated_level") if "negated_level" in raw else default_negated
        )
        patterns = raw.get("patterns")
        if not isinstance(patterns, list) or not patterns:
            raise ValueError(f"{path}: {where} needs a non-empty 'patterns' list.")
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise ValueError(f"{path}: {where} has a pattern that is not a string.")
            _compile_source(path, f"{where} pattern {pattern!r}", pattern)
        cue = Cue(id=cue_id, kind=kind, level=level, subject=subject, negated_level=negated_level)
        entries.append((_KIND_ORDER[kind], start + index, cue, "|".join(patterns)))
    return entries


def _combine_rules(path: Path, data: dict[str, Any]) -> tuple[CombineRule, ...]:
    rules: list[CombineRule] = []
    for index, raw in enumerate(data.get("combine", []), start=1):
        kinds: list[frozenset[str]] = []
        for key in ("if_kinds", "with_kinds"):
            value = raw.get(key)
            if not isinstance(value, list) or not value or not set(value) <= KINDS:
                raise ValueError(f"{path}: [[combine]] {index} '{key}' must list known kinds.")
            kinds.append(frozenset(value))
        rules.append(CombineRule(kinds[0], kinds[1], _level(path, raw, "level")))
    return tuple(rules)


_ZERO_WIDTH = frozenset({"AT", "ASSERT", "ASSERT_NOT"})
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
_RANGE_LIMIT = 512


def _first_chars(pattern: str) -> frozenset[str] | None:
    """Return the characters a match of ``pattern`` can start with, or None if unknown."""
    parser: Any = importlib.import_module("re._parser")
    chars, nullable = _scan(parser.parse(pattern))
    if chars is None or nullable:
        return None
    return frozenset(chars)


def _scan(items: Any) -> tuple[set[str] | None, bool]:
    """Walk a parsed regex: (possible first characters or None, can it match empty)."""
    chars: set[str] = set()
    for op, av in items:
        name = str(op)
        if name in _ZERO_WIDTH:
            continue
        if name == "LITERAL":
            chars.add(chr(av))
            return chars, False
        if name == "IN":
            members = _charset(av)
            return (None if members is None else chars | members), False
        if name == "BRANCH":
            parts = [_scan(alternative) for alternative in av[1]]
        elif name == "SUBPATTERN":
            parts = [_scan(av[-1])]
        elif name in _REPEATS:
            inner, nullable = _scan(av[2])
            parts = [(inner, nullable or av[0] == 0)]
        else:
            return None, False
        for part, _ in parts:
            if part is None:
                return None, False
            chars |= part
        if not any(nullable for _, nullable in parts):
            return chars, False
    return chars, True


def _charset(items: Any) -> set[str] | None:
    """Expand a character class into its members, or None when it is too wide to list."""
    members: set[str] = set()
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            members.add(chr(av))
        elif name == "RANGE" and av[1] - av[0] < _RANGE_LIMIT:
            members.update(chr(code) for code in range(av[0], av[1] + 1))
        else:
            return None
    return members
