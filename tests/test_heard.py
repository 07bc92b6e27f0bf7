"""The one step from a heard message to an accepted turn (`channels/heard.py`), shared by the
listeners and the webhook route: the origin it builds, and what it refuses before any write."""

from __future__ import annotations

import pytest

from trio_gateway.channels.heard import HeardOn, submit_heard
from trio_gateway.channels.inbound import Heard
from trio_gateway.channels.weixin import ADDRESS
from trio_gateway.errors import DeliveryValidationError
from trio_gateway.policy.origin import Origin

ON = HeardOn("openclaw-weixin", "bot-1", "main", ADDRESS)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    async def __call__(
        self, *, agent_id: str, origin: Origin, prompt: str, inbound_id: str | None
    ) -> tuple[str, str] | None:
        self.calls.append({"agent_id": agent_id, "origin": origin, "prompt": prompt, "inbound_id": inbound_id})
        return ("s-1-1", "turn-s-1-1-1")


async def test_the_origin_carries_the_account_and_the_context_token() -> None:
    submit = Recorder()
    accepted = await submit_heard(submit, ON, Heard("m1", "o9@im.wechat", "hi", "ctx-7"))
    assert accepted == ("s-1-1", "turn-s-1-1-1")
    assert submit.calls == [
        {
            "agent_id": "main",
            "origin": Origin("openclaw-weixin", "o9@im.wechat", "bot-1", context_token="ctx-7"),
            "prompt": "hi",
            "inbound_id": "m1",
        }
    ]


async def test_a_sender_that_is_no_address_is_refused_before_anything_is_submitted() -> None:
    submit = Recorder()
    with pytest.raises(DeliveryValidationError):
        await submit_heard(submit, ON, Heard("m2", "not-a-wechat-user", "hi"))
    assert submit.calls == []
