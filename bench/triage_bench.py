"""Measure triage throughput on one core: Triage.classify and the cli_main JSON-lines path."""

from __future__ import annotations

import io
import time
from pathlib import Path

from core.triage import Triage, cli_main

LABELLED = Path(__file__).resolve().parents[1] / "tests" / "data" / "triage_labelled.tsv"
TARGET_MESSAGES = 200_000


def load_corpus(size: int = TARGET_MESSAGES) -> list[str]:
    """Return the labelled set's messages repeated to ``size`` (a realistic mix of chat)."""
    texts = [
        line.split("\t", 1)[1]
        for line in LABELLED.read_text(encoding="utf-8").splitlines()
        if "\t" in line and not line.startswith("#") and not line.startswith("level\t")
    ]
    return (texts * (size // len(texts) + 1))[:size]


def bench_classify(triage: Triage, corpus: list[str]) -> float:
    """Classify every message once and return messages per second."""
    classify = triage.classify
    start = time.perf_counter()
    for text in corpus:
        classify(text)
    return len(corpus) / (time.perf_counter() - start)


def bench_cli(corpus: list[str]) -> float:
    """Run cli_main over an in-memory stream and return messages per second (load included)."""
    stdin = io.StringIO("\n".join(corpus) + "\n")
    stdout = io.StringIO()
    start = time.perf_counter()
    cli_main(stdin, stdout)
    elapsed = time.perf_counter() - start
    assert stdout.getvalue().count("\n") == len(corpus)
    return len(corpus) / elapsed


def main() -> None:
    """Print load time and throughput figures for both paths."""
    start = time.perf_counter()
    triage = Triage.load()
    print(f"load: {(time.perf_counter() - start) * 1000:.1f} ms")
    corpus = load_corpus()
    triage.classify(corpus[0])
    print(f"classify: {bench_classify(triage, corpus):,.0f} msg/s over {len(corpus):,} messages")
    print(f"cli_main: {bench_cli(corpus):,.0f} msg/s over {len(corpus):,} messages")


if __name__ == "__main__":
    main()
