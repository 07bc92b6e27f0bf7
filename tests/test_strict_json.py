"""strict_json: what it refuses, where it says the problem is, and that its shortcut (no walk
when the document cannot hold anything to refuse) never lets one through."""

from __future__ import annotations

import json

import pytest

from trio_gateway.policy import strict_json
from trio_gateway.policy.strict_json import MAX_DEPTH, JsonInputError


def nested(levels: int, inner: str = "1") -> bytes:
    return ("[" * levels + inner + "]" * levels).encode()


@pytest.mark.parametrize(
    ("data", "where", "what"),
    [
        (b'{"a": [1, {"b": "\\udfff"}]}', "a[1].b", "lone surrogate U+DFFF"),
        (b'{"a": {"\\ud800x": 1}}', ascii("a.\ud800x"), "key not valid Unicode"),
        (b'{"a": {"b": [0, 1, 2, 1e999]}}', "a.b[3]", "not a finite number"),
        (b'{"t": 1' + b"0" * 400 + b".0}", "t", "not a finite number"),  # no exponent, still inf
        (b"NaN", "", "NaN is not a number"),
        (b'"\\ud800"', "", "lone surrogate U+D800"),
        (b"[" + b"0," * 50_000 + b'"\\udc00"]', "[50000]", "lone surrogate U+DC00"),  # big, flat
        (b"[" + b"0," * 50_000 + b"1e400]", "[50000]", "not a finite number"),
        (nested(MAX_DEPTH + 1), "", "nested too deeply"),
        (b"[" * 100_000, "", "nested too deeply"),
        (b'{"a": "\xff"}', "", "not valid UTF-8 (byte 7)"),
    ],
)
def test_refused_naming_the_field(data: bytes, where: str, what: str) -> None:
    with pytest.raises(JsonInputError) as info:
        strict_json.loads(data)
    assert info.value.where == where
    assert what in info.value.what


def test_a_str_with_a_raw_lone_surrogate_is_refused() -> None:
    # Only text handed over as str can hold one without an escape: the shortcut must not apply.
    with pytest.raises(JsonInputError, match="lone surrogate U\\+D800"):
        strict_json.loads('{"a": ["\ud800"]}')


@pytest.mark.parametrize(
    "data",
    [
        nested(MAX_DEPTH),  # the deepest allowed, a scalar at the bottom
        nested(MAX_DEPTH + 1, ""),  # an empty list one level further holds nothing too deep
        b'{"id": 18446744073709551616, "snowflake": 1234567890123456789012345678901234567890}',
        b'{"x": [1.5, -1e308, "ok", "\\u00e9\\ud83d\\ude00", null, true]}',
        b"[" + b"0," * 200_000 + b"0]",  # big and flat: the walk is skipped, nothing is lost
        b"[" + b'{"a": [0]},' * 1000 + b"{}]",  # many brackets, shallow: walked, accepted
    ],
)
def test_accepted_as_json_parses_it(data: bytes) -> None:
    assert strict_json.loads(data) == json.loads(data)
