"""`errand run`, `errand serve`, `errand worker`: start Errand's processes.

`serve` and `worker` replace this process (exec) with the real one, so signals, exit codes
and the process id are the server's own: `serve` with gunicorn serving
`broker.app:create_app()`, `worker` with `python -m workers`. The worker is started by module
name, never imported: `broker/` never imports `workers/` (workers import broker), and the
worker loop lives in one place, workers/__main__.py."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from broker.dev.run import run_dev

GUNICORN_CONF = Path(__file__).resolve().parents[2] / "config" / "gunicorn.conf.py"


def cmd_serve(args: argparse.Namespace) -> int:
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
    return run_dev(port=args.port, state_dir=Path(args.state_dir))


def register(sub: Any) -> None:
    s = sub.add_parser("run", help="development: embedded Redis (unless REDIS_URL), broker, worker")
    s.add_argument("--port", type=int, default=int(os.environ.get("ERRAND_PORT", "8080")))
    s.add_argument("--state-dir", default=os.environ.get("ERRAND_STATE_DIR", ".errand"))
    s.set_defaults(fn=cmd_run)
    sub.add_parser("serve", help="run the HTTP broker under gunicorn").set_defaults(fn=cmd_serve)
    sub.add_parser("worker", help="run an RQ worker with the scheduler").set_defaults(fn=cmd_worker)
