"""`errand evidence list|verify`: signed revocation records, listed through the admin API and
verified against the broker's published keys."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import requests

from broker.cli.admin import add_admin_arguments, add_url_argument, admin_request, broker_url
from broker.tokens.evidence import EvidenceInvalid, verify_record


def cmd_evidence_list(args: argparse.Namespace) -> int:
    body = admin_request(args, "GET", "/admin/evidence", params={"limit": str(args.limit)})
    for rec in body["records"]:
        print(rec["jws"] if args.json else f"{rec['id']} {rec['jws'][:60]}...")
    return 0


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    base = broker_url(args)  # keys fetched over plain http could be anyone's
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        meta = requests.get(
            base + "/.well-known/oauth-authorization-server", timeout=10, allow_redirects=False
        ).json()
        jwks = requests.get(base + "/evidence/keys", timeout=10, allow_redirects=False).json()
    except (requests.RequestException, ValueError) as err:
        sys.exit(f"errand: cannot fetch the broker's keys: {type(err).__name__}")
    try:
        claims = verify_record(text.strip(), jwks, meta["issuer"])
    except EvidenceInvalid as err:
        print(f"INVALID: {err}", file=sys.stderr)
        return 1
    print("VALID revocation record:")
    print(json.dumps(claims, indent=2))
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("evidence", help="signed revocation records")
    esub = s.add_subparsers(dest="evidence_command", required=True)
    e = esub.add_parser("list", help="list recent revocation records")
    add_admin_arguments(e)
    e.add_argument("--limit", type=int, default=20)
    e.set_defaults(fn=cmd_evidence_list)
    e = esub.add_parser(
        "verify", help="verify a record (file or - for stdin) against the broker's keys"
    )
    e.add_argument("file")
    add_url_argument(e)
    e.set_defaults(fn=cmd_evidence_verify)
