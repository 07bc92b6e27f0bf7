"""A reply cut into chunks a platform accepts (SPEC 15, "Length"). Pure: no I/O, no trio.

`chunk(text, limit, count)` cuts where a reader would: at a paragraph break if one fits, else a
line break, a sentence end, whitespace, and only then a hard cut. A cut never falls inside a
grapheme cluster (so never between a base letter and its accents, inside an emoji sequence or a
flag); Python strings hold code points, so a surrogate pair is never split either, and UTF-16 is
only how a platform counts (`Count`). A Markdown code fence open at a cut is closed at the end of
the chunk and reopened, with its info string, at the start of the next, so each chunk renders on
its own. Whitespace at a cut is dropped; nothing else is: the chunks, without the fence lines the
cut added, joined give back the text up to whitespace at the cuts.

`chunk_as_sent(text, limit, count, render)` does the same for a platform that is sent the text
rendered (Telegram HTML, Slack mrkdwn): each Markdown chunk is rendered and measured as sent, and
a chunk whose rendering is over the limit is cut again with a tighter budget.

The grapheme rule is a documented subset of UAX #29, not a dependency: no cut before a combining
mark (categories Mn, Mc, Me), a zero-width joiner, a variation selector, an emoji skin-tone
modifier or a tag character; none after a zero-width joiner; none between the two regional
indicators of a flag; none between CR and LF. Hangul jamo sequences and Indic conjuncts beyond
their combining marks are not special-cased: a cut there is at a code point, still valid text.
A single cluster longer than the whole limit (thousands of stacked accents) is cut at a code point:
the only way to send it at all.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable, Iterator
from typing import Literal

import attrs

# How a platform counts a text's length: Telegram and Discord in UTF-16 code units, Slack in
# characters (code points), Feishu's limit is on the request body's UTF-8 bytes.
Count = Literal["utf16", "codepoints", "utf8"]

# A break is taken at the highest level that has one past this fraction of the chunk, so a
# paragraph break near the start does not leave a chunk of a few words.
_MIN_FILL = 1 / 3

_SENTENCE_END = re.compile(r"[.!?…。！？](?=\s)")
_WHITESPACE = re.compile(r"\s")
_FENCE_LINE = re.compile(r" {0,3}(`{3,}|~{3,})([^\n]*)")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_FENCE_AT = re.compile(r"[ \t]{0,3}(`{3,}|~{3,})")

_ZWJ = "\u200d"


def measure(text: str, count: Count) -> int:
    """The length of `text` as the platform counts it."""
    if count == "codepoints":
        return len(text)
    if count == "utf16":
        return len(text.encode("utf-16-le")) // 2
    return len(text.encode("utf-8"))


def _extends(ch: str) -> bool:
    """Does `ch` continue the grapheme cluster before it (no cut right before it)?"""
    o = ord(ch)
    if ch == _ZWJ or 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF:
        return True
    if 0x1F3FB <= o <= 0x1F3FF or 0xE0020 <= o <= 0xE007F:
        return True
    return o >= 0x300 and unicodedata.category(ch) in ("Mn", "Mc", "Me")


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def is_boundary(text: str, i: int) -> bool:
    """May `text` be cut before index `i` without splitting a grapheme cluster?"""
    if i <= 0 or i >= len(text):
        return True
    before, after = text[i - 1], text[i]
    if _extends(after) or before == _ZWJ or (before == "\r" and after == "\n"):
        return False
    if _regional(before) and _regional(after):
        run = 0
        j = i - 1
        while j >= 0 and _regional(text[j]):
            run += 1
            j -= 1
        return run % 2 == 0  # an odd run before `i` means `i` is the second half of a flag
    return True


@attrs.frozen
class _Fence:
    marker: str  # "```" or "~~~~" …: a closing line repeats it (or longer)
    opening: str  # the whole opening line, info string included, reopened in the next chunk


def _fence_states(text: str) -> tuple[list[int], list[_Fence | None]]:
    """Where the fence state of `text` changes: the start of each fence line (sorted), and the
    fence open after it. Read once over the original text, so a cut that puts a mid-line "```"
    at the start of a chunk does not make it a fence."""
    starts: list[int] = []
    states: list[_Fence | None] = []
    fence: _Fence | None = None
    for m in sorted(_fence_lines(text), key=lambda m: m.start()):
        marker, info = m.group(1), m.group(2)
        if fence is None:
            if marker[0] == "`" and "`" in info:  # a backtick fence's info has no backtick
                continue
            fence = _Fence(marker, m.group(0).strip())
        elif marker[0] == fence.marker[0] and len(marker) >= len(fence.marker) and not info.strip():
            fence = None
        else:
            continue
        starts.append(m.start())
        states.append(fence)
    return starts, states


def _fence_lines(text: str) -> Iterator[re.Match[str]]:
    """The fence-like lines of `text`, found from its runs of three backticks or tildes (a
    multi-line regex tries every position of a 100 kB reply: several times slower)."""
    for run in ("```", "~~~"):
        at = text.find(run)
        while at != -1:
            line = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            end = len(text) if end == -1 else end
            m = _FENCE_LINE.match(text, line, end) if at - line <= 3 else None
            if m is not None and m.start(1) == at:
                yield m
            at = text.find(run, end)
    return


def _fence_at(starts: list[int], states: list[_Fence | None], pos: int) -> _Fence | None:
    """The fence open just before `pos`: a fence line counts once its start is before `pos`."""
    i = bisect.bisect_left(starts, pos)
    return states[i - 1] if i > 0 else None


def _max_prefix(text: str, start: int, budget: int, count: Count) -> int:
    """The largest `end` with `text[start:end]` no longer than `budget` as counted."""
    end = min(len(text), start + max(budget, 0))
    if count == "codepoints":
        return end
    if count == "utf16":
        # A character outside the BMP is two units: stop before the first that no longer fits.
        astral = [m.start() for m in _ASTRAL.finditer(text, start, end)]
        for i, at in enumerate(astral):
            if (at - start) + i + 2 > budget:
                return min(at, start + budget - i)  # (the units before `at` may be over too)
        return min(end, start + budget - len(astral))
    if measure(text[start:end], count) <= budget:
        return end
    lo, hi = start, end  # measure(text[start:lo]) <= budget < measure(text[start:hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(text[start:mid], count) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def _last_break(window: str, floor: int) -> tuple[int, int] | None:
    """(cut, resume) offsets in `window` of its best break at or past `floor`: the chunk ends at
    `cut`, the next starts at `resume` (whitespace between is dropped)."""
    p = window.rfind("\n\n", floor)
    if p > 0:
        return p, p + 2
    p = window.rfind("\n", floor)
    if p > 0:
        return p, p + 1
    last = None
    for m in _SENTENCE_END.finditer(window, floor):
        last = m
    if last is not None:
        return last.end(), last.end()
    last = None
    for m in _WHITESPACE.finditer(window, max(floor, 1)):
        last = m
    if last is not None:
        return last.start(), last.end()
    return None


def _cut(text: str, start: int, end: int) -> tuple[int, int]:
    """Where the chunk starting at `start` ends, at most at `end` (< len(text)), and where the
    next one starts."""
    window = text[start:end]
    found = _last_break(window, int(len(window) * _MIN_FILL)) or _last_break(window, 1)
    if found is not None:
        cut, resume = start + found[0], start + found[1]
        if is_boundary(text, cut) and is_boundary(text, resume):
            return cut, resume
    cut = end
    while cut > start + 1 and not is_boundary(text, cut):
        cut -= 1
    if cut == start + 1 and not is_boundary(text, cut):
        cut = end  # one cluster longer than the limit: a code point cut is the only way
    return cut, cut


@attrs.frozen
class Piece:
    """One chunk: `body` is a slice of the reply (whitespace at the cuts dropped); `reopen` and
    `close` are the fence lines the cut added around it."""

    reopen: str
    body: str
    close: str

    @property
    def text(self) -> str:
        return self.reopen + self.body + self.close


def pieces(text: str, limit: int, count: Count = "codepoints") -> list[Piece]:
    """`text` in chunks of at most `limit` (as `count` counts), cut as the module says."""
    if limit < 16:
        raise ValueError(f"a chunk limit must be at least 16, not {limit}")
    if measure(text, count) <= limit:
        return [Piece("", text, "")]
    starts, states = _fence_states(text)
    # Room for the line that closes a fence open at a cut: the longest fence marker there is.
    close_room = 1 + max((len(f.marker) for f in states if f is not None), default=-1)
    out: list[Piece] = []
    start = 0
    while start < len(text):
        fence = _fence_at(starts, states, start)
        reopen = fence.opening + "\n" if fence is not None else ""
        budget = limit - measure(reopen, count) - close_room
        if budget < 8:  # a fence line nearly as long as the limit: no reopening then
            reopen, budget = "", limit - close_room
        end = _max_prefix(text, start, budget, count)
        cut, resume = (len(text), len(text)) if end >= len(text) else _cut(text, start, end)
        cut, resume = _no_new_fence(text, start, cut, resume)
        body = text[start:cut].rstrip()
        after = _fence_at(starts, states, cut) if cut < len(text) else None
        if body.strip():
            out.append(Piece(reopen, body, "\n" + after.marker if after is not None else ""))
        start = resume
        while start < len(text) and text[start] in " \t\r\n" and is_boundary(text, start + 1):
            start += 1
    return out


def _opens_a_fence(text: str, i: int) -> bool:
    """Would a chunk starting at `i` open a fence where the text has none (a "```" in the middle
    of a line, put at a chunk's start by a cut)?"""
    return 0 < i < len(text) and text[i - 1] != "\n" and _FENCE_AT.match(text, i) is not None


def _no_new_fence(text: str, start: int, cut: int, resume: int) -> tuple[int, int]:
    """Move a cut back so that no fence changes meaning: never inside a fence-like line (a
    "```python" cut after its backticks would read as a closing "```"), and never so that the
    next chunk starts with a "```" that was in the middle of a line. Left as it was when the
    only way back splits a grapheme cluster."""
    line = text.rfind("\n", 0, cut) + 1
    if start < line < cut < len(text) and _FENCE_AT.match(text, line) is not None:
        return line, line
    nxt = resume
    while nxt < len(text) and text[nxt] in " \t\r\n":
        nxt += 1
    if not _opens_a_fence(text, nxt):
        return cut, resume
    while nxt > start + 1 and (_opens_a_fence(text, nxt) or not is_boundary(text, nxt)):
        nxt -= 1
    if _opens_a_fence(text, nxt) or not is_boundary(text, nxt):
        return cut, resume
    return nxt, nxt


def chunk(text: str, limit: int, count: Count = "codepoints") -> list[str]:
    """The chunks' texts as sent (fence lines included). A text that fits is one chunk, as is."""
    return [p.text for p in pieces(text, limit, count)]


def chunk_as_sent(text: str, limit: int, count: Count, render: Callable[[str], str]) -> list[str]:
    """Markdown chunks whose renderings (`render`, what the platform is sent) each fit `limit`.
    Chunked on the Markdown, measured as sent: a chunk whose rendering is over the limit (HTML
    escaping, link URLs written out) is cut again, with its budget shrunk by the overshoot."""
    raw, sent = measure(text, count), measure(render(text), count)
    if sent <= limit:
        return [text]
    # Cut the Markdown to the share of the limit its rendering grows by (HTML tags, escapes), with
    # a margin, so most chunks fit at once and few are cut twice (each try is a parse).
    start = limit if sent <= raw else max(16, int(limit * raw / sent * 0.95))
    out: list[str] = []
    pending = chunk(text, start, count)
    budgets = [start] * len(pending)
    while pending:
        piece, budget = pending.pop(0), budgets.pop(0)
        sent = measure(render(piece), count)
        if sent <= limit or budget <= 16:
            out.append(piece)
            continue
        tighter = max(16, budget * limit // sent - 8)
        parts = chunk(piece, tighter, count)
        if len(parts) == 1:  # it fits the tighter budget already: shrink it further
            parts = chunk(piece, max(16, min(tighter, measure(piece, count) - 1)), count)
        pending[:0] = parts
        budgets[:0] = [tighter] * len(parts)
    return out
