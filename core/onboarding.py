"""First contact: language, consent, site, who they are, age; then the main menu and basics."""

from __future__ import annotations

from core.access import Role
from core.conversation import ConversationEngine, MenuEntry, Turn
from core.messages import Button
from core.privacy import CONSENT_VERSION
from core.risk import RiskLevel, RiskSignal
from core.safety import hotline_text

RELATIONS = ("resident", "family", "site_staff")
AGE_BANDS = ("under_16", "16_17", "18_39", "40_64", "65_plus")
SITE_BUTTONS_MAX = 24
SITE_PREFIX = "site_"


def site_from_start_args(args: str) -> str | None:
    """The site code in a deep link's payload (``/start site_a12`` → ``a12``)."""
    payload = args.strip().split(" ")[0].lower() if args.strip() else ""
    if payload.startswith(SITE_PREFIX) and len(payload) > len(SITE_PREFIX):
        return payload[len(SITE_PREFIX) :][:32]
    return None


def register(engine: ConversationEngine) -> None:
    """Register onboarding, the main menu, help, SOS, language and stop."""
    engine.state("new", _prompt_language)
    engine.state("onb_language", _prompt_language)
    engine.state("onb_consent", _prompt_consent)
    engine.state("onb_site", _prompt_site, _typed_site)
    engine.state("onb_relation", _prompt_relation)
    engine.state("onb_age", _prompt_age)
    engine.state("menu", show_menu)
    engine.state("limited", _prompt_limited)

    engine.action("lang", _choose_language, any_step=True)
    engine.action("consent.agree", _consent_agree)
    engine.action("consent.decline", _consent_decline)
    engine.action("consent.more", _consent_more)
    engine.action("consent.review", _consent_review, any_step=True)
    engine.action("site", _choose_site)
    engine.action("relation", _choose_relation)
    engine.action("age", _choose_age)
    engine.action("menu", _menu_action, any_step=True)
    engine.action("help", _help, any_step=True)
    engine.action("sos", _sos, any_step=True)
    engine.action("child.staff", _child_staff, any_step=True)
    engine.action("language.menu", _language_menu, any_step=True)

    engine.command("start", _start, before_onboarding=True)
    engine.command("menu", _menu_command)
    engine.command("help", _help, before_onboarding=True)
    engine.command("sos", _sos, before_onboarding=True)
    engine.command("language", _language_menu, before_onboarding=True)
    engine.command("stop", _stop, before_onboarding=True)
    engine.command("whoami", _whoami, before_onboarding=True)

    engine.menu.append(MenuEntry("sos", "menu.sos", "sos"))
    engine.menu.append(MenuEntry("language", "menu.language", "language.menu"))
    engine.menu.append(MenuEntry("privacy", "menu.privacy", "privacy"))
    engine.menu.append(MenuEntry("help", "menu.help", "help"))


# Steps -----------------------------------------------------------------------------------


async def _start(turn: Turn, args: str) -> None:
    site = site_from_start_args(args)
    if site and turn.engine.sites.get(site) is None:
        turn.say("onboarding.unknown_site_link")
        site = None
    if turn.person.paused:
        turn.person.paused = False
        turn.say("stop.resumed")
    if turn.onboarded:
        if site and site != turn.person.site_code:
            turn.person.site_code = site
            site_obj = turn.site_or_default
            turn.say("onboarding.site_changed", site=site_obj.name(turn.lang))
        turn.goto("menu")
        await show_menu(turn)
        return
    if site:
        turn.data["site"] = site
    if (
        turn.person.state in ("new", "onb_language", "limited")
        or turn.person.consent_version is None
    ):
        pending = turn.data.get("site")
        turn.goto("onb_language", **({"site": pending} if pending else {}))
    await turn.prompt()


async def _prompt_language(turn: Turn) -> None:
    if turn.person.state == "new":
        turn.goto("onb_language", **turn.data)
    if turn.engine.sites.is_example:
        turn.say("onboarding.example_config")
    turn.say("onboarding.welcome", buttons=_language_buttons(turn))


def _language_buttons(turn: Turn) -> list[list[Button]]:
    return [
        [
            Button(turn.engine.catalogs.t(lang, "language.self_name"), "lang", lang)
            for lang in turn.engine.config.languages
        ]
    ]


async def _choose_language(turn: Turn, lang: str) -> None:
    if lang not in turn.engine.config.languages:
        await turn.prompt()
        return
    turn.person.language = lang
    turn.person.language_confirmed = True
    if turn.person.state in ("new", "onb_language"):
        turn.goto("onb_consent", **turn.data)
        await _prompt_consent(turn)
        return
    turn.say("language.changed")
    await turn.prompt()


async def _language_menu(turn: Turn, _arg: str) -> None:
    turn.say("language.choose", buttons=_language_buttons(turn))


async def _prompt_consent(turn: Turn) -> None:
    turn.say(
        "privacy.notice",
        version=CONSENT_VERSION,
        buttons=[
            [turn.button("button.consent_agree", "consent.agree")],
            [
                turn.button("button.consent_more", "consent.more"),
                turn.button("button.consent_decline", "consent.decline"),
            ],
        ],
    )


async def _consent_more(turn: Turn, _arg: str) -> None:
    turn.say("privacy.details")
    await _prompt_consent(turn)


async def _consent_agree(turn: Turn, _arg: str) -> None:
    turn.person.consent_version = CONSENT_VERSION
    turn.person.consent_at = turn.now
    turn.person.consent_withdrawn_at = None
    turn.say("privacy.thanks")
    pending = turn.data.get("site")
    if pending and turn.engine.sites.get(pending):
        turn.person.site_code = pending
    elif len(turn.engine.sites.sites) == 1:
        turn.person.site_code = turn.engine.sites.default().code
    if turn.person.site_code:
        turn.goto("onb_relation")
        await _prompt_relation(turn)
    else:
        turn.goto("onb_site")
        await _prompt_site(turn)


async def _consent_decline(turn: Turn, _arg: str) -> None:
    turn.goto("limited")
    turn.say("privacy.declined")
    await _prompt_limited(turn)


async def _consent_review(turn: Turn, _arg: str) -> None:
    turn.goto("onb_consent", **turn.data)
    await _prompt_consent(turn)


async def _prompt_limited(turn: Turn) -> None:
    turn.say(
        "limited.menu",
        buttons=[
            [turn.button("menu.sos", "sos")],
            [turn.button("button.consent_review", "consent.review")],
            [turn.button("menu.language", "language.menu")],
        ],
    )


async def _prompt_site(turn: Turn) -> None:
    sites = list(turn.engine.sites.sites.values())
    if len(sites) > SITE_BUTTONS_MAX:
        turn.say("onboarding.site_type_code")
        return
    turn.say(
        "onboarding.site_choose",
        buttons=[[Button(site.name(turn.lang), "site", site.code)] for site in sites],
    )


async def _typed_site(turn: Turn, text: str) -> None:
    code = text.strip().lower().removeprefix(SITE_PREFIX)
    if turn.engine.sites.get(code) is None:
        turn.say("onboarding.site_not_found")
        await _prompt_site(turn)
        return
    await _choose_site(turn, code)


async def _choose_site(turn: Turn, code: str) -> None:
    if turn.engine.sites.get(code) is None:
        await _prompt_site(turn)
        return
    turn.person.site_code = code
    turn.goto("onb_relation")
    await _prompt_relation(turn)


async def _prompt_relation(turn: Turn) -> None:
    turn.say(
        "onboarding.relation",
        buttons=[[turn.button(f"relation.{r}", "relation", r)] for r in RELATIONS],
    )


async def _choose_relation(turn: Turn, relation: str) -> None:
    if relation not in RELATIONS:
        await _prompt_relation(turn)
        return
    turn.person.relation = relation
    turn.goto("onb_age")
    await _prompt_age(turn)


async def _prompt_age(turn: Turn) -> None:
    turn.say(
        "onboarding.age",
        buttons=[
            [turn.button(f"age.{a}", "age", a) for a in AGE_BANDS[:3]],
            [turn.button(f"age.{a}", "age", a) for a in AGE_BANDS[3:]],
        ],
    )


async def _choose_age(turn: Turn, band: str) -> None:
    if band not in AGE_BANDS:
        await _prompt_age(turn)
        return
    turn.person.age_band = band
    turn.goto("menu")
    if band == "under_16":
        await _child_welcome(turn)
        return
    turn.say("onboarding.done", code=turn.person.case_code)
    await show_menu(turn)


async def _child_welcome(turn: Turn) -> None:
    site = turn.site_or_default
    contact = site.contact.get(turn.lang) or turn.t("child.no_contact")
    turn.say(
        "child.welcome",
        contact=contact,
        buttons=[
            [turn.button("button.child_staff", "child.staff")],
            [turn.button("menu.sos", "sos")],
            [turn.menu_button()],
        ],
    )


async def _child_staff(turn: Turn, _arg: str) -> None:
    site = turn.site_or_default
    sent = turn.to_staff(
        turn.engine.catalogs.t(
            turn.engine.config.default_language,
            "staff.child_wants_contact",
            code=turn.person.case_code,
            site=site.name(turn.engine.config.default_language),
        )
    )
    if sent:
        turn.say("child.staff_told", buttons=[[turn.menu_button()]])
    else:
        contact = site.contact.get(turn.lang) or turn.t("child.no_contact")
        turn.say("child.staff_unavailable", contact=contact, buttons=[[turn.menu_button()]])


# Menu and basics --------------------------------------------------------------------------


async def show_menu(turn: Turn) -> None:
    """Show the main menu: only entries of features that exist and suit this person."""
    entries = turn.engine.visible_menu(turn)
    rows = [[turn.button(e.label_key, e.action)] for e in entries]
    turn.say("menu.title", buttons=rows)


async def _menu_action(turn: Turn, _arg: str) -> None:
    if not turn.onboarded:
        await turn.prompt()
        return
    if turn.person.state != "menu":
        turn.goto("menu")
    await show_menu(turn)


async def _menu_command(turn: Turn, args: str) -> None:
    await _menu_action(turn, args)


async def _help(turn: Turn, _arg: str) -> None:
    turn.say("help.text", buttons=[[turn.menu_button()]] if turn.onboarded else None)
    if not turn.onboarded:
        await turn.prompt()


async def _sos(turn: Turn, _arg: str) -> None:
    await turn.engine.raise_signal(
        turn, RiskSignal(RiskLevel.IMMINENT, "sos", ("sos.button",)), excerpt=""
    )


def sos_text(turn: Turn) -> str:
    """The SOS answer: the site's lines, emergency numbers first."""
    return hotline_text(turn, turn.site_or_default, emergency_first=True)


async def _stop(turn: Turn, _arg: str) -> None:
    turn.person.paused = True
    turn.say("stop.done")


async def _whoami(turn: Turn, _arg: str) -> None:
    roles = sorted(r.value for r in turn.roles if r != Role.RESIDENT)
    turn.say(
        "whoami.text",
        code=turn.person.case_code,
        roles=", ".join(turn.t(f"role.{r}") for r in roles) or turn.t("role.resident"),
    )
