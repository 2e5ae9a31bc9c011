"""`errand`: run the broker and worker, check configuration, and operator commands.

One module per command group, each adding its subcommands with `register(sub)`:

    processes.py      run, serve, worker
    grants.py         grants, audit, revoke, revoke-all, revoke-all-status
    evidence.py       evidence list|verify
    configuration.py  config check
    keys.py           keys generate|kek-generate|status|rotate, hash-secret
    dev.py            dev-token
    inventory.py      review, identity suspend|unsuspend|offboard|reload
    errand_client.ci  exchange, complete (the CI client, also shipped on its own)

Operator commands talk to the admin API over HTTP with the admin credential (admin.py), so
they work from any machine that can reach the broker."""

from __future__ import annotations

import argparse
import sys

from broker.cli import configuration, dev, evidence, grants, inventory, keys, processes
from broker.errors import BrokerError
from errand_client.ci import register as register_ci_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="errand", description="Errand credential broker")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (processes, grants, evidence, configuration, keys, dev, inventory):
        group.register(sub)
    register_ci_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except BrokerError as err:
        print(f"errand: {err.description}", file=sys.stderr)
        return 1
