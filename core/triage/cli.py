"""``anxin triage``: classify one message per input line and print JSON lines."""

from __future__ import annotations

import json
from typing import TextIO

from core.triage.engine import Triage


def cli_main(stdin: TextIO, stdout: TextIO) -> int:
    """Classify each line of ``stdin`` and write one JSON object per line to ``stdout``.

    Output is flushed per line only for an interactive terminal, so piping a file is fast.
    """
    triage = Triage.load()
    interactive = stdin.isatty()
    write = stdout.write
    for line in stdin:
        result = triage.classify(line.rstrip("\r\n"))
        write(
            json.dumps(
                {
                    "level": result.level.label,
                    "reasons": list(result.reasons),
                    "language": result.language,
                },
                ensure_ascii=False,
            )
        )
        write("\n")
        if interactive:
            stdout.flush()
    stdout.flush()
    return 0
