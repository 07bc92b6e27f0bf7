"""A Slack Web API stand-in on a real loopback port, slow on purpose, that records every
`chat.postMessage` with the bearer token that sent it. Real-process cluster tests and
`scripts/bench_cluster.py` give each gateway node its own token, so each request names the
node that made it. Plain threads: it runs beside gateway processes, not inside trio.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs


@attrs.frozen
class Received:
    token: str
    text: str
    at: float  # time.monotonic() when the request arrived


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a killed gateway's broken pipe is the test's point, not news


@attrs.define(eq=False)
class SlowSlack:
    delay: float = 0.05
    received: list[Received] = attrs.Factory(list)
    # Cleared: requests are recorded on arrival, then held until it is set again (bounded), so
    # a test can queue work behind in-flight sends before any completes.
    gate: threading.Event = attrs.Factory(threading.Event)
    # Requests with these tokens are held even while the gate is open (bounded): one node's
    # sends stay in flight while the others flow.
    blocked: set[str] = attrs.Factory(set)
    _lock: threading.Lock = attrs.Factory(threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> SlowSlack:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                with outer._lock:
                    outer.received.append(Received(token, str(body.get("text")), time.monotonic()))
                outer.gate.wait(60)
                deadline = time.monotonic() + 60
                while token in outer.blocked and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(outer.delay)
                reply = json.dumps({"ok": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.gate.set()
        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def texts(self) -> Counter[str]:
        return Counter(r.text for r in self.snapshot())

    def by_token(self, token: str) -> list[Received]:
        return [r for r in self.snapshot() if r.token == token]
