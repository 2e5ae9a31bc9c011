"""`errand config check`: load a configuration file with the broker's own loader.

Without a path it checks the file the broker would load: the one named by ERRAND_CONFIG,
read with the same environment for `${NAME}` references."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from broker.config import ConfigError, load_config


def cmd_config_check(args: argparse.Namespace) -> int:
    if args.path:
        path, source = Path(args.path), ""
    elif os.environ.get("ERRAND_CONFIG"):
        path, source = Path(os.environ["ERRAND_CONFIG"]), " (from ERRAND_CONFIG)"
    else:
        print(
            "errand: ERRAND_CONFIG is not set, so the broker has no configuration to load; "
            "set it, or name a file: errand config check PATH",
            file=sys.stderr,
        )
        return 1
    try:
        config = load_config(path, dict(os.environ))
    except ConfigError as err:
        print(f"errand: {path}{source}: {err}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(
        f"{path}{source}: OK ({len(config.issuers)} issuers, {len(config.identities)} identities, "
        f"{len(config.clients)} clients)"
    )
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("config", help="configuration commands")
    csub = s.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate a configuration file with the broker's loader")
    c.add_argument(
        "path",
        nargs="?",
        help="the file to check (default: the file the broker would load, $ERRAND_CONFIG)",
    )
    c.set_defaults(fn=cmd_config_check)
