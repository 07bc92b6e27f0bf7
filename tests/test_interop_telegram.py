"""Telegram updates built with python-telegram-bot's classes (the `interop` extra), through
both ways we hear Telegram: the webhook and `getUpdates` polling (issue 24). Both must hear
the same messages from the same updates, and ignore the same ones."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import pytest
import trio

from trio_gateway import upstream as http
from trio_gateway.channels.inbound import Heard
from trio_gateway.channels.telegram import TelegramAccount, TelegramListener
from trio_gateway.http import inbound

pytestmark = pytest.mark.interop

telegram = pytest.importorskip("telegram")

SECRET = "tg-webhook-secret"
ACCOUNT = TelegramAccount(secret_token_env="TG_SECRET")
WHEN = datetime.datetime(2026, 12, 7, 6, 0, tzinfo=datetime.UTC)
PERSON = telegram.User(id=4242, first_name="Ada", is_bot=False)
BOT = telegram.User(id=777, first_name="Other bot", is_bot=True)


def update(update_id: int, chat: Any, sender: Any, *, edited: bool = False, **content: Any) -> dict[str, Any]:
    message = telegram.Message(message_id=update_id, date=WHEN, chat=chat, from_user=sender, **content)
    if edited:
        return dict(telegram.Update(update_id=update_id, edited_message=message).to_dict())
    return dict(telegram.Update(update_id=update_id, message=message).to_dict())


UPDATES = {
    "private text": update(1001, telegram.Chat(id=4242, type="private"), PERSON, text="hello"),
    "group text": update(1002, telegram.Chat(id=-100123, type="supergroup", title="g"), PERSON, text="in a group"),
    "photo only": update(
        1003,
        telegram.Chat(id=4242, type="private"),
        PERSON,
        photo=(telegram.PhotoSize("f1", "u1", 90, 90),),
    ),
    "from a bot": update(1004, telegram.Chat(id=-100123, type="supergroup", title="g"), BOT, text="beep"),
    # Issue 20: the webhook used to take these two as turns while polling skipped them.
    "an edit": update(1005, telegram.Chat(id=4242, type="private"), PERSON, edited=True, text="hello!"),
    "a member joined": update(
        1006, telegram.Chat(id=-100123, type="supergroup", title="g"), PERSON, new_chat_members=(PERSON,)
    ),
    "photo with a caption": update(
        1007,
        telegram.Chat(id=4242, type="private"),
        PERSON,
        photo=(telegram.PhotoSize("f2", "u2", 90, 90),),
        caption="look",
    ),
}
# (to, text, id, chat, media)
HEARD = {
    "private text": ("4242", "hello", "1001", "direct", False),
    "group text": ("-100123", "in a group", "1002", "group", False),
    "photo only": ("4242", "", "1003", "direct", True),
    "from a bot": None,
    "an edit": None,
    "a member joined": None,
    "photo with a caption": ("4242", "look", "1007", "direct", False),
}


def facts(h: Heard) -> tuple[str, str, str | None, str, bool]:
    return (h.to, h.text, h.id, h.chat, h.media)


def through_webhook(data: dict[str, Any]) -> tuple[str, str, str | None, str, bool] | None:
    headers = {"x-telegram-bot-api-secret-token": SECRET}
    event = inbound.parse("telegram", headers, json.dumps(data).encode(), ACCOUNT, {"TG_SECRET": SECRET}, time.time)
    return None if event.message is None else facts(event.message)


class _Intake:
    def __init__(self) -> None:
        self.heard: list[Heard] = []
        self.cursor: Any = None

    async def accept_batch(self, batch: list[Heard]) -> None:
        self.heard.extend(batch)

    async def load_cursor(self) -> Any:
        return None

    async def save_cursor(self, cursor: Any) -> None:
        self.cursor = cursor

    def connected(self) -> None:
        pass


async def through_polling(updates: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str | None, str, bool]], Any]:
    """One `getUpdates` answer carrying `updates`; the next poll waits until the test ends."""
    polls: list[dict[str, Any]] = []

    async def bot_api(request: http.Request) -> http.Response:
        if request.url.path.endswith("/getMe"):
            return http.Response(200, json={"ok": True, "result": {"id": 123, "is_bot": True, "username": "b"}})
        polls.append(json.loads(request.content))
        if len(polls) > 1:
            await trio.sleep_forever()
        return http.Response(200, json={"ok": True, "result": updates})

    listener = TelegramListener.open("https://api.telegram.invalid", "123:abc", "bot1", http.MockTransport(bot_api))
    intake = _Intake()
    with trio.move_on_after(5):
        await listener.listen(intake)  # type: ignore[arg-type]
    await listener.aclose()
    assert polls[1]["offset"] == max(u["update_id"] for u in updates) + 1  # confirmed by the next poll
    return [facts(h) for h in intake.heard], intake.cursor


@pytest.mark.parametrize("case", list(UPDATES))
def test_the_webhook_hears_what_python_telegram_bot_builds(case: str) -> None:
    assert through_webhook(UPDATES[case]) == HEARD[case]


async def test_polling_hears_the_same_updates_as_the_webhook(autojump_clock: trio.abc.Clock) -> None:
    heard, cursor = await through_polling(list(UPDATES.values()))
    assert heard == [h for h in HEARD.values() if h is not None]
    assert cursor == 1008
