"""The web chat end to end: the whole app on a port, Chromium as WeChat on a 390-px phone.

No fixed sleeps: every wait is Playwright's auto-waiting ``expect`` (5 s) on what a resident
would see. Every test runs on SQLite; those where the database does the work (onboarding,
resuming from the transcript, the export, the socket protocol) also run on PostgreSQL. The
rest are ``sqlite_only`` to keep the module well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import ARTIFACTS, LiveApp, PhoneFactory

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

WELCOME_ZH = "你好，我是安心"
MENU_ZH = "我能为你做些什么"
MENU_EN = "What can I do for you"
CASE_CODE = re.compile(r"\bR-[0-9A-Z]{4}\b")


class Chat:
    """What a resident sees and does in the web chat of one page."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.log = page.locator("#log")
        self.bot = page.locator("#log .msg.out")
        self.mine = page.locator("#log .msg.in")

    async def tap(self, label: str) -> None:
        """Tap the newest button labelled exactly ``label`` (waiting until it is drawn)."""
        await self.log.get_by_role("button", name=label, exact=True).last.tap()

    async def say(self, text: str) -> None:
        """Type ``text`` in the composer and tap Send."""
        await self.page.locator("#input").fill(text)
        await self.page.locator("#send").tap()

    async def expect_bot(self, text: str) -> None:
        """Wait until the newest bot message contains ``text``."""
        await expect(self.bot.last).to_contain_text(text)

    async def case_code(self) -> str:
        """The case code the bot gave at the end of onboarding."""
        found = CASE_CODE.search(await self.log.inner_text())
        assert found, "no case code shown"
        return found.group(0)


async def onboard_zh(chat: Chat) -> None:
    """Walk a resident through onboarding in Chinese, up to the main menu."""
    await chat.tap("中文")
    await chat.tap("同意，开始")
    await chat.tap("正在隔离的人")
    await chat.tap("18–39岁")
    await chat.expect_bot(MENU_ZH)


async def assert_fits_phone(page: Page) -> None:
    """Nothing scrolls sideways and every button is at least thumb-sized (44 px)."""
    layout = await page.evaluate(
        """() => ({
            overflow: document.documentElement.scrollWidth - window.innerWidth,
            small: [...document.querySelectorAll('button')]
                .map(b => b.getBoundingClientRect())
                .filter(r => r.height < 44 || r.width < 44).length,
            outside: [...document.querySelectorAll('#log > *, header > *, form > *')]
                .map(e => e.getBoundingClientRect())
                .filter(r => r.left < 0 || r.right > window.innerWidth + 0.5).length,
        })"""
    )
    assert layout == {"overflow": 0, "small": 0, "outside": 0}


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


# --- onboarding -----------------------------------------------------------------------------


async def test_resident_completes_onboarding_in_chinese(phone: PhoneFactory) -> None:
    page = await phone("zh-CN")
    chat = Chat(page)
    await expect(page.locator("html")).to_have_attribute("lang", "zh-Hans")
    await expect(page.locator("#send")).to_have_text("发送")
    await expect(chat.log).to_contain_text(WELCOME_ZH)

    await onboard_zh(chat)

    await expect(chat.log).to_contain_text(CASE_CODE)
    await expect(chat.log.get_by_role("button", name="我的数据与隐私")).to_be_visible()
    await assert_fits_phone(page)
    await page.screenshot(path=screenshot_path("web-onboarding-zh.png"))


@sqlite_only
async def test_resident_completes_onboarding_in_english(phone: PhoneFactory) -> None:
    page = await phone("en-GB")
    chat = Chat(page)
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.locator("#send")).to_have_text("Send")
    await expect(chat.log).to_contain_text("please choose a language")

    await chat.tap("English")
    await chat.tap("I agree, let's start")
    await chat.tap("I am in isolation")
    await chat.tap("18–39")
    await chat.expect_bot(MENU_EN)

    await expect(chat.log).to_contain_text(CASE_CODE)
    await assert_fits_phone(page)
    await page.screenshot(path=screenshot_path("web-onboarding-en.png"))


async def test_reloading_the_page_resumes_the_conversation(phone: PhoneFactory) -> None:
    page = await phone("zh-CN")
    chat = Chat(page)
    await chat.tap("中文")
    await chat.tap("同意，开始")
    await chat.expect_bot("你是哪一位")

    await page.reload()

    await expect(chat.log).to_contain_text("你是哪一位")
    await expect(chat.log.get_by_text(WELCOME_ZH)).to_have_count(1)
    await chat.tap("正在隔离的人")
    await chat.expect_bot("你的年龄是")
    # A second welcome would have been queued before this answer; there is none.
    await expect(chat.log.get_by_text(WELCOME_ZH)).to_have_count(1)
    await expect(page.locator("#status")).to_be_hidden()


@sqlite_only
async def test_example_configuration_banner_shows_without_a_sites_file(
    phone: PhoneFactory,
) -> None:
    page = await phone("zh-CN")
    banner = page.locator("#banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("示例配置")


@sqlite_only
async def test_sos_button_shows_the_crisis_lines_before_onboarding(phone: PhoneFactory) -> None:
    page = await phone("zh-CN")
    chat = Chat(page)
    await expect(chat.log).to_contain_text(WELCOME_ZH)

    await page.locator("#sos").tap()

    await expect(chat.mine.last).to_have_text("紧急求助")  # the button's words, not "/sos"
    answer = chat.bot.filter(has_text="010-82951332").last
    await expect(answer).to_be_visible()
    await expect(answer).to_contain_text("110")
    await expect(answer).to_contain_text("120")
    # The numbers can be dialled with one tap.
    await expect(answer.locator('a[href="tel:010-82951332"]')).to_be_visible()
    await expect(answer.locator('a[href="tel:120"]')).to_be_visible()


@sqlite_only
async def test_free_text_gets_an_answer_and_an_empty_message_is_not_sent(
    phone: PhoneFactory,
) -> None:
    page = await phone("zh-CN")
    sent: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(str(payload))))
    page_ready = await page.reload()  # attach the listener before the socket opens
    assert page_ready is not None and page_ready.ok
    chat = Chat(page)
    await onboard_zh(chat)

    await chat.say("   \n  ")
    await chat.say("这几天睡不太好，有点闷")

    mine = chat.mine.filter(has_text="这几天睡不太好")
    await expect(mine).to_have_count(1)
    await expect(mine).not_to_have_class(re.compile("pending"))  # the server has it
    answer = page.locator("#log .msg.in ~ .msg.out")
    await expect(answer.first).to_be_visible()
    await expect(chat.mine).to_have_count(1)
    texts = [json.loads(f) for f in sent if '"type":"text"' in f.replace(" ", "")]
    assert [t["text"] for t in texts] == ["这几天睡不太好，有点闷"]


@sqlite_only
async def test_a_too_long_message_is_refused_and_given_back_to_edit(phone: PhoneFactory) -> None:
    page = await phone("zh-CN")
    chat = Chat(page)
    await expect(chat.log).to_contain_text(WELCOME_ZH)
    too_long = "闷" * 20_001

    await chat.say(too_long)

    await expect(page.locator("#status")).to_contain_text("20000")
    await expect(chat.mine).to_have_count(0)
    await expect(page.locator("#input")).to_have_value(too_long)


@sqlite_only
async def test_a_stale_onboarding_button_gets_the_earlier_step_answer(
    phone: PhoneFactory,
) -> None:
    page = await phone("zh-CN")
    chat = Chat(page)
    await chat.tap("中文")
    await chat.tap("同意，开始")
    await chat.tap("正在隔离的人")
    await chat.expect_bot("你的年龄是")

    await chat.tap("同意，开始")

    await expect(chat.log).to_contain_text("这个按钮属于之前的步骤")
    # The conversation stays where it was: the age question is asked again and still works.
    await chat.tap("18–39岁")
    await chat.expect_bot(MENU_ZH)


async def test_data_export_downloads_only_in_its_own_browser(phone: PhoneFactory) -> None:
    page = await phone("zh-CN")
    chat = Chat(page)
    await onboard_zh(chat)
    code = await chat.case_code()

    await chat.say("/privacy")
    await chat.tap("下载我的数据")
    link = chat.log.locator(".doc a").last
    await expect(link).to_be_visible()
    url = await link.get_attribute("href")
    assert url is not None and url.startswith("/chat/doc/")

    async with page.expect_download() as download_info:
        await link.tap()
    download = await download_info.value
    path = await download.path()
    exported = json.loads(await asyncio.to_thread(Path(path).read_text, encoding="utf-8"))
    assert code in json.dumps(exported, ensure_ascii=False)

    response = await page.context.request.get(url)
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    assert code in await response.text()

    stranger = await phone("zh-CN")
    assert (await stranger.context.request.get(url)).status == 404


# --- the WebSocket protocol, without a browser ---------------------------------------------


async def cookie_for(app: LiveApp) -> str:
    """The anonymous cookie the page hands a first-time visitor."""
    async with httpx.AsyncClient(base_url=app.base_url) as client:
        response = await client.get("/", headers={"Accept-Language": "zh-CN"})
    assert response.status_code == 200
    sid = response.cookies.get("anxin_sid")
    assert sid
    return sid


async def next_frame(ws: ClientConnection, kind: str) -> dict[str, object]:
    """The next frame of type ``kind``, skipping transcript messages pushed meanwhile."""
    while True:
        frame = json.loads(await ws.recv(decode=True))
        if frame.get("type") == kind:
            return frame  # type: ignore[no-any-return]


async def message_containing(ws: ClientConnection, text: str) -> None:
    """Wait for a transcript message that contains ``text``."""
    while text not in str((await next_frame(ws, "message"))["text"]):
        pass


async def test_websocket_without_a_cookie_is_refused(live_app: LiveApp) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(live_app.ws_url, open_timeout=5):
            pass
    assert refused.value.response.status_code == 403


async def test_malformed_frames_get_an_error_and_the_socket_stays_usable(
    live_app: LiveApp,
) -> None:
    sid = await cookie_for(live_app)
    async with connect(
        live_app.ws_url,
        additional_headers={"Cookie": f"anxin_sid={sid}", "Accept-Language": "zh-CN"},
        open_timeout=5,
    ) as ws:
        await ws.send(json.dumps({"type": "hello", "after": 0}))
        await message_containing(ws, WELCOME_ZH)

        for bad in ("{not json", "[1, 2]", '"text"'):
            await ws.send(bad)
            assert await next_frame(ws, "error") == {"type": "error", "error": "malformed"}
        await ws.send(json.dumps({"type": "shout", "id": "x1"}))
        assert (await next_frame(ws, "error"))["error"] == "unknown_type"

        await ws.send(json.dumps({"type": "text", "id": "ok1", "text": "/sos"}))
        ack = await next_frame(ws, "ack")
        assert ack["id"] == "ok1"
        await message_containing(ws, "010-82951332")
