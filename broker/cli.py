"""`errand`: run the broker and worker, check configuration, and operator commands.

Operator commands (grants, audit, revoke) talk to the admin API over HTTP with the admin
credential, so they work from any machine that can reach the broker."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import requests

from broker.config import ConfigError, load_config
from broker.errors import BrokerError
from errand_client.client import check_url


def _broker_url(args: argparse.Namespace) -> str:
    """--url, checked before anything is read or sent: the admin credential (and the keys
    `evidence verify` trusts) travel only over https, or plain http to a loopback address."""
    try:
        return check_url(args.url)
    except ValueError as err:
        sys.exit(f"errand: --url {args.url!r}: {err}")


def _admin_request(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    extra_headers: dict[str, str] | None = None,
    **kw: Any,
) -> Any:
    base = _broker_url(args)  # first: refuse before the credential is even read
    token_file = (
        args.admin_token_file or os.environ.get("ERRAND_ADMIN_TOKEN_FILE") or ".errand/admin-token"
    )
    try:
        token = Path(token_file).read_text().strip()
    except OSError:
        sys.exit(
            f"errand: cannot read the admin credential from {token_file} (see --admin-token-file)"
        )
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


def cmd_grants(args: argparse.Namespace) -> int:
    params = {
        k: v
        for k, v in (("task", args.task), ("identity", args.identity), ("owner", args.owner))
        if v
    }
    params["limit"] = str(args.limit)
    body = _admin_request(args, "GET", "/admin/grants", params=params)
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    rows = body["grants"]
    print(f"{'JTI':24} {'IDENTITY':24} {'TASK':28} {'EXPIRES':>10}  SCOPE")
    for g in rows:
        scopes = " ".join(g["scopes"])
        print(f"{g['jti']:24} {g['identity_id']:24} {g['task_id']:28} {g['exp']:>10}  {scopes}")
    print(f"{len(rows)} live grant(s)")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    body = _admin_request(
        args, "GET", "/admin/audit", params={"task": args.task, "limit": str(args.limit)}
    )
    events = list(reversed(body["events"]))  # oldest first reads like a story
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for e in events:
        extra = e.get("reason") or e.get("jti") or ""
        print(
            f"{e.get('ts', 0):.3f} {e.get('event', '?'):18} {e.get('outcome', ''):10} "
            f"identity={e.get('identity')} {extra}"
        )
    print(f"{len(events)} event(s) for task {args.task}")
    return 0


def _operator_headers(args: argparse.Namespace) -> dict[str, str]:
    name = args.operator or os.environ.get("USER", "")
    return {"X-Errand-Operator": name} if name else {}


def cmd_revoke(args: argparse.Namespace) -> int:
    if args.jti:
        body = _admin_request(args, "POST", f"/admin/grants/{args.jti}/revoke")
        print(f"revoked {body['revoked']} grant(s)")
        return 0
    selectors = [
        (k, v)
        for k, v in (
            ("task", args.task),
            ("identity", args.identity),
            ("owner", args.owner),
            ("identity_type", args.type),
            ("issuer", args.issuer),
        )
        if v
    ]
    if len(selectors) != 1:
        sys.exit("errand: name exactly one of --jti, --task, --identity, --owner, --type, --issuer")
    if not args.reason:
        sys.exit("errand: --reason is required for a bulk revocation")
    kind, value = selectors[0]
    body = _admin_request(
        args,
        "POST",
        "/admin/revoke",
        json={"kind": kind, "value": value, "reason": args.reason},
        extra_headers=_operator_headers(args),
    )
    return _print_revocation(args, body, f"revoked {body['revoked']} grant(s) of {kind} {value}")


def _print_revocation(args: argparse.Namespace, body: dict[str, Any], summary: str) -> int:
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(summary)
    print(f"revocation record {body['record_id']} (verify with `errand evidence verify`):")
    print(body["record"])
    return 0


def cmd_revoke_all(args: argparse.Namespace) -> int:
    body = _admin_request(
        args,
        "POST",
        "/admin/revoke-all",
        json={"reason": args.reason, "rotate_key": args.rotate_key},
        extra_headers=_operator_headers(args),
    )
    return _print_revocation(
        args,
        body,
        f"revoke-all: epoch is now {body['epoch']}; {body['revoked']} live grant(s) ended at once. "
        f"Clean-up runs in the background (errand revoke-all-status {body['epoch']}).",
    )


def cmd_revoke_all_status(args: argparse.Namespace) -> int:
    body = _admin_request(args, "GET", f"/admin/revoke-all/{args.epoch}")
    print(json.dumps(body, indent=2))
    return 0


def cmd_evidence_list(args: argparse.Namespace) -> int:
    body = _admin_request(args, "GET", "/admin/evidence", params={"limit": str(args.limit)})
    for rec in body["records"]:
        print(rec["jws"] if args.json else f"{rec['id']} {rec['jws'][:60]}...")
    return 0


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from broker.tokens.evidence import EvidenceInvalid, verify_record

    base = _broker_url(args)  # keys fetched over plain http could be anyone's
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


def cmd_config_check(args: argparse.Namespace) -> int:
    path = Path(args.path or os.environ.get("ERRAND_CONFIG", "config/errand.example.yaml"))
    try:
        config = load_config(path, dict(os.environ))
    except ConfigError as err:
        print(f"errand: {path}: {err}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(
        f"{path}: OK ({len(config.issuers)} issuers, {len(config.identities)} identities, "
        f"{len(config.clients)} clients)"
    )
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from broker.tokens.keyring import generate_key

    key = generate_key(Path(args.dir), activate=not args.no_activate)
    print(key.kid)
    return 0


def cmd_hash_secret(args: argparse.Namespace) -> int:
    secret = sys.stdin.readline().rstrip("\n")
    if len(secret) < 16:
        print("errand: a client secret must be at least 16 characters", file=sys.stderr)
        return 1
    print(hashlib.sha256(secret.encode()).hexdigest())
    return 0


def cmd_dev_token(args: argparse.Namespace) -> int:
    from broker.devissuer import github_claims, load_or_create_key, mint_with

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


def cmd_serve(args: argparse.Namespace) -> int:
    conf = str(Path(__file__).resolve().parent.parent / "config" / "gunicorn.conf.py")
    os.execvp(  # noqa: S606 - replaces this process with gunicorn; argv is ours
        sys.executable, [sys.executable, "-m", "gunicorn", "-c", conf, "broker.app:create_app()"]
    )
    return 0  # pragma: no cover


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.__main__ import main as worker_main

    worker_main()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from broker.devrun import run_dev

    return run_dev(port=args.port, state_dir=Path(args.state_dir))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="errand", description="Errand credential broker")
    sub = p.add_subparsers(dest="command", required=True)

    def admin(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--url", default=os.environ.get("ERRAND_URL", "http://127.0.0.1:8080"))
        sp.add_argument("--admin-token-file", default=None)
        sp.add_argument("--json", action="store_true")

    s = sub.add_parser("run", help="development: embedded Redis (unless REDIS_URL), broker, worker")
    s.add_argument("--port", type=int, default=int(os.environ.get("ERRAND_PORT", "8080")))
    s.add_argument("--state-dir", default=os.environ.get("ERRAND_STATE_DIR", ".errand"))
    s.set_defaults(fn=cmd_run)
    sub.add_parser("serve", help="run the HTTP broker under gunicorn").set_defaults(fn=cmd_serve)
    sub.add_parser("worker", help="run an RQ worker with the scheduler").set_defaults(fn=cmd_worker)

    s = sub.add_parser("grants", help="list live grants")
    admin(s)
    s.add_argument("--task")
    s.add_argument("--identity")
    s.add_argument("--owner")
    s.add_argument("--limit", type=int, default=100)
    s.set_defaults(fn=cmd_grants)

    s = sub.add_parser("audit", help="print a task's audit trail")
    admin(s)
    s.add_argument("task")
    s.add_argument("--limit", type=int, default=1000)
    s.set_defaults(fn=cmd_audit)

    s = sub.add_parser(
        "revoke", help="revoke a grant, or every grant of a task/identity/owner/type/issuer"
    )
    admin(s)
    s.add_argument("--jti")
    s.add_argument("--task")
    s.add_argument("--identity")
    s.add_argument("--owner")
    s.add_argument("--type", help="identity type: human, service, partner, agent")
    s.add_argument("--issuer", help="trusted issuer id")
    s.add_argument("--reason")
    s.add_argument("--operator", help="who is asking (recorded); defaults to $USER")
    s.set_defaults(fn=cmd_revoke)

    s = sub.add_parser("revoke-all", help="INCIDENT: end every live grant at once")
    admin(s)
    s.add_argument("--reason", required=True)
    s.add_argument("--rotate-key", action="store_true", help="also replace the signing key at once")
    s.add_argument("--operator")
    s.set_defaults(fn=cmd_revoke_all)

    s = sub.add_parser("revoke-all-status", help="progress of a revoke-all clean-up")
    admin(s)
    s.add_argument("epoch", type=int)
    s.set_defaults(fn=cmd_revoke_all_status)

    s = sub.add_parser("evidence", help="signed revocation records")
    esub = s.add_subparsers(dest="evidence_command", required=True)
    e = esub.add_parser("list", help="list recent revocation records")
    admin(e)
    e.add_argument("--limit", type=int, default=20)
    e.set_defaults(fn=cmd_evidence_list)
    e = esub.add_parser(
        "verify", help="verify a record (file or - for stdin) against the broker's keys"
    )
    e.add_argument("file")
    e.add_argument("--url", default=os.environ.get("ERRAND_URL", "http://127.0.0.1:8080"))
    e.set_defaults(fn=cmd_evidence_verify)

    s = sub.add_parser("config", help="configuration commands")
    csub = s.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate a configuration file")
    c.add_argument("path", nargs="?")
    c.set_defaults(fn=cmd_config_check)

    s = sub.add_parser("keys", help="signing-key commands")
    ksub = s.add_subparsers(dest="keys_command", required=True)
    k = ksub.add_parser("generate", help="write a new ES256 signing key")
    k.add_argument("--dir", default=os.environ.get("ERRAND_SIGNING_KEY_DIR", ".errand/keys"))
    k.add_argument("--no-activate", action="store_true")
    k.set_defaults(fn=cmd_keys_generate)
    k = ksub.add_parser(
        "kek-generate", help="print a new base64 key-encryption key (store it as a secret)"
    )
    k.set_defaults(
        fn=lambda a: print(__import__("broker.tokens.keystore", fromlist=["x"]).new_kek()) or 0
    )
    k = ksub.add_parser("status", help="signing keys and their states")
    admin(k)
    k.set_defaults(
        fn=lambda a: print(json.dumps(_admin_request(a, "GET", "/admin/keys"), indent=2)) or 0
    )
    k = ksub.add_parser("rotate", help="schedule a rotation (or --emergency: replace the key now)")
    admin(k)
    k.add_argument("--emergency", action="store_true", help="the old key leaves the JWKS at once")
    k.set_defaults(
        fn=lambda a: (
            print(
                json.dumps(
                    _admin_request(
                        a, "POST", "/admin/keys/rotate", json={"emergency": a.emergency}
                    ),
                    indent=2,
                )
            )
            or 0
        )
    )

    sub.add_parser("hash-secret", help="SHA-256 of a client secret read from stdin").set_defaults(
        fn=cmd_hash_secret
    )

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
    # `errand review` and `errand identity ...`: the inventory (broker/inventory_cli.py).
    from broker.inventory_cli import register as register_inventory

    register_inventory(sub, admin)

    # `errand exchange` / `errand complete`: the CI client (errand_client/ci.py).
    from errand_client.ci import register as register_ci_commands

    register_ci_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except BrokerError as err:
        print(f"errand: {err.description}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
