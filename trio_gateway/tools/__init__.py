"""Agents' tools beyond `spawn_subagent` (SPEC 14): MCP servers and `http_request`."""
