"""SPEC 15 "Formatting": one Markdown parse, each platform's form."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.channels import discord, feishu, slack, telegram, weixin
from trio_gateway.channels.markdown import PLAIN, render
from trio_gateway.sim.fake_telegram import shown_text

SAMPLE = """# Title

Some **bold**, *it*, ~~gone~~, `a<b`, [link](https://x.y/?a=1&b=2) & <b>raw</b>.

- one
- two

> quoted **text**

```python
if a < b:
    pass
```
"""


def _check_telegram_html(html_text: str) -> str:
    """What Telegram would show; raises where it can't parse entities (the fake's reading)."""
    return shown_text(html_text, "HTML")


def test_telegram_gets_html_with_its_tag_set_escaped() -> None:
    out = telegram.TEXT.render(SAMPLE)
    assert "<b>Title</b>" in out
    assert "<b>bold</b>" in out
    assert "<i>it</i>" in out
    assert "<s>gone</s>" in out
    assert "<code>a&lt;b</code>" in out
    assert '<a href="https://x.y/?a=1&amp;b=2">link</a>' in out
    assert "&amp; &lt;b&gt;raw&lt;/b&gt;" in out  # the model's HTML is text
    assert '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>' in out
    assert "<blockquote>quoted <b>text</b></blockquote>" in out
    assert "**" not in out
    _check_telegram_html(out)


def test_telegram_refuses_no_link_scheme_it_cannot_take() -> None:
    out = telegram.TEXT.render("[x](ftp://host/f) [y](javascript:alert(1))")
    assert "<a" not in out
    assert out == "x (ftp://host/f) [y](javascript:alert(1))"  # markdown-it refuses javascript: itself


def test_a_fence_language_that_is_not_a_word_is_dropped() -> None:
    out = telegram.TEXT.render('```py"><b>\ncode\n```')
    assert out == "<pre>code</pre>"


def test_slack_gets_mrkdwn() -> None:
    out = slack.TEXT.render(SAMPLE)
    assert "*Title*" in out
    assert "*bold*" in out
    assert "_it_" in out
    assert "~gone~" in out
    assert "`a&lt;b`" in out
    assert "<https://x.y/?a=1&b=2|link>" in out
    assert "&amp; &lt;b&gt;raw&lt;/b&gt;" in out
    assert "```\nif a &lt; b:\n    pass\n```" in out
    assert "> quoted *text*" in out
    assert "**" not in out


def test_discord_gets_the_markdown_as_written() -> None:
    assert discord.TEXT.render(SAMPLE) == SAMPLE


def test_feishu_and_wechat_get_plain_text() -> None:
    for form in (feishu.TEXT, weixin.TEXT):
        out = form.render(SAMPLE)
        assert "**" not in out
        assert "`" not in out
        assert "Some bold, it, gone, a<b, link (https://x.y/?a=1&b=2) & <b>raw</b>." in out
        assert "• one\n• two" in out
        assert "if a < b:\n    pass" in out


words = st.text(alphabet="ab <>&*_`~[]()\n#>-.!", max_size=200)


@settings(max_examples=300, deadline=None)
@given(text=words)
def test_telegram_html_always_parses_with_its_tag_set(text: str) -> None:
    _check_telegram_html(telegram.TEXT.render(text))


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.text(alphabet="abc xyz", min_size=1, max_size=10).filter(str.strip), max_size=10))
def test_plain_never_shows_the_markup_of_bold_or_italic(parts: list[str]) -> None:
    text = " ".join(f"**{p.strip()}** *{p.strip()}*" for p in parts)
    out = render(text, PLAIN)
    assert "*" not in out
    assert out.split() == " ".join(f"{p.strip()} {p.strip()}" for p in parts).split()


def test_plain_fallback_is_the_same_reply_without_markup() -> None:
    assert telegram.TEXT.plain("**a** <b>") == "a <b>"
