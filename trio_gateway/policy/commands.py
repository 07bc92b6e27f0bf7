"""Chat commands (SPEC 15): which messages are a command, and the fixed words of their replies.

Pure. A message is a command only when its whole text is one (`/stop`, `  /STOP  `, and in a
Telegram group `/stop@MyBot`); `/stop now` or `please /stop` are ordinary text for the model.
The gateway answers a command itself (`runtime/commands.py`), never the model.
"""

from __future__ import annotations

from typing import Literal

CommandName = Literal["stop", "new", "status", "help"]

# Spelling -> command: `/reset` is `/new` under its other name (OpenClaw spells both).
_NAMES: dict[str, CommandName] = {"stop": "stop", "new": "new", "reset": "new", "status": "status", "help": "help"}

STOPPED = "Stopped."
NOTHING_TO_STOP = "Nothing to stop."
NEW_SESSION = "New session."
HELP = (
    "Commands:\n"
    "/stop - stop the running request (and the ones waiting behind it)\n"
    "/new or /reset - stop, then start a new conversation (the old one is kept)\n"
    "/status - agent, model, session and the work running now\n"
    "/help - this list"
)


def parse_command(text: str, bot_name: str | None = None) -> CommandName | None:
    """The command `text` is, or None when it is text for the model. `bot_name` (Telegram's
    `getMe` username, without `@`): a `/cmd@other_bot` in a group is another bot's command,
    not ours. Unknown: any `@name` is taken as ours (a group with one bot is the usual case)."""
    word = text.strip()
    if not word.startswith("/") or any(c.isspace() for c in word):
        return None
    name, at, addressee = word[1:].partition("@")
    if at and (not addressee or (bot_name is not None and addressee.lower() != bot_name.lower())):
        return None
    return _NAMES.get(name.lower())
