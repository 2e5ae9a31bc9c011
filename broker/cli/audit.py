"""`errand audit`: search the audit trail, export it, verify an export or the live chain
(docs/audit.md).

`errand audit verify` exit status: 0 the chain and every checkpoint signature verify;
1 something was removed, altered, reordered or inserted (the first bad entry is named);
2 usage error, unreadable export, or the broker is unreachable."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from broker.cli.admin import add_admin_arguments, admin_request, admin_token, broker_url
from broker.cli.output import iso_utc, printable
from broker.domain.audit_export import ExportUnreadable, parse_export, verify_export
from broker.domain.task_proof import verify_proof
from broker.tokens.evidence import EvidenceInvalid

SUBCOMMANDS = ("search", "verify", "export", "proof", "verify-proof", "hash")
SEARCH_FIELDS = ("identity", "owner", "outcome", "reason", "event", "actor", "issuer", "error")
EXIT_OK, EXIT_TAMPERED, EXIT_UNUSABLE = 0, 1, 2


def audit_argv(argv: list[str]) -> list[str]:
    """`errand audit TASK` and `errand audit --identity X` are `errand audit search ...`."""
    if len(argv) >= 2 and argv[0] == "audit" and argv[1] not in (*SUBCOMMANDS, "-h", "--help"):
        return ["audit", "search", *argv[1:]]
    return argv


def cmd_search(args: argparse.Namespace) -> int:
    params: dict[str, str] = {"limit": str(args.limit)}
    if args.task:
        params["task"] = args.task
    for name in SEARCH_FIELDS:
        if getattr(args, name):
            params[name] = getattr(args, name)
    for name in ("since", "until"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    body = admin_request(args, "GET", "/admin/audit", params=params)
    events = list(reversed(body["events"]))  # oldest first reads like a story
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for e in events:
        extra = e.get("reason") or e.get("jti_hmac") or e.get("jti") or ""
        print(
            printable(
                f"{iso_utc(e.get('ts'))} {e.get('event', '?'):18} {e.get('outcome', ''):10} "
                f"identity={e.get('identity')} task={e.get('task')} {extra}"
            )
        )
    what = f"task {printable(args.task)}" if args.task else "the search"
    print(f"{len(events)} event(s) for {what}")
    return 0


def _admin_stream(args: argparse.Namespace, path: str, params: dict[str, str]) -> Iterator[str]:
    """Lines of a streamed admin answer; SystemExit(2) when the broker cannot give it."""
    try:
        base = broker_url(args)
        token = admin_token(args)
    except SystemExit as err:
        print(err.code, file=sys.stderr)
        raise SystemExit(EXIT_UNUSABLE) from err
    try:
        resp = requests.get(
            base + path,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
            allow_redirects=False,
            stream=True,
        )
    except requests.RequestException as err:
        print(f"errand: cannot reach {base}: {type(err).__name__}", file=sys.stderr)
        raise SystemExit(EXIT_UNUSABLE) from err
    if resp.status_code != 200:
        print(f"errand: {base} answered {resp.status_code}", file=sys.stderr)
        raise SystemExit(EXIT_UNUSABLE)
    # iter_lines decodes only when the answer names a charset: JSON lines may not.
    for line in resp.iter_lines():
        if line:
            yield line.decode("utf-8") if isinstance(line, bytes) else line


def _export_params(args: argparse.Namespace, fmt: str) -> dict[str, str]:
    params = {"format": fmt}
    if getattr(args, "since", None):
        params["since"] = args.since
    return params


def cmd_export(args: argparse.Namespace) -> int:
    out = sys.stdout if args.output in (None, "-") else open(args.output, "w")  # noqa: SIM115
    try:
        for line in _admin_stream(args, "/admin/audit/export", _export_params(args, args.format)):
            out.write(line + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    jwks: dict[str, Any] | None = None
    try:
        if args.jwks:
            jwks = json.loads(Path(args.jwks).read_text())
        if args.file:
            source = f"export {args.file}"
            with open(args.file) as fh:
                export = parse_export(fh)
        else:
            source = f"the live audit of {args.url}"
            export = parse_export(_admin_stream(args, "/admin/audit/export", {"format": "jsonl"}))
    except (OSError, ValueError) as err:
        print(f"errand: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    except ExportUnreadable as err:
        print(f"errand: not an audit export: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    report = verify_export(export, jwks=jwks, issuer=args.issuer)
    summary = {
        "source": source,
        "ok": report.ok,
        "entries": len(export.entries),
        "sealed": report.sealed,
        "unsealed": report.unsealed,
        "checkpoints": report.checkpoints,
        "trimmed_checkpoints": report.trimmed_checkpoints,
        "first_bad": report.first_bad,
        "problems": report.problems,
        "keys": "given with --jwks" if jwks is not None else "carried by the export",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        state = "OK" if report.ok else "TAMPERED"
        print(
            f"{state}: {source}: {len(export.entries)} entries, {report.sealed} sealed by "
            f"{report.checkpoints} signed checkpoint(s), {report.unsealed} not sealed yet"
        )
        if report.trimmed_checkpoints:
            print(
                f"  {report.trimmed_checkpoints} checkpoint(s) cover entries removed by "
                "retention; the chain is verified from the newest of them"
            )
        if jwks is None:
            print(
                "  signatures checked against the keys the export carries: compare their kids "
                "with the broker's published JWKS, or pass --jwks"
            )
        for problem in report.problems[:20]:
            print(printable(f"  {problem}"))
        if report.first_bad:
            print(printable(f"  first bad: {report.first_bad}"))
    return EXIT_OK if report.ok else EXIT_TAMPERED


def cmd_proof(args: argparse.Namespace) -> int:
    """Fetch a task's proof; with --out, save it as `errand audit verify-proof` reads it."""
    body = admin_request(args, "GET", f"/admin/tasks/{args.task}/proof")
    text = json.dumps(body, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"proof of task {printable(args.task)} written to {printable(args.out)}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_verify_proof(args: argparse.Namespace) -> int:
    """Offline: exit 0 the proof verifies, 1 it does not (altered, or not signed by the keys),
    2 the file or key set cannot be read."""
    try:
        raw = Path(args.file).read_text().strip()
        saved: dict[str, Any] = json.loads(raw) if raw.startswith("{") else {"proof": raw}
        jwks = json.loads(Path(args.jwks).read_text()) if args.jwks else saved.get("jwks")
        jws = saved["proof"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"errand: not a task proof file: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not isinstance(jwks, dict) or not isinstance(jws, str):
        print("errand: no key set: pass the broker's published keys with --jwks", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        claims = verify_proof(jws, jwks, args.issuer or saved.get("issuer"))
    except EvidenceInvalid as err:
        if args.json:
            print(json.dumps({"ok": False, "problem": str(err)}, indent=2))
        else:
            print(printable(f"INVALID: {err}"))
        return EXIT_TAMPERED
    if args.json:
        print(json.dumps({"ok": True, "claims": claims}, indent=2))
        return EXIT_OK
    print(
        printable(
            f"OK: every token of task {claims['task']} ({claims['state']} at "
            f"{iso_utc(claims['ended_at'])}) dead at {iso_utc(claims['dead_at'])}: "
            f"{claims['grant_count']} grant(s), epoch {claims['epoch']}, issuer {claims['iss']}"
        )
    )
    if not args.jwks:
        print(
            "  signature checked against the key the file carries: compare its kid with the "
            "broker's published JWKS, or pass --jwks"
        )
    return EXIT_OK


def cmd_hash(args: argparse.Namespace) -> int:
    """The value is read from stdin, never the command line (it may be a live token)."""
    value = sys.stdin.read().strip() if args.value in (None, "-") else args.value
    if not value:
        sys.exit("errand: give the value on stdin (or as an argument, for a jti)")
    body = admin_request(args, "POST", "/admin/audit/hash", json={"value": value})
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"token_hmac      {body['token_hmac']}   (as a token or assertion)")
    print(f"jti_hmac        {body['jti_hmac']}   (as a jti)")
    if body.get("token_jti_hmac"):
        print(f"jti inside it   {body['token_jti_hmac']}   (the jti of this JWT)")
    print("search with: errand audit search --json | grep <hmac>")
    return 0


def register(sub: Any) -> None:
    a = sub.add_parser(
        "audit",
        help="search, export and verify the audit trail",
        description="`errand audit TASK` is short for `errand audit search TASK`.",
    )
    asub = a.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")

    s = asub.add_parser("search", help="audit events by task, identity, outcome, reason, time")
    add_admin_arguments(s)
    s.add_argument("task", nargs="?", help="only this task's events")
    for name in SEARCH_FIELDS:
        s.add_argument(f"--{name}", help=f"only events whose {name} is exactly this")
    s.add_argument("--since", help="from this time (ISO 8601, UTC if no zone, or unix seconds)")
    s.add_argument("--until", help="up to this time (ISO 8601 or unix seconds)")
    s.add_argument(
        "--limit", type=int, default=1000, help="return at most this many events (default 1000)"
    )
    s.set_defaults(fn=cmd_search)

    s = asub.add_parser("export", help="export the audit trail as JSON lines or CloudEvents")
    add_admin_arguments(s)
    s.add_argument(
        "--format", choices=("jsonl", "cloudevents"), default="jsonl", help="default: jsonl"
    )
    s.add_argument(
        "--since",
        help="from this time (ISO 8601 or unix seconds); the export starts at the signed "
        "checkpoint before it, so it verifies on its own",
    )
    s.add_argument("--output", "-o", help="write to this file (default: stdout)")
    s.set_defaults(fn=cmd_export)

    s = asub.add_parser(
        "verify",
        help="verify an export file, or the live audit trail: exit 0 ok, 1 tampered, 2 unusable",
    )
    add_admin_arguments(s)
    s.add_argument("file", nargs="?", help="an export file (default: export from --url and verify)")
    s.add_argument(
        "--jwks", help="a JSON Web Key Set to check the signatures with (default: the export's)"
    )
    s.add_argument("--issuer", help="the broker's issuer (default: the export's)")
    s.set_defaults(fn=cmd_verify)

    s = asub.add_parser("proof", help="an ended task's signed proof that its tokens are dead")
    add_admin_arguments(s)
    s.add_argument("task", help="the task id")
    s.add_argument("--out", "-o", help="save the proof to this file (default: print it)")
    s.set_defaults(fn=cmd_proof)

    s = asub.add_parser(
        "verify-proof",
        help="verify a saved task proof offline: exit 0 ok, 1 invalid, 2 unusable",
    )
    s.add_argument("file", help="a file saved by `errand audit proof TASK --out FILE`")
    s.add_argument(
        "--jwks", help="the broker's published JSON Web Key Set (default: the key in the file)"
    )
    s.add_argument("--issuer", help="the broker's issuer (default: the file's)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(fn=cmd_verify_proof)

    s = asub.add_parser("hash", help="the audit HMACs of a token or jti, to find its events")
    add_admin_arguments(s)
    s.add_argument(
        "value", nargs="?", help="a jti; leave out (or -) to read a token from stdin (safer)"
    )
    s.set_defaults(fn=cmd_hash)
