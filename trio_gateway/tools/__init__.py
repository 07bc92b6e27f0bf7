"""Agents' tools beyond `spawn_subagent` (SPEC 14): MCP servers and `http_request`."""

from __future__ import annotations

import json


def tool_error(text: str) -> str:
    """What the model receives when a tool call did not produce a result."""
    return json.dumps({"error": text}, ensure_ascii=False)
