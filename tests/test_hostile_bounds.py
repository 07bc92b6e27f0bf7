"""The second hostile probe's reads and inputs (issue 25): every answer from outside has a cap,
a poison message is set aside instead of blocking its account, the Feishu frame decoder
trusts no header. Virtual time throughout; sizes asserted, never wall time."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from helpers import Proc, poll
from test_http_api import Running, running
from test_inbound import ACCOUNT, WX, gateway_config, until

from trio_gateway import upstream as http
from trio_gateway.channels.cursors import MAX_CURSOR_FILE_BYTES, CursorStore
from trio_gateway.cli import main
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.harness import Harness
from trio_gateway.storage.atomic import inline

# The fixtures used here: the harness's config (WeChat and Telegram listening), an HTTP API.
__all__ = ["gateway_config", "running"]
CHUNK = 65536


# --- the bounded body ------------------------------------------------------------------------


def endless(sent: list[int]) -> http.MockTransport:
    """A server whose answer never ends; `sent` counts what it produced."""

    async def body() -> AsyncIterator[bytes]:
        while True:
            sent.append(CHUNK)
            yield b"[" * CHUNK

    async def handler(request: http.Request) -> http.Response:
        await trio.lowlevel.checkpoint()
        return http.Response(200, content=body())

    return http.MockTransport(handler)


async def test_an_endless_answer_fails_at_the_cap_having_read_no_more() -> None:
    sent: list[int] = []
    limit = 10 * CHUNK
    async with http.AsyncClient(transport=http.bounded(endless(sent), limit)) as client:
        with pytest.raises(http.BodyTooLarge, match=f"over {limit} bytes"):
            await client.get("http://platform.invalid/getUpdates")
    assert sum(sent) <= limit + CHUNK


class RawStream(http.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self._data), CHUNK):
            yield self._data[at : at + CHUNK]


class RawTransport(http.AsyncBaseTransport):
    """Answers `data` as the wire would carry it (MockTransport reads and decodes it first)."""

    def __init__(self, data: bytes, encoding: str) -> None:
        self._data = data
        self._encoding = encoding

    async def handle_async_request(self, request: http.Request) -> http.Response:
        await trio.lowlevel.checkpoint()
        return http.Response(200, headers={"content-encoding": self._encoding}, stream=RawStream(self._data))


async def read_all(response: http.Response, sizes: list[int]) -> None:
    async for piece in response.aiter_bytes():
        sizes.append(len(piece))


async def test_a_compressed_answer_is_capped_as_decoded_and_never_expanded_past_it() -> None:
    """A gzip bomb (64 MiB of zeros in ~64 KiB) fails at the cap: zlib is asked for no more
    than one byte past it, whatever the chunk expands to."""
    bomb = gzip.compress(b"\0" * (64 << 20))
    assert len(bomb) < 100_000
    decoded: list[int] = []
    tracemalloc.start()
    try:
        transport = http.bounded(RawTransport(bomb, "gzip"), 1 << 20)
        async with http.AsyncClient(transport=transport) as client, client.stream("GET", "http://m.invalid/") as answer:
            with pytest.raises(http.BodyTooLarge):
                await read_all(answer, decoded)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(decoded) <= 1 << 20
    assert peak < 8 << 20  # never the 64 MiB the bomb holds
    small = gzip.compress(b"ok" * 10)

    def fine(request: http.Request) -> http.Response:
        return http.Response(200, content=small, headers={"content-encoding": "gzip"})

    async with http.AsyncClient(transport=http.bounded(http.MockTransport(fine), 1 << 20)) as client:
        assert (await client.get("http://model.invalid/")).content == b"ok" * 10


async def test_an_answer_in_an_encoding_nobody_asked_for_is_refused() -> None:
    def handler(request: http.Request) -> http.Response:
        assert request.headers["accept-encoding"] == "gzip, deflate"
        return http.Response(200, content=b"x", headers={"content-encoding": "br"})

    async with http.AsyncClient(transport=http.bounded(http.MockTransport(handler), 100)) as client:
        with pytest.raises(http.DecodingError, match="'br' was not asked for"):
            await client.get("http://x.invalid/")


async def test_cut_ends_the_answer_one_byte_past_the_cap() -> None:
    sent: list[int] = []
    async with http.AsyncClient(transport=http.bounded(endless(sent), 100, cut=True)) as client:
        assert len((await client.get("http://tool.invalid/")).content) == 100


async def test_an_endless_long_poll_is_a_listen_error_not_memory() -> None:
    """Telegram's getUpdates answering without end (the probe: 2.9 GB in 13 s): the listener
    fails that poll at the channel cap and backs off; nothing past the cap was read."""
    from trio_gateway.channels.inbound import ListenError
    from trio_gateway.channels.telegram import TelegramListener

    sent: list[int] = []
    listener = TelegramListener.open(
        "http://telegram.invalid", "123:abc", ACCOUNT, http.bounded(endless(sent), http.CHANNEL_BODY_BYTES)
    )

    class NoIntake:
        async def load_cursor(self) -> None:
            return None

    with pytest.raises(ListenError, match="BodyTooLarge"):
        await listener.listen(NoIntake())  # type: ignore[arg-type]
    assert sum(sent) <= http.CHANNEL_BODY_BYTES + CHUNK
    await listener.aclose()


async def test_every_channel_client_is_capped(gateway_harness: Harness) -> None:
    """The registry builds every platform's transport capped (senders and listeners alike)."""
    from trio_gateway.channels.registry import _transport_factory

    transport = _transport_factory(http.MockTransport(lambda r: http.Response(200)))()
    assert isinstance(transport, http.BoundedTransport)
    assert transport.limit == http.CHANNEL_BODY_BYTES


# --- poison messages ---------------------------------------------------------------------------


async def test_a_lone_surrogate_is_set_aside_and_the_good_message_beside_it_answered(
    gateway_harness: Harness, gateway: Gateway, fake_channels: FakeChannels
) -> None:
    """The probe: one Telegram message holding a lone surrogate blocked its account for good
    (the session save raised, the batch was reread forever). Now it is set aside, counted,
    and the cursor moves past it; the good message in the same batch is answered."""
    from trio_gateway.http.metrics import render

    bad = fake_channels.push("telegram", "bad \ud800 text", sender="555")
    good = fake_channels.push("telegram", "good", sender="556")
    await until(lambda: len(fake_channels.delivered("telegram")) >= 1)
    assert [m.text for m in fake_channels.delivered("telegram")] == ["echo: good"]
    cursor = gateway_harness.home.root / "inbound" / "telegram" / f"{ACCOUNT}.json"
    await until(lambda: json.loads(cursor.read_text()) == {"cursor": max(int(bad), int(good)) + 1})
    [kept] = (gateway_harness.home.root / "inbound" / "telegram" / ACCOUNT / "rejected").iterdir()
    record = json.loads(kept.read_bytes())
    assert (record["id"], record["text"], record["to"]) == (bad, "bad \ud800 text", "555")
    assert "lone surrogate U+D800" in record["reason"]
    assert 'trio_gateway_inbound_rejected_total{account="bot1",channel="telegram"} 1.0' in render(gateway)
    assert any("Rejected message channel=telegram" in line for line in gateway_harness.sink.lines())


async def test_a_wechat_context_token_with_a_lone_surrogate_is_set_aside(
    gateway_harness: Harness, fake_channels: FakeChannels
) -> None:
    fake_channels.push(WX, "hello", sender="alice@im.wechat", context_token="ctx-\udfff")
    fake_channels.push(WX, "hello again", sender="bob@im.wechat", context_token="ctx-2")
    await until(lambda: len(fake_channels.delivered(WX)) >= 1)
    assert [m.text for m in fake_channels.delivered(WX)] == ["echo: hello again"]
    [kept] = (gateway_harness.home.root / "inbound" / WX / ACCOUNT / "rejected").iterdir()
    assert "context token: not valid Unicode" in json.loads(kept.read_bytes())["reason"]


# --- deliveries: pages and ids -----------------------------------------------------------------


async def test_deliveries_are_listed_a_page_at_a_time(running: Running, autojump_clock: trio.abc.Clock) -> None:
    """The probe: 20,000 dead letters were one 28 MB answer. Now a page of `limit` per list,
    in creation order, with the total and the next page's `after`."""
    queue = running.gateway.delivery
    assert queue is not None
    body = {"channel": "console", "to": "ops", "agentId": "main", "text": "x"}
    ids = [(await running.call("POST", "/v1/deliveries", body)).json["id"] for _ in range(7)]
    first = (await running.call("GET", "/v1/deliveries?state=pending&limit=3")).json
    assert [e["id"] for e in first["pending"]] == ids[:3]
    assert (first["total"], first["next"], "failed" in first) == ({"pending": 7}, {"pending": ids[2]}, False)
    second = (await running.call("GET", f"/v1/deliveries?state=pending&limit=3&after={ids[2]}")).json
    assert [e["id"] for e in second["pending"]] == ids[3:6]
    last = (await running.call("GET", f"/v1/deliveries?state=pending&limit=3&after={ids[5]}")).json
    assert ([e["id"] for e in last["pending"]], last["next"]) == ([ids[6]], {"pending": None})
    both = (await running.call("GET", "/v1/deliveries")).json
    assert (len(both["pending"]), both["total"]) == (7, {"pending": 7, "failed": 0})
    for query, problem in (
        ("limit=0", "limit: a whole number from 1 to 1000"),
        ("limit=99999999999", "limit: a whole number"),
        ("after=x", "after: give state too"),
        ("state=pending&after=../x", "is not a delivery id"),
        ("state=all", "state: pending or failed"),
        ("limit=1&limit=2", "limit given twice"),
        ("page=2", "unknown parameter 'page'"),
    ):
        refused = await running.call("GET", f"/v1/deliveries?{query}")
        assert (refused.status, refused.json["error"]) == (400, "BadRequestError"), query
        assert problem in refused.json["message"], query


async def test_a_retry_id_that_cannot_be_an_id_is_a_400_with_no_error_line(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    """The probe: a NUL or 5,000-character id was a 500 and an ERROR line."""
    for bad in ("a\x00b", "x" * 5000, "..", "a.json", "\ud800"):
        reply = await running.call("POST", f"/v1/deliveries/{bad}/retry", {})
        assert (reply.status, reply.json["error"]) == (400, "BadRequestError"), bad[:10]
        assert "is not a delivery id" in reply.json["message"]
        assert len(reply.json["message"]) < 200
    assert not [e for e in running.sink.events if e.level == "ERROR"]
    assert (await running.call("POST", "/v1/deliveries/nope/retry", {})).status == 404


def test_delivery_retry_with_a_path_as_its_id_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probe: `delivery retry ../../../x` with no gateway running rewrote and moved a file
    outside the queue. Now it is refused (exit 3) before anything is opened."""
    home = tmp_path / "home"
    outside = tmp_path / "x.json"
    outside.write_text('{"not": "yours"}')
    for bad in ("../../../x", "../../x", "a" * 300):
        assert main(["--home", str(home), "delivery", "retry", bad]) == 3
        err = capsys.readouterr().err
        assert err.startswith("BadRequestError: id: ")
        assert "is not a delivery id" in err
        assert "Traceback" not in err
    assert outside.read_text() == '{"not": "yours"}'
    assert not (home / "delivery-queue").exists()


# --- a real process ----------------------------------------------------------------------------


class LoopbackPlatform:
    """A loopback HTTP/1.1 server in a thread (a real gateway process talks to it): `answer`
    gets the request's path and body and writes the whole response to the connection."""

    def __init__(self, answer: Callable[[LoopbackPlatform, str, bytes, socket.socket], None]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, bytes]] = []
        self.stopped = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += conn.recv(65536)
            path = head.split(b" ")[1].decode()
            self.requests.append((path, body))
            self.answer(self, path, body, conn)


def json_answer(conn: socket.socket, data: bytes) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)
    )


class EndlessPlatform(LoopbackPlatform):
    """Its first `calm` answers are an empty update list, every later one a body that never
    ends (the probe's endless `getUpdates`)."""

    def __init__(self, calm: int) -> None:
        self.calm = calm
        self.sent = 0
        super().__init__(EndlessPlatform._endless)

    def _endless(self, path: str, body: bytes, conn: socket.socket) -> None:
        if len(self.requests) <= self.calm:
            json_answer(conn, b'{"ok": true, "result": []}')
            return
        conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"ok":true,"result":[')
        while not self.stopped.is_set():
            conn.sendall(b"[" * CHUNK)
            self.sent += CHUNK


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.e2e
def test_an_endless_platform_answer_costs_a_real_gateway_the_cap_not_its_memory(
    tmp_path: Path, start_gateway: Callable[..., Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe, as it was run: a real gateway whose Telegram long poll is answered by a body
    that never ends (2.9 GB in 13 s). Each poll now fails at the 8 MiB cap and the listener
    polls again; the process's peak RSS stays within 100 MB of its idle RSS."""
    platform = EndlessPlatform(calm=2)
    monkeypatch.setenv("E2E_TG_TOKEN", "123:e2e")
    home = tmp_path / "home"
    home.mkdir()
    account = {"baseUrl": platform.url, "tokenEnv": "E2E_TG_TOKEN", "dmPolicy": "open"}
    config = {"channels": {"telegram": {"accounts": {"bot": account}}}, "agents": {"main": {"channels": ["telegram"]}}}
    (home / "gateway.json").write_text(json.dumps(config))
    try:
        proc = start_gateway(home)
        poll("the calm polls", lambda: len(platform.requests) >= 2, timeout=30)
        idle_kb = vm_kb(proc.popen.pid, "VmRSS")
        poll("three polls cut at the cap", lambda: len(platform.requests) >= 5, timeout=120)
        assert platform.sent >= 3 * http.CHANNEL_BODY_BYTES
        assert vm_kb(proc.popen.pid, "VmHWM") - idle_kb < 100 * 1024
        assert "BodyTooLarge" in proc.log
        assert proc.health()["status"] == "ok"
    finally:
        platform.stopped.set()


async def test_an_mcp_server_whose_answer_never_ends_fails_at_the_cap() -> None:
    """The probe: a streamable-HTTP MCP server's endless answer took 3 GB in 19 s. Through the
    production client the connection fails at MCP_BODY_BYTES, with the reason in status."""
    from trio_gateway.log import EventLog, MemorySink
    from trio_gateway.tools.mcp import McpServer
    from trio_gateway.tools.registry import mcp_http_client
    from trio_gateway.tools.transport import http_opener

    sent: list[int] = []

    async def handler(request: http.Request) -> http.Response:
        response = await endless(sent).handle_async_request(request)
        response.headers["content-type"] = "application/json"
        return response

    opener = http_opener("http://mcp.invalid/mcp", {}, lambda: mcp_http_client(http.MockTransport(handler)))
    server = McpServer("endless", opener, EventLog([MemorySink()]), max_result_bytes=1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        with trio.fail_after(30):
            while server.last_error is None:  # noqa: ASYNC110 (a plain attribute, polled)
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert server.last_error == f"BodyTooLarge: the answer is over {http.MCP_BODY_BYTES} bytes"
    assert sum(sent) <= http.MCP_BODY_BYTES + CHUNK


def telegram_home(tmp_path: Path, base_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("E2E_TG_TOKEN", "123:e2e")
    home = tmp_path / "home"
    home.mkdir()
    account = {"baseUrl": base_url, "tokenEnv": "E2E_TG_TOKEN", "dmPolicy": "open"}
    config = {"channels": {"telegram": {"accounts": {"bot": account}}}, "agents": {"main": {"channels": ["telegram"]}}}
    (home / "gateway.json").write_text(json.dumps(config))
    return home


@pytest.mark.e2e
def test_a_poison_message_in_a_real_gateway_is_set_aside_and_the_good_one_answered(
    tmp_path: Path, start_gateway: Callable[..., Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe, as it was run: one getUpdates batch with a lone surrogate in one message's
    text (a JSON escape, as Telegram would send it) and a good message beside it. Before, the
    listener reread that batch forever and answered neither."""
    batch = (
        b'{"ok": true, "result": ['
        b'{"update_id": 7, "message": {"chat": {"id": 555, "type": "private"}, "from": {"is_bot": false},'
        b' "text": "bad \\ud800"}},'
        b'{"update_id": 8, "message": {"chat": {"id": 556, "type": "private"}, "from": {"is_bot": false},'
        b' "text": "good"}}]}'
    )

    def answer(platform: LoopbackPlatform, path: str, body: bytes, conn: socket.socket) -> None:
        if path.endswith("/sendMessage"):
            json_answer(conn, b'{"ok": true, "result": {"message_id": 1}}')
        elif b'"offset"' not in body:
            json_answer(conn, batch)
        else:
            time.sleep(0.5)  # a long poll with nothing new
            json_answer(conn, b'{"ok": true, "result": []}')

    platform = LoopbackPlatform(answer)
    try:
        proc = start_gateway(telegram_home(tmp_path, platform.url, monkeypatch))
        sent = poll(
            "the good message's reply",
            lambda: [json.loads(b) for p, b in platform.requests if p.endswith("/sendMessage")],
            timeout=60,
        )
        assert [(m["chat_id"], m["text"]) for m in sent] == [(556, "good")]  # the embedded echo model
        poll(
            "the cursor past both", lambda: any(b'"offset": 9' in b or b'"offset":9' in b for _, b in platform.requests)
        )
        [kept] = (proc.home / "inbound" / "telegram" / "bot" / "rejected").iterdir()
        assert json.loads(kept.read_bytes())["text"] == "bad \ud800"
        assert "Rejected message channel=telegram account=bot" in proc.log
        metrics = proc.http("GET", "/metrics").text
        assert 'trio_gateway_inbound_rejected_total{account="bot",channel="telegram"} 1.0' in metrics
    finally:
        platform.stopped.set()


@pytest.mark.e2e
def test_retry_ids_that_cannot_be_ids_are_400s_in_a_real_gateway(start_gateway: Callable[..., Proc]) -> None:
    """The probe: a NUL or a 5,000-character id was a 500 and an ERROR line."""
    proc = start_gateway()
    for bad in ("a%00b", "x" * 5000, "x.json"):
        reply = proc.http("POST", f"/v1/deliveries/{bad}/retry", {})
        assert reply.status_code == 400, (bad[:10], reply.text)
        assert "is not a delivery id" in reply.json()["message"]
    assert " ERROR " not in proc.log


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS])
async def test_deflate_with_or_without_its_zlib_header_is_decoded(wbits: int) -> None:
    packer = zlib.compressobj(wbits=wbits)
    packed = packer.compress(b"hello " * 1000) + packer.flush()
    async with http.AsyncClient(transport=http.bounded(RawTransport(packed, "deflate"), 1 << 20)) as client:
        assert (await client.get("http://x.invalid/")).content == b"hello " * 1000
    async with http.AsyncClient(transport=http.bounded(RawTransport(b"not deflate", "deflate"), 100)) as client:
        with pytest.raises(http.DecodingError, match="content encoding is broken"):
            await client.get("http://x.invalid/")


async def test_dead_letters_are_listed_a_page_at_a_time(running: Running, autojump_clock: trio.abc.Clock) -> None:
    """The file queue reads only the page of dead letters it answers (ids sort by creation)."""
    from trio_gateway.storage.base import Claimed

    body = {"channel": "console", "to": "ops", "agentId": "main", "text": "x"}
    ids = [(await running.call("POST", "/v1/deliveries", body)).json["id"] for _ in range(5)]
    queue = running.call.app._queue()
    assert running.gateway.wall is not None
    now = running.gateway.wall.now()
    for entry_id in ids:
        claim = await queue.claim(entry_id, now)
        if isinstance(claim, Claimed):  # the worker may have sent some already: those are gone
            await queue.dead_letter(claim, "HTTP 404", now)
    dead = sorted(e.id for e in await queue.list_failed())
    assert len(dead) >= 2
    first = (await running.call("GET", "/v1/deliveries?state=failed&limit=1")).json
    assert ([e["id"] for e in first["failed"]], first["total"], first["next"]) == (
        dead[:1],
        {"failed": len(dead)},
        {"failed": dead[0]},
    )
    rest = (await running.call("GET", f"/v1/deliveries?state=failed&limit=10&after={dead[0]}")).json
    assert ([e["id"] for e in rest["failed"]], rest["next"]) == (dead[1:], {"failed": None})


def test_a_cursor_file_that_is_not_a_regular_file_is_quarantined(tmp_path: Path) -> None:
    """inbound/<channel>/<account>.json is read like the sessions and the queue: a FIFO there
    (nobody writing) no longer holds the account's listener in open() for ever, and a file
    past the cap is not read into memory; either is quarantined and the account starts from
    the platform's default."""
    store = CursorStore(tmp_path, inline, EventLog([MemorySink()]))
    fifo = store.path("telegram", "a1")
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(store._load_sync(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=30)  # microseconds when fixed; blocked in open() for ever when not
    assert got == [None]
    assert (fifo.parent / "quarantine" / "a1.json").exists()
    big = store.path("telegram", "a2")
    big.write_bytes(b" " * (MAX_CURSOR_FILE_BYTES + 1))
    assert store._load_sync(big) is None
    assert (big.parent / "quarantine" / "a2.json").exists()
