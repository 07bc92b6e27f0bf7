"""A reply's Markdown as each platform shows it (SPEC 15, "Formatting"): ONE parse, by
markdown-it-py (CommonMark, plus GFM's strikethrough and tables), walked once per platform with
that platform's `Style`. Pure: no I/O, no trio.

Each platform module declares its own `TextForm`: how long a message may be, how the platform
counts it, and the `Style` the reply is sent in (`telegram.py`: HTML with Telegram's tag set;
`slack.py`: mrkdwn; `discord.py`: the Markdown as written; Feishu and WeChat: plain text). This
module only walks the tree; it names no platform.

Raw HTML in a reply is text, never markup (`html: False`): a model cannot make Telegram parse a
tag it wrote, and every text node goes through the style's `escape`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import attrs
from markdown_it import MarkdownIt
from markdown_it.token import Token

from trio_gateway.policy.chunking import Count, chunk_as_sent

Wrap = tuple[str, str]


def _no_escape(text: str) -> str:
    return text


@attrs.frozen
class Style:
    """How one platform writes each Markdown element. Every callable gets text already escaped
    (`escape`), but for a link's URL, which each platform quotes its own way."""

    escape: Callable[[str], str] = _no_escape
    strong: Wrap = ("", "")
    em: Wrap = ("", "")
    strike: Wrap = ("", "")
    heading: Wrap = ("", "")
    # inline code, given the code
    code: Callable[[str], str] = _no_escape
    # a fenced or indented block, given (language, code); the language is [A-Za-z0-9_+#.-] only
    fence: Callable[[str, str], str] = lambda _lang, code: code.rstrip("\n")
    # a link, given (rendered text, raw URL)
    link: Callable[[str, str], str] = lambda text, url: text if text == url else f"{text} ({url})"
    # a block quote, given its rendered content
    quote: Callable[[str], str] = lambda inner: "\n".join("> " + line for line in inner.split("\n"))
    rule: str = "———"
    bullet: str = "• "


PLAIN = Style()


@attrs.frozen
class TextForm:
    """How one platform takes a reply: its length limit as it counts it, and the style it is
    sent in. `style=None`: the Markdown is sent as written (Discord renders Markdown itself)."""

    limit: int
    count: Count
    style: Style | None = PLAIN

    def render(self, markdown: str) -> str:
        return markdown if self.style is None else render(markdown, self.style)

    def plain(self, markdown: str) -> str:
        """The same reply without markup: what a platform that refused the formatted text gets."""
        return render(markdown, PLAIN)

    def chunks(self, markdown: str, limit: int | None = None) -> list[str]:
        """The reply's Markdown in pieces whose renderings each fit (`limit` overrides the
        platform's own, as an account's `textChunkLimit` does)."""
        return chunk_as_sent(markdown, limit or self.limit, self.count, self.render)


_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")


def _language(info: str) -> str:
    """A fence's language as a platform may be given it: a plain word, else none."""
    word = info.strip().split(" ")[0] if info else ""
    return word if _LANGUAGE.fullmatch(word) else ""


_PARSER = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])


def render(markdown: str, style: Style) -> str:
    """`markdown` in `style`: paragraphs apart by a blank line, list items one a line."""
    return _Walk(style).blocks(_tree(_PARSER.parse(markdown))).strip("\n")


@attrs.define(slots=True)
class _Node:
    """One element of the parse: markdown-it's flat token stream nested (what its
    `_Node` does, at a third of the cost: the tree was a quarter of a render)."""

    type: str  # the token's type, without `_open` for an element that opens and closes
    token: Token
    children: list[_Node]

    @property
    def content(self) -> str:
        return self.token.content

    @property
    def info(self) -> str:
        return self.token.info

    @property
    def attrs(self) -> dict[str, str | int | float]:
        return self.token.attrs


def _tree(tokens: list[Token]) -> list[_Node]:
    """Nest `tokens` (an `_open` ... `_close` pair is one node; an inline token's own tokens
    are its children)."""
    top: list[_Node] = []
    open_children = [top]
    for token in tokens:
        if token.nesting == 1:
            node = _Node(token.type[: -len("_open")], token, [])
            open_children[-1].append(node)
            open_children.append(node.children)
        elif token.nesting == -1:
            open_children.pop()
        else:
            open_children[-1].append(_Node(token.type, token, _tree(token.children) if token.children else []))
    return top


@attrs.frozen
class _Walk:
    style: Style

    # --- blocks ---------------------------------------------------------------------------

    def blocks(self, nodes: list[_Node], sep: str = "\n\n") -> str:
        return sep.join(r for r in (self.block(n) for n in nodes) if r != "")

    def block(self, node: _Node) -> str:
        s = self.style
        kind = node.type
        if kind == "paragraph":
            return self.inline(node)
        if kind == "heading":
            return s.heading[0] + self.inline(node) + s.heading[1]
        if kind in ("bullet_list", "ordered_list"):
            return self.listing(node)
        if kind == "blockquote":
            return s.quote(self.blocks(node.children))
        if kind in ("fence", "code_block"):
            return s.fence(_language(node.info), s.escape(node.content))
        if kind == "hr":
            return s.rule
        if kind == "table":
            return self.table(node)
        return s.escape(node.content) if node.content else self.blocks(node.children)

    def listing(self, node: _Node) -> str:
        start = int(str(node.attrs.get("start", 1)))
        lines = []
        for n, item in enumerate(node.children):
            mark = self.style.bullet if node.type == "bullet_list" else f"{start + n}. "
            body = self.blocks(item.children, "\n")
            pad = " " * len(mark)
            lines.append(mark + body.replace("\n", "\n" + pad))
        return "\n".join(lines)

    def table(self, node: _Node) -> str:
        rows = [row for section in node.children for row in section.children]
        return "\n".join(" | ".join(self.inline(cell) for cell in row.children) for row in rows)

    # --- inline ---------------------------------------------------------------------------

    def inline(self, node: _Node) -> str:
        return "".join(self.span(child) for child in node.children)

    def span(self, node: _Node) -> str:
        s = self.style
        kind = node.type
        if kind in ("text", "html_inline"):
            return s.escape(node.content)
        if kind in ("softbreak", "hardbreak"):
            return "\n"
        if kind == "code_inline":
            return s.code(s.escape(node.content))
        wraps = {"strong": s.strong, "em": s.em, "s": s.strike}
        if kind in wraps:
            return wraps[kind][0] + self.inline(node) + wraps[kind][1]
        if kind == "link":
            return s.link(self.inline(node), str(node.attrs.get("href", "")))
        if kind == "image":
            alt = s.escape("".join(c.content for c in node.children) or "image")
            return s.link(alt, str(node.attrs.get("src", "")))
        return self.inline(node) if node.children else s.escape(node.content)


def html_escape(text: str) -> str:
    """`&`, `<` and `>` as entities: what Telegram's HTML mode and Slack's mrkdwn both need."""
    return html.escape(text, quote=False)
