"""`errand evidence list|verify`: signed revocation records, listed through the admin API and
verified against the broker's published keys.

`verify` exits 0 when every record it was given is valid, 1 when one is not, and 2 when it
could not check (an unreadable file, no record in it, or the broker's keys out of reach)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import requests

from broker.cli.admin import add_admin_arguments, add_url_argument, admin_request, broker_url
from broker.cli.output import iso_utc, table, unverified_record_claims
from broker.tokens.evidence import EvidenceInvalid, verify_record

# How many of the newest records `revoke-all-status` reads to find a revoke-all.
RECORD_SCAN = 1000
EXIT_INVALID = 1
EXIT_UNCHECKED = 2


def fetch_records(args: argparse.Namespace, limit: int) -> list[dict[str, Any]]:
    """The newest records first, each {"id", "stream_id", "jws"}."""
    body = admin_request(args, "GET", "/admin/evidence", params={"limit": str(limit)})
    return [r for r in body.get("records", []) if isinstance(r, dict)]


def _revoke_all_epochs(args: argparse.Namespace) -> list[int]:
    """Epochs of the revoke-all records among the newest RECORD_SCAN, newest first."""
    epochs = []
    for record in fetch_records(args, RECORD_SCAN):
        claims = unverified_record_claims(str(record.get("jws", "")))
        epoch = claims.get("epoch")
        if claims.get("action") == "revoke-all" and type(epoch) is int:
            epochs.append(epoch)
    return epochs


def latest_revoke_all_epoch(args: argparse.Namespace) -> int | None:
    epochs = _revoke_all_epochs(args)
    return epochs[0] if epochs else None


def revoke_all_recorded(args: argparse.Namespace, epoch: int) -> bool:
    return epoch in _revoke_all_epochs(args)


def _what(claims: dict[str, Any]) -> str:
    if claims.get("action") == "revoke-all":
        return f"everything (epoch {claims.get('epoch')})"
    selector = claims.get("selector")
    if isinstance(selector, dict) and selector:
        return " ".join(f"{k}={v}" for k, v in selector.items())
    return str(claims.get("action", "?"))


def cmd_evidence_list(args: argparse.Namespace) -> int:
    records = fetch_records(args, args.limit)
    if args.json:
        print(json.dumps({"records": records}, indent=2))
        return 0
    if args.jws:
        for record in records:
            print(record.get("jws", ""))
        return 0
    rows = []
    for record in records:
        claims = unverified_record_claims(str(record.get("jws", "")))
        rows.append(
            [
                iso_utc(claims.get("at", claims.get("iat"))),
                record.get("id", ""),
                _what(claims),
                claims.get("actor", "?"),
                claims.get("revoked", "?"),
                claims.get("reason", ""),
            ]
        )
    print(table(["WHEN (UTC)", "RECORD", "WHAT", "WHO", "COUNT", "WHY"], rows))
    print(
        f"{len(records)} record(s), newest first; signatures are not checked here "
        "(errand evidence verify FILE)"
    )
    return 0


def records_in(text: str) -> list[str]:
    """The compact JWSs in a file: one per line, or the JSON that `evidence list --json`,
    `revoke --json` or `revoke-all --json` print."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return [line.strip() for line in stripped.splitlines() if line.strip()]
    try:
        doc = json.loads(stripped)
    except ValueError:
        return []
    items = doc.get("records", [doc]) if isinstance(doc, dict) else doc
    out = []
    for item in items if isinstance(items, list) else []:
        jws = (item.get("jws") or item.get("record")) if isinstance(item, dict) else item
        if isinstance(jws, str) and jws:
            out.append(jws)
    return out


def _unchecked(message: str) -> int:
    print(f"errand: {message}", file=sys.stderr)
    return EXIT_UNCHECKED


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    base = broker_url(args)  # keys fetched over plain http could be anyone's
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not a text file"
        return _unchecked(f"{args.file}: {reason}")
    records = records_in(text)
    if not records:
        return _unchecked(f"{args.file}: no revocation record in it")
    try:
        meta = requests.get(
            base + "/.well-known/oauth-authorization-server", timeout=10, allow_redirects=False
        ).json()
        jwks = requests.get(base + "/evidence/keys", timeout=10, allow_redirects=False).json()
        issuer = meta["issuer"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as err:
        return _unchecked(f"cannot fetch the broker's keys: {type(err).__name__}")
    status = 0
    for jws in records:
        try:
            claims = verify_record(jws, jwks, issuer)
        except EvidenceInvalid as err:
            print(f"INVALID: {err}", file=sys.stderr)
            status = EXIT_INVALID
            continue
        print("VALID revocation record:")
        print(json.dumps(claims, indent=2))  # JSON escapes control characters
    return status


def register(sub: Any) -> None:
    s = sub.add_parser("evidence", help="signed revocation records")
    esub = s.add_subparsers(dest="evidence_command", required=True)
    e = esub.add_parser("list", help="list recent revocation records: what, who, why, how many")
    add_admin_arguments(e)
    e.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    e.add_argument(
        "--jws",
        action="store_true",
        help="print each record as its compact JWS, one per line (for `errand evidence verify`)",
    )
    e.set_defaults(fn=cmd_evidence_list)
    e = esub.add_parser(
        "verify",
        help="verify records against the broker's keys "
        "(exit 0 valid, 1 invalid, 2 could not check)",
    )
    e.add_argument(
        "file",
        help="a file of records (compact JWS per line, or JSON from --json), or - for stdin",
    )
    add_url_argument(e)
    e.set_defaults(fn=cmd_evidence_verify)
