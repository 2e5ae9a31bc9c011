"""Which scope each tool of the notes server needs: data, kept apart from the server so it
can be read (and tested) without the MCP SDK."""

from __future__ import annotations

from errand_rs.mcp import McpScopes

DISCOVERY_SCOPE = "notes:discover"  # tools/list and the other list methods
TOOL_SCOPES = {
    "read_notes": "notes:read",
    "write_note": "notes:write",
}
PUBLISH_SCOPE = "notes:publish"  # publish_note, present only with an upstream


def notes_scopes(*, with_upstream: bool) -> McpScopes:
    tools = dict(TOOL_SCOPES)
    if with_upstream:
        tools["publish_note"] = PUBLISH_SCOPE
    return McpScopes(discovery=DISCOVERY_SCOPE, tools=tools)
