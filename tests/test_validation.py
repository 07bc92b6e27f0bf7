"""The address rules of SPEC 7, one table per channel: each rule lives in its platform's module
(`ChannelKind.address`); the registry looks it up by channel name."""

from __future__ import annotations

import re

import pytest

from trio_gateway.channels.registry import check_address
from trio_gateway.errors import DeliveryValidationError

VALID = {
    "openclaw-weixin": ["o9cq80abc@im.wechat", "wxid_abc-1.2@im.wechat"],
    "feishu": [
        "ou_7d8a6e6df7621556ce0d21922b676706",
        "on_abc123",
        "oc_a0553eda9014c201e6969b478895c230",
        "g7b3c9d1",
        "user_01",
        "alice@example.com",
        "a.b+c@mail.example.co",
    ],
    "slack": ["C01234567", "U0123ABCD9", "D12345678", "W1234ABCD", "G0000000000"],
    "discord": ["user:123456789012345678", "channel:12345678901234567", "user:12345678901234567890"],
    "telegram": ["123456789", "-1001234567890", "@some_bot", "@Alice"],
    "console": ["anyone", "x y", "o9cq80abc@im.wechat"],
}

INVALID = {
    "openclaw-weixin": ["ou_7d8a6e6df7621556", "alice@example.com", "o9cq80abc@im.bot", "", "o9cq80abc"],
    "feishu": ["o9cq80abc@im.wechat", "O9CQ@IM.WECHAT", "2005b227a854@im.bot", "", "a b", "x@y", "@im.wechat"],
    "slack": ["c01234567", "C0123", "X01234567", "#general", "C0123456a"],
    "discord": ["123456789012345678", "user:1234", "channel:123456789012345678901", "guild:123456789012345678"],
    "telegram": ["12a", "@ab", "some_bot", "--1", ""],
    "console": ["", "   "],
}


@pytest.mark.parametrize(("channel", "to"), [(c, a) for c, addrs in VALID.items() for a in addrs])
def test_valid_addresses_pass_without_warning(channel: str, to: str) -> None:
    assert check_address(channel, to) is None


@pytest.mark.parametrize(("channel", "to"), [(c, a) for c, addrs in INVALID.items() for a in addrs])
def test_invalid_addresses_are_refused_naming_channel_and_address(channel: str, to: str) -> None:
    with pytest.raises(DeliveryValidationError) as info:
        check_address(channel, to)
    message = str(info.value)
    assert f"channel={channel}" in message
    assert f"address={to}" in message
    assert "must be" in message


def test_unknown_channel_is_accepted_with_a_warning() -> None:
    warning = check_address("matrix", "@bob:example.org")
    assert warning is not None
    assert "matrix" in warning


def test_unknown_channel_still_needs_an_address() -> None:
    with pytest.raises(DeliveryValidationError):
        check_address("matrix", "")


def test_none_address_is_refused() -> None:
    with pytest.raises(DeliveryValidationError):
        check_address("feishu", None)


def test_the_seed_pattern_lets_the_incident_through_and_ours_does_not() -> None:
    seed = re.compile(r"^[a-zA-Z0-9_-]+@[a-zA-Z0-9_.-]+$")
    incident = "o9cq80abc@im.wechat"
    assert seed.fullmatch(incident)  # the seed accepted it as a Feishu e-mail
    with pytest.raises(DeliveryValidationError, match=r"@im\.wechat"):
        check_address("feishu", incident)
