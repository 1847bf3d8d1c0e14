"""SIGKILL right after a risky message is committed: after the restart the resident gets exactly
one safety reply and the staff chat exactly one card."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakebotapi import ControlClient
from tests.integration.test_crash_recovery import (
    BOUND,
    RESIDENT,
    Database,
    Processes,
    bot_env,
    log_tail,
    until,
)

STAFF_CHAT = -1001777000000


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        await procs.stop_all()


async def test_a_crisis_committed_before_a_kill_is_answered_once_after_restart(
    processes: Processes, tmp_path: Path
) -> None:
    api_url = await processes.fake_api()
    db = Database(tmp_path / "anxin.sqlite3")
    env = bot_env(tmp_path, api_url, ANXIN_STAFF_CHAT_ID=str(STAFF_CHAT))
    async with ControlClient(api_url, timeout=BOUND + 5) as ctl:
        await ctl.post("/_control/groups", {"id": STAFF_CHAT, "title": "值班群"})
        await ctl.post("/_control/users", {"id": RESIDENT, "first_name": "小李"})
        # Telegram holds every send back, so the safety reply and the card are committed and
        # waiting in the outbox when the bot dies.
        await ctl.post(
            "/_control/fail",
            {"method": "sendMessage", "status": 429, "retry_after": 5, "times": None},
        )
        first = await processes.bot(env, "bot-1")
        update = await ctl.send_text(RESIDENT, "我真的不想活了，今晚就想结束")

        def committed() -> bool:
            kinds = db.query("SELECT chat_id, kind FROM outbox")
            return (
                db.seen(update["update_id"])
                and (str(RESIDENT), "safety") in kinds
                and (str(STAFF_CHAT), "escalation") in kinds
                and len(db.query("SELECT id FROM escalation")) == 1
            )

        try:
            await until(committed, "the risky message committed with its reply and card")
        except AssertionError:
            raise AssertionError(log_tail(tmp_path)) from None
        await processes.kill(first)

        await ctl.post("/_control/clear_faults")
        # A row may have been mid-request (claimed) at the kill: a short stale-claim age lets
        # the restarted worker take it back within the test's bounds.
        await processes.bot({**env, "ANXIN_OUTBOX_STALE_CLAIM_SECONDS": "0.5"}, "bot-2")
        await ctl.wait_message(STAFF_CHAT, count=1, timeout=BOUND)

        def all_sent() -> bool:
            statuses = [s for (s,) in db.query("SELECT status FROM outbox")]
            return bool(statuses) and all(s == "sent" for s in statuses)

        await until(all_sent, "every row sent")
        to_resident = [m["text"] for m in await ctl.sent(RESIDENT)]
        safety = [t for t in to_resident if "24小时" in t and "110" in t]
        assert len(safety) == 1, to_resident
        cards = [m["text"] for m in await ctl.sent(STAFF_CHAT)]
        assert len(cards) == 1 and "风险" in cards[0], cards
        assert len(db.query("SELECT key FROM inbound_seen")) == 1
        assert len(db.query("SELECT id FROM escalation")) == 1
