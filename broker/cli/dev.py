"""`errand dev-token`: development only, a GitHub-shaped ID token from the local dev issuer."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from broker.dev.issuer import github_claims, load_or_create_key, mint_with


def claim_value(text: str) -> Any:
    """A --claim value: JSON when it parses (numbers, true/false, null, arrays, objects, or a
    quoted string), else the text itself. `exp=1700000000` is a number, `ref=refs/heads/x` a
    string; `id='"123"'` (or --claim-str) keeps a number-like value a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=VALUE")
    return name, value


def cmd_dev_token(args: argparse.Namespace) -> int:
    key = load_or_create_key(Path(args.state_dir) / "dev-issuer" / "key.pem")
    claims = github_claims(
        issuer=args.issuer,
        audience=args.audience,
        repository=args.repository,
        repository_id=args.repository_id,
        ref=args.ref,
        lifetime=args.lifetime,
    )
    for name, value in args.claim or []:
        claims[name] = claim_value(value)
    for name, value in args.claim_str or []:
        claims[name] = value
    print(mint_with(key, claims))
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser(
        "dev-token", help="development: mint a GitHub-shaped token from the dev issuer"
    )
    s.add_argument(
        "--state-dir",
        default=os.environ.get("ERRAND_STATE_DIR", ".errand"),
        help="where `errand run` keeps the dev issuer's key (default: $ERRAND_STATE_DIR, "
        "else .errand)",
    )
    s.add_argument(
        "--issuer",
        default=os.environ.get("ERRAND_DEV_ISSUER_URL", "http://127.0.0.1:8081"),
        help="the token's iss (default: $ERRAND_DEV_ISSUER_URL, else http://127.0.0.1:8081)",
    )
    s.add_argument("--audience", default="errand-dev", help="the token's aud (default errand-dev)")
    s.add_argument("--repository", default="acme/app", help="owner/name (default acme/app)")
    s.add_argument(
        "--repository-id", default="100200300", help="repository_id claim (default 100200300)"
    )
    s.add_argument("--ref", default="refs/heads/main", help="ref claim (default refs/heads/main)")
    s.add_argument("--lifetime", type=int, default=300, help="seconds until exp (default 300)")
    s.add_argument(
        "--claim",
        action="append",
        type=_pair,
        metavar="NAME=VALUE",
        help="set a claim; VALUE is read as JSON when it parses (exp=1700000000 is a number, "
        "flag=true a boolean, groups='[\"a\"]' an array), else as a string (repeatable)",
    )
    s.add_argument(
        "--claim-str",
        action="append",
        type=_pair,
        metavar="NAME=VALUE",
        help="set a claim to VALUE as a string, even when it looks like a number (repeatable)",
    )
    s.set_defaults(fn=cmd_dev_token)
