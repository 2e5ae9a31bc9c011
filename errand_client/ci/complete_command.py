"""`errand complete`: complete the task of the job's tokens, then remove what `errand
exchange` created, each file only while its path still holds that very file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from errand_client.ci.context import EXIT_OK, EXIT_RETRIES_EXHAUSTED, EXIT_TERMINAL, Context
from errand_client.client import check_url, complete_task
from errand_client.errors import ErrandError, RetriesExhausted, TokenRequestError
from errand_client.files import (
    CreatedFile,
    LoadedState,
    UntrustedFile,
    read_state,
    read_token_file,
    remove_created,
    remove_created_dir,
)
from errand_client.retry import RetryPolicy
from errand_client.runner import RunnerError, check_env_name, default_state_path


def complete_tokens(url: str, tokens: Sequence[str], ctx: Context, *, retry: RetryPolicy) -> int:
    """Complete the task of each token; the first failing exit code, or 0."""
    code = EXIT_OK
    for token in tokens:
        try:
            done = complete_task(url, token, retry=retry, session=ctx.session, sleep=ctx.sleep)
        except RetriesExhausted as err:
            ctx.error(f"could not complete the task: the broker stayed unavailable: {err}")
            code = code or EXIT_RETRIES_EXHAUSTED
            continue
        except TokenRequestError as err:
            ctx.error(
                f"could not complete the task: {err.error}: {err.description or '(no description)'}"
            )
            code = code or EXIT_TERMINAL
            continue
        except ErrandError as err:
            ctx.error(f"could not complete the task: {err}")
            code = code or EXIT_TERMINAL
            continue
        ctx.info(
            "task completed: every token of the task is now invalid"
            if done
            else "the token was already invalid (task already complete, revoked or expired)"
        )
    return code


def _complete_url(args: argparse.Namespace, ctx: Context) -> str | None:
    """The broker URL from --url or $ERRAND_URL, as for exchange; never from the state."""
    raw_url = args.url or ctx.environ.get("ERRAND_URL") or ""
    try:
        return check_url(raw_url, allow_http=args.allow_http)
    except ValueError as err:
        ctx.error(f"--url: {err}" if raw_url else "--url (or $ERRAND_URL) is required")
        return None


def _load_state(state_path: Path, ctx: Context) -> tuple[LoadedState | None, bool]:
    """(the state, refused?): a state another user could have planted is refused outright."""
    try:
        return read_state(state_path, uid=ctx.uid), False
    except UntrustedFile as err:
        ctx.error(f"refusing the state file {state_path}: {err}")
        return None, True
    except (OSError, ValueError):
        ctx.info(f"warning: ignoring an unreadable state file {state_path}")
        return None, False


def _created_by_exchange(state: dict[str, Any], ctx: Context) -> tuple[CreatedFile | None, bool]:
    """(the token file exchange recorded creating, refused?)."""
    named = state.get("token_file")
    created = CreatedFile.from_json(named)
    if named is not None and created is None:
        ctx.error(
            "the state names a token file without a record of creating it: "
            "not reading or removing it"
        )
        return None, True
    return created, False


def complete(args: argparse.Namespace, ctx: Context) -> int:
    env = ctx.environ
    try:
        env_name = check_env_name(args.env_name)
        state_path = Path(args.state_file) if args.state_file else default_state_path(env, env_name)
    except RunnerError as err:
        ctx.error(str(err))
        return EXIT_TERMINAL
    loaded, refused = _load_state(state_path, ctx)
    state = loaded.data if loaded else {}
    created, bad_record = _created_by_exchange(state, ctx)
    code = EXIT_TERMINAL if refused or bad_record else EXIT_OK
    tokens: list[str] = []
    if args.token_file:
        path = Path(args.token_file)
        try:
            token = read_token_file(path, uid=ctx.uid)
        except (UntrustedFile, OSError) as err:
            reason = err if isinstance(err, UntrustedFile) else type(err).__name__
            ctx.error(f"cannot read a token from {path}: {reason}")
            return EXIT_TERMINAL
        if token is None:
            ctx.error(f"cannot read a token from {path}")
            return EXIT_TERMINAL
        tokens.append(token)
    elif env.get(env_name):
        tokens.append(env[env_name].strip())
    recorded = state.get("token") if isinstance(state.get("token"), str) else None
    if recorded is None and created is not None:
        try:
            recorded = read_token_file(created.path, uid=ctx.uid, expected=created)
        except FileNotFoundError:
            recorded = None  # already gone: nothing of it to complete
        except (UntrustedFile, OSError) as err:
            reason = err if isinstance(err, UntrustedFile) else type(err).__name__
            ctx.error(f"refusing the token file {created.path}: {reason}")
            code = EXIT_TERMINAL
    if recorded and recorded not in tokens:
        tokens.append(recorded)
    if not tokens:
        if code == EXIT_OK:
            ctx.info(
                f"nothing to complete: no --token-file, no ${env_name} "
                "and no state from `errand exchange`"
            )
            _remove_created(args, ctx, loaded, created)
        return code
    url = _complete_url(args, ctx)
    if url is None:
        return EXIT_TERMINAL  # nothing removed: a retry with --url can still complete the task
    try:
        retry = RetryPolicy(max_attempts=max(1, args.max_attempts), timeout_seconds=args.timeout)
        return complete_tokens(url, tokens, ctx, retry=retry) or code
    finally:
        # Nothing outlives the task: what exchange created goes, whatever the outcome.
        _remove_created(args, ctx, loaded, created)


def _is_same_file(path: Path, created: CreatedFile) -> bool:
    try:
        return created.is_same(path.lstat())
    except OSError:
        return False


def _remove_created(
    args: argparse.Namespace,
    ctx: Context,
    loaded: LoadedState | None,
    created: CreatedFile | None,
) -> None:
    """Remove what exchange created (the token file, its directory, the state), each only
    while its path still holds that very file; never anything else, whatever a path says."""
    if args.token_file and not (created and _is_same_file(Path(args.token_file), created)):
        ctx.info(f"not removing {args.token_file}: `errand exchange` did not create it")
    if created is not None and remove_created(created, uid=ctx.uid):
        ctx.info(f"removed {created.path}")
    if loaded is None or not loaded.data.get("task_id"):
        return  # only a file that is our state, whatever --state-file says
    directory = CreatedFile.from_json(loaded.data.get("token_dir"))
    if directory is not None:
        remove_created_dir(directory, uid=ctx.uid)
    remove_created(loaded.file, uid=ctx.uid)


def cmd_complete(args: argparse.Namespace, ctx: Context | None = None) -> int:
    return complete(args, ctx or Context())
