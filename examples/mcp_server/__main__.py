"""python -m examples.mcp_server --issuer http://127.0.0.1:8080 --port 8001

Serves the notes MCP server on 127.0.0.1 (streamable HTTP at /mcp). See README.md here."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from errand_client import AgentKey
from errand_rs import DpopChecker, RevocationFeed
from examples.mcp_server.server import NotesConfig, build_app
from examples.mcp_server.upstream import Upstream


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.mcp_server")
    parser.add_argument("--issuer", required=True, help="the Errand broker's URL (its issuer)")
    parser.add_argument("--port", type=int, default=8001, help="loopback port (default 8001)")
    parser.add_argument("--name", default="notes", help="the server's name")
    parser.add_argument(
        "--resource", help="this server's resource URL (default http://127.0.0.1:PORT/mcp)"
    )
    parser.add_argument(
        "--feed-client-id", help="a client registered at Errand: follow its revocation feed"
    )
    parser.add_argument("--feed-secret-file", type=Path, help="that client's secret (a file)")
    parser.add_argument(
        "--dpop",
        choices=("off", "accept", "require"),
        default="off",
        help="DPoP-bound tokens: off (bearer only), accept (both), require (DPoP only, each "
        "proof binding the body)",
    )
    up = parser.add_argument_group("upstream (publish_note; needs delegation at Errand)")
    up.add_argument("--upstream-url", help="the upstream API's URL (its resource identifier)")
    up.add_argument(
        "--upstream-scope", default="archive:write", help="the one scope asked for upstream"
    )
    up.add_argument("--identity", help="this server's own Errand identity id (the actor)")
    up.add_argument("--key-file", type=Path, help="its EC P-256 private key (PEM)")
    up.add_argument("--kid", help="the key's registered kid")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    upstream = None
    if args.upstream_url:
        if not (args.identity and args.key_file and args.kid):
            parser.error("--upstream-url needs --identity, --key-file and --kid")
        actor = AgentKey.from_file(
            args.identity, args.key_file, args.kid, args.issuer.rstrip("/") + "/token"
        )
        upstream = Upstream(args.issuer, args.upstream_url, args.upstream_scope, actor)
    feed = None
    if args.feed_client_id:
        if not args.feed_secret_file:
            parser.error("--feed-client-id needs --feed-secret-file")
        secret = args.feed_secret_file.read_text().strip()
        feed = RevocationFeed(args.issuer, args.feed_client_id, secret)
    config = NotesConfig(
        issuer=args.issuer,
        resource=args.resource or f"http://127.0.0.1:{args.port}/mcp",
        name=args.name,
        feed=feed,
        upstream=upstream,
        dpop=None
        if args.dpop == "off"
        else DpopChecker(
            require_dpop=args.dpop == "require", require_content_digest=args.dpop == "require"
        ),
    )
    uvicorn.run(build_app(config), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
