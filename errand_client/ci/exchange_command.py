"""`errand exchange`: pick the workload identity, exchange it, mask the token, deliver it,
and record what `errand complete` needs."""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from errand_client.ci.context import EXIT_OK, EXIT_RETRIES_EXHAUSTED, EXIT_TERMINAL, Context
from errand_client.client import ErrandClient, IssuedToken, check_url, complete_task, new_task_id
from errand_client.errors import ErrandError, RetriesExhausted, SubjectTokenError, TokenRequestError
from errand_client.files import SecretFile, write_secret_file, write_state
from errand_client.providers import (
    SubjectTokenProvider,
    env_provider,
    file_provider,
    github_actions_provider,
)
from errand_client.retry import RetryPolicy
from errand_client.runner import (
    RunnerError,
    append_github_file,
    check_env_name,
    default_state_path,
    in_github_actions,
    in_gitlab_ci,
    secret_base_dir,
)

STATE_VERSION = 2  # 2: no broker URL; created files recorded with their device and inode
# A pause between the mask (stderr) and a token on stdout: the runner reads the two pipes
# separately, and the mask must be registered before the token could reach the log.
_MASK_SETTLE_SECONDS = 0.1


def _unverified_audiences(token: str) -> list[str]:
    """The `aud` of a JWT, UNVERIFIED: only to explain a likely denial, never to trust."""
    try:
        segment = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        aud = claims.get("aud")
    except (IndexError, ValueError, AttributeError):
        return []
    return (
        [aud]
        if isinstance(aud, str)
        else [a for a in aud if isinstance(a, str)]
        if isinstance(aud, list)
        else []
    )


def choose_provider(args: argparse.Namespace, ctx: Context) -> SubjectTokenProvider:
    env = ctx.environ
    oidc_audience = args.audience_for_oidc or env.get("ERRAND_OIDC_AUDIENCE")
    if args.id_token_var:
        provider = env_provider(args.id_token_var, environ=env)
        if oidc_audience:
            auds = _unverified_audiences(provider())
            if auds and oidc_audience not in auds:
                ctx.info(
                    f"warning: ${args.id_token_var} is for audience {auds[0][:100]!r}, not "
                    f"{oidc_audience[:100]!r}: set `aud` under the job's id_tokens"
                )
        return provider
    if args.subject_token_file:
        return file_provider(args.subject_token_file)
    if in_github_actions(env):
        if not oidc_audience:
            raise SubjectTokenError(
                "--audience-for-oidc is required in GitHub Actions: "
                "the `aud` your Errand issuer expects"
            )
        return github_actions_provider(oidc_audience, environ=env)
    if in_gitlab_ci(env):
        raise SubjectTokenError(
            "in GitLab CI declare the token under the job's `id_tokens:` (with the `aud` Errand "
            "expects) and pass its variable name with --id-token-var"
        )
    raise SubjectTokenError(
        "no workload identity: run inside GitHub Actions (permissions: id-token: write), or pass "
        "--id-token-var (GitLab CI id_tokens) or --subject-token-file"
    )


def _scopes(values: list[str]) -> list[str] | None:
    scopes = [s for v in values for s in v.split()]
    return scopes or None


def _precheck_output(output: str, ctx: Context) -> None:
    env = ctx.environ
    if output == "github-env" and not env.get("GITHUB_ENV"):
        raise RunnerError("--output github-env needs $GITHUB_ENV (GitHub Actions)")
    if output == "github-output" and not env.get("GITHUB_OUTPUT"):
        raise RunnerError("--output github-output needs $GITHUB_OUTPUT (GitHub Actions)")
    if output == "file":
        secret_base_dir(env)


def exchange(
    args: argparse.Namespace,
    ctx: Context,
    *,
    keep_state: bool = True,
    on_issued: Callable[[IssuedToken, str], None] | None = None,
) -> tuple[int, IssuedToken | None]:
    """Run an exchange and deliver the token. `on_issued(token, url)` runs right after the
    mask and before any other output (the Action saves its post-step state there)."""
    env = ctx.environ
    try:
        url = check_url(args.url or env.get("ERRAND_URL") or "", allow_http=args.allow_http)
    except ValueError as err:
        ctx.error(
            f"--url: {err}"
            if (args.url or env.get("ERRAND_URL"))
            else "--url (or $ERRAND_URL) is required"
        )
        return EXIT_TERMINAL, None
    output = args.output or ("github-env" if ctx.github and env.get("GITHUB_ENV") else "file")
    try:
        env_name = check_env_name(args.env_name)
        _precheck_output(output, ctx)
        state_path = (
            Path(args.state_file)
            if args.state_file
            else default_state_path(env, env_name)
            if keep_state
            else None
        )
        provider = choose_provider(args, ctx)
        client = ErrandClient(
            url,
            provider,
            retry=RetryPolicy(max_attempts=max(1, args.max_attempts), timeout_seconds=args.timeout),
            session=ctx.session,
            sleep=ctx.sleep,
            allow_http=args.allow_http,
        )
        issued = client.exchange(
            audience=args.audiences,
            scopes=_scopes(args.scopes),
            task_id=args.task_id or new_task_id("ci"),
            purpose=args.purpose,
            lifetime=args.lifetime,
            labels=dict(label.partition("=")[::2] for label in args.labels) or None,
        )
    except RetriesExhausted as err:
        ctx.error(f"the broker stayed unavailable: {err}")
        return EXIT_RETRIES_EXHAUSTED, None
    except TokenRequestError as err:
        ctx.error(
            f"the broker refused the exchange: {err.error}: {err.description or '(no description)'}"
        )
        return EXIT_TERMINAL, None
    except (SubjectTokenError, RunnerError, ValueError) as err:
        ctx.error(str(err))
        return EXIT_TERMINAL, None
    except ErrandError as err:
        ctx.error(str(err))
        return EXIT_TERMINAL, None

    ctx.mask(issued.access_token)  # first: before anything that could carry the token
    try:
        if on_issued is not None:
            on_issued(issued, url)
        secret = _deliver(issued, output, env_name, ctx)
        token_file = secret.path if secret else None
        if state_path is not None:
            # No broker URL here: complete takes it from its command line or environment,
            # so a state planted in a shared temporary folder cannot send a token elsewhere.
            state: dict[str, Any] = {
                "v": STATE_VERSION,
                "task_id": issued.task_id,
                "expires_at": int(issued.expires_at),
            }
            if secret:
                # What we created, by inode: complete removes these and nothing else.
                state["token_file"] = secret.file.to_json()
                state["token_dir"] = secret.directory.to_json()
            else:
                state["token"] = issued.access_token
            write_state(state_path, state)
        if env.get("GITHUB_OUTPUT"):
            append_github_file(env["GITHUB_OUTPUT"], "task-id", issued.task_id)
            append_github_file(env["GITHUB_OUTPUT"], "expires-in", str(issued.expires_in))
            if token_file:
                append_github_file(env["GITHUB_OUTPUT"], "token-file", str(token_file))
    except (OSError, RunnerError) as err:
        # Undeliverable: end the task now rather than leave a live token nobody holds.
        ctx.error(
            f"could not deliver the token ({type(err).__name__}: {err}); "
            f"completing task {issued.task_id}"
        )
        _complete_quietly(url, issued.access_token, ctx, args)
        return EXIT_TERMINAL, None
    where = {
        "stdout": "stdout",
        "file": f"file {token_file}",
        "github-env": f"${env_name} (GITHUB_ENV)",
        "github-output": "step output `token`",
    }[output]
    ctx.info(
        f"task {issued.task_id}: token issued to {where}; scope {' '.join(issued.scopes) or '-'}; "
        f"expires in {issued.expires_in} s"
    )
    return EXIT_OK, issued


def _deliver(issued: IssuedToken, output: str, env_name: str, ctx: Context) -> SecretFile | None:
    env = ctx.environ
    if output == "stdout":
        if ctx.github:
            ctx.sleep(_MASK_SETTLE_SECONDS)
        ctx.result(issued.access_token)
    elif output == "file":
        secret = write_secret_file(env, issued.access_token + "\n")
        ctx.result(str(secret.path))
        return secret
    elif output == "github-env":
        append_github_file(env["GITHUB_ENV"], env_name, issued.access_token)
    elif output == "github-output":
        append_github_file(env["GITHUB_OUTPUT"], "token", issued.access_token)
    return None


def _complete_quietly(url: str, token: str, ctx: Context, args: argparse.Namespace) -> None:
    try:
        complete_task(
            url,
            token,
            retry=RetryPolicy(max_attempts=2, timeout_seconds=args.timeout),
            session=ctx.session,
            sleep=ctx.sleep,
        )
    except ErrandError as err:
        ctx.error(f"could not complete the task: {err}")


def cmd_exchange(args: argparse.Namespace, ctx: Context | None = None) -> int:
    return exchange(args, ctx or Context())[0]
