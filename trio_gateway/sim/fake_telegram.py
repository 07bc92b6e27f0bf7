"""The fake Telegram Bot API: `sendMessage` and the `getUpdates` long poll (SPEC 11), the bot
token in the path as the real API has it; updates wait in the server's `FakeInbound`."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import attrs

from trio_gateway.sim.fake_inbound import BATCH
from trio_gateway.sim.fake_platform import (
    DIRECT,
    Delivered,
    FakeRequest,
    FakeResponse,
    FakeServer,
    Json,
    LongPollFake,
    Params,
    Rule,
    Speech,
    bad,
    body_dict,
    number_text,
)

NAME = "telegram"
# Who the fake's bot is (`getMe`): a mention names the username; the id is the token's prefix.
BOT_ID = 7_000_001
BOT_USERNAME = "trio_fake_bot"
UNAUTHORIZED = {"ok": False, "error_code": 401, "description": "Unauthorized"}


# sendMessage's limit: "1-4096 characters after entities parsing", in UTF-16 code units.
MAX_TEXT = 4096
# The tags `parse_mode: "HTML"` takes (https://core.telegram.org/bots/api#html-style).
HTML_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code", "pre"}
    | {"blockquote", "tg-emoji"}
)


class EntityError(ValueError):
    pass


class _Entities(HTMLParser):
    """Telegram's reading of an HTML text: its tag set, properly nested, entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.shown: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in HTML_TAGS:
            raise EntityError(f'Unsupported start tag "{tag}"')
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            raise EntityError(f'Unexpected end tag "{tag}"')
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.shown.append(data)


def shown_text(text: str, parse_mode: object) -> str:
    """What the person sees of `text`; `EntityError` where Telegram can't parse entities."""
    if parse_mode is None:
        return text
    if parse_mode != "HTML":
        raise EntityError(f"unsupported parse_mode {parse_mode!r} in this fake")
    reader = _Entities()
    reader.feed(text)
    reader.close()
    if reader.open:
        raise EntityError(f'Can\'t find end tag corresponding to start tag "{reader.open[-1]}"')
    return "".join(reader.shown)


def _refused(why: str) -> FakeResponse:
    return bad(400, {"ok": False, "error_code": 400, "description": f"Bad Request: {why}"})


@attrs.define
class TelegramFake(LongPollFake):
    name = NAME
    routes = (
        (re.compile(r"/bot(?P<token>[^/]+)/sendMessage$"), "send"),
        (re.compile(r"/bot(?P<token>[^/]+)/getUpdates$"), "poll"),
        (re.compile(r"/bot(?P<token>[^/]+)/sendChatAction$"), "typing"),
        (re.compile(r"/bot(?P<token>[^/]+)/getMe$"), "me"),
    )
    reject_default = (400, 400, "Bad Request: chat not found")

    def error_body(self, code: Json, message: str) -> Json:
        return {"ok": False, "error_code": code, "description": message}

    def rate_limited(self, rule: Rule) -> FakeResponse:
        after = rule.retry_after if rule.retry_after is not None else 1.0
        wait = number_text(after)
        body = {
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {wait}",
            "parameters": {"retry_after": math.ceil(after)},
        }
        return FakeResponse(429, body, {"Retry-After": wait})

    async def answer(self, server: FakeServer, request: FakeRequest, op: str, params: Params) -> FakeResponse:
        if not server.credential_ok(NAME, params["token"]):
            return bad(401, UNAUTHORIZED)
        if op == "send":
            return self._send(server, request)
        if op == "me":
            if NAME in server.inbound.auth_rejected:
                return FakeResponse(401, UNAUTHORIZED)
            me = {"id": BOT_ID, "is_bot": True, "first_name": "Fake", "username": BOT_USERNAME}
            return FakeResponse(200, {"ok": True, "result": me})
        if op == "typing":  # recorded in `requests` (`requests_to("telegram", "typing")`)
            if body_dict(request).get("action") != "typing":
                return _refused("wrong action type")
            return FakeResponse(200, {"ok": True, "result": True})
        if NAME in server.inbound.auth_rejected:
            return FakeResponse(401, UNAUTHORIZED)
        return await self._poll(server, body_dict(request))

    def _send(self, server: FakeServer, request: FakeRequest) -> FakeResponse:
        body = body_dict(request)
        if body.get("chat_id") in (None, "") or not body.get("text"):
            return _refused("message text is empty")
        chat = body["chat_id"]
        try:
            shown = shown_text(str(body["text"]), body.get("parse_mode"))
        except EntityError as exc:
            return _refused(f"can't parse entities: {exc}")
        if len(shown.encode("utf-16-le")) // 2 > MAX_TEXT:
            return _refused("message is too long")
        server.messages.append(Delivered(NAME, str(chat), shown))
        result = {"message_id": server.serial(), "chat": {"id": chat}, "text": body["text"]}
        return FakeResponse(200, {"ok": True, "result": result})

    async def _poll(self, server: FakeServer, body: dict[str, Json]) -> FakeResponse:
        offset = body.get("offset")
        first = offset if isinstance(offset, int) else 0
        timeout = body.get("timeout")
        hold = float(timeout) if isinstance(timeout, (int, float)) else 0.0
        log = server.inbound.log[NAME]

        def due() -> list[dict[str, Json]]:
            return [u for u in log if u["update_id"] >= first][:BATCH]

        return FakeResponse(200, {"ok": True, "result": await server.inbound.hold(NAME, due, hold)})

    def push(
        self,
        server: FakeServer,
        text: str,
        sender: str | None,
        context_token: str | None,
        bot: bool,
        speech: Speech = DIRECT,
    ) -> str:
        n = server.inbound.serial()
        update = {
            "update_id": 90_000 + n,
            "edited_message" if speech.edited else "message": message(n, text, sender, bot, speech),
        }
        server.inbound.add(NAME, update)
        return str(update["update_id"])


def message(n: int, text: str, sender: str | None, bot: bool, speech: Speech = DIRECT) -> dict[str, Json]:
    """A Bot API `Message` as Telegram sends it: in a private chat (the chat id is the
    person's), or in the group `speech.group` names; a mention of the bot is an `@username`
    entity, a photo carries its text as the caption."""
    person = int(sender) if sender and sender.lstrip("-").isdigit() else 4242
    if speech.group is not None:
        author = int(speech.user) if speech.user and speech.user.isdigit() else person
        chat: dict[str, Json] = {"id": int(speech.group), "type": "supergroup", "title": "Fake group"}
    else:
        author, chat = person, {"id": person, "type": "private"}
    body: dict[str, Json] = {
        "message_id": n,
        "from": {"id": author, "is_bot": bot, "first_name": "Tess"},
        "chat": chat,
        "date": 1_700_000_000 + n,
    }
    entities: list[Json] = []
    if speech.mention:
        name = f"@{BOT_USERNAME}"
        entities.append({"type": "mention", "offset": 0, "length": len(name)})
        text = f"{name} {text}"
    if speech.reply_to_bot:
        body["reply_to_message"] = {"message_id": n - 1, "from": {"id": BOT_ID, "is_bot": True}, "chat": chat}
    if speech.thread is not None:
        body["message_thread_id"] = int(speech.thread)
        body["is_topic_message"] = True
    if speech.service:
        body["new_chat_members"] = [{"id": author + 1, "is_bot": False, "first_name": "New"}]
    elif speech.media:
        body["photo"] = [{"file_id": f"photo-{n}", "file_unique_id": f"u{n}", "width": 90, "height": 90}]
        if text:
            body["caption"] = text
            body["caption_entities"] = entities
    else:
        body["text"] = text
        if entities:
            body["entities"] = entities
    return body
