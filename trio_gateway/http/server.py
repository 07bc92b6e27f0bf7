"""The HTTP server as one of the gateway's servers (`GatewayDeps.servers`).

hypercorn runs inside the gateway's root nursery, so the gateway's lifecycle is the server's:
it keeps answering through every drain (health checks, status, a second restart request
joining the first) and goes when the root nursery is cancelled at stop. Its own two-stage
shutdown never gets a say: our drain has one deadline.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import hypercorn.config
import trio

from trio_gateway.errors import GatewayError, leaves, note_others
from trio_gateway.http import listen
from trio_gateway.http.app import GatewayApp
from trio_gateway.runtime.gateway import Gateway


class ListenError(GatewayError):
    """The HTTP port could not be bound (in use, or an address this host does not have)."""

    exit_code = 1


def _host_port(bind: str, port: int) -> str:
    return f"[{bind}]:{port}" if ":" in bind and not bind.startswith("[") else f"{bind}:{port}"


@attrs.define(eq=False)
class HttpServer:
    bind: str
    port: int
    token: str
    env: Mapping[str, str]
    urls: list[str] = attrs.Factory(list)
    metrics_token_path: Path | None = None  # `GatewayApp.metrics_token_path`
    cap: listen.ConnectionCap | None = None
    send_stall_seconds: float = listen.SEND_STALL_SECONDS  # tests shorten it

    @property
    def bound_port(self) -> int | None:
        """The real port (the configured one may be 0: any free port)."""
        return urllib.parse.urlsplit(self.urls[0]).port if self.urls else None

    def _config(self) -> hypercorn.config.Config:
        config = hypercorn.config.Config()
        config.bind = [_host_port(self.bind, self.port)]
        # Our own log line says where we listen; hypercorn's access log would put one
        # untagged line per health probe into the contract log.
        config.accesslog = None
        config.errorlog = None
        return config

    async def serve(self, gateway: Gateway, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        # hypercorn types its app as a union of typed-dict callables; ours takes plain dicts.
        app: Any = GatewayApp(gateway, self.token, self.env, metrics_token_path=self.metrics_token_path)
        stopped = partial(gateway.state.wait_value, "stopped")
        # Read once at start, like bind and port: the listening socket outlives every reload.
        self.cap = listen.ConnectionCap(
            gateway.config.gateway.max_connections, gateway.log, send_stall_seconds=self.send_stall_seconds
        )
        try:
            async with trio.open_nursery() as nursery:
                self.urls = await nursery.start(
                    partial(listen.serve, app, self._config(), self.cap, shutdown_trigger=stopped)
                )
                gateway.log.info("HTTP", f"Listening on {', '.join(self.urls)}")
                task_status.started(self.urls)
        except* OSError as group:
            # hypercorn's own nursery nests the OSError one level down. One address, one reason:
            # the first error's; any other is named in the error's notes.
            first, *others = leaves(group)
            reason = first.strerror if isinstance(first, OSError) and first.strerror else str(first)
            reason = reason[:1].lower() + reason[1:]  # "address already in use", mid-sentence
            error = ListenError(f"cannot listen on {_host_port(self.bind, self.port)}: {reason}")
            note_others(error, others)
            raise error from group
