"""Functions behind ``anxin instruments list`` and ``anxin instruments score`` (wired elsewhere)."""

from __future__ import annotations

import json
import re
from typing import TextIO

from core.instruments.instrument import InstrumentError
from core.instruments.registry import InstrumentRegistry

_SEPARATORS = re.compile(r"[,\s]+")


def cli_list(registry: InstrumentRegistry, stdout: TextIO) -> int:
    """Print one line per loaded instrument (id, version, item count, English and Chinese name)."""
    for instrument in registry:
        name_en = instrument.name.get("en", "")
        name_zh = instrument.name.get("zh_Hans", "")
        stdout.write(
            f"{instrument.id}\t{instrument.version}\t{len(instrument.items)} items\t"
            f"{name_en}\t{name_zh}\n"
        )
    return 0


def cli_score(
    registry: InstrumentRegistry,
    instrument_id: str,
    answers: str,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Score answers given as text ("0,1,2" or "0 1 2") and print the result as one JSON object.

    Returns 0 on success; on an unknown id or unusable answers, writes one sentence to
    ``stderr`` and returns 2.
    """
    try:
        instrument = registry.get(instrument_id)
        values = _parse_answers(answers)
        score = instrument.score(values)
    except InstrumentError as exc:
        stderr.write(f"{exc}\n")
        return 2
    result: dict[str, object] = {
        "instrument": score.instrument,
        "version": score.version,
        "total": score.total,
        "band": score.band,
        "flags": list(score.flags),
        "signals": [
            {"level": signal.level.label, "reasons": list(signal.reasons)}
            for signal in score.signals
        ],
        "answers": list(score.answers),
    }
    if score.scaled is not None:
        result["scaled"] = score.scaled
    stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0


def _parse_answers(answers: str) -> list[int]:
    parts = [part for part in _SEPARATORS.split(answers.strip()) if part]
    if not parts:
        raise InstrumentError("No answers were given; pass them like '0,1,2'.")
    values: list[int] = []
    for position, part in enumerate(parts, start=1):
        if not re.fullmatch(r"-?\d+", part):
            raise InstrumentError(f"Answer {position} is {part!r}, which is not a whole number.")
        values.append(int(part))
    return values
