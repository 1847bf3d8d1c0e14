"""HTTP control API (``/_control/...``) and an async client for it.

Lets a test drive a :class:`FakeBotAPI` that runs in another process
(``python -m tests.fakebotapi``). Every answer is ``{"ok": true, "result": ...}`` or, for a
bad control request, HTTP 400 ``{"ok": false, "error": "..."}``; a wait that times out is
HTTP 408. The endpoints are listed in the package docstring.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, ClientTimeout, web

from .models import JSONDict, SentMessage

if TYPE_CHECKING:
    from .server import FakeBotAPI

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sent_json(message: SentMessage) -> JSONDict:
    return {
        "method": message.method,
        "chat_id": message.chat_id,
        "message_id": message.message_id,
        "text": message.text,
        "plain_text": message.plain_text,
        "parse_mode": message.parse_mode,
        "reply_markup": message.reply_markup,
        "time": message.time,
        "message": message.message,
        "upload": None
        if message.upload is None
        else {
            "filename": message.upload.filename,
            "content_type": message.upload.content_type,
            "size": len(message.upload.data or b""),
            "reference": message.upload.reference,
        },
    }


def add_control_routes(app: web.Application, api: FakeBotAPI) -> None:
    def ok(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    async def body(request: web.Request) -> JSONDict:
        if not request.body_exists:
            return {}
        data = await request.json()
        if not isinstance(data, dict):
            raise ValueError("JSON object expected")
        return data

    def guarded(handler: Callable[[web.Request, JSONDict], Awaitable[Any]]) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            try:
                result = await handler(request, await body(request))
            except TimeoutError as error:
                return web.json_response({"ok": False, "error": str(error)}, status=408)
            except (ValueError, KeyError, TypeError) as error:
                return web.json_response({"ok": False, "error": repr(error)}, status=400)
            return ok(result)

        return wrapper

    def user_of(request: web.Request, data: JSONDict) -> Any:
        kwargs = {
            k: data[k]
            for k in ("first_name", "last_name", "username", "language_code", "started")
            if k in data
        }
        return api.user(int(request.match_info["user_id"]), **kwargs)

    async def state(request: web.Request, data: JSONDict) -> Any:
        return {
            "base_url": api.base_url,
            "bot": api.me,
            "pending_updates": api.pending_updates,
            "delivered": api.delivered,
            "webhook": None
            if api.webhook is None
            else {
                "url": api.webhook.url,
                "deliveries": api.webhook.deliveries,
            },
            "stats": dict(api.stats),
        }

    async def reset(request: web.Request, data: JSONDict) -> Any:
        api.reset()
        return True

    async def create_user(request: web.Request, data: JSONDict) -> Any:
        user = api.user(
            data.get("id"),
            data.get("first_name", "小安"),
            last_name=data.get("last_name"),
            username=data.get("username"),
            language_code=data.get("language_code", "zh-hans"),
            started=bool(data.get("started")),
        )
        return user.json

    async def user_action(request: web.Request, data: JSONDict) -> Any:
        user = user_of(request, data)
        action = request.match_info["action"]
        chat = data.get("chat_id")
        if action == "text":
            return await user.send_text(data["text"], chat=chat, reply_to=data.get("reply_to"))
        if action == "command":
            return await user.send_command(data["command"], chat=chat)
        if action == "callback":
            message = int(data["message_id"])
            if chat is not None:
                message_ref: Any = {"chat": {"id": chat}, "message_id": message}
            else:
                message_ref = message
            return await user.press(message_ref, data["data"], check=data.get("check", True))
        if action == "sticker":
            return await user.send_sticker(data.get("emoji", "😊"), chat=chat)
        if action == "photo":
            return await user.send_photo(data.get("caption"), chat=chat)
        if action == "voice":
            return await user.send_voice(int(data.get("duration", 3)), chat=chat)
        if action == "document":
            raw = base64.b64decode(data.get("data_base64", "aGVsbG8="))
            return await user.send_document(
                data.get("filename", "file.txt"), raw, caption=data.get("caption"), chat=chat
            )
        if action == "edit":
            return await user.edit_text(int(data["message_id"]), data["text"], chat=chat)
        if action == "block":
            api.block(user.id)
            return True
        if action == "unblock":
            api.unblock(user.id)
            return True
        if action == "join":
            return await user.join(int(data["chat_id"]), invite_link=data.get("invite_link"))
        if action == "leave":
            return await user.leave(int(data["chat_id"]))
        raise ValueError(f"unknown user action {action!r}")

    async def create_group(request: web.Request, data: JSONDict) -> Any:
        group = api.group(
            data.get("id"),
            data.get("title", "安心互助小组"),
            type=data.get("type"),
            username=data.get("username"),
            bot_status=data.get("bot_status", "administrator"),
        )
        return group.json

    async def members(request: web.Request, data: JSONDict) -> Any:
        api.set_member(int(data["chat_id"]), int(data["user_id"]), data["status"])
        return True

    async def channel_post(request: web.Request, data: JSONDict) -> Any:
        return await api.channel_post(data["text"], chat=data.get("chat_id"))

    async def raw_update(request: web.Request, data: JSONDict) -> Any:
        return await api.raw_update(data)

    async def duplicate(request: web.Request, data: JSONDict) -> Any:
        return await api.duplicate_update(int(request.match_info["update_id"]))

    async def sent(request: web.Request, data: JSONDict) -> Any:
        query = request.query
        include_edits = query.get("include_edits", "0") in ("1", "true")
        since = int(query.get("since", "0"))
        if "chat_id" in query:
            items = api.messages_to(int(query["chat_id"]), include_edits=include_edits)
        else:
            items = [m for m in api.sent if include_edits or not m.is_edit]
        return [sent_json(m) for m in items[since:]]

    async def calls(request: web.Request, data: JSONDict) -> Any:
        method = request.query.get("method")
        return [
            {
                "method": c.method,
                "params": c.params,
                "time": c.time,
                "status": c.status,
                "description": c.description,
            }
            for c in api.calls
            if method is None or c.method.lower() == method.lower()
        ]

    async def wait_message(request: web.Request, data: JSONDict) -> Any:
        found = await api.wait_for_message(
            int(data["chat_id"]),
            count=int(data.get("count", 1)),
            timeout=float(data.get("timeout", 5.0)),
            contains=data.get("contains"),
        )
        return [sent_json(m) for m in found]

    async def fail(request: web.Request, data: JSONDict) -> Any:
        api.fail_next(
            data.get("method", "*"),
            data.get("status", 500),
            times=data.get("times", 1),
            retry_after=data.get("retry_after"),
            description=data.get("description"),
            chat_id=data.get("chat_id"),
            raw_body=data.get("raw_body"),
            hang=float(data.get("hang", 3600.0)),
        )
        return True

    async def delay(request: web.Request, data: JSONDict) -> Any:
        api.delay_next(
            data.get("method", "*"),
            float(data.get("seconds", 1.0)),
            times=data.get("times", 1),
            chat_id=data.get("chat_id"),
        )
        return True

    async def fail_rate(request: web.Request, data: JSONDict) -> Any:
        api.fail_rate(
            float(data["rate"]),
            data.get("statuses", (500, 429, "timeout")),
            seed=data.get("seed"),
            methods=data.get("methods"),
            exclude=data.get("exclude", ("getUpdates", "getMe")),
            retry_after=int(data.get("retry_after", 1)),
        )
        return True

    async def clear_faults(request: web.Request, data: JSONDict) -> Any:
        api.clear_faults()
        return True

    async def limits(request: web.Request, data: JSONDict) -> Any:
        api.enforce_limits(bool(data.pop("enabled", True)), **data)
        return True

    async def stats(request: web.Request, data: JSONDict) -> Any:
        return dict(api.stats)

    routes: list[tuple[str, str, Callable[[web.Request, JSONDict], Awaitable[Any]]]] = [
        ("GET", "/_control/state", state),
        ("POST", "/_control/reset", reset),
        ("POST", "/_control/users", create_user),
        ("POST", "/_control/users/{user_id}/{action}", user_action),
        ("POST", "/_control/groups", create_group),
        ("POST", "/_control/members", members),
        ("POST", "/_control/channel_post", channel_post),
        ("POST", "/_control/updates", raw_update),
        ("POST", "/_control/updates/{update_id}/duplicate", duplicate),
        ("GET", "/_control/sent", sent),
        ("GET", "/_control/calls", calls),
        ("POST", "/_control/wait_message", wait_message),
        ("POST", "/_control/fail", fail),
        ("POST", "/_control/delay", delay),
        ("POST", "/_control/fail_rate", fail_rate),
        ("POST", "/_control/clear_faults", clear_faults),
        ("POST", "/_control/limits", limits),
        ("GET", "/_control/stats", stats),
    ]
    for verb, path, handler in routes:
        app.router.add_route(verb, path, guarded(handler))


class ControlClient:
    """Async client for the control API of a (possibly out-of-process) FakeBotAPI.

    >>> async with ControlClient("http://127.0.0.1:8081") as ctl:
    ...     await ctl.user_action(42, "command", command="/start site_A12")
    ...     [reply] = await ctl.wait_message(42)
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = ClientSession(timeout=ClientTimeout(total=timeout))

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def request(self, verb: str, path: str, **kwargs: Any) -> Any:
        async with self._session.request(verb, self.base_url + path, **kwargs) as response:
            data = await response.json()
        if response.status == 408:
            raise TimeoutError(data.get("error"))
        if not data.get("ok"):
            raise RuntimeError(f"control API error {response.status}: {data.get('error')}")
        return data["result"]

    async def post(self, path: str, payload: JSONDict | None = None) -> Any:
        return await self.request("POST", path, json=payload or {})

    async def get(self, path: str, **query: Any) -> Any:
        return await self.request("GET", path, params={k: str(v) for k, v in query.items()})

    async def user_action(self, user_id: int, action: str, **payload: Any) -> Any:
        return await self.post(f"/_control/users/{user_id}/{action}", payload)

    async def send_text(self, user_id: int, text: str, **payload: Any) -> Any:
        return await self.user_action(user_id, "text", text=text, **payload)

    async def send_command(self, user_id: int, command: str, **payload: Any) -> Any:
        return await self.user_action(user_id, "command", command=command, **payload)

    async def press(self, user_id: int, message_id: int, data: str, **payload: Any) -> Any:
        return await self.user_action(
            user_id, "callback", message_id=message_id, data=data, **payload
        )

    async def sent(self, chat_id: int | None = None, **query: Any) -> list[JSONDict]:
        if chat_id is not None:
            query["chat_id"] = chat_id
        result: list[JSONDict] = await self.get("/_control/sent", **query)
        return result

    async def wait_message(
        self,
        chat_id: int,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
        contains: str | None = None,
    ) -> list[JSONDict]:
        payload: JSONDict = {"chat_id": chat_id, "count": count, "timeout": timeout}
        if contains is not None:
            payload["contains"] = contains
        result: list[JSONDict] = await self.post("/_control/wait_message", payload)
        return result

    async def fail_next(self, method: str = "*", status: int | str = 500, **payload: Any) -> Any:
        return await self.post("/_control/fail", {"method": method, "status": status, **payload})

    async def reset(self) -> Any:
        return await self.post("/_control/reset")
