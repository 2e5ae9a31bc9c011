"""The CI runner's side of things: GitHub Actions workflow commands and environment files,
and where a secret file may live.

Rules (USERS.md: "mask first, files outside the workspace with mode 0600, removed at the
end; tokens never logged"):

- `::add-mask::<token>` is written (and flushed) before any output that could hold the token;
- a token file never lands under GITHUB_WORKSPACE or CI_PROJECT_DIR, where a later
  `actions/upload-artifact`, cache or `git add -A` could pick it up: RUNNER_TEMP (emptied by
  GitHub at the start and end of each job) or the system temporary directory;
- files are created O_EXCL|O_NOFOLLOW with mode 0600 in a fresh 0700 directory, and read or
  removed later only while they are still ours (errand_client.files);
- values go to $GITHUB_ENV / $GITHUB_OUTPUT / $GITHUB_STATE with the heredoc syntax and a
  random delimiter, so no value can inject another variable."""

from __future__ import annotations

import os
import re
import secrets
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

WORKSPACE_VARS = ("GITHUB_WORKSPACE", "CI_PROJECT_DIR")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class RunnerError(Exception):
    """The runner environment cannot take the output safely."""


def in_github_actions(env: Mapping[str, str]) -> bool:
    return env.get("GITHUB_ACTIONS") == "true"


def in_gitlab_ci(env: Mapping[str, str]) -> bool:
    return env.get("GITLAB_CI") == "true"


def escape_command_data(text: str) -> str:
    """Workflow-command data escaping (%, CR, LF), so server text cannot start a command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def check_env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name) or name.upper().startswith(("GITHUB_", "RUNNER_")):
        raise RunnerError(f"{name[:64]!r} is not a usable environment variable name")
    return name


def workspaces(env: Mapping[str, str]) -> list[Path]:
    return [Path(env[v]).resolve() for v in WORKSPACE_VARS if env.get(v)]


def is_within(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def secret_base_dir(env: Mapping[str, str]) -> Path:
    """RUNNER_TEMP when usable, else the system temporary directory; never in a workspace."""
    roots = workspaces(env)
    candidates = [env["RUNNER_TEMP"]] if env.get("RUNNER_TEMP") else []
    candidates.append(tempfile.gettempdir())
    for text in candidates:
        base = Path(text)
        if base.is_dir() and not any(is_within(base, r) for r in roots):
            return base.resolve()
    raise RunnerError(
        "no temporary directory outside the workspace (RUNNER_TEMP and TMPDIR are inside "
        "GITHUB_WORKSPACE/CI_PROJECT_DIR or missing): refusing to write a token file"
    )


def append_github_file(path: str | Path, name: str, value: str) -> None:
    """Append `name` = `value` to a GitHub environment file ($GITHUB_ENV, $GITHUB_OUTPUT,
    $GITHUB_STATE) using the multiline syntax with a random delimiter."""
    if not _NAME.fullmatch(name):
        raise RunnerError(f"{name[:64]!r} is not a valid name")
    delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
    if delimiter in value or "\n" in name:
        raise RunnerError("the value cannot be written safely")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")


def read_github_file(path: str | Path) -> dict[str, str]:
    """Parse an environment file the way the runner does (`k=v` and `k<<DELIM` forms).
    Used by the tests and by local simulation; GitHub itself reads these files."""
    out: dict[str, str] = {}
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            value: list[str] = []
            while i < len(lines) and lines[i] != delimiter:
                value.append(lines[i])
                i += 1
            i += 1
            out[name] = "\n".join(value)
        else:
            name, _, val = line.partition("=")
            out[name] = val
    return out


# -- the exchange -> complete state file -------------------------------------------------------
def _job_key(env: Mapping[str, str]) -> str:
    if env.get("CI_JOB_ID"):
        key = f"gitlab-{env['CI_JOB_ID']}"
    elif env.get("GITHUB_RUN_ID"):
        attempt, job = env.get("GITHUB_RUN_ATTEMPT", "1"), env.get("GITHUB_JOB", "")
        key = f"gh-{env['GITHUB_RUN_ID']}-{attempt}-{job}"
    else:
        key = "local"
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)[:120]


def default_state_path(env: Mapping[str, str], env_name: str) -> Path:
    """One state file per job and token variable, in a private per-user directory."""
    if env.get("ERRAND_STATE_FILE"):
        return Path(env["ERRAND_STATE_FILE"])
    directory = secret_base_dir(env) / f"errand-state-{os.getuid()}"
    return directory / f"{_job_key(env)}-{env_name}.json"


def private_dir(directory: Path) -> None:
    """Create (or accept) a directory only this user can enter, e.g. for the state files."""
    directory.mkdir(mode=0o700, parents=False, exist_ok=True)
    info = directory.lstat()
    # A shared /tmp: refuse a directory someone else planted or opened up.
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RunnerError(
            f"{directory} is not a private directory of this user: refusing to use it"
        )
