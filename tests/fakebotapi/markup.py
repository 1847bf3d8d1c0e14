"""Text formatting (``parse_mode``) and reply markup validation, Telegram-style.

* HTML is parsed strictly like Telegram (supported tags only, unescaped ``<`` is an error,
  tags must be properly nested); the plain text and entities are computed.
* MarkdownV2 is checked for the most common production error (reserved characters not escaped,
  unclosed entities); the plain text drops markers and escapes, no entities are produced.
* Legacy Markdown is passed through (raw text).
"""

from __future__ import annotations

import html
import re
from typing import Any

from .models import ApiError, JSONDict, bad_request, utf16_len

_HTML_ENTITY_TYPES: dict[str, str] = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_TAG_RE = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)?([^<>]*)>")
_ATTR_RE = re.compile(r"""([a-zA-Z-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_CHAR_REF_RE = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[a-zA-Z]+);")


def _parse_error(message: str) -> ApiError:
    return bad_request(f"can't parse entities: {message}")


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


def parse_html(text: str) -> tuple[str, list[JSONDict]]:
    """(plain text, entities) for ``parse_mode=HTML``, raising ApiError like Telegram."""
    out: list[str] = []
    entities: list[JSONDict] = []
    stack: list[tuple[str, int, JSONDict]] = []  # (tag, utf16 start, entity extras)
    pos = 0
    length16 = 0

    def emit(chunk: str) -> None:
        nonlocal length16
        out.append(chunk)
        length16 += utf16_len(chunk)

    while pos < len(text):
        char = text[pos]
        if char == "&":
            match = _CHAR_REF_RE.match(text, pos)
            if match:
                ref = match.group(1)
                if ref.startswith(("#x", "#X")):
                    emit(chr(int(ref[2:], 16)))
                elif ref.startswith("#"):
                    emit(chr(int(ref[1:])))
                elif ref in _NAMED_ENTITIES:
                    emit(_NAMED_ENTITIES[ref])
                else:
                    emit(match.group(0))
                pos = match.end()
                continue
            emit(char)
            pos += 1
            continue
        if char != "<":
            nxt = text.find("<", pos)
            amp = text.find("&", pos)
            stops = [i for i in (nxt, amp) if i != -1]
            end = min(stops) if stops else len(text)
            emit(text[pos:end])
            pos = end
            continue
        match = _TAG_RE.match(text, pos)
        offset = _byte_offset(text, pos)
        if not match or not match.group(2):
            name = match.group(2) if match and match.group(2) else ""
            raise _parse_error(f'Unsupported start tag "{name}" at byte offset {offset}')
        closing, name, attrs = match.group(1) == "/", match.group(2).lower(), match.group(3)
        if name not in _HTML_ENTITY_TYPES:
            kind = "end" if closing else "start"
            raise _parse_error(f'Unsupported {kind} tag "{name}" at byte offset {offset}')
        if closing:
            if not stack:
                raise _parse_error(f"Unexpected end tag at byte offset {offset}")
            open_tag, start, extras = stack.pop()
            if open_tag != name:
                raise _parse_error(
                    f'Unmatched end tag at byte offset {offset}, expected "</{open_tag}>", '
                    f'found "</{name}>"'
                )
            if length16 > start:
                entity: JSONDict = {
                    "type": _HTML_ENTITY_TYPES[name],
                    "offset": start,
                    "length": length16 - start,
                }
                entity.update(extras)
                if entity["type"] == "pre" and entities:
                    last = entities[-1]
                    if last["type"] == "code" and (last["offset"], last["length"]) == (
                        start,
                        entity["length"],
                    ):  # <pre><code class="language-x"> is one pre entity with a language
                        entities.pop()
                        if "language" in last and "language" not in entity:
                            entity["language"] = last["language"]
                entities.append(entity)
        else:
            found = {
                m.group(1).lower(): html.unescape(m.group(2) or m.group(3) or m.group(4) or "")
                for m in _ATTR_RE.finditer(attrs)
            }
            extras = {}
            if name == "span" and found.get("class") != "tg-spoiler":
                raise _parse_error(f'Unsupported start tag "span" at byte offset {offset}')
            if name == "a":
                href = found.get("href", "")
                if not href:
                    raise _parse_error(f"Can't find end of href at byte offset {offset}")
                extras["url"] = href
            if name == "code" and found.get("class", "").startswith("language-"):
                extras["language"] = found["class"].removeprefix("language-")
            if name == "tg-emoji":
                extras["custom_emoji_id"] = found.get("emoji-id", "")
            if name == "blockquote" and "expandable" in attrs:
                extras["type"] = "expandable_blockquote"
            stack.append((name, length16, extras))
        pos = match.end()
    if stack:
        raise _parse_error(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


_MDV2_ALWAYS_RESERVED = set("#+-={}.!")
_MDV2_MARKERS = {
    "*": "Bold",
    "_": "Italic",
    "__": "Underline",
    "~": "Strikethrough",
    "||": "Spoiler",
}


def parse_markdown_v2(text: str) -> str:
    """Plain text for ``MarkdownV2``; raises the usual "must be escaped" errors."""
    out: list[str] = []
    open_markers: list[tuple[str, int]] = []
    pos = 0
    link_depth = 0
    in_url = False
    while pos < len(text):
        char = text[pos]
        offset = _byte_offset(text, pos)
        if char == "\\":
            if pos + 1 < len(text):
                out.append(text[pos + 1])
                pos += 2
                continue
            raise _parse_error(
                "Character '\\' is reserved and must be escaped with the preceding '\\'"
            )
        if in_url:
            if char == ")":
                in_url = False
            pos += 1
            continue
        if char == "`":
            fence = "```" if text.startswith("```", pos) else "`"
            end = text.find(fence, pos + len(fence))
            while end != -1 and text[end - 1] == "\\":
                end = text.find(fence, end + 1)
            if end == -1:
                kind = "Pre" if fence == "```" else "Code"
                raise _parse_error(f"Can't find end of {kind} entity at byte offset {offset}")
            body = text[pos + len(fence) : end]
            if fence == "```" and "\n" in body:
                body = body.split("\n", 1)[1]
            out.append(body.replace("\\`", "`").replace("\\\\", "\\"))
            pos = end + len(fence)
            continue
        marker = None
        for candidate in ("__", "||", "*", "_", "~"):
            if text.startswith(candidate, pos):
                marker = candidate
                break
        if marker is not None:
            if open_markers and open_markers[-1][0] == marker:
                open_markers.pop()
            elif any(m == marker for m, _ in open_markers):
                raise _parse_error(
                    f"Can't find end of {_MDV2_MARKERS[marker]} entity at "
                    f"byte offset {open_markers[-1][1]}"
                )
            else:
                open_markers.append((marker, offset))
            pos += len(marker)
            continue
        if char == "[":
            link_depth += 1
            pos += 1
            continue
        if char == "]" and link_depth:
            link_depth -= 1
            if text.startswith("(", pos + 1):
                in_url = True
                pos += 2
            else:
                pos += 1
            continue
        if char == ">" and (pos == 0 or text[pos - 1] == "\n"):
            pos += 1
            continue
        if char in _MDV2_ALWAYS_RESERVED or char in "[]()>|":
            raise _parse_error(
                f"Character '{char}' is reserved and must be escaped with the preceding '\\'"
            )
        out.append(char)
        pos += 1
    if open_markers:
        marker, offset = open_markers[-1]
        raise _parse_error(
            f"Can't find end of {_MDV2_MARKERS[marker]} entity at byte offset {offset}"
        )
    if link_depth:
        raise _parse_error("Can't find end of a URL")
    return "".join(out)


def render(text: str, parse_mode: str | None) -> tuple[str, list[JSONDict]]:
    """(plain text, entities) for ``text`` under ``parse_mode``."""
    mode = (parse_mode or "").lower()
    if mode == "html":
        return parse_html(text)
    if mode == "markdownv2":
        return parse_markdown_v2(text), []
    if mode in ("", "markdown"):
        return text, []
    raise bad_request(f"unsupported parse_mode {parse_mode!r}")


def validate_reply_markup(markup: Any) -> JSONDict | None:
    """Validate ``reply_markup``; return it as a dict (or None)."""
    if markup is None or markup == "":
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" in markup:
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise bad_request(
                'field "inline_keyboard" of the InlineKeyboardMarkup should be an Array of Arrays'
            )
        for row in rows:
            for button in row:
                _validate_inline_button(button)
    elif "keyboard" in markup:
        rows = markup["keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise bad_request(
                'field "keyboard" of the ReplyKeyboardMarkup should be an Array of Arrays'
            )
    elif not ({"remove_keyboard", "force_reply"} & markup.keys()):
        raise bad_request("object expected as reply markup")
    return markup


_INLINE_ACTIONS = (
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)


def _validate_inline_button(button: Any) -> None:
    if not isinstance(button, dict) or not isinstance(button.get("text"), str):
        raise bad_request('can\'t find field "text"')
    if not button["text"]:
        raise bad_request("text must be non-empty")
    if not any(key in button for key in _INLINE_ACTIONS):
        raise bad_request("text buttons are unallowed in the inline keyboard")
    if "callback_data" in button:
        data = button["callback_data"]
        if not isinstance(data, str) or not 1 <= len(data.encode("utf-8")) <= 64:
            raise bad_request("BUTTON_DATA_INVALID")
    if "url" in button:
        url = button["url"]
        if not isinstance(url, str) or not re.match(r"^(https?|tg)://\S+$", url):
            raise bad_request("BUTTON_URL_INVALID")


def markup_for_message(markup: JSONDict | None) -> JSONDict | None:
    """Telegram only echoes inline keyboards back in the returned Message."""
    if markup and "inline_keyboard" in markup:
        return markup
    return None
