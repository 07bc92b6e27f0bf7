"""Replies as each platform shows them (SPEC 15): what chunking and formatting cost.

    .venv/bin/python scripts/bench_replies.py [--quick]

Pure CPU, no I/O. A Markdown reply typical of a model (paragraphs with bold, code spans, links,
lists and fenced code), ~100 kB:

(a) Chunking: `policy.chunking.chunk` of the reply at Telegram's 4096 UTF-16 units, at Discord's
    2000, and counted in UTF-8 bytes (Feishu). Target: <= 5 ms per 100 kB.
(b) Formatting: each platform's `TextForm.render` (one markdown-it parse, walked in its style),
    per kB of reply. Reference, same run: markdown-it-py's own `render` to HTML of the same text
    (the parse alone costs most of it). Target: <= 1 ms per kB.
(c) Both, as the outbox does them: `TextForm.chunks` (chunk the Markdown, render each chunk,
    re-cut any whose rendering is over the limit).

Each figure is the median of N runs (best of is printed too): the machine is shared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import banner, table, verdict
from markdown_it import MarkdownIt

from trio_gateway.channels import discord, feishu, slack, telegram, weixin
from trio_gateway.policy.chunking import chunk

PARAGRAPH = (
    "The **gateway** keeps each reply whole: a `chunk` never splits a grapheme like 👩‍💻 or é, "
    "and a [link](https://example.com/docs?a=1&b=2) keeps its URL. Some *emphasis*, some ~~strike~~.\n\n"
    "- first point with `code`\n- second point\n- third point\n\n"
    "```python\nfor i in range(3):\n    print(i < 2 and 'x' or 'y')\n```\n\n"
)


def reply(size: int) -> str:
    text = ""
    while len(text.encode()) < size:
        text += PARAGRAPH
    return text


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, best) seconds of `runs` calls."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (seconds)")
    args = parser.parse_args()
    runs = 5 if args.quick else 30
    text = reply(100_000)
    kb = len(text.encode()) / 1000
    banner("bench_replies", {"reply bytes": len(text.encode()), "runs (median of)": runs})

    rows = []
    for label, limit, count in (("telegram 4096 utf16", 4096, "utf16"), ("discord 2000 utf16", 2000, "utf16"),
                                ("feishu 20000 utf8", 20_000, "utf8")):  # fmt: skip
        med, best = timed(lambda limit=limit, count=count: chunk(text, limit, count), runs)  # type: ignore[misc]
        pieces = len(chunk(text, limit, count))  # type: ignore[arg-type]
        rows.append([label, pieces, f"{med * 1000:.2f}", f"{best * 1000:.2f}", "<= 5 ms", verdict(med <= 0.005)])
    table(["chunking 100 kB", "chunks", "median ms", "best ms", "target", "verdict"], rows, title="(a) chunking")

    reference = MarkdownIt("commonmark")
    ref_med, _ = timed(lambda: reference.render(text), runs)
    rows = []
    for name, form in (("telegram", telegram.TEXT), ("slack", slack.TEXT), ("feishu", feishu.TEXT),
                       ("openclaw-weixin", weixin.TEXT), ("discord", discord.TEXT)):  # fmt: skip
        med, best = timed(lambda form=form: form.render(text), runs)  # type: ignore[misc]
        both, _ = timed(lambda form=form: form.chunks(text), max(3, runs // 5))  # type: ignore[misc]
        per_kb = med * 1000 / kb
        rows.append([name, f"{per_kb:.3f}", f"{best * 1000 / kb:.3f}", f"{ref_med * 1000 / kb:.3f}",
                     f"{both * 1000:.1f}", "<= 1 ms/kB", verdict(per_kb <= 1.0)])  # fmt: skip
    table(
        ["platform", "render ms/kB (median)", "best", "markdown-it render ms/kB", "(c) chunks ms", "target", "verdict"],
        rows,
        title="(b) formatting, (c) chunking as sent",
    )


if __name__ == "__main__":
    main()
