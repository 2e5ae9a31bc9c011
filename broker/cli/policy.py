"""`errand policy check|explain` (the runtime policy, offline) and
`errand approvals list|show|approve|deny` (through the admin API).

`policy check` loads the configuration with the broker's own loader, which compiles and
validates the policy directory, so a policy repository's CI can run it; `--dir` checks
another directory against the same configuration (the scopes it names become actions)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from broker.cli.admin import add_admin_arguments, admin_request, operator_headers
from broker.config import ConfigError, load_config
from broker.domain.explain import explain, identity_for_token, unverified_claims
from broker.domain.models import TOKEN_TYPE_JWT, Config, ExchangeRequest
from broker.policy.cedar_engine import PolicyError, configured_scopes, load_policy_dir


def _config(args: argparse.Namespace) -> Config | None:
    path = args.config or os.environ.get("ERRAND_CONFIG")
    if not path:
        print(
            "errand: name the configuration: --config PATH (or set ERRAND_CONFIG)", file=sys.stderr
        )
        return None
    try:
        config = load_config(Path(path), dict(os.environ))
        if getattr(args, "dir", None):
            policy = load_policy_dir(
                Path(args.dir),
                scopes=configured_scopes(config.audiences, config.identities),
                audiences=config.audiences,
            )
            config = replace(
                config,
                policy_options=replace(config.policy_options, dir=Path(args.dir)),
                runtime_policy=policy,
            )
    except ConfigError as err:
        print(f"errand: {path}: {err}", file=sys.stderr)
        return None
    except PolicyError as err:
        print(f"errand: {args.dir}: {err}", file=sys.stderr)
        return None
    return config


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 1
    policy = config.runtime_policy
    if policy is None:
        print(
            "errand: no policy directory configured (policy.dir); nothing to check", file=sys.stderr
        )
        return 1
    print(f"{config.policy_options.dir}: OK ({policy.count} policies, digest {policy.digest})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 1
    claims: dict[str, Any] = {}
    if args.identity:
        identity = config.identity(args.identity)
        if identity is None:
            print(f"errand: no identity {args.identity!r} in the inventory", file=sys.stderr)
            return 1
        issuer_id = identity.rules[0].issuer_id if identity.rules else ""
    else:
        text = sys.stdin.read() if args.token_file == "-" else Path(args.token_file).read_text()
        try:
            claims = unverified_claims(text)
            identity, issuer_id = identity_for_token(config, claims)
        except ValueError as err:
            print(f"errand: subject token: {err}", file=sys.stderr)
            return 1
    req = ExchangeRequest(
        subject_token="",
        subject_token_type=TOKEN_TYPE_JWT,
        audiences=tuple(args.audience),
        scopes=tuple(args.scope.split()) if args.scope else None,
        task_id=args.task_id,
        purpose=args.purpose,
    )
    out = explain(config, identity, issuer_id, claims, req, float(args.at or _now()))
    if args.json:
        print(json.dumps(asdict(out), indent=2))
    else:
        print(f"decision: {out.decision}")
        print(f"identity: {out.identity}")
        print(f"stage:    {out.stage}")
        if out.deny_class:
            print(f"class:    {out.deny_class}")
        if out.scope_classes:
            print(
                "scopes:   "
                + ", ".join(f"{s} ({c or 'undeclared'})" for s, c in out.scope_classes.items())
            )
        print(f"policies: {', '.join(out.policies) or '-'}")
        print(f"why:      {out.why}")
        if out.policy_digest:
            print(f"policy digest: {out.policy_digest}")
    return 0 if out.decision == "allow" else 2


def _now() -> float:
    import time

    return time.time()


# -- approvals (admin API) ------------------------------------------------------------------
def _line(a: dict[str, Any]) -> str:
    return (
        f"{a['id']}  {a['state']:<8}  {a['identity_id']}  task={a['task_id']}  "
        f"aud={','.join(a['audiences'])}  scope={' '.join(a['scopes'])}"
        + (f"  by={a['approver']}: {a['reason']}" if a.get("approver") else "")
    )


def cmd_approvals_list(args: argparse.Namespace) -> int:
    body = admin_request(args, "GET", "/admin/approvals")
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        for a in body.get("approvals", []):
            print(_line(a))
    return 0


def cmd_approvals_show(args: argparse.Namespace) -> int:
    body = admin_request(args, "GET", f"/admin/approvals/{args.approval_id}")
    print(json.dumps(body, indent=2) if args.json else _line(body))
    return 0


def cmd_approvals_decide(args: argparse.Namespace) -> int:
    body = admin_request(
        args,
        "POST",
        f"/admin/approvals/{args.approval_id}/{args.verb}",
        json={"approver": args.approver, "reason": args.reason},
        extra_headers=operator_headers(args),
    )
    print(json.dumps(body, indent=2) if args.json else _line(body))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="runtime policy: check and explain (offline)")
    psub = p.add_subparsers(dest="policy_command", required=True)
    c = psub.add_parser("check", help="validate the policy directory (exit 1 if invalid)")
    c.add_argument("--config", help="configuration file (default: $ERRAND_CONFIG)")
    c.add_argument("--dir", help="check this policy directory instead of policy.dir")
    c.set_defaults(fn=cmd_check)
    e = psub.add_parser("explain", help="dry-run a request: decision, deciding policies, why")
    e.add_argument("--config", help="configuration file (default: $ERRAND_CONFIG)")
    e.add_argument("--dir", help="use this policy directory instead of policy.dir")
    who = e.add_mutually_exclusive_group(required=True)
    who.add_argument("--identity", help="an identity id of the inventory")
    who.add_argument("--token-file", help="a subject token (file, or - for stdin; not verified)")
    e.add_argument("--audience", action="append", default=[], help="repeatable")
    e.add_argument("--scope", help="space-separated scopes")
    e.add_argument("--purpose", help="the request's purpose")
    e.add_argument("--task-id", help="the task the request names (write scopes need one)")
    e.add_argument("--at", type=float, help="unix time to decide at (default: now)")
    e.add_argument("--json", action="store_true", help="print the explanation as JSON")
    e.set_defaults(fn=cmd_explain)

    a = sub.add_parser("approvals", help="approve or deny high-impact requests (admin API)")
    asub = a.add_subparsers(dest="approvals_command", required=True)
    lst = asub.add_parser("list", help="pending approvals")
    add_admin_arguments(lst)
    lst.set_defaults(fn=cmd_approvals_list)
    show = asub.add_parser("show", help="one approval")
    show.add_argument("approval_id", help="the approval's id")
    add_admin_arguments(show)
    show.set_defaults(fn=cmd_approvals_show)
    for verb in ("approve", "deny"):
        d = asub.add_parser(verb, help=f"{verb} a pending approval")
        d.add_argument("approval_id", help="the id from authorization_pending or the list")
        d.add_argument("--approver", required=True, help="your identity id (policy.approvers)")
        d.add_argument("--reason", required=True, help="why (recorded in the audit)")
        d.add_argument("--operator", help="who is asking (default: $USER)")
        add_admin_arguments(d)
        d.set_defaults(fn=cmd_approvals_decide, verb=verb)
