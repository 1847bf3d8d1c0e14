"""Telegram failing a fifth of all calls (5xx, 429 with retry_after, no answer at all): every
message of a dozen concurrent crisis conversations is delivered, each outbox row exactly once.

The retry backoff is shortened tenfold (2 s, 4 s, 8 s … become 0.2 s, 0.4 s, 0.8 s …): its
schedule has its own tests, and one chat's messages wait in order behind a row that is backing
off, so at full length a few unlucky rows in the shared staff chat make this test take minutes.
Telegram's own ``retry_after`` (429) is honoured as given.

A call that times out here is one Telegram never acted on (the fake holds it past the end of
the test); a timed-out call that Telegram did act on is the at-least-once window of a crash
and is counted in ``test_sigkill_conversation``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from core import outbox
from tests.fakebotapi import FakeBotAPI
from tests.faults.conftest import (
    audit,
    counselor_on_call,
    crisis_script,
    in_process_bot,
    settled,
    staff_room,
)

RESIDENTS = 12
FIRST_RESIDENT = 5_400_000


async def test_a_fifth_of_telegram_calls_failing_delays_messages_but_loses_or_doubles_none(
    api: FakeBotAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_backoff = outbox.backoff
    monkeypatch.setattr(outbox, "backoff", lambda attempts: full_backoff(attempts) / 10)
    started = time.monotonic()
    url = f"sqlite+aiosqlite:///{tmp_path / 'anxin.sqlite3'}"
    async with in_process_bot(api, tmp_path, url):
        counselor = staff_room(api)
        await counselor_on_call(api, counselor)  # its staff-chat membership is now cached
        api.fail_rate(0.2, (500, 502, 429, "timeout"), seed=7, retry_after=1)
        async with asyncio.timeout(150):
            await asyncio.gather(
                *(
                    crisis_script(api, FIRST_RESIDENT + n, counselor, patience=30)
                    for n in range(RESIDENTS)
                )
            )
            rows = await settled(url, timeout=60)
        result = audit(rows, api)
        injected = api.stats["injected_random"]
        failed_sends = Counter(
            str(c.status) for c in api.calls if c.method == "sendMessage" and c.status != 200
        )
    summary = (
        f"{result.rows} rows, {result.sends} sends, {injected} injected failures "
        f"(sendMessage: {dict(failed_sends)}), {result.duplicates} duplicate(s), "
        f"{time.monotonic() - started:.1f}s"
    )
    print(f"\nflaky Telegram: {summary}")
    assert not result.problems, f"{summary}\n" + "\n".join(result.problems)
    assert result.duplicates == 0 and result.sends == result.rows
    assert injected >= 20, summary  # the faults really happened
    assert {r.attempts for r in rows} - {1}, "no row needed a second attempt"
    assert api.stats["webhook_dropped"] == 0
