#!/usr/local/bin/python
"""The Errand GitHub Action, main step: exchange the job's OIDC token for a task-scoped
Errand token and export it (masked) to $GITHUB_ENV for the job's later steps.

Reads the action's inputs (INPUT_URL, INPUT_OIDC-AUDIENCE, …), runs errand_client.ci's
exchange with --output github-env, and saves what the post step needs (the broker URL, the
task id and the token) to $GITHUB_STATE *before* exporting the token, so the post step can
complete the task even when something after the exchange fails."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

# In the image errand_client sits beside this directory (/opt/errand); in a checkout it is
# the repository root. Either way it is this file's grandparent.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from errand_client import ci
from errand_client.client import IssuedToken
from errand_client.runner import append_github_file


def read_input(env: Mapping[str, str], name: str) -> str:
    """GitHub passes input `task-id` as INPUT_TASK-ID (hyphen kept); accept both spellings."""
    upper = name.upper()
    for key in (f"INPUT_{upper}", f"INPUT_{upper.replace('-', '_')}"):
        value = env.get(key, "").strip()
        if value:
            return value
    return ""


def exchange_argv(env: Mapping[str, str]) -> list[str]:
    argv = ["exchange", "--output=github-env"]
    for name, flag in (
        ("url", "--url"),
        ("oidc-audience", "--audience-for-oidc"),
        ("scope", "--scope"),
        ("task-id", "--task-id"),
        ("purpose", "--purpose"),
        ("lifetime", "--lifetime"),
        ("env-name", "--env-name"),
    ):
        value = read_input(env, name)
        if value:
            argv.append(f"{flag}={value}")  # `=` form: a value may start with "-"
    argv += [f"--audience={aud}" for aud in read_input(env, "audience").split()]
    # The task is bound to this run: its labels say which workflow run and job opened it.
    labels = read_input(env, "labels").split()
    for name, var in (("github_run_id", "GITHUB_RUN_ID"), ("github_job", "GITHUB_JOB")):
        value = env.get(var, "")
        if value and not any(label.startswith(name + "=") for label in labels):
            labels.append(f"{name}={value}")
    argv += [f"--label={label}" for label in labels]
    return argv


def main(environ: Mapping[str, str] | None = None, ctx: ci.Context | None = None) -> int:
    env = os.environ if environ is None else environ
    ctx = ctx or ci.Context(environ=env)
    state_file = env.get("GITHUB_STATE")
    if not state_file:
        ctx.error("$GITHUB_STATE is not set: this script runs as a GitHub Action's main step")
        return ci.EXIT_TERMINAL
    args = ci.build_parser().parse_args(exchange_argv(env))

    def save_state(issued: IssuedToken, url: str) -> None:
        # STATE_url, STATE_task_id and STATE_token in the post step.
        append_github_file(state_file, "url", url)
        append_github_file(state_file, "task_id", issued.task_id)
        append_github_file(state_file, "token", issued.access_token)

    code, _ = ci.exchange(args, ctx, keep_state=False, on_issued=save_state)
    return code


if __name__ == "__main__":
    sys.exit(main())
