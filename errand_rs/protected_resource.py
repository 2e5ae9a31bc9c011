"""RFC 9728 protected-resource metadata, and the challenges that point to it.

A resource server names itself (its resource identifier, RFC 8707: an absolute URI without a
fragment) and the authorization servers whose tokens it takes. A client that gets a 401
reads `resource_metadata` from the `WWW-Authenticate` challenge, fetches the metadata,
finds the authorization server, and asks it for a token whose audience is exactly that
resource (the MCP authorization flow).

The metadata is served at two addresses (RFC 9728 §3): the path-suffixed form,
`/.well-known/oauth-protected-resource` inserted between the host and the resource's path
(`https://notes.example/mcp` -> `https://notes.example/.well-known/oauth-protected-resource/mcp`),
which the challenge names, and the root form, which clients try when they have no challenge
to read. Every URL comes from configuration, never from the request's Host header (which the
caller chooses)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from errand_rs._http import check_broker_url

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def check_resource(uri: Any) -> str:
    """`uri` if it is an https (or loopback http) URI without query or fragment; else
    ValueError. RFC 8707 §2: no fragment; RFC 9728 §3 derives the metadata address from the
    path, so a query would have no well-defined place."""
    check_broker_url(uri, "resource (this server's resource identifier)")
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri or parts.query or "?" in uri:
        raise ValueError("resource must have no query and no fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError("resource must not carry credentials")
    return str(uri)


@dataclass(frozen=True)
class ProtectedResource:
    """What a resource server publishes about itself (RFC 9728 §2)."""

    resource: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...] = ()
    resource_name: str | None = None
    # RFC 6750 §2.1 only: tokens in a form body or a query string end up in logs.
    bearer_methods_supported: tuple[str, ...] = ("header",)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_resource(self.resource)
        if not self.authorization_servers:
            raise ValueError("name at least one authorization server (the broker's issuer URL)")
        for server in self.authorization_servers:
            check_broker_url(server, "authorization server")

    @classmethod
    def of(
        cls,
        resource: str,
        authorization_server: str | Iterable[str],
        *,
        scopes_supported: Iterable[str] = (),
        resource_name: str | None = None,
    ) -> ProtectedResource:
        servers = (
            (authorization_server,)
            if isinstance(authorization_server, str)
            else tuple(authorization_server)
        )
        return cls(resource, servers, tuple(scopes_supported), resource_name)

    @property
    def origin(self) -> str:
        parts = urlsplit(self.resource)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def metadata_path(self) -> str:
        """The path-suffixed metadata path (RFC 9728 §3.1): a terminating slash after the host
        is removed before the well-known path is inserted."""
        path = urlsplit(self.resource).path
        return WELL_KNOWN + ("" if path in ("", "/") else path)

    @property
    def metadata_paths(self) -> frozenset[str]:
        return frozenset({self.metadata_path, WELL_KNOWN})

    @property
    def metadata_url(self) -> str:
        """What the `resource_metadata` challenge parameter names (RFC 9728 §5.1)."""
        return self.origin + self.metadata_path

    def metadata(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": list(self.authorization_servers),
            "bearer_methods_supported": list(self.bearer_methods_supported),
        }
        if self.scopes_supported:
            doc["scopes_supported"] = list(self.scopes_supported)
        if self.resource_name:
            doc["resource_name"] = self.resource_name
        doc.update(self.extra)
        return doc

    def challenge_params(self, scopes: Iterable[str] = ()) -> dict[str, str]:
        """Auth-params every challenge of this server carries: where its metadata is, and the
        scopes the refused request needs (RFC 6750 §3), when it needs any."""
        params = {"resource_metadata": self.metadata_url}
        scope = " ".join(scopes)
        if scope:
            params["scope"] = scope
        return params
