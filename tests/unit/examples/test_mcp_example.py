"""The MCP example's pieces that run without processes: the walkthrough's configuration
loads, and the example server's scope map and metadata are what the docs say."""

from __future__ import annotations

from pathlib import Path

from broker.config.loading import load_config
from examples.mcp_server.demo_config import SERVERS, write_demo
from examples.mcp_server.scopes import notes_scopes


def test_the_walkthrough_configuration_loads(tmp_path: Path) -> None:
    kid = write_demo(tmp_path)
    secret = tmp_path / "demo.secret"
    secret.write_text("s" * 32)
    config = load_config(tmp_path / "errand.yaml", {"ERRAND_DEMO_CLIENT_SECRET_FILE": str(secret)})
    agent = config.identity("notes-agent")
    assert agent is not None and agent.allow.audiences == SERVERS
    assert (tmp_path / "agent.kid").read_text().strip() == kid
    assert (tmp_path / "agent.pem").stat().st_mode & 0o077 == 0


def test_the_example_maps_each_tool_to_its_scope() -> None:
    plain = notes_scopes(with_upstream=False)
    assert plain.tools == {"read_notes": ("notes:read",), "write_note": ("notes:write",)}
    assert plain.discovery == ("notes:discover",)
    assert notes_scopes(with_upstream=True).tools["publish_note"] == ("notes:publish",)
    assert plain.scopes_supported() == ("notes:discover", "notes:read", "notes:write")
