"""`errand`: run the broker and worker, check configuration, and operator commands.

One module per command group, each adding its subcommands with `register(sub)`:

    processes.py      run, serve, worker
    grants.py         grants, audit, revoke, revoke-all, revoke-all-status
    evidence.py       evidence list|verify
    configuration.py  config check
    keys.py           keys generate|kek-generate|status|rotate, hash-secret
    dev.py            dev-token
    inventory.py      review, identity suspend|unsuspend|offboard|reload
    policy.py         policy check|explain, approvals list|show|approve|deny
    completion.py     completion bash|zsh
    errand_client.ci  exchange, complete (the CI client, also shipped on its own)

Operator commands talk to the admin API over HTTP with the admin credential (admin.py), so
they work from any machine that can reach the broker. People read UTC times in ISO 8601
(output.py); `--json` keeps the broker's own values.

A user's mistake is one line, `errand: <message>`, and exit status 1, never a traceback:
main() turns the known error types (BrokerError, a file that cannot be read, a closed pipe,
Ctrl-C) into that line.

The broker's commands need the `server` extra (`pip install 'errand[server]'`); the base
install has only the client. There, main() says so in one line instead of an import
traceback, and still runs `exchange` and `complete`, which need nothing from the server."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from broker.errors import BrokerError
from errand_client.ci import main as client_main
from errand_client.ci import register as register_ci_commands

__all__ = ["build_parser", "main"]

# Top-level modules of the `server` extra (and what they pull in) that the command modules
# import. A missing one of these means a base install, not a bug.
SERVER_MODULES = frozenset(
    {
        "authlib",
        "cedarpy",
        "flask",
        "gunicorn",
        "marshmallow",
        "prometheus_client",
        "redis",
        "rq",
        "werkzeug",
        "yaml",
    }
)
SERVER_MISSING = "the broker commands need 'pip install errand[server]'"
CLIENT_COMMANDS = ("exchange", "complete")


def package_version() -> str:
    try:
        return version("errand")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: they need the server extra (see main()).
    from broker.cli import (
        audit,
        completion,
        configuration,
        dev,
        evidence,
        grants,
        inventory,
        keys,
        policy,
        processes,
        tasks,
    )

    p = argparse.ArgumentParser(prog="errand", description="Errand credential broker")
    p.add_argument(
        "--version",
        action="version",
        version=f"errand {package_version()}",
        help="print the installed version and exit",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = (
        processes,
        grants,
        audit,
        tasks,
        evidence,
        configuration,
        keys,
        dev,
        inventory,
        policy,
    )
    for group in groups:
        group.register(sub)
    register_ci_commands(sub)
    completion.register(sub, p)
    return p


def _stdout_gone() -> int:
    """The reader of our stdout went away (`errand grants | head -1`): stop quietly. Python
    would flush stdout again at exit and print an error, so point it at /dev/null first."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real descriptor behind sys.stdout (tests)
        pass
    return 1


def _server_module_missing(err: ModuleNotFoundError) -> bool:
    return (err.name or "").partition(".")[0] in SERVER_MODULES


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ModuleNotFoundError as err:
        if not _server_module_missing(err):
            raise
        args_given = sys.argv[1:] if argv is None else argv
        if args_given and args_given[0] in CLIENT_COMMANDS:
            return client_main(args_given)
        print(f"errand: {SERVER_MISSING}", file=sys.stderr)
        return 1
    try:
        from broker.cli.audit import audit_argv

        args = parser.parse_args(audit_argv(sys.argv[1:] if argv is None else list(argv)))
        status = int(args.fn(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return status
    except BrokenPipeError:
        return _stdout_gone()
    except KeyboardInterrupt:
        print("errand: interrupted", file=sys.stderr)
        return 130
    except BrokerError as err:
        print(f"errand: {err.description}", file=sys.stderr)
        return 1
    except OSError as err:  # a file or directory named on the command line or in a setting
        where = f"{err.filename}: " if err.filename else ""
        print(f"errand: {where}{err.strerror or err}", file=sys.stderr)
        return 1
