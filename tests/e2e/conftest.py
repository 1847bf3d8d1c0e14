"""The whole app on a real port, and Chromium dressed as WeChat's built-in browser on a phone.

Everything runs in the test's own event loop: the runtime (uvicorn, delivery workers) and
Playwright's async API, so a fixture never waits on another thread's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from bot.runtime import Runtime
from core.clock import FakeClock
from core.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# WeChat's in-app browser on Android (XWEB): the page has to work there, not only in Chrome.
WECHAT_UA = (
    "Mozilla/5.0 (Linux; Android 13; V2183A Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 XWEB/1160065 "
    "MMWEBSDK/20231202 MMWEBID/2247 MicroMessenger/8.0.47.2560(0x28002F30) WeChat/arm64 "
    "Weixin NetType/WIFI Language/zh_CN ABI/arm64"
)
PHONE = ViewportSize(width=390, height=844)
STARTUP_SECONDS = 10.0

expect.set_options(timeout=5_000)


@dataclass(frozen=True)
class LiveApp:
    """A running Anxin: its runtime and where the web chat answers."""

    runtime: Runtime
    base_url: str

    @property
    def ws_url(self) -> str:
        """The WebSocket address of the web chat."""
        return self.base_url.replace("http://", "ws://", 1) + "/ws"


@pytest.fixture
async def live_app(tmp_path: Path, db_url: str, clock: FakeClock) -> AsyncIterator[LiveApp]:
    """Build the runtime from settings and serve HTTP on 127.0.0.1 (a free port, no scheduler)."""
    settings = Settings(
        data_dir=tmp_path,
        database_url=db_url,
        host="127.0.0.1",
        port=0,  # the kernel picks a free port; read back below, so no race with other tests
        log_level="WARNING",
        _env_file=None,
    )
    runtime = Runtime.build(settings, clock)
    await runtime.db.create_all()
    await runtime.start(serve_http=True, scheduler=False)
    server = runtime.server
    assert server is not None
    serving = runtime.tasks[-1]  # start() creates the serve() task last
    try:
        async with asyncio.timeout(STARTUP_SECONDS):
            while not server.started:
                if serving.done():  # serve() returned: it could not listen
                    serving.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield LiveApp(runtime=runtime, base_url=f"http://127.0.0.1:{port}")
    finally:
        await stop_runtime(runtime)


async def stop_runtime(runtime: Runtime) -> None:
    """Stop the runtime without waiting out its PostgreSQL LISTEN tasks.

    ``start(scheduler=False)`` turns on cross-process NOTIFY wake-ups, whose ``Database.listen``
    tasks end only when cancelled, and ``Runtime.stop()`` waits 5 s for each before giving up
    (10 s per PostgreSQL test). Cancelling them first is harmless once ``stop()`` does it.
    """
    for task in runtime.tasks:
        if getattr(task.get_coro(), "__qualname__", "") == "Database.listen":
            task.cancel()
    await runtime.stop()


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    """Headless Debian Chromium driven by Playwright's async API."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


PhoneFactory = Callable[..., Awaitable[Page]]


@pytest.fixture
async def phone(browser: Browser, live_app: LiveApp) -> AsyncIterator[PhoneFactory]:
    """Open the web chat on a new phone (its own cookie jar) that prefers ``language``.

    A JavaScript error on any page fails the test at teardown.
    """
    contexts: list[BrowserContext] = []
    script_errors: list[str] = []

    async def open_phone(language: str = "zh-CN", *, goto: bool = True) -> Page:
        context = await browser.new_context(
            viewport=PHONE,
            screen={"width": PHONE["width"], "height": PHONE["height"]},
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
            user_agent=WECHAT_UA,
            locale=language,
            base_url=live_app.base_url,
        )
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        if goto:
            await page.goto("/")
        return page

    try:
        yield open_phone
    finally:
        for context in contexts:
            await context.close()
    assert not script_errors, f"JavaScript errors on the page: {script_errors}"
