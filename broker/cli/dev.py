"""`errand dev-token`: development only, a GitHub-shaped ID token from the local dev issuer."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from broker.dev.issuer import github_claims, load_or_create_key, mint_with


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
    for item in args.claim or []:
        name, _, value = item.partition("=")
        claims[name] = value
    print(mint_with(key, claims))
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser(
        "dev-token", help="development: mint a GitHub-shaped token from the dev issuer"
    )
    s.add_argument("--state-dir", default=os.environ.get("ERRAND_STATE_DIR", ".errand"))
    s.add_argument(
        "--issuer", default=os.environ.get("ERRAND_DEV_ISSUER_URL", "http://127.0.0.1:8081")
    )
    s.add_argument("--audience", default="errand-dev")
    s.add_argument("--repository", default="acme/app")
    s.add_argument("--repository-id", default="100200300")
    s.add_argument("--ref", default="refs/heads/main")
    s.add_argument("--lifetime", type=int, default=300)
    s.add_argument("--claim", action="append", metavar="NAME=VALUE")
    s.set_defaults(fn=cmd_dev_token)
