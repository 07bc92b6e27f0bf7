"""The classification table of SPEC 7, one row per platform answer, without any HTTP. Each
platform's classifier lives in its module (`channels/<platform>.py`)."""

from __future__ import annotations

import pytest

from trio_gateway.channels.base import Classifier, Outcome, retry_after, seconds, transport_error
from trio_gateway.channels.discord import classify as classify_discord
from trio_gateway.channels.feishu import classify as classify_feishu
from trio_gateway.channels.feishu import classify_token as classify_feishu_token
from trio_gateway.channels.slack import classify as classify_slack
from trio_gateway.channels.telegram import classify as classify_telegram
from trio_gateway.channels.weixin import classify as classify_weixin

# (classifier, status, body, headers, expected kind, expected retry_after)
TABLE = [
    # feishu
    (classify_feishu, 200, {"code": 0, "msg": "success"}, {}, "ok", None),
    (classify_feishu, 400, {"code": 99992360, "msg": "Invalid ids"}, {}, "permanent", None),
    (classify_feishu, 400, {"code": 99992361, "msg": "open_id cross app"}, {}, "permanent", None),
    (classify_feishu, 200, {"code": 99992360, "msg": "Invalid ids"}, {}, "permanent", None),
    (classify_feishu, 400, {"code": 11232, "msg": "frequency limit"}, {"Retry-After": "7"}, "rate_limited", 7.0),
    (
        classify_feishu,
        200,
        {"code": 230020, "msg": "frequency limit"},
        {"x-ogw-ratelimit-reset": "3"},
        "rate_limited",
        3.0,
    ),
    (classify_feishu, 429, None, {"X-Ogw-Ratelimit-Reset": "12"}, "rate_limited", 12.0),
    (classify_feishu, 403, {"code": 1, "msg": "forbidden"}, {}, "permanent", None),
    (classify_feishu, 404, None, {}, "permanent", None),
    (classify_feishu, 400, None, {}, "permanent", None),
    (classify_feishu, 500, None, {}, "retry", None),
    (classify_feishu, 503, {"code": 1}, {"Retry-After": "2"}, "retry", 2.0),
    (classify_feishu, 408, None, {}, "retry", None),
    (classify_feishu, 200, {"code": 123456, "msg": "unknown"}, {}, "retry", None),
    (classify_feishu, 200, None, {}, "retry", None),
    # feishu token endpoint
    (classify_feishu_token, 200, {"code": 0, "tenant_access_token": "t-1", "expire": 7200}, {}, "ok", None),
    (classify_feishu_token, 400, {"code": 10014, "msg": "app secret invalid"}, {}, "paused", None),
    (classify_feishu_token, 502, None, {}, "retry", None),
    # openclaw-weixin
    (classify_weixin, 200, {"ret": 0}, {}, "ok", None),
    (classify_weixin, 200, {"errcode": -14, "errmsg": "session timeout"}, {}, "paused", None),
    (classify_weixin, 200, {"ret": -14}, {}, "paused", None),
    (classify_weixin, 200, {"ret": -1, "errcode": -2}, {}, "retry", None),
    (classify_weixin, 400, {"ret": -1}, {}, "permanent", None),
    (classify_weixin, 502, None, {}, "retry", None),
    (classify_weixin, 429, None, {"Retry-After": "4"}, "rate_limited", 4.0),
    # slack
    (classify_slack, 200, {"ok": True}, {}, "ok", None),
    (classify_slack, 200, {"ok": False, "error": "channel_not_found"}, {}, "permanent", None),
    (classify_slack, 200, {"ok": False, "error": "not_in_channel"}, {}, "permanent", None),
    (classify_slack, 200, {"ok": False, "error": "invalid_auth"}, {}, "paused", None),
    (classify_slack, 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"}, "rate_limited", 30.0),
    (classify_slack, 200, {"ok": False, "error": "internal_error"}, {}, "retry", None),
    (classify_slack, 503, None, {}, "retry", None),
    # discord
    (classify_discord, 200, {"id": "1"}, {}, "ok", None),
    (classify_discord, 429, {"message": "rate limited", "retry_after": 1.5}, {"Retry-After": "2"}, "rate_limited", 1.5),
    (classify_discord, 429, None, {"Retry-After": "2"}, "rate_limited", 2.0),
    (classify_discord, 403, {"code": 50007, "message": "Cannot send messages to this user"}, {}, "permanent", None),
    (classify_discord, 404, {"code": 10003, "message": "Unknown Channel"}, {}, "permanent", None),
    (classify_discord, 401, {"code": 0, "message": "401: Unauthorized"}, {}, "paused", None),
    (classify_discord, 500, None, {}, "retry", None),
    (classify_discord, 200, None, {}, "retry", None),
    # telegram
    (classify_telegram, 200, {"ok": True, "result": {}}, {}, "ok", None),
    (
        classify_telegram,
        429,
        {"ok": False, "error_code": 429, "description": "Too Many Requests", "parameters": {"retry_after": 9}},
        {},
        "rate_limited",
        9.0,
    ),
    (classify_telegram, 400, {"ok": False, "error_code": 400, "description": "chat not found"}, {}, "permanent", None),
    (classify_telegram, 403, {"ok": False, "error_code": 403, "description": "bot was blocked"}, {}, "permanent", None),
    (classify_telegram, 200, {"ok": False, "error_code": 400, "description": "Bad Request"}, {}, "permanent", None),
    (classify_telegram, 502, None, {}, "retry", None),
    (classify_telegram, 200, {"ok": False}, {}, "retry", None),
]


@pytest.mark.parametrize(("classify", "status", "body", "headers", "kind", "delay"), TABLE)
def test_classification_table(
    classify: Classifier, status: int, body: object, headers: dict[str, str], kind: str, delay: float | None
) -> None:
    outcome: Outcome = classify(status, body, headers)
    assert outcome.kind == kind
    assert outcome.retry_after == delay
    if kind != "ok":
        assert outcome.http_status in (status, None)
        assert outcome.reason, "a failure must say why"


def test_reason_names_the_channels_code_and_message() -> None:
    outcome = classify_feishu(400, {"code": 99992360, "msg": "Invalid ids"}, {})
    assert outcome.reason == "HTTP 400 feishu_code 99992360 Invalid ids"
    assert (
        classify_slack(200, {"ok": False, "error": "not_in_channel"}, {}).reason
        == "HTTP 200 slack_error not_in_channel"
    )


def test_http_200_with_error_code_is_never_ok() -> None:
    assert not classify_feishu(200, {"code": 99992360}, {}).ok
    assert not classify_weixin(200, {"errcode": -14}, {}).ok
    assert not classify_slack(200, {"ok": False, "error": "x"}, {}).ok
    assert not classify_telegram(200, {"ok": False}, {}).ok


def test_long_reasons_are_cut() -> None:
    outcome = classify_feishu(400, {"code": 1, "msg": "x" * 5000}, {})
    assert len(outcome.reason) <= 200


def test_transport_errors_retry() -> None:
    outcome = transport_error("ConnectError", "connection refused")
    assert outcome.kind == "retry"
    assert "ConnectError" in outcome.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), ("1.5", 1.5), (3, 3.0), ("-1", None), ("soon", None), (True, None), (None, None), ("nan", None)],
)
def test_seconds_parsing(value: object, expected: float | None) -> None:
    assert seconds(value) == expected


def test_retry_after_header_is_case_insensitive() -> None:
    assert retry_after({"retry-after": "8"}) == 8.0
    assert retry_after({}) is None
