"""`POST /v1/sessions/{id}/turns/{turnId}/wait` `{"timeoutSeconds"}`: how a turn ended.

For `session start --wait`: answers as soon as the turn's reply (or failure notice) is durably
enqueued, `{"state": "done", "ok": true|false, "text"}`, or `{"state": "pending"}` when the
timeout passes first; the client asks again. A long poll bounded by its timeout (at most
`MAX_WAIT_SECONDS`) and by the client staying connected. In cluster mode a turn another node
runs (handed to its session's owner) is answered from the database, as that node records it.
"""

from __future__ import annotations

import trio

from trio_gateway.errors import NotFoundError
from trio_gateway.http.base import Request, Response, Route, json_response
from trio_gateway.http.body import opt_number
from trio_gateway.runtime.gateway import Gateway

MAX_WAIT_SECONDS = 60.0
# The shortest wait asked for: anything shorter (a denormal `1e-320`) is no wait, and a 400.
MIN_WAIT_SECONDS = 0.001


def routes(gateway: Gateway) -> list[Route]:
    async def wait(request: Request, session_id: str, turn_id: str) -> Response:
        data = request.json(empty_ok=True)
        timeout = opt_number(data, "timeoutSeconds", MIN_WAIT_SECONDS, MAX_WAIT_SECONDS, inclusive=True)
        seconds = MAX_WAIT_SECONDS if timeout is None else timeout
        with trio.move_on_after(seconds):
            while True:
                session = gateway.sessions.get(session_id)
                if session is None and gateway.cluster is not None:
                    # Cluster mode: held by another node (a turn handed to its owner).
                    found = await gateway.cluster.outcome(session_id, turn_id)
                    if found is None:
                        raise NotFoundError(f"no session {session_id!r} with turn {turn_id!r}")
                    ok, text = found
                    return json_response(200, {"state": "done", "ok": ok, "text": text})
                if session is None:
                    raise NotFoundError(f"no session {session_id!r}")
                outcome = session.outcomes.get(turn_id)
                if outcome is not None:
                    return json_response(200, {"state": "done", "ok": outcome.ok, "text": outcome.text})
                await session.ended.wait()
        return json_response(200, {"state": "pending"})

    return [Route("POST", ("v1", "sessions", "{session_id}", "turns", "{turn_id}", "wait"), wait, long=True)]
