"""The command line of `errand exchange` and `errand complete`, and main()."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from errand_client.ci.complete_command import cmd_complete
from errand_client.ci.context import Context
from errand_client.ci.exchange_command import cmd_exchange

OUTPUTS = ("stdout", "file", "github-env", "github-output")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=None, help="the Errand broker's base URL (default: $ERRAND_URL)"
    )
    p.add_argument(
        "--env-name",
        default="ERRAND_TOKEN",
        help="variable that carries the token (default ERRAND_TOKEN)",
    )
    p.add_argument("--state-file", default=None, help="where exchange records what complete needs")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt (default 5)")
    p.add_argument(
        "--max-attempts", type=int, default=5, help="attempts on 503/connection errors (default 5)"
    )
    p.add_argument(
        "--allow-http",
        action="store_true",
        help="allow a plain-http broker URL that is not loopback",
    )


def add_exchange_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    src = p.add_argument_group("workload identity (one source; never a static secret)")
    src.add_argument(
        "--audience-for-oidc",
        default=None,
        metavar="AUD",
        help="GitHub Actions: the `aud` Errand expects in the job's OIDC token "
        "(default: $ERRAND_OIDC_AUDIENCE)",
    )
    src.add_argument(
        "--id-token-var",
        default=None,
        metavar="NAME",
        help="GitLab CI: the variable the job's `id_tokens:` fills",
    )
    src.add_argument(
        "--subject-token-file",
        default=None,
        metavar="PATH",
        help="a file holding the token (Kubernetes projected token, SPIFFE JWT-SVID)",
    )
    req = p.add_argument_group("what the token is for")
    req.add_argument(
        "--audience",
        "--resource",
        dest="audiences",
        action="append",
        default=[],
        metavar="AUD",
        help="target audience (repeatable)",
    )
    req.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        default=[],
        help="scope(s), space-separated or repeated",
    )
    req.add_argument(
        "--task-id", default=None, help="bind the token to this task (default: a new unique id)"
    )
    req.add_argument(
        "--purpose", default=None, help="why the job needs the token (recorded in the audit)"
    )
    req.add_argument(
        "--lifetime", type=int, default=None, metavar="SECONDS", help="requested lifetime"
    )
    req.add_argument(
        "--label",
        dest="labels",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bind the task to this run (repeatable; e.g. ci_job=$CI_JOB_ID)",
    )
    p.add_argument(
        "--output",
        choices=OUTPUTS,
        default=None,
        help="where the token goes (default: github-env in GitHub Actions, file elsewhere)",
    )


def add_complete_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument(
        "--token-file",
        default=None,
        help="read the token from this file (removed only if `errand exchange` created it)",
    )


def register(subparsers: Any) -> None:
    """Add `exchange` and `complete` to an argparse subparsers object (errand's CLI)."""
    s = subparsers.add_parser(
        "exchange", help="CI: exchange this job's OIDC token for a task-scoped Errand token"
    )
    add_exchange_arguments(s)
    s.set_defaults(fn=cmd_exchange)
    s = subparsers.add_parser(
        "complete", help="CI: complete the task of a token from `errand exchange`"
    )
    add_complete_arguments(s)
    s.set_defaults(fn=cmd_complete)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="errand", description="Errand CI client")
    register(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: Sequence[str] | None = None, ctx: Context | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args, ctx) if ctx is not None else args.fn(args))
