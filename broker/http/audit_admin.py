"""Audit endpoints under /admin/audit, behind the admin credential: export (JSON lines or
CloudEvents), the chain state, and the HMAC of a value an operator holds (docs/audit.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import jwt
from flask import Blueprint, Response, current_app, request

from broker.audit_signing import seal_now, sealer
from broker.domain.audit_export import FORMATS, export_lines, start_head
from broker.domain.audit_hmac import jti_hmac, token_hmac
from broker.domain.ports import StoreUnavailable
from broker.errors import InvalidRequest, TemporarilyUnavailable
from broker.http.client_auth import check_admin
from broker.http.context import services
from broker.http.responses import json_response
from broker.runtime import Runtime
from broker.store.audit_seal import checkpoint_claims

bp = Blueprint("audit_admin", __name__, url_prefix="/admin/audit")


@bp.before_request
def _require_admin() -> None:
    check_admin(request, current_app.config.get("ERRAND_ADMIN_TOKEN_SHA256"))


def runtime() -> Runtime:
    return cast(Runtime, services())


def parse_time(name: str) -> float | None:
    """Unix seconds or an ISO 8601 time (UTC when it names no zone)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as err:
        raise InvalidRequest(
            f"{name}: give unix seconds or an ISO 8601 time", reason="bad_parameter"
        ) from err
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


SEARCH_FIELDS = ("identity", "owner", "outcome", "reason", "event", "actor", "issuer", "error")
_SEARCH_VALUE = re.compile(r"[A-Za-z0-9._:@+/=-]{1,200}")


def search_filters() -> dict[str, str]:
    """The exact-match filters of an audit search, each a short safe string."""
    out: dict[str, str] = {}
    for name in SEARCH_FIELDS:
        value = request.args.get(name)
        if value is None or value == "":
            continue
        if not _SEARCH_VALUE.fullmatch(value):
            raise InvalidRequest(f"{name}: not a valid search value", reason="bad_parameter")
        out[name] = value
    return out


@bp.get("/export")
def export() -> Response:
    """The stream from `since` (rounded down to the checkpoint before it, so the export
    verifies on its own), after a fresh seal."""
    fmt = request.args.get("format", "jsonl")
    if fmt not in FORMATS:
        raise InvalidRequest("format: jsonl or cloudevents", reason="bad_parameter")
    since = parse_time("since")
    svc = runtime()
    seal = sealer(svc)
    try:
        seal_now(svc)  # best effort: another sealer may hold the lock
        if since is not None:
            anchor = seal.anchor_before(f"{int(since * 1000)}-0")
            after = anchor[0] if anchor else "-"
            cps = seal.checkpoints(from_id=anchor[0]) if anchor else seal.checkpoints()
        else:
            after, cps = "-", seal.checkpoints()
        keys = seal.signing_keys()
        first = next(iter(seal.entries(after)), None)
    except StoreUnavailable as err:
        raise TemporarilyUnavailable(debug=str(err)) from err
    claims = [checkpoint_claims(jws) for _id, jws in cps]
    head = start_head(first[0] if first else None, claims)

    def lines() -> Iterator[str]:
        for line in export_lines(
            fmt=fmt,
            issuer=svc.config.broker.issuer,
            exported_at=svc.clock.now(),
            keys=keys,
            checkpoints=[(jws, c) for (_id, jws), c in zip(cps, claims, strict=True)],
            entries=seal.entries(after),
            start_head=head,
        ):
            yield line + "\n"

    mimetype = "application/x-ndjson"
    return Response(lines(), mimetype=mimetype, headers={"Cache-Control": "no-store"})


@bp.get("/chain")
def chain() -> Response:
    """The chain state (unsigned: the latest checkpoint is what is signed)."""
    svc = runtime()
    try:
        state: dict[str, Any] = sealer(svc).chain_state()
        keys = sealer(svc).signing_keys()
    except StoreUnavailable as err:
        raise TemporarilyUnavailable(debug=str(err)) from err
    return json_response({"chain": state, "keys": keys})


MAX_HASH_VALUE = 16 * 1024


@bp.post("/hash")
def hash_value() -> Response:
    """The audit HMACs of a value an operator holds: as a token or assertion
    (`token_hmac`), as a jti (`jti_hmac`), and when it is a JWT, of the jti inside it."""
    data = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    value = data.get("value") if isinstance(data, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_HASH_VALUE:
        raise InvalidRequest("value: give the token or jti to hash", reason="bad_body")
    out = {"token_hmac": token_hmac(value), "jti_hmac": jti_hmac(value)}
    try:
        inner = jwt.decode(value, options={"verify_signature": False}).get("jti")
    except jwt.PyJWTError:
        inner = None
    if isinstance(inner, str):
        out["token_jti_hmac"] = jti_hmac(inner)
    return json_response(out)
