"""Shortcuts over Flask's test client: introspection as the test client, admin headers, and
the RFC 6749 §5.2 error shape."""

from __future__ import annotations

from typing import Any

from tests.support.builders import ADMIN_TOKEN, CLIENT_ID, CLIENT_SECRET


def introspect(client: Any, token: str) -> Any:
    return client.post("/introspect", data={"token": token}, auth=(CLIENT_ID, CLIENT_SECRET))


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_oauth_error(resp: Any, status: int, error: str) -> dict[str, Any]:
    """RFC 6749 §5.2 shape (error and error_description, nothing else: the broker never adds
    error_uri or a field of a success body), no-store, and the expected code."""
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == error, body
    assert isinstance(body.get("error_description"), str) and body["error_description"]
    assert resp.headers.get("Cache-Control") == "no-store"
    return dict(body)
