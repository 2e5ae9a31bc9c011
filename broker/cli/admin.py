"""The admin API over HTTP: how every operator command reaches the broker.

Operator commands talk to the admin API with the admin credential, so they work from any
machine that can reach the broker. The credential travels only over https, or plain http to
a loopback address, and never follows a redirect."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import requests

from errand_client.client import check_url

DEFAULT_URL = "http://127.0.0.1:8080"


def add_url_argument(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--url",
        default=os.environ.get("ERRAND_URL", DEFAULT_URL),
        help=f"the broker's base URL: https, or http to a loopback address "
        f"(default: $ERRAND_URL, else {DEFAULT_URL})",
    )


def add_admin_arguments(sp: argparse.ArgumentParser) -> None:
    """--url, --admin-token-file and --json: what every admin API command takes."""
    add_url_argument(sp)
    sp.add_argument(
        "--admin-token-file",
        default=None,
        metavar="PATH",
        help="file holding the admin credential "
        "(default: $ERRAND_ADMIN_TOKEN_FILE, else .errand/admin-token)",
    )
    sp.add_argument(
        "--json", action="store_true", help="print the broker's answer as JSON (Unix times)"
    )


def broker_url(args: argparse.Namespace) -> str:
    """--url, checked before anything is read or sent: the admin credential (and the keys
    `evidence verify` trusts) travel only over https, or plain http to a loopback address."""
    try:
        return check_url(args.url)
    except ValueError as err:
        sys.exit(f"errand: --url {args.url!r}: {err}")


def operator_headers(args: argparse.Namespace) -> dict[str, str]:
    """Who is asking (--operator, else $USER), recorded with the action."""
    name = getattr(args, "operator", None) or os.environ.get("USER", "")
    return {"X-Errand-Operator": name} if name else {}


def admin_token(args: argparse.Namespace) -> str:
    token_file = (
        args.admin_token_file or os.environ.get("ERRAND_ADMIN_TOKEN_FILE") or ".errand/admin-token"
    )
    try:
        return Path(token_file).read_text().strip()
    except OSError:
        sys.exit(
            f"errand: cannot read the admin credential from {token_file} (see --admin-token-file)"
        )


def admin_request(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    extra_headers: dict[str, str] | None = None,
    **kw: Any,
) -> Any:
    base = broker_url(args)  # first: refuse before the credential is even read
    token = admin_token(args)
    try:
        headers = {"Authorization": f"Bearer {token}", **(extra_headers or {})}
        # No redirects: a redirect must not carry the admin credential anywhere else.
        resp = requests.request(
            method, base + path, headers=headers, timeout=60, allow_redirects=False, **kw
        )
    except requests.RequestException as err:
        sys.exit(f"errand: cannot reach {base}: {type(err).__name__}")
    try:
        is_json = resp.headers.get("Content-Type", "").startswith("application/json")
        body = resp.json() if is_json else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if 300 <= resp.status_code < 400:
        sys.exit(
            f"errand: {base} answered a redirect ({resp.status_code}): the admin credential is "
            "not sent on; pass the broker's final https URL as --url"
        )
    if resp.status_code >= 400:
        sys.exit(f"errand: {resp.status_code} {body.get('error')}: {body.get('error_description')}")
    return body
