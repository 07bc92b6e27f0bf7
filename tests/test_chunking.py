"""SPEC 15 "Length": the chunker's promises, as properties over arbitrary text and as examples."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.policy.chunking import Count, chunk, chunk_as_sent, is_boundary, measure, pieces

# Text that exercises every rule: words, sentence ends, line and paragraph breaks, fences, accents,
# emoji sequences (ZWJ, skin tones, variation selectors), flags, astral characters, CJK.
_PIECES = [
    "word",
    "Satz",
    " ",
    "  ",
    ". ",
    "! ",
    "\n",
    "\n\n",
    "```python\n",
    "\n```\n",
    "~~~\n",
    "e\u0301",
    "👩\u200d💻",
    "👍🏽",
    "❤\ufe0f",
    "🇫🇷",
    "🇯🇵🇩🇪",
    "𝔘",
    "漢字。",
    "\r\n",
    "x" * 40,
]
texts = st.lists(st.sampled_from(_PIECES), max_size=300).map("".join)
counts = st.sampled_from(["utf16", "codepoints", "utf8"])


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _cluster_starts(text: str) -> set[int]:
    return {i for i in range(len(text) + 1) if is_boundary(text, i)}


@settings(max_examples=300, deadline=None)
@given(text=texts, limit=st.integers(16, 300), count=counts)
def test_chunks_fit_and_give_back_the_text(text: str, limit: int, count: Count) -> None:
    parts = pieces(text, limit, count)
    assert all(measure(p.text, count) <= limit for p in parts)
    assert _squeezed("".join(p.body for p in parts)) == _squeezed(text)
    if measure(text, count) <= limit:
        assert [p.text for p in parts] == [text]


@settings(max_examples=300, deadline=None)
@given(text=texts, limit=st.integers(16, 200))
def test_no_cut_inside_a_grapheme_cluster(text: str, limit: int) -> None:
    """Every chunk (fence lines aside) is a run of whole clusters of the original text."""
    pos = 0
    starts = _cluster_starts(text)
    for piece in pieces(text, limit, "utf16"):
        body = piece.body
        at = text.find(body, pos)
        assert at >= 0, (piece, text)
        assert at in starts, (at, body)
        assert at + len(body) in starts, (at, body)
        pos = at + len(body)


@settings(max_examples=200, deadline=None)
@given(text=texts, limit=st.integers(40, 200))
def test_every_chunk_but_the_last_closes_the_fences_it_opens(text: str, limit: int) -> None:
    """The last chunk ends where the reply does: a fence the model left open stays open."""
    for piece in chunk(text, limit, "codepoints")[:-1]:
        opened = None
        for line in piece.split("\n"):
            m = re.match(r"^ {0,3}(`{3,}|~{3,})(.*)$", line)
            if m is None:
                continue
            if opened is None and not (m.group(1)[0] == "`" and "`" in m.group(2)):
                opened = m.group(1)
            elif opened and m.group(1)[0] == opened[0] and len(m.group(1)) >= len(opened) and not m.group(2).strip():
                opened = None
        assert opened is None, piece


def test_cut_preference_paragraph_then_line_then_sentence_then_space() -> None:
    para = "a" * 30 + "\n\n" + "b" * 20 + "\n" + "c" * 60
    assert chunk(para, 80)[0] == "a" * 30
    lines = "a" * 50 + "\n" + "b" * 20 + ". " + "c" * 30
    assert chunk(lines, 80)[0] == "a" * 50
    sentence = "a" * 50 + ". " + "b" * 5 + " " + "c" * 40
    assert chunk(sentence, 80)[0] == "a" * 50 + "."
    words = "a" * 50 + " " + "b" * 50
    assert chunk(words, 80)[0] == "a" * 50
    hard = "a" * 100
    assert chunk(hard, 80) == ["a" * 80, "a" * 20]


def test_telegram_counts_utf16_code_units() -> None:
    text = "😀" * 3000  # 3000 code points, 6000 UTF-16 units
    pieces = chunk(text, 4096, "utf16")
    assert [measure(p, "utf16") for p in pieces] == [4096, 1904]
    assert "".join(pieces) == text


def test_a_flag_and_a_family_emoji_are_never_split() -> None:
    family = "👨\u200d👩\u200d👧"
    text = "🇫🇷" * 20 + family * 10
    for piece in chunk(text, 17, "codepoints"):
        assert not piece.startswith(("\u200d", "🇷")) or piece.startswith("🇫🇷")
        assert not piece.endswith("\u200d")
    assert "".join(chunk(text, 17, "codepoints")) == text


def test_a_fence_open_at_a_cut_is_closed_and_reopened() -> None:
    text = "intro\n\n```python\n" + "\n".join(f"x{i} = {i}" for i in range(40)) + "\n```\nafter"
    pieces = chunk(text, 120)
    assert len(pieces) > 2
    assert pieces[0].endswith("\n```") or pieces[0] == "intro"
    for piece in pieces[1:-1]:
        assert piece.startswith("```python\n")
        assert piece.endswith("\n```")
    assert pieces[-1].endswith("after")


def test_a_limit_below_sixteen_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        chunk("x" * 100, 15)


def test_as_sent_measures_the_rendering() -> None:
    def render(s: str) -> str:
        return s.replace("&", "&amp;")

    text = "&" * 1000
    pieces = chunk_as_sent(text, 200, "codepoints", render)
    assert all(len(render(p)) <= 200 for p in pieces)
    assert "".join(pieces) == text
