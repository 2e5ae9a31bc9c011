"""`errand review` and `errand identity suspend|unsuspend|offboard|reload`: the identity
inventory, through the admin API like the other operator commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from broker.cli.admin import add_admin_arguments, admin_request, operator_headers
from broker.cli.output import iso_utc, printable


def _request(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    return admin_request(args, method, path, extra_headers=operator_headers(args), **kw)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(printable(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_review(report: dict[str, Any]) -> str:
    rows = []
    for r in report["identities"]:
        allow = r["allowances"]
        rows.append(
            [
                r["id"],
                r["type"],
                r["owner"],
                r["state"],
                r["expires"] or "-",
                iso_utc(r["last_exchange"]) if r["last_exchange"] else "never",
                str(r["live_grants"]),
                f"{len(allow['audiences'])} aud, {' '.join(allow['scopes'])}, "
                f"{allow['max_ttl_seconds']}s",
                ",".join(f for f in r["flags"] if f not in ("suspended", "offboarded")) or "-",
            ]
        )
    out = [
        f"Access review generated {iso_utc(report['generated_at'])} "
        f"(dormant: no exchange in {report['dormant_days']} days; expiring within "
        f"{report['expiring_days']} days)",
        "",
        _table(
            rows,
            [
                "IDENTITY",
                "TYPE",
                "OWNER",
                "STATE",
                "EXPIRES",
                "LAST EXCHANGE",
                "LIVE",
                "ALLOWANCES",
                "FLAGS",
            ],
        ),
        "",
    ]
    purposes = [printable(f"  {r['id']}: {r['purpose']}") for r in report["identities"]]
    if purposes:
        out += ["Purposes:", *purposes, ""]
    if report.get("offboarded"):
        out.append("Offboarded (kept for the audit):")
        out += [
            printable(f"  {o['id']} at {iso_utc(o.get('at'))} by {o.get('actor')}")
            + (
                "  <- still in the configuration file: remove it"
                if o.get("in_configuration")
                else ""
            )
            for o in report["offboarded"]
        ]
        out.append("")
    summary = report.get("summary", {})
    out.append(
        ", ".join(f"{k}: {v}" for k, v in sorted(summary.items()) if k != "identities")
        + f" ({summary.get('identities', 0)} identities)"
    )
    return "\n".join(out)


def cmd_review(args: argparse.Namespace) -> int:
    params = {"dormant_days": str(args.dormant_days), "expiring_days": str(args.expiring_days)}
    if args.include_offboarded:
        params["include_offboarded"] = "1"
    report = _request(args, "GET", "/admin/identities/review", params=params)
    print(json.dumps(report, indent=2) if args.json else format_review(report))
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    if args.identity_command == "offboard" and not args.yes:
        print(
            "errand: offboarding cannot be undone: the identity is suspended for good and its "
            "live grants are revoked. Add --yes to proceed.",
            file=sys.stderr,
        )
        return 2
    body = _request(
        args,
        "POST",
        f"/admin/identities/{args.identity}/{args.identity_command}",
        json={"reason": args.reason or ""},
    )
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        revoked = f", {body['revoked']} live grant(s) revoked" if "revoked" in body else ""
        print(f"{body['identity']}: {body['state']}{revoked}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    body = _request(args, "POST", "/admin/identities/reload")
    if args.json:
        print(json.dumps(body, indent=2))
    elif body.get("ok"):
        print(
            f"configuration {body.get('config_sha256')}: {body['identities']} identities"
            f" (process {body.get('pid')}, generation {body['generation']})"
        )
    else:
        print(
            f"errand: reload refused, running configuration kept:\n{body.get('error')}",
            file=sys.stderr,
        )
    return 0 if body.get("ok") else 1


def register(sub: Any) -> None:
    """Add `review` and `identity ...` to errand's subcommands."""
    s = sub.add_parser("review", help="access review of the identity inventory")
    add_admin_arguments(s)
    s.add_argument("--dormant-days", type=int, default=90, help="flag identities idle this long")
    s.add_argument(
        "--expiring-days", type=int, default=30, help="flag expiry within this many days"
    )
    s.add_argument(
        "--include-offboarded",
        action="store_true",
        help="also list offboarded identities still in the configuration",
    )
    s.set_defaults(fn=cmd_review)

    s = sub.add_parser("identity", help="suspend, unsuspend or offboard an identity")
    isub = s.add_subparsers(dest="identity_command", required=True)
    for name, text in (
        ("suspend", "stop issuing to the identity at once and revoke its live grants"),
        ("unsuspend", "reinstate a suspended identity"),
        ("offboard", "suspend for good and remove from the inventory (cannot be undone)"),
    ):
        c = isub.add_parser(name, help=text)
        add_admin_arguments(c)
        c.add_argument("identity", help="the identity id")
        c.add_argument("--reason", default="", help="why (recorded)")
        c.add_argument("--operator", help="who is asking (recorded); defaults to $USER")
        if name == "offboard":
            c.add_argument("--yes", action="store_true", help="confirm: offboarding is permanent")
        c.set_defaults(fn=cmd_identity)
    c = isub.add_parser("reload", help="re-read the configuration file now (one web process)")
    add_admin_arguments(c)
    c.set_defaults(fn=cmd_reload)
