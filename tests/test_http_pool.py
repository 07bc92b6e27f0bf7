"""The HTTP library decision (STACK-NOTES, httpcore issue #1093), measured on real loopback sockets.

Every test runs against httpx (httpcore 1.0.9) and httpx2 (httpcore2) when both are importable.
Real time here (no MockClock): the subject is the kernel's sockets. The bounds only end a broken
run; none is a figure a busy machine could miss (a leak shows as calls that never get a slot).

Findings that shaped these tests (see the report in the commit): aborting 400 stalled calls all
at once leaves both pools healthy; the leak needs aborts at scattered moments while the pool is
contended and other calls complete, which is what a stall watchdog does in production. Under
that pattern httpx leaks slots (connections stuck in CONNECTING with no request) until every
later call gets PoolTimeout; httpx2 reclaims them. So `trio_gateway.upstream` uses httpx2.
"""

from __future__ import annotations

import contextlib
import importlib
import random
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import pytest
import trio
from trio_util import AsyncValue

from trio_gateway import upstream as http_client
from trio_gateway.models.openai import OpenAIModel
from trio_gateway.policy.config import ModelConfig
from trio_gateway.testing import FakeBehaviour, FakeModel, serve_fake_model
from trio_gateway.work.units import WorkUnit

POOL_SIZE = 10
# How long a call waits for a pool slot before PoolTimeout. A leaked slot is caught by the
# capacity check (POOL_SIZE calls must each hold a connection at once, within BOUND), not by
# this wait: it only has to outlast a busy machine's slow but healthy calls (3 s did not, with
# the CI run beside eight other jobs on two cores).
POOL_WAIT = 10.0
BOUND = 20.0  # fails only a hung run
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def _libraries() -> list[Any]:
    params = []
    for name in ("httpx", "httpx2"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        params.append(pytest.param(name, id=name))
    return params


LIBRARIES = _libraries()


@pytest.fixture
def lib(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeModel, str]]:
    model = FakeModel(FakeBehaviour(mode="stall"))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_fake_model, model)
        yield model, url
        nursery.cancel_scope.cancel()


@pytest.fixture
async def unaccepting_url() -> AsyncIterator[str]:
    """A listener with backlog 0 that never accepts: once its queue holds a connection or two,
    Linux drops further SYNs, so connects to it stall (SYN retries at 1 s, 3 s, ...)."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()


async def _stream_call(client: Any, url: str, prompt: str = "hi", read: AsyncValue[int] | None = None) -> None:
    body = {**BODY, "messages": [{"role": "user", "content": prompt}]}
    async with client.stream("POST", url + "/chat/completions", json=body) as response:
        async for _ in response.aiter_bytes():
            if read is not None:
                read.value += 1


def _pool_client(lib: ModuleType) -> Any:
    # The pool timeout is the symptom of a leak: short enough that a leaked pool fails fast,
    # long enough that a busy machine's slow (but healthy) calls never trip it.
    return lib.AsyncClient(limits=lib.Limits(max_connections=POOL_SIZE), timeout=lib.Timeout(None, pool=POOL_WAIT))


# --- (i) an abort closes the upstream connection ---------------------------------------------


@pytest.mark.parametrize("lib", LIBRARIES, indirect=True)
@pytest.mark.parametrize(("prompt", "chunks"), [("/stall before headers", 0), ("/stall-after 2 mid stream", 1)])
async def test_abort_closes_upstream_connection(
    lib: ModuleType, fake: tuple[FakeModel, str], prompt: str, chunks: int
) -> None:
    server, url = fake
    read = AsyncValue(0)
    async with lib.AsyncClient(timeout=None) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stream_call, client, url, prompt, read)
            with trio.fail_after(BOUND):
                await server.received.wait_value(1)
                await read.wait_value(lambda n: n >= chunks)  # the mid-stream case: its first chunks arrived
            nursery.cancel_scope.cancel()
        assert server.connections_opened == 1
        # Still inside the client: nothing but the abort itself can have closed it (a pool
        # keeps an idle connection open, and the client's own close comes later).
        with trio.fail_after(BOUND):
            await server.open_connections.wait_value(0)
        assert len(server.closed_at) == 1


async def test_aborting_the_model_unit_closes_upstream(fake: tuple[FakeModel, str]) -> None:
    """The gateway's own path: the stall watchdog cancels the unit's scope mid-stream."""
    server, url = fake
    model = OpenAIModel(ModelConfig(base_url=url, model="m"), {})
    now = trio.current_time()
    unit = WorkUnit(1, "model_call", "s1", now, now, "model_call:started")
    with trio.fail_after(BOUND):  # an abort that cuts nothing off would hold the nursery forever
        await _abort_mid_stream(server, model, unit)
    with trio.fail_after(BOUND):
        await server.open_connections.wait_value(0)
    await model.aclose()
    assert unit.scope.cancelled_caught


async def _abort_mid_stream(server: FakeModel, model: OpenAIModel, unit: WorkUnit) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_in_unit, model, unit, "/stall-after 3 streaming then silence")
        await server.received.wait_value(1)
        # The three chunks before the silence arrive (observed, not slept for: a busy machine
        # can take longer than any fixed pause to deliver them).
        while unit.last_progress != "model_call:streaming":  # noqa: ASYNC110
            await trio.sleep(0.01)
        unit.abort("stalled")


async def _run_in_unit(model: OpenAIModel, unit: WorkUnit, prompt: str) -> None:
    with unit.scope:
        await model.complete([{"role": "user", "content": prompt}], [], unit.progress)


# --- (ii) the pool survives aborts under contention ------------------------------------------


async def _assert_full_capacity(client: Any, server: FakeModel, url: str) -> None:
    """POOL_SIZE calls can hold a connection each at once, then 50 calls succeed quickly."""
    before = server.received.value
    async with trio.open_nursery() as nursery:
        for _ in range(POOL_SIZE):
            nursery.start_soon(_stream_call, client, url, "/stall hold a slot")
        with trio.fail_after(BOUND):
            await server.received.wait_value(lambda n: n >= before + POOL_SIZE)
        nursery.cancel_scope.cancel()
    server.behaviour = FakeBehaviour(mode="echo")
    answered: list[int] = []
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(_post, client, url, answered)
    assert answered == [200] * 50


async def _post(client: Any, url: str, answered: list[int]) -> None:
    response = await client.post(url + "/chat/completions", json={**BODY, "stream": False})
    answered.append(response.status_code)


@pytest.mark.parametrize("lib", LIBRARIES, indirect=True)
async def test_pool_survives_aborting_400_stalled_calls_at_once(
    lib: ModuleType, fake: tuple[FakeModel, str], unaccepting_url: str
) -> None:
    server, url = fake
    async with _pool_client(lib) as client:
        with trio.move_on_after(0.2):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(_stream_call, client, unaccepting_url)  # stalls in connect
                    nursery.start_soon(_stream_call, client, url)  # stalls before headers
        await _assert_full_capacity(client, server, url)


def _scattered_xfail(name: str) -> Any:
    if name == "httpx" and http_client.LIBRARY != "httpx":
        reason = "httpcore 1.0.9 leaks pool slots on cancellation under contention (encode/httpcore#1093)"
        # Not strict: the leak is a race, seen in 5 of 5 runs here but not guaranteed every run.
        return pytest.param(name, id=name, marks=pytest.mark.xfail(reason=reason, strict=False))
    return pytest.param(name, id=name)


@pytest.mark.parametrize("lib", [_scattered_xfail(p.values[0]) for p in LIBRARIES], indirect=True)
async def test_pool_survives_aborts_at_scattered_moments(
    lib: ModuleType, fake: tuple[FakeModel, str], unaccepting_url: str
) -> None:
    server, url = fake
    server.behaviour = FakeBehaviour(mode="delay", delay_seconds=0.005)
    rng = random.Random(1093)
    async with _pool_client(lib) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(_churn, lib, client, url, rng)
            for _ in range(5):
                nursery.start_soon(_churn, lib, client, unaccepting_url, rng)
        await _assert_full_capacity(client, server, url)


async def _churn(lib: ModuleType, client: Any, url: str, rng: random.Random) -> None:
    """Calls each aborted at its own random moment (0-20 ms), as a stall watchdog would."""
    end = trio.current_time() + 0.3
    while trio.current_time() < end:
        with trio.move_on_after(rng.uniform(0, 0.02)):
            # A pool timeout while contended is fine here: the leak afterwards is what we test.
            with contextlib.suppress(lib.HTTPError):
                await _stream_call(client, url)


def test_the_chosen_library_is_one_this_file_proves() -> None:
    assert http_client.LIBRARY in {p.values[0] for p in LIBRARIES}
    assert http_client.LIBRARY == "httpx2"
