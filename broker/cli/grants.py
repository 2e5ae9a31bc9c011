"""`errand grants`, `audit`, `revoke`, `revoke-all`, `revoke-all-status`: live grants and
ending them, through the admin API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from broker.cli.admin import add_admin_arguments, admin_request, operator_headers


def cmd_grants(args: argparse.Namespace) -> int:
    params = {
        k: v
        for k, v in (("task", args.task), ("identity", args.identity), ("owner", args.owner))
        if v
    }
    params["limit"] = str(args.limit)
    body = admin_request(args, "GET", "/admin/grants", params=params)
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
    body = admin_request(
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


def cmd_revoke(args: argparse.Namespace) -> int:
    if args.jti:
        body = admin_request(args, "POST", f"/admin/grants/{args.jti}/revoke")
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
    body = admin_request(
        args,
        "POST",
        "/admin/revoke",
        json={"kind": kind, "value": value, "reason": args.reason},
        extra_headers=operator_headers(args),
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
    body = admin_request(
        args,
        "POST",
        "/admin/revoke-all",
        json={"reason": args.reason, "rotate_key": args.rotate_key},
        extra_headers=operator_headers(args),
    )
    return _print_revocation(
        args,
        body,
        f"revoke-all: epoch is now {body['epoch']}; {body['revoked']} live grant(s) ended at once. "
        f"Clean-up runs in the background (errand revoke-all-status {body['epoch']}).",
    )


def cmd_revoke_all_status(args: argparse.Namespace) -> int:
    body = admin_request(args, "GET", f"/admin/revoke-all/{args.epoch}")
    print(json.dumps(body, indent=2))
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("grants", help="list live grants")
    add_admin_arguments(s)
    s.add_argument("--task")
    s.add_argument("--identity")
    s.add_argument("--owner")
    s.add_argument("--limit", type=int, default=100)
    s.set_defaults(fn=cmd_grants)

    s = sub.add_parser("audit", help="print a task's audit trail")
    add_admin_arguments(s)
    s.add_argument("task")
    s.add_argument("--limit", type=int, default=1000)
    s.set_defaults(fn=cmd_audit)

    s = sub.add_parser(
        "revoke", help="revoke a grant, or every grant of a task/identity/owner/type/issuer"
    )
    add_admin_arguments(s)
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
    add_admin_arguments(s)
    s.add_argument("--reason", required=True)
    s.add_argument("--rotate-key", action="store_true", help="also replace the signing key at once")
    s.add_argument("--operator")
    s.set_defaults(fn=cmd_revoke_all)

    s = sub.add_parser("revoke-all-status", help="progress of a revoke-all clean-up")
    add_admin_arguments(s)
    s.add_argument("epoch", type=int)
    s.set_defaults(fn=cmd_revoke_all_status)
