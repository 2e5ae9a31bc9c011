"""`errand exchange` and `errand complete`: Errand for CI jobs.

    errand exchange --url https://errand.example --audience-for-oidc errand \\
        --audience https://deploy.example --scope deploy:write
    ...                                     # later steps use $ERRAND_TOKEN
    errand complete --url https://errand.example    # always-run step: the task's tokens die

`complete` takes the broker URL from --url or $ERRAND_URL, never from the state `exchange`
left in the (possibly shared) temporary folder, and trusts and removes only what `exchange`
created (errand_client.files).

Inside GitHub Actions `exchange` fetches the job's OIDC token itself (a fresh one per
attempt); in GitLab CI it reads the variable named by --id-token-var (the job's
`id_tokens:`). It never falls back to a static secret.

Output: stdout carries only what a shell would capture (the token with --output stdout, the
file path with --output file); everything else goes to stderr. In GitHub Actions the token is
masked (`::add-mask::`) before anything else is written.

Exit codes: 0 ok; 2 terminal error (bad request, denied, no OIDC token, unusable runner
environment); 3 retries exhausted (503 or connection errors on every attempt)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import requests

from errand_client.client import ErrandClient, IssuedToken, check_url, complete_task, new_task_id
from errand_client.errors import ErrandError, RetriesExhausted, SubjectTokenError, TokenRequestError
from errand_client.files import (
    CreatedFile,
    LoadedState,
    SecretFile,
    UntrustedFile,
    read_state,
    read_token_file,
    remove_created,
    remove_created_dir,
    write_secret_file,
    write_state,
)
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
    escape_command_data,
    in_github_actions,
    in_gitlab_ci,
    secret_base_dir,
)

EXIT_OK = 0
EXIT_TERMINAL = 2
EXIT_RETRIES_EXHAUSTED = 3
STATE_VERSION = 2  # 2: no broker URL; created files recorded with their device and inode
OUTPUTS = ("stdout", "file", "github-env", "github-output")
# A pause between the mask (stderr) and a token on stdout: the runner reads the two pipes
# separately, and the mask must be registered before the token could reach the log.
_MASK_SETTLE_SECONDS = 0.1


@dataclass
class Context:
    """What a command touches outside itself; tests pass their own."""

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    sleep: Callable[[float], None] = time.sleep
    session: requests.Session | None = None
    # Whose files `complete` may trust and remove (read at call time, so tests can vary it).
    uid: int = field(default_factory=lambda: os.getuid())

    @property
    def github(self) -> bool:
        return in_github_actions(self.environ)

    def mask(self, value: str) -> None:
        if self.github:
            self.err.write(f"::add-mask::{value}\n")
            self.err.flush()

    def info(self, message: str) -> None:
        self.err.write(f"errand: {message}\n")
        self.err.flush()

    def error(self, message: str) -> None:
        if self.github:
            self.err.write(f"::error title=errand::{escape_command_data(message)}\n")
        else:
            self.err.write(f"errand: error: {message}\n")
        self.err.flush()

    def result(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


# -- argument parsing ---------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=None, help="the Errand broker's base URL (default: $ERRAND_URL)"
    )
    p.add_argument(
        "--env-name",
        default="ERRAND_TOKEN",
        help="variable that carries the token (default ERRAND_TOKEN)",
    )
    p.add_argument("--state-file", default=None, help="where exchange records what complete needs")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt (default 5)")
    p.add_argument(
        "--max-attempts", type=int, default=5, help="attempts on 503/connection errors (default 5)"
    )
    p.add_argument(
        "--allow-http",
        action="store_true",
        help="allow a plain-http broker URL that is not loopback",
    )


def add_exchange_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    src = p.add_argument_group("workload identity (one source; never a static secret)")
    src.add_argument(
        "--audience-for-oidc",
        default=None,
        metavar="AUD",
        help="GitHub Actions: the `aud` Errand expects in the job's OIDC token "
        "(default: $ERRAND_OIDC_AUDIENCE)",
    )
    src.add_argument(
        "--id-token-var",
        default=None,
        metavar="NAME",
        help="GitLab CI: the variable the job's `id_tokens:` fills",
    )
    src.add_argument(
        "--subject-token-file",
        default=None,
        metavar="PATH",
        help="a file holding the token (Kubernetes projected token, SPIFFE JWT-SVID)",
    )
    req = p.add_argument_group("what the token is for")
    req.add_argument(
        "--audience",
        "--resource",
        dest="audiences",
        action="append",
        default=[],
        metavar="AUD",
        help="target audience (repeatable)",
    )
    req.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        default=[],
        help="scope(s), space-separated or repeated",
    )
    req.add_argument(
        "--task-id", default=None, help="bind the token to this task (default: a new unique id)"
    )
    req.add_argument(
        "--purpose", default=None, help="why the job needs the token (recorded in the audit)"
    )
    req.add_argument(
        "--lifetime", type=int, default=None, metavar="SECONDS", help="requested lifetime"
    )
    p.add_argument(
        "--output",
        choices=OUTPUTS,
        default=None,
        help="where the token goes (default: github-env in GitHub Actions, file elsewhere)",
    )


def add_complete_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument(
        "--token-file",
        default=None,
        help="read the token from this file (removed only if `errand exchange` created it)",
    )


def register(subparsers: Any) -> None:
    """Add `exchange` and `complete` to an argparse subparsers object (errand's CLI)."""
    s = subparsers.add_parser(
        "exchange", help="CI: exchange this job's OIDC token for a task-scoped Errand token"
    )
    add_exchange_arguments(s)
    s.set_defaults(fn=cmd_exchange)
    s = subparsers.add_parser(
        "complete", help="CI: complete the task of a token from `errand exchange`"
    )
    add_complete_arguments(s)
    s.set_defaults(fn=cmd_complete)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="errand", description="Errand CI client")
    register(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: Sequence[str] | None = None, ctx: Context | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args, ctx) if ctx is not None else args.fn(args))


# -- exchange ----------------------------------------------------------------------------------
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


# -- complete ----------------------------------------------------------------------------------
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
