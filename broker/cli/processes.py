"""`errand run`, `errand serve`, `errand worker`: start Errand's processes.

`serve` and `worker` replace this process (exec) with the real one, so signals, exit codes
and the process id are the server's own: `serve` becomes the gunicorn master serving
`broker.app:create_app()`, `worker` becomes `python -m workers`. The worker is started by
module name, never imported: `broker/` never imports `workers/` (workers import broker), and
the worker loop lives in one place, workers/__main__.py.

Before `serve` hands over, it checks in this process what would stop every gunicorn worker
at start-up (settings, the configuration file, keys, the admin credential, the listen
address), so a mistake is one line (`errand: …`, exit 1) rather than a traceback per worker."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.config import ConfigError, load_config
from broker.dev.run import RunRefused, run_dev
from broker.settings import Settings, load_settings
from broker.tokens.keyrecord import load_kek
from broker.tokens.keyring import KeyRing

GUNICORN_CONF = Path(__file__).resolve().parents[2] / "config" / "gunicorn.conf.py"


def listen_problem(bind: str) -> str | None:
    """Why gunicorn could not listen on `bind` ("host:port" or "[v6]:port"), or None. Unix
    sockets and inherited descriptors are left to gunicorn."""
    address = bind.strip()
    host, _, port = address.rpartition(":")
    if address.startswith(("unix:", "fd://")) or not port.isdigit():
        return None
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, OverflowError) as err:
        return f"cannot listen on {address}: {getattr(err, 'strerror', None) or err}"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(sockaddr)
        except OSError as err:
            return f"cannot listen on {address}: {err.strerror or err}"
    return None


# The broker refuses a shorter admin credential at start-up (broker/app.py); checked here too,
# since broker/cli may not import the web layer.
ADMIN_TOKEN_MIN_LENGTH = 24


def check_serve(environ: Mapping[str, str]) -> Settings:
    """What would stop the broker at start-up, checked here: raises BrokerError (settings,
    configuration, keys), OSError (an unreadable file) or SystemExit (the admin credential)."""
    settings = load_settings(environ)
    try:
        load_config(settings.config_path, settings.config_vars)
    except ConfigError as err:
        raise ConfigError(f"{settings.config_path}: {err.description}") from err
    if settings.kek_file is not None:
        load_kek(settings.kek_file)
    elif settings.signing_key_dir is not None:
        KeyRing.from_dir(settings.signing_key_dir)
    admin = settings.admin_token_file
    if admin is not None and len(admin.read_text().strip()) < ADMIN_TOKEN_MIN_LENGTH:
        sys.exit(
            f"errand: the admin token must be at least {ADMIN_TOKEN_MIN_LENGTH} characters "
            f"({admin}, ERRAND_ADMIN_TOKEN_FILE)"
        )
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    settings = check_serve(os.environ)
    problem = listen_problem(settings.bind)
    if problem:
        print(f"errand: {problem} (ERRAND_BIND)", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(  # noqa: S606 - replaces this process with gunicorn; argv is ours
        sys.executable,
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "broker.app:create_app()"],
    )
    return 0  # pragma: no cover


def cmd_worker(args: argparse.Namespace) -> int:
    os.execvp(  # noqa: S606 - replaces this process with the RQ worker; argv is ours
        sys.executable, [sys.executable, "-m", "workers"]
    )
    return 0  # pragma: no cover


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return run_dev(port=args.port, state_dir=Path(args.state_dir))
    except RunRefused as err:
        print(f"errand: {err}", file=sys.stderr)
        return 1


def register(sub: Any) -> None:
    s = sub.add_parser("run", help="development: embedded Redis (unless REDIS_URL), broker, worker")
    s.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("ERRAND_PORT", "8080")),
        help="the broker's port on 127.0.0.1; the dev issuer takes the next one "
        "(default: $ERRAND_PORT, else 8080)",
    )
    s.add_argument(
        "--state-dir",
        default=os.environ.get("ERRAND_STATE_DIR", ".errand"),
        help="secrets, keys and the run directory (default: $ERRAND_STATE_DIR, else .errand)",
    )
    s.set_defaults(fn=cmd_run)
    sub.add_parser(
        "serve", help="become the gunicorn master serving the broker (config/gunicorn.conf.py)"
    ).set_defaults(fn=cmd_serve)
    sub.add_parser(
        "worker", help="become an RQ worker (with the scheduler) for the broker's jobs"
    ).set_defaults(fn=cmd_worker)
