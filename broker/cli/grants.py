"""`errand grants`, `revoke`, `revoke-all`, `revoke-all-status`: live grants and
ending them, through the admin API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from broker.cli.admin import add_admin_arguments, admin_request, broker_url, operator_headers
from broker.cli.evidence import RECORD_SCAN, latest_revoke_all_epoch, revoke_all_recorded
from broker.cli.output import as_number, iso_utc, table


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
    print(
        table(
            ["JTI", "IDENTITY", "TASK", "EXPIRES (UTC)", "SCOPE"],
            [
                [g["jti"], g["identity_id"], g["task_id"], iso_utc(g["exp"]), " ".join(g["scopes"])]
                for g in rows
            ],
        )
    )
    print(f"{len(rows)} live grant(s)")
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
    if not body.get("record"):
        print("no revocation record was stored (see the broker's log)")
        return 0
    print(f"revocation record {body['record_id']} (verify with `errand evidence verify`):")
    print(body["record"])
    return 0


def _confirm_revoke_all(args: argparse.Namespace, base: str) -> None:
    """Typed confirmation: on a terminal the operator types the broker's host, so a revoke-all
    aimed at the wrong broker is caught. Without a terminal only --yes proceeds."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        sys.exit(
            "errand: revoke-all ends every live grant; stdin is not a terminal, so add --yes "
            "to confirm"
        )
    host = urlsplit(base).netloc
    rotation = " and replaces the signing key" if args.rotate_key else ""
    sys.stderr.write(
        f"revoke-all ends EVERY live grant on {base} at once{rotation}.\n"
        f"Type the broker's host ({host}) to confirm: "
    )
    sys.stderr.flush()
    if sys.stdin.readline().strip() != host:
        sys.exit("errand: not confirmed; nothing was revoked")


def _rotation_summary(rotation: dict[str, Any]) -> str:
    removed = ", ".join(str(k) for k in rotation.get("retired_or_removed") or []) or "none"
    kind = " (emergency)" if rotation.get("emergency") else ""
    return (
        f"signing key rotated{kind}: {rotation.get('kid')} signs from "
        f"{iso_utc(rotation.get('activate_at'))}; removed from the JWKS: {removed}"
    )


def cmd_revoke_all(args: argparse.Namespace) -> int:
    base = broker_url(args)  # refuse a bad --url before asking anything
    _confirm_revoke_all(args, base)
    body = admin_request(
        args,
        "POST",
        "/admin/revoke-all",
        json={"reason": args.reason, "rotate_key": args.rotate_key},
        extra_headers=operator_headers(args),
    )
    summary = (
        f"revoke-all: epoch is now {body['epoch']}; {body['revoked']} live grant(s) ended at once. "
        f"Clean-up runs in the background (errand revoke-all-status {body['epoch']})."
    )
    if body.get("key_rotation"):
        summary += "\n" + _rotation_summary(body["key_rotation"])
    return _print_revocation(args, body, summary)


def cmd_revoke_all_status(args: argparse.Namespace) -> int:
    """Clean-up progress of one revoke-all (by default the latest). Exit status 1 when the
    broker knows nothing of that epoch."""
    epoch = args.epoch
    if epoch is None:
        epoch = latest_revoke_all_epoch(args)
        if epoch is None:
            sys.exit(
                f"errand: no revoke-all among the latest {RECORD_SCAN} revocation records; "
                "give the epoch that `errand revoke-all` printed"
            )
    body = admin_request(args, "GET", f"/admin/revoke-all/{epoch}")
    progress = {str(k): as_number(v) for k, v in (body.get("progress") or {}).items()}
    if not progress and args.epoch is not None and not revoke_all_recorded(args, epoch):
        sys.exit(
            f"errand: no revoke-all is known for epoch {epoch}: the broker has no clean-up "
            f"progress for it (kept 7 days) and no revocation record among the latest "
            f"{RECORD_SCAN}"
        )
    if args.json:
        print(json.dumps({"epoch": epoch, "progress": progress}, indent=2))
        return 0
    if not progress:
        print(
            f"revoke-all epoch {epoch}: clean-up not started yet "
            "(no worker has picked it up: is `errand worker` running?)"
        )
        return 0
    state = "done" if progress.get("done") == 1 else "running"
    print(
        f"revoke-all epoch {epoch}: clean-up {state}\n"
        f"  examined {progress.get('examined', 0)}, revoked {progress.get('revoked', 0)}, "
        f"batches {progress.get('batches', 0)}, passes {progress.get('passes', 0)}\n"
        f"  updated {iso_utc(progress.get('updated_at'))}"
    )
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("grants", help="list live grants")
    add_admin_arguments(s)
    s.add_argument("--task", help="only the grants of this task")
    s.add_argument("--identity", help="only the grants of this identity")
    s.add_argument("--owner", help="only the grants of this owner's identities")
    s.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    s.set_defaults(fn=cmd_grants)

    s = sub.add_parser(
        "revoke", help="revoke a grant, or every grant of a task/identity/owner/type/issuer"
    )
    add_admin_arguments(s)
    s.add_argument("--jti", help="one grant, by the jti of its token")
    s.add_argument("--task", help="every grant of this task")
    s.add_argument("--identity", help="every grant of this identity")
    s.add_argument("--owner", help="every grant of this owner's identities")
    s.add_argument(
        "--type", help="every grant of this identity type: human, service, partner, agent"
    )
    s.add_argument("--issuer", help="every grant issued on a token of this trusted issuer id")
    s.add_argument("--reason", help="why (recorded; required for a bulk revocation)")
    s.add_argument("--operator", help="who is asking (recorded); defaults to $USER")
    s.set_defaults(fn=cmd_revoke)

    s = sub.add_parser("revoke-all", help="INCIDENT: end every live grant at once")
    add_admin_arguments(s)
    s.add_argument("--reason", required=True, help="why (recorded in the audit and the record)")
    s.add_argument("--rotate-key", action="store_true", help="also replace the signing key at once")
    s.add_argument("--operator", help="who is asking (recorded); defaults to $USER")
    s.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for a typed confirmation (required when stdin is not a terminal)",
    )
    s.set_defaults(fn=cmd_revoke_all)

    s = sub.add_parser("revoke-all-status", help="progress of a revoke-all clean-up")
    add_admin_arguments(s)
    s.add_argument(
        "epoch",
        type=int,
        nargs="?",
        help="the epoch `errand revoke-all` printed (default: the latest revoke-all)",
    )
    s.set_defaults(fn=cmd_revoke_all_status)
