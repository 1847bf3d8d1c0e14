"""GAD-2 → GAD-7 in English in the web chat, with a server restart half way through.

The whole app on a port and Chromium as WeChat's browser on a 390-px phone. The resident
screens positive on the GAD-2, goes on to the GAD-7, changes an answer, stops ("Finish later");
the server is stopped and a new one started on the same database and port; the page reloads,
the resident continues from the menu where they left off, and reads the result.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, expect
from sqlmodel import col, select

from bot.runtime import Runtime
from core.assessment import AssessmentResult
from core.clock import FakeClock
from core.config import Settings
from tests.e2e.conftest import STARTUP_SECONDS, LiveApp, PhoneFactory, stop_runtime
from tests.e2e.test_web_chat import MENU_EN, Chat, assert_fits_phone, screenshot_path

TIMEFRAME = "Over the last 2 weeks"
NONE, SEVERAL = "Not at all", "Several days"
HALF, DAILY = "More than half the days", "Nearly every day"
OFFLINE = "Connection lost; reconnecting"


class Restarter:
    """Stops the running app, and starts a new one on the same database and the same port."""

    def __init__(self, live_app: LiveApp, clock: FakeClock) -> None:
        self.runtime = live_app.runtime
        self.clock = clock
        self.port = int(live_app.base_url.rsplit(":", 1)[1])
        self.started: list[Runtime] = []

    async def stop(self) -> None:
        await stop_runtime(self.runtime)

    async def start(self) -> Runtime:
        old = self.runtime.settings
        settings = Settings(
            data_dir=old.data_dir,
            database_url=old.database_url,
            host="127.0.0.1",
            port=self.port,
            log_level="WARNING",
            _env_file=None,
        )
        self.runtime = Runtime.build(settings, self.clock)
        self.started.append(self.runtime)
        await self.runtime.start(serve_http=True, scheduler=False)
        server = self.runtime.server
        assert server is not None
        serving = self.runtime.tasks[-1]  # start() creates the serve() task last
        async with asyncio.timeout(STARTUP_SECONDS):
            while not server.started:
                if serving.done():  # serve() returned: it could not listen on the port
                    serving.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        return self.runtime


@pytest.fixture
async def restarter(live_app: LiveApp, clock: FakeClock) -> AsyncIterator[Restarter]:
    restarter = Restarter(live_app, clock)
    yield restarter
    for runtime in restarter.started:  # live_app stops the first one
        await stop_runtime(runtime)


async def onboard_en(chat: Chat) -> None:
    await chat.tap("English")
    await chat.tap("I agree, let's start")
    await chat.tap("I am in isolation")
    await chat.tap("18–39")
    await chat.expect_bot(MENU_EN)


async def expect_question(chat: Chat, progress: str, item: str) -> None:
    """The newest bot message is question ``progress`` ("3/7") asking ``item``."""
    await expect(chat.bot.last).to_have_text(f"{progress} · {TIMEFRAME}\n\n{item}")
    for label in (NONE, SEVERAL, HALF, DAILY):
        await expect(chat.log.get_by_role("button", name=label, exact=True).last).to_be_visible()


async def stored_results(runtime: Runtime) -> list[AssessmentResult]:
    async with runtime.db.session() as session:
        rows = await session.exec(select(AssessmentResult).order_by(col(AssessmentResult.id)))
        return list(rows.all())


async def test_gad7_in_english_survives_a_server_restart_half_way(
    phone: PhoneFactory, restarter: Restarter
) -> None:
    page: Page = await phone("en-GB")
    chat = Chat(page)
    await onboard_en(chat)

    await chat.tap("📝 Self-check")
    await chat.expect_bot("Choose one to start")
    await chat.tap("Nerves and worry (2 questions)")
    await expect_question(chat, "1/2", "Feeling nervous, anxious, or on edge")
    await expect(chat.log).to_contain_text("There are 2 questions")
    await chat.tap(DAILY)
    await expect_question(chat, "2/2", "Not being able to stop or control worrying")
    await chat.tap(HALF)
    await chat.expect_bot("Positive screen")
    await expect(chat.bot.last).to_contain_text("not a diagnosis")

    await chat.tap("Continue with the GAD-7 (5 more)")
    await expect_question(chat, "3/7", "Worrying too much about different things")
    await chat.tap(SEVERAL)
    await expect_question(chat, "4/7", "Trouble relaxing")
    await chat.tap(DAILY)
    await expect_question(chat, "5/7", "Being so restless that it is hard to sit still")
    await chat.tap("← Change previous answer")
    await expect(chat.log).to_contain_text("Your answer was: Nearly every day")
    await expect_question(chat, "4/7", "Trouble relaxing")
    await assert_fits_phone(page)
    await page.screenshot(path=screenshot_path("web-assessment-question-en.png"))
    await chat.tap(SEVERAL)
    await expect_question(chat, "5/7", "Being so restless that it is hard to sit still")

    # Stop half way; the answers wait in the database while the server is restarted.
    await chat.tap("Finish later")
    await chat.expect_bot("your answers are saved")
    await restarter.stop()
    await expect(page.locator("#status")).to_contain_text(OFFLINE)  # the page noticed
    runtime = await restarter.start()
    await page.reload()
    await expect(page.locator("#status")).to_be_hidden()
    await expect(chat.bot.last).to_contain_text("your answers are saved")  # the transcript is back

    await chat.tap("Main menu")
    await chat.expect_bot(MENU_EN)
    await chat.tap("📝 Continue my self-check")
    await expect(chat.log).to_contain_text("Welcome back. Let's carry on with the")
    await expect_question(chat, "5/7", "Being so restless that it is hard to sit still")
    await page.screenshot(path=screenshot_path("web-assessment-resumed-en.png"))
    await chat.tap(HALF)
    await expect_question(chat, "6/7", "Becoming easily annoyed or irritable")
    await chat.tap(SEVERAL)
    await expect_question(chat, "7/7", "Feeling afraid, as if something awful might happen")
    await chat.tap(NONE)

    result = chat.bot.last
    await expect(result).to_contain_text("Your score: 10 (out of 21)")
    await expect(result).to_contain_text("Result: Moderate")
    await expect(result).to_contain_text(
        "Noticeable anxiety; talking with a counselor is recommended."
    )
    await expect(result).to_contain_text("this is a screening questionnaire, not a diagnosis")
    await expect(result).to_contain_text("talking with a counselor can help")
    await expect(result).to_contain_text("/sos")
    for label in ("My self-check results", "Main menu", "🆘 I need help now"):
        button = chat.log.get_by_role("button", name=label, exact=True).last
        await expect(button).to_be_visible()
    await assert_fits_phone(page)
    await page.screenshot(path=screenshot_path("web-assessment-result-en.png"))
    await result.screenshot(path=screenshot_path("web-assessment-result-message-en.png"))

    stored = await stored_results(runtime)
    assert [(r.instrument, json.loads(r.answers), r.total, r.band) for r in stored] == [
        ("gad2", [3, 2], 5, "positive"),
        ("gad7", [3, 2, 1, 1, 2, 1, 0], 10, "moderate"),
    ]
