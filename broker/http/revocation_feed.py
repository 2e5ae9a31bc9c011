"""GET /revocations: the feed resource servers poll to learn of revocations without an
introspection per request (see docs/resource-servers.md for the guarantee)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from broker.errors import InvalidRequest
from broker.http.client_auth import authenticate_client
from broker.http.context import services
from broker.http.responses import json_response

bp = Blueprint("revocations", __name__)  # named for its path: metrics label "revocations.feed"


@bp.get("/revocations")
def feed() -> Response:
    svc = services()
    authenticate_client(request, {}, svc.config, required=True)
    since = request.args.get("since", "0")
    limit_text = request.args.get("limit", "1000")
    if not svc.revocations.valid_cursor(since):
        raise InvalidRequest("since: not a cursor returned by this endpoint", reason="bad_cursor")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10000:
        raise InvalidRequest("limit: must be 1 to 10000", reason="bad_parameter")
    now = int(svc.clock.now())
    page = svc.revocations.read_feed(
        since, limit=int(limit_text), now=now, margin=svc.config.broker.clock_skew_seconds
    )
    return json_response(
        {
            "cursor": page.cursor,
            "epoch": page.epoch,
            "entries": page.entries,
            "more": page.more,
            "server_time": now,
        }
    )
