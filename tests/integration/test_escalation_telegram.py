"""The crisis path through the real aiogram client and the fake Bot API.

A resident's risky message → the safety reply and a card in the staff chat; a counselor in
the staff chat claims it → they talk both ways through the bot; /done → the outcome is stored.
Unclaimed cards are re-paged and sent to the supervisor by the injected clock; a Claim pressed
by someone who is not staff is refused.
"""

from __future__ import annotations

from sqlmodel import select

from core.escalation import Escalation, sweep_pages
from core.models import Person, RoleGrant
from tests.integration.conftest import BotUnderTest, Resident, StartBot, eventually

STAFF_CHAT = -1001234500000


async def onboard(resident: Resident) -> None:
    await resident.command("/start")
    await resident.replies(contains="请先选择语言")
    await resident.tap("中文")
    await resident.replies(contains="你同意吗")
    await resident.tap("同意，开始")
    await resident.replies(contains="你是哪一位")
    await resident.tap("正在隔离的人")
    await resident.replies(contains="你的年龄是")
    await resident.tap("18–39岁")
    await resident.replies(contains="我能为你做些什么")


async def give_role(bot: BotUnderTest, user_id: int, role: str) -> None:
    person = await eventually(lambda: bot.person(user_id), what=f"person {user_id}")
    async with bot.runtime.db.session() as session:
        session.add(RoleGrant(person_id=person.id, role=role, granted_at=bot.clock.now()))
        await session.commit()


async def counselor(bot: BotUnderTest, user_id: int = 900, role: str = "counselor") -> Resident:
    staff = bot.resident(user_id)
    bot.api.set_member(STAFF_CHAT, staff.user, "member")
    await staff.command("/start")
    await staff.replies(contains="请先选择语言")
    await give_role(bot, user_id, role)
    if role == "counselor":
        await staff.command("/oncall on")
        await staff.replies(contains="开始值班")
    return staff


async def escalation(bot: BotUnderTest) -> Escalation:
    async with bot.runtime.db.session() as session:
        return (await session.exec(select(Escalation))).one()


async def start(start_bot: StartBot) -> BotUnderTest:
    bot = await start_bot("polling", staff_chat_id=str(STAFF_CHAT))
    bot.api.group(STAFF_CHAT, "值班群")
    return bot


async def test_risky_message_card_claim_relay_and_resolve(start_bot: StartBot) -> None:
    bot = await start(start_bot)
    staff = await counselor(bot)
    resident = bot.resident(100)
    await onboard(resident)

    await resident.say("我真的不想活了")
    [safety] = await resident.replies(contains="已经通知了值班的心理咨询师")
    assert "010-82951332" in safety.text
    [card] = await bot.api.wait_for_message(STAFF_CHAT, contains="高风险")
    person = await bot.person(100)
    assert person is not None and person.case_code in card.text and "100" not in card.text

    claim = next(b["callback_data"] for b in card.buttons if b["text"] == "认领")
    await staff.user.press(card, claim)
    await staff.replies(contains="连线")
    await resident.replies(contains="咨询师现在和你在一起")
    await bot.api.wait_for_message(STAFF_CHAT, contains="已由")

    await resident.say("我一个人在房间里，很害怕")
    [relayed] = await staff.replies(contains="很害怕")
    assert relayed.text.startswith(f"💬 {person.case_code}")
    await staff.say("我在这里陪你。你现在安全吗？")
    [back] = await resident.replies(contains="你现在安全吗")
    assert back.text.startswith("🧑‍⚕️ 咨询师")
    assert "900" not in back.text and "用户900" not in back.text  # the counselor stays pseudonymous

    await staff.command("/done")
    await staff.replies(contains="的结果是")
    await staff.tap("安全")
    await resident.replies(contains="安全计划")
    done = await escalation(bot)
    assert (done.status, done.outcome) == ("resolved", "safe")


async def test_unclaimed_card_is_repaged_then_sent_to_the_supervisor(start_bot: StartBot) -> None:
    bot = await start(start_bot)
    staff = await counselor(bot)
    supervisor = await counselor(bot, 800, "supervisor")
    resident = bot.resident(100)
    await onboard(resident)
    await resident.say("我想死")
    await resident.replies(contains="已经通知")
    await bot.api.wait_for_message(STAFF_CHAT, contains="高风险")

    bot.clock.advance(minutes=2, seconds=1)
    assert await sweep_pages(bot.runtime.core.engine) == 1
    await staff.replies(contains="无人认领")
    await bot.api.wait_for_message(STAFF_CHAT, contains="再次提醒")

    bot.clock.advance(minutes=3)
    assert await sweep_pages(bot.runtime.core.engine) == 1
    await supervisor.replies(contains="督导请注意")
    await resident.replies(contains="请不要一个人等着")
    assert (await escalation(bot)).page_stage == 2


async def test_a_forged_claim_from_a_non_staff_account_is_refused(start_bot: StartBot) -> None:
    bot = await start(start_bot)
    resident = bot.resident(100)
    await onboard(resident)
    await resident.say("我想死")
    [card] = await bot.api.wait_for_message(STAFF_CHAT, contains="高风险")
    claim = next(b["callback_data"] for b in card.buttons if b["text"] == "认领")

    intruder = bot.resident(666)
    bot.api.set_member(STAFF_CHAT, intruder.user, "member")  # in the chat, but holds no role
    press = await intruder.user.press(card, claim)
    answer = await intruder.answer_to(press)
    assert "只有登记的心理工作人员" in answer.get("text", "")
    assert (await escalation(bot)).status == "open"

    outsider = bot.resident(667)  # has the role but is not in the staff chat
    await outsider.command("/start")
    await outsider.replies(contains="请先选择语言")
    await give_role(bot, 667, "counselor")
    bot.api.set_member(STAFF_CHAT, outsider.user, "left")
    press = await outsider.user.press(card, claim, check=False)
    answer = await outsider.answer_to(press)
    assert "只有登记的心理工作人员" in answer.get("text", "")
    assert (await escalation(bot)).status == "open"
    async with bot.runtime.db.session() as session:
        intruder_row = (await session.exec(select(Person).where(Person.external_id == "666"))).one()
    assert intruder_row.state != "relay"
