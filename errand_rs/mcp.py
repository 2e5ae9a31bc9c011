"""MCP requests as resource-server operations: which scopes a JSON-RPC call needs, read from
the transport headers and checked against the body.

The MCP streamable HTTP transport (revision 2026-07-28) mirrors each request's routing facts
into HTTP headers, so a gateway or a resource server can decide without parsing the body:

    Mcp-Method: tools/call          the JSON-RPC `method`
    Mcp-Name:   write_note          `params.name` (tools/call, prompts/get) or
                                    `params.uri` (resources/read); non-ASCII values are sent
                                    as `=?base64?<standard base64 of UTF-8>?=`

A server that authorizes on the headers but executes the body must refuse a request whose
two disagree, or `Mcp-Name: read_notes` would buy a `write_note` call. `read_call` reads the
body strictly (one JSON object, no duplicate members) and refuses any disagreement;
`McpScopes.required` maps the agreed call to the scopes it needs:

    protocol    initialize, ping, server/discover, notifications/*   a valid token, no scope
    discovery   tools/list, prompts/list, resources/list,
                resources/templates/list, completion/complete        `discovery` scopes
    per name    tools/call, prompts/get, resources/read              that tool's (prompt's,
                                                                     resource's) scopes
    anything else                                                    refused unless listed
                                                                     in `methods`

A tool, prompt or resource the map does not name is refused (fail closed): a tool added to
the server without a scope must not be open to every token. Nothing here imports the broker
or an MCP SDK."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MCP_METHOD_HEADER = "mcp-method"
MCP_NAME_HEADER = "mcp-name"

# Method -> the params member the Mcp-Name header mirrors (MCP transports, "Routing headers").
NAME_BEARING_METHODS: Mapping[str, str] = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
}
PROTOCOL_METHODS = frozenset({"initialize", "ping", "server/discover"})
DISCOVERY_METHODS = frozenset(
    {
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "completion/complete",
    }
)

# JSON-RPC 2.0 error codes, and MCP's for a header that disagrees with the body.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
HEADER_MISMATCH = -32020

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token
_B64_SENTINEL = re.compile(r"=\?base64\?(?P<payload>[A-Za-z0-9+/]*={0,2})\?=")
MAX_NAME_CHARS = 1024


class McpRefused(Exception):
    """The request is not an acceptable MCP call; answered as a JSON-RPC error (HTTP 400)."""

    def __init__(self, code: int, message: str, *, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def body(self) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": self.request_id,
            "error": {"code": self.code, "message": self.message},
        }


@dataclass(frozen=True)
class McpCall:
    """One JSON-RPC message, as the body says and the headers agree. `method` is None for a
    client's response to a server request (it carries `result` or `error`, no method)."""

    method: str | None
    name: str | None = None
    request_id: Any = None


def decode_header_value(value: str) -> str | None:
    """The value an Mcp-Name header stands for: itself, or the UTF-8 text of a
    `=?base64?...?=` sentinel. A malformed sentinel (bad or non-canonical base64, bad UTF-8)
    is None, so it never matches a body value by accident."""
    if not value.startswith("=?base64?"):
        return value
    match = _B64_SENTINEL.fullmatch(value)
    if match is None:
        return None
    payload = match.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None  # non-canonical: trailing bits set
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two `method` (or `name`) members: this parser and the server's could read different
    # ones, and the check would pass on the member the server ignores.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise McpRefused(INVALID_REQUEST, f"duplicate member {key[:64]!r} in the request")
        out[key] = value
    return out


def _parse(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except McpRefused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise McpRefused(PARSE_ERROR, "the body is not JSON") from None
    if not isinstance(doc, dict):
        # JSON-RPC batches were removed from MCP (2025-06-18); one message per request.
        raise McpRefused(INVALID_REQUEST, "the body must be one JSON-RPC message (an object)")
    return doc


def read_call(headers: Mapping[str, list[str]], body: bytes) -> McpCall:
    """The call a POST carries, or McpRefused. `headers` maps lowercase names to every value
    received (a repeated routing header is refused: which one would a proxy read?)."""
    doc = _parse(body)
    request_id = doc.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        request_id = None  # echoed in the error only when it is a JSON-RPC id
    for header in (MCP_METHOD_HEADER, MCP_NAME_HEADER):
        if len(headers.get(header, ())) > 1:
            raise McpRefused(HEADER_MISMATCH, f"{header} is repeated", request_id=request_id)
    method_header = next(iter(headers.get(MCP_METHOD_HEADER, ())), None)
    name_header = next(iter(headers.get(MCP_NAME_HEADER, ())), None)
    if doc.get("jsonrpc") != "2.0":
        raise McpRefused(INVALID_REQUEST, "not a JSON-RPC 2.0 message", request_id=request_id)

    if "method" not in doc:
        if "id" not in doc or ("result" in doc) == ("error" in doc):
            raise McpRefused(INVALID_REQUEST, "no method", request_id=request_id)
        if method_header is not None or name_header is not None:
            raise McpRefused(
                HEADER_MISMATCH, "routing headers on a response message", request_id=request_id
            )
        return McpCall(None, None, request_id)

    method = doc["method"]
    if not isinstance(method, str) or not method:
        raise McpRefused(INVALID_REQUEST, "method must be a string", request_id=request_id)
    if method_header is not None and method_header != method:
        raise McpRefused(
            HEADER_MISMATCH,
            "Mcp-Method header does not match the request body's method",
            request_id=request_id,
        )
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise McpRefused(INVALID_PARAMS, "params must be an object", request_id=request_id)
    key = NAME_BEARING_METHODS.get(method)
    if key is None:
        if name_header is not None:
            raise McpRefused(
                HEADER_MISMATCH, f"Mcp-Name header on {method[:64]!r}", request_id=request_id
            )
        return McpCall(method, None, request_id)
    name = params.get(key)
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        raise McpRefused(INVALID_PARAMS, f"params.{key} must be a string", request_id=request_id)
    if name_header is not None and decode_header_value(name_header) != name:
        raise McpRefused(
            HEADER_MISMATCH,
            f"Mcp-Name header does not match the request body's params.{key}",
            request_id=request_id,
        )
    return McpCall(method, name, request_id)


def _scopes(value: Iterable[str] | str, what: str) -> tuple[str, ...]:
    scopes = tuple(value.split()) if isinstance(value, str) else tuple(value)
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
            raise ValueError(f"{what}: not a scope token: {scope!r}")
    return tuple(dict.fromkeys(scopes))


def _table(
    given: Mapping[str, Iterable[str] | str] | None, what: str
) -> dict[str, tuple[str, ...]]:
    table = {}
    for name, scopes in (given or {}).items():
        table[name] = _scopes(scopes, f"{what}[{name!r}]")
        if not table[name]:
            # An empty list would open the operation to any token for this server; say so
            # through `methods` or the protocol tier, never by accident.
            raise ValueError(f"{what}[{name!r}]: name at least one scope")
    return table


class McpScopes:
    """Which scopes each MCP operation needs. Scopes are RFC 6749 scope tokens, given as a
    space-separated string or a list; a call needs every scope listed for it.

        McpScopes(
            discovery="notes:discover",
            tools={"read_notes": "notes:read", "write_note": "notes:write"},
        )
    """

    def __init__(
        self,
        *,
        tools: Mapping[str, Iterable[str] | str],
        discovery: Iterable[str] | str = (),
        prompts: Mapping[str, Iterable[str] | str] | None = None,
        resources: Mapping[str, Iterable[str] | str] | None = None,
        methods: Mapping[str, Iterable[str] | str] | None = None,
    ) -> None:
        self.discovery = _scopes(discovery, "discovery")
        self.tools = _table(tools, "tools")
        self.prompts = _table(prompts, "prompts")
        self.resources = _table(resources, "resources")
        # Other methods, by name; an empty list here is an explicit "any valid token".
        self.methods = {
            name: _scopes(scopes, f"methods[{name!r}]") for name, scopes in (methods or {}).items()
        }
        bad = set(self.methods) & (set(NAME_BEARING_METHODS) | PROTOCOL_METHODS)
        if bad:
            raise ValueError(f"methods: {sorted(bad)} are mapped by name or are protocol methods")

    def __repr__(self) -> str:
        return f"McpScopes(discovery={self.discovery!r}, tools={self.tools!r})"

    def required(self, call: McpCall) -> tuple[str, ...]:
        """Every scope `call` needs, or McpRefused for an operation the map does not open."""
        method, name = call.method, call.name
        if method is None or method in PROTOCOL_METHODS or method.startswith("notifications/"):
            return ()
        if method in DISCOVERY_METHODS and method not in self.methods:
            return self.discovery
        if method in self.methods:
            return self.methods[method]
        table = {
            "tools/call": self.tools,
            "prompts/get": self.prompts,
            "resources/read": self.resources,
        }.get(method)
        if table is None:
            raise McpRefused(
                METHOD_NOT_FOUND, "method not available to tokens", request_id=call.request_id
            )
        assert name is not None  # read_call checked name-bearing methods
        scopes = table.get(name)
        if scopes is None:
            kind = method.split("/")[0].rstrip("s")
            raise McpRefused(
                INVALID_PARAMS, f"unknown {kind}: {name[:64]!r}", request_id=call.request_id
            )
        return scopes

    def scopes_supported(self) -> tuple[str, ...]:
        """Every scope some operation needs (RFC 9728 `scopes_supported`)."""
        every: list[str] = list(self.discovery)
        for table in (self.tools, self.prompts, self.resources, self.methods):
            for scopes in table.values():
                every.extend(scopes)
        return tuple(dict.fromkeys(every))
