"""`tools.http.allowHosts` (SPEC 14) is a list of host names matched whole against the host the
client connects to: never a substring of the URL, a suffix, or a prefix of the authority.
Lookalikes are refused before anything is sent; the allowed host is reached whatever the
port, the case of its name, or userinfo in front of it."""

from __future__ import annotations

import json

import pytest
import trio

from trio_gateway import upstream as http
from trio_gateway.policy.config import HttpToolConfig
from trio_gateway.tools.http import DeniedError, HttpTool

ALLOWED = "api.example.com"
CONFIG = HttpToolConfig(allow_hosts=[ALLOWED], max_response_bytes=100)

LOOKALIKES = {
    "named in the query": "https://evil.example.net/?next=api.example.com",
    "named in the path": "https://evil.example.net/api.example.com/x",
    "named in the fragment": "https://evil.example.net/#api.example.com",
    "a subdomain of another host": "https://api.example.com.evil.net/",
    "a longer name ending in it": "https://evilapi.example.com/",
    "a subdomain of it": "https://www.api.example.com/",
    "userinfo before another host": "https://api.example.com@evil.net/",
    "userinfo with a port before another host": "https://api.example.com:443@evil.net/",
    "userinfo and password before another host": "https://api.example.com:pw@evil.net/",
    "a trailing dot": "https://api.example.com./",
    "another host with its port": "https://evil.net:443/api.example.com",
    "a bare IP": "http://127.0.0.1/",
    "not http": "ftp://api.example.com/",
}
REACHES_ALLOWED = {
    "plain": "https://api.example.com/x",
    "upper case": "https://API.Example.COM/x",
    "another port": "http://api.example.com:8080/x",
    "userinfo in front": "https://user:pw@api.example.com/x",
    "the host named again in the query": "https://api.example.com/?next=evil.net",
}


def tool(sent: list[str]) -> HttpTool:
    def handler(request: http.Request) -> http.Response:
        sent.append(str(request.url.host))
        return http.Response(200, content=b"ok")

    # A minute for the whole call (issue 25's deadline): these answers come at once.
    return HttpTool(CONFIG, http.AsyncClient(transport=http.MockTransport(handler)), 60.0)


@pytest.mark.parametrize("url", LOOKALIKES.values(), ids=list(LOOKALIKES))
async def test_a_lookalike_host_is_refused_before_anything_is_sent(url: str) -> None:
    sent: list[str] = []
    with pytest.raises(DeniedError, match=r"allowHosts|http\(s\) URL"):
        await tool(sent).call({"url": url}, lambda _step: None)
    assert sent == []
    await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("url", REACHES_ALLOWED.values(), ids=list(REACHES_ALLOWED))
async def test_the_allowed_host_is_reached_however_the_url_spells_it(url: str) -> None:
    sent: list[str] = []
    answer = json.loads(await tool(sent).call({"url": url}, lambda _step: None))
    assert (answer["status"], answer["body"]) == (200, "ok")
    assert sent == [ALLOWED]
