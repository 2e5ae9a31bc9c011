#!/usr/local/bin/python
"""The Errand GitHub Action, post step (`post-if: always()`): complete the task the main
step obtained a token for, whether the job succeeded, failed or was cancelled.

GitHub hands the main step's $GITHUB_STATE to this step as STATE_* variables. No state means
the main step issued no token: nothing to do. A 401 from the broker means the task was
already complete (or its token expired): done. Any other failure fails this step, so a task
left live (until its token expires) is visible in the run."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from errand_client import ci
from errand_client.client import check_url
from errand_client.retry import RetryPolicy


def main(environ: Mapping[str, str] | None = None, ctx: ci.Context | None = None) -> int:
    env = os.environ if environ is None else environ
    ctx = ctx or ci.Context(environ=env)
    token = env.get("STATE_token", "").strip()
    if not token:
        ctx.info("nothing to complete: the main step issued no token")
        return ci.EXIT_OK
    ctx.mask(token)
    try:
        url = check_url(env.get("STATE_url", ""))
    except ValueError as err:
        ctx.error(f"cannot complete task {env.get('STATE_task_id', '?')}: {err}")
        return ci.EXIT_TERMINAL
    ctx.info(f"completing task {env.get('STATE_task_id', '?')}")
    return ci.complete_tokens(url, [token], ctx, retry=RetryPolicy())


if __name__ == "__main__":
    sys.exit(main())
