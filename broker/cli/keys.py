"""`errand keys ...` (signing keys and the key-encryption key) and `errand hash-secret`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from broker.cli.admin import add_admin_arguments, admin_request
from broker.cli.output import iso_utc, table
from broker.tokens.keyrecord import new_kek
from broker.tokens.keyring import generate_key


def cmd_keys_generate(args: argparse.Namespace) -> int:
    key = generate_key(Path(args.dir), activate=not args.no_activate)
    print(key.kid)
    return 0


def cmd_kek_generate(args: argparse.Namespace) -> int:
    print(new_kek())
    return 0


def cmd_keys_status(args: argparse.Namespace) -> int:
    body = admin_request(args, "GET", "/admin/keys")
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    keys = [k for k in body.get("keys", []) if isinstance(k, dict)]
    if body.get("source") == "files":
        active = body.get("active")
        rows = [
            [k.get("kid"), k.get("alg"), "active" if k.get("kid") == active else "published"]
            for k in keys
        ]
        print(table(["KID", "ALG", "STATE"], rows))
        print(f"{len(keys)} key(s) from ERRAND_SIGNING_KEY_DIR")
        return 0
    rows = [
        [
            k.get("kid"),
            k.get("alg") or "-",
            k.get("state"),
            iso_utc(k.get("created_at")),
            iso_utc(k.get("activate_at")),
            iso_utc(k.get("retire_at")),
            k.get("reason", ""),
        ]
        for k in keys
    ]
    print(table(["KID", "ALG", "STATE", "CREATED (UTC)", "SIGNS FROM", "RETIRES", "NOTE"], rows))
    print(f"{len(keys)} key(s) in Redis")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    body = admin_request(args, "POST", "/admin/keys/rotate", json={"emergency": args.emergency})
    print(json.dumps(body, indent=2))
    return 0


def cmd_hash_secret(args: argparse.Namespace) -> int:
    secret = sys.stdin.readline().rstrip("\n")
    if len(secret) < 16:
        print("errand: a client secret must be at least 16 characters", file=sys.stderr)
        return 1
    print(hashlib.sha256(secret.encode()).hexdigest())
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("keys", help="signing-key commands")
    ksub = s.add_subparsers(dest="keys_command", required=True)
    k = ksub.add_parser("generate", help="write a new ES256 signing key")
    k.add_argument(
        "--dir",
        default=os.environ.get("ERRAND_SIGNING_KEY_DIR", ".errand/keys"),
        help="the key directory (default: $ERRAND_SIGNING_KEY_DIR, else .errand/keys)",
    )
    k.add_argument(
        "--no-activate",
        action="store_true",
        help="publish only: leave the `active` file naming the current key",
    )
    k.set_defaults(fn=cmd_keys_generate)
    k = ksub.add_parser(
        "kek-generate", help="print a new base64 key-encryption key (store it as a secret)"
    )
    k.set_defaults(fn=cmd_kek_generate)
    k = ksub.add_parser("status", help="signing keys and their states")
    add_admin_arguments(k)
    k.set_defaults(fn=cmd_keys_status)
    k = ksub.add_parser("rotate", help="schedule a rotation (or --emergency: replace the key now)")
    add_admin_arguments(k)
    k.add_argument("--emergency", action="store_true", help="the old key leaves the JWKS at once")
    k.set_defaults(fn=cmd_keys_rotate)

    sub.add_parser("hash-secret", help="SHA-256 of a client secret read from stdin").set_defaults(
        fn=cmd_hash_secret
    )
