"""`errand config check`: load a configuration file with the broker's own loader."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from broker.config import ConfigError, load_config


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


def register(sub: Any) -> None:
    s = sub.add_parser("config", help="configuration commands")
    csub = s.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate a configuration file")
    c.add_argument("path", nargs="?")
    c.set_defaults(fn=cmd_config_check)
