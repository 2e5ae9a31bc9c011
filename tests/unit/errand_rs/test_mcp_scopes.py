"""errand_rs.mcp: the tool-to-scope map, and routing headers checked against the body."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from errand_rs.mcp import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    McpCall,
    McpRefused,
    McpScopes,
    decode_header_value,
    read_call,
)

SCOPES = McpScopes(
    discovery="notes:discover",
    tools={"read_notes": "notes:read", "write_note": ["notes:read", "notes:write"]},
    resources={"notes://all": "notes:read"},
)


def body(method: str | None = "tools/call", **params: Any) -> bytes:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "id": 7}
    if method is not None:
        doc["method"] = method
        doc["params"] = params
    return json.dumps(doc).encode()


def refused(headers: dict[str, list[str]], raw: bytes) -> int:
    with pytest.raises(McpRefused) as info:
        read_call(headers, raw)
    return info.value.code


# -- the map ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "scopes"),
    [
        (McpCall("initialize"), ()),
        (McpCall("server/discover"), ()),
        (McpCall("ping"), ()),
        (McpCall("notifications/initialized"), ()),
        (McpCall(None), ()),  # a client's answer to a server request
        (McpCall("tools/list"), ("notes:discover",)),
        (McpCall("resources/list"), ("notes:discover",)),
        (McpCall("tools/call", "read_notes"), ("notes:read",)),
        (McpCall("tools/call", "write_note"), ("notes:read", "notes:write")),
        (McpCall("resources/read", "notes://all"), ("notes:read",)),
    ],
)
def test_each_tier_needs_its_scopes(call: McpCall, scopes: tuple[str, ...]) -> None:
    assert SCOPES.required(call) == scopes


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (McpCall("tools/call", "delete_all"), INVALID_PARAMS),  # a tool nobody mapped
        (McpCall("prompts/get", "summary"), INVALID_PARAMS),
        (McpCall("resources/read", "notes://secret"), INVALID_PARAMS),
        (McpCall("logging/setLevel"), METHOD_NOT_FOUND),  # not opened through `methods`
        (McpCall("tasks/cancel"), METHOD_NOT_FOUND),
    ],
)
def test_what_the_map_does_not_name_is_refused(call: McpCall, code: int) -> None:
    with pytest.raises(McpRefused) as info:
        SCOPES.required(call)
    assert info.value.code == code


def test_other_methods_are_opened_explicitly() -> None:
    scopes = McpScopes(tools={}, methods={"logging/setLevel": "notes:admin", "tasks/list": ""})
    assert scopes.required(McpCall("logging/setLevel")) == ("notes:admin",)
    assert scopes.required(McpCall("tasks/list")) == ()


def test_scopes_supported_lists_each_scope_once() -> None:
    assert SCOPES.scopes_supported() == ("notes:discover", "notes:read", "notes:write")


@pytest.mark.parametrize(
    "bad",
    [
        {"tools": {"t": ""}},  # a tool open to every token, by accident
        {"tools": {"t": ["has space"]}},
        {"tools": {"t": ['quote"']}},
        {"tools": {}, "methods": {"tools/call": "x"}},  # mapped by name, not as a method
        {"tools": {}, "discovery": ["a\\b"]},
    ],
)
def test_a_bad_map_is_refused_at_start(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        McpScopes(**bad)


# -- headers against the body ---------------------------------------------------------------
def test_agreeing_headers_are_accepted() -> None:
    call = read_call(
        {"mcp-method": ["tools/call"], "mcp-name": ["write_note"]},
        body(name="write_note", arguments={"text": "hi"}),
    )
    assert call == McpCall("tools/call", "write_note", 7)


def test_without_headers_the_body_decides() -> None:
    """Clients before the 2026-07-28 transport send no routing headers."""
    assert read_call({}, body(name="read_notes")) == McpCall("tools/call", "read_notes", 7)


@pytest.mark.parametrize(
    "headers",
    [
        {"mcp-method": ["tools/call"], "mcp-name": ["read_notes"]},  # the name lies
        {"mcp-method": ["tools/list"], "mcp-name": ["write_note"]},  # the method lies
        {"mcp-name": ["read_notes"]},
        {"mcp-name": ["write_note", "write_note"]},  # repeated
        {"mcp-method": ["tools/call", "tools/call"]},
        {"mcp-name": ["=?base64?cmVhZF9ub3Rlcw==?="]},  # base64 of read_notes
        {"mcp-name": ["=?base64?not base64?="]},
    ],
)
def test_disagreeing_headers_are_refused(headers: dict[str, list[str]]) -> None:
    assert refused(headers, body(name="write_note")) == HEADER_MISMATCH


def test_a_name_header_on_a_method_without_a_name_is_refused() -> None:
    assert refused({"mcp-name": ["write_note"]}, body("tools/list")) == HEADER_MISMATCH


def test_base64_names_are_compared_decoded() -> None:
    name = "écrire_note"
    encoded = "=?base64?" + base64.b64encode(name.encode()).decode() + "?="
    assert read_call({"mcp-name": [encoded]}, body(name=name)).name == name
    assert decode_header_value("=?base64?YQ=?=") is None  # non-canonical padding
    assert decode_header_value("=?base64?YR==?=") is None  # trailing bits set
    assert decode_header_value("=?base64?/w==?=") is None  # not UTF-8


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", PARSE_ERROR),
        (b"\xff\xfe", PARSE_ERROR),
        (b"[" + body(name="read_notes") + b"]", INVALID_REQUEST),  # batches are gone
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}', INVALID_REQUEST),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
            b'"params":{"name":"read_notes","name":"write_note"}}',
            INVALID_REQUEST,
        ),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":7}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}', INVALID_PARAMS),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":1}}', INVALID_PARAMS),
        (b'{"jsonrpc":"2.0","id":1}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', INVALID_REQUEST),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes, code: int) -> None:
    assert refused({}, raw) == code


def test_a_response_message_needs_no_scope_and_carries_no_routing_header() -> None:
    raw = b'{"jsonrpc":"2.0","id":3,"result":{}}'
    assert read_call({}, raw) == McpCall(None, None, 3)
    assert refused({"mcp-method": ["tools/call"]}, raw) == HEADER_MISMATCH


# -- property: the decision follows the body, and a disagreeing header never passes ---------
METHODS = st.sampled_from(
    ["tools/call", "tools/list", "prompts/get", "resources/read", "initialize", "ping"]
)
NAMES = st.sampled_from(["read_notes", "write_note", "notes://all", "x"]) | st.text(
    min_size=1, max_size=12
)
HEADER = st.none() | NAMES


@settings(max_examples=40)
@given(method=METHODS, name=NAMES, method_header=st.none() | METHODS, name_header=HEADER)
def test_headers_and_body_agree_or_the_request_is_refused(
    method: str, name: str, method_header: str | None, name_header: str | None
) -> None:
    key = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}.get(method)
    raw = body(method, **({key: name} if key else {}))
    headers = {}
    if method_header is not None:
        headers["mcp-method"] = [method_header]
    if name_header is not None:
        headers["mcp-name"] = [name_header]
    agree = (method_header in (None, method)) and (
        name_header is None or (key is not None and name_header == name)
    )
    try:
        call = read_call(headers, raw)
    except McpRefused as err:
        assert not agree and err.code == HEADER_MISMATCH
        return
    assert agree
    assert call.method == method and call.name == (name if key else None)


@settings(max_examples=30)
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["jsonrpc", "id", "method", "params", "name"]), inner)
        ),
        max_leaves=8,
    ),
    name_header=HEADER,
)
def test_any_json_body_is_a_call_or_a_refusal(doc: Any, name_header: str | None) -> None:
    headers = {"mcp-name": [name_header]} if name_header is not None else {}
    try:
        call = read_call(headers, json.dumps(doc).encode())
    except McpRefused as err:
        assert err.body()["error"]["code"] < 0
        return
    assert isinstance(doc, dict) and doc.get("jsonrpc") == "2.0"
    if call.name is not None and name_header is not None:
        assert decode_header_value(name_header) == call.name
