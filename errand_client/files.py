"""The files `errand exchange` leaves for `errand complete`: the token file and the state file.

Both live in a shared temporary folder ($RUNNER_TEMP, or /tmp on a self-hosted runner), where
another user can plant a file or a symbolic link under a name we will look for. So:

- what exchange creates it creates privately (O_EXCL|O_NOFOLLOW, mode 0600, in a fresh 0700
  directory from `tempfile.mkdtemp`) and records by device and inode in the state;
- complete reads a state file or a token file only when it is a regular file, not a symbolic
  link, owned by this user and not writable by group or others (checked on the open file, so
  the file checked is the file read);
- complete removes only what exchange recorded creating, and only while the path still holds
  that very file: never a file merely named in the state or on the command line.

The broker URL is never read from the state: it comes from the command line or the
environment, as for exchange, so a planted state cannot send a token elsewhere."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from errand_client.runner import RunnerError, is_within, private_dir, secret_base_dir, workspaces

MAX_STATE_BYTES = 64 * 1024
MAX_TOKEN_CHARS = 16384


class UntrustedFile(RunnerError):
    """A file that another user could have planted or changed: refused, never read or removed.
    The message says why (a symbolic link, another owner, a permissive mode); never content."""


@dataclass(frozen=True)
class CreatedFile:
    """A file or directory exchange created, as it was: its path and its (device, inode)."""

    path: Path
    dev: int
    ino: int

    @classmethod
    def of(cls, path: Path) -> CreatedFile:
        info = path.lstat()
        return cls(path=path, dev=info.st_dev, ino=info.st_ino)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "dev": self.dev, "ino": self.ino}

    @classmethod
    def from_json(cls, value: Any) -> CreatedFile | None:
        """A record from the state; None for anything else (an older state's bare path)."""
        if not isinstance(value, dict):
            return None
        path, dev, ino = value.get("path"), value.get("dev"), value.get("ino")
        if not isinstance(path, str) or not path or not _is_int(dev) or not _is_int(ino):
            return None
        return cls(path=Path(path), dev=dev, ino=ino)

    def is_same(self, info: os.stat_result) -> bool:
        return (info.st_dev, info.st_ino) == (self.dev, self.ino)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SecretFile:
    """The token file exchange wrote and the private directory it sits in."""

    file: CreatedFile
    directory: CreatedFile

    @property
    def path(self) -> Path:
        return self.file.path


def check_ours(info: os.stat_result, uid: int) -> None:
    """Refuse what another user could have planted or can still change."""
    if stat.S_ISLNK(info.st_mode):
        raise UntrustedFile("it is a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        raise UntrustedFile("it is not a regular file")
    if info.st_uid != uid:
        raise UntrustedFile(f"it is owned by uid {info.st_uid}, not by this user (uid {uid})")
    if info.st_mode & 0o022:
        raise UntrustedFile(
            f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
        )


def _open_ours(path: Path, uid: int, expected: CreatedFile | None) -> tuple[int, os.stat_result]:
    """An fd on `path` once the OPEN file passed check_ours (and is `expected`, if given).

    O_NOFOLLOW refuses a symlink; O_NONBLOCK keeps a FIFO from blocking the open (fstat then
    refuses it as not a regular file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):
            raise UntrustedFile("it is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        check_ours(info, uid)
        if expected is not None and not expected.is_same(info):
            raise UntrustedFile("it is not the file `errand exchange` created there")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_token_file(path: Path, *, uid: int, expected: CreatedFile | None = None) -> str | None:
    """The token in a file of ours, or None when it holds none (empty, too long, not ASCII).
    Raises UntrustedFile (and FileNotFoundError/OSError) as _open_ours does."""
    fd, _ = _open_ours(path, uid, expected)
    try:
        with os.fdopen(fd, "r", encoding="ascii") as fh:
            text = fh.read(MAX_TOKEN_CHARS + 1).strip()
    except UnicodeDecodeError:
        return None
    return text if text and len(text) <= MAX_TOKEN_CHARS else None


def write_secret_file(env: Mapping[str, str], content: str, *, name: str = "token") -> SecretFile:
    """Write `content` to a new 0600 file in a new 0700 directory outside the workspace."""
    base = secret_base_dir(env)
    directory = Path(tempfile.mkdtemp(prefix="errand-", dir=base))  # 0700, unique
    created_dir = CreatedFile.of(directory)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        info = os.fstat(fh.fileno())
        fh.write(content)
    secret = SecretFile(CreatedFile(path, info.st_dev, info.st_ino), created_dir)
    if any(is_within(path, r) for r in workspaces(env)):  # belt and braces (symlinked TMPDIR)
        remove_created(secret.file, uid=os.getuid())
        remove_created_dir(secret.directory, uid=os.getuid())
        raise RunnerError("the token file resolved into the workspace: refusing")
    return secret


def remove_created(created: CreatedFile, *, uid: int) -> bool:
    """Remove a file exchange created, if the path still holds that very file (same device
    and inode, a regular file of ours). True when it was removed."""
    try:
        info = created.path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_uid != uid or not created.is_same(info):
        return False
    try:
        created.path.unlink()
    except FileNotFoundError:
        return False
    return True


def remove_created_dir(created: CreatedFile, *, uid: int) -> None:
    """Remove the private directory exchange created, if it is still that directory and empty."""
    try:
        info = created.path.lstat()
    except OSError:
        return
    if stat.S_ISDIR(info.st_mode) and info.st_uid == uid and created.is_same(info):
        with contextlib.suppress(OSError):
            created.path.rmdir()  # only if empty


# -- the exchange -> complete state file -------------------------------------------------------
@dataclass(frozen=True)
class LoadedState:
    """A state file that passed the checks: its content and which file it was."""

    data: dict[str, Any]
    file: CreatedFile


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(dict(state), fh)
    os.replace(tmp, path)


def read_state(path: Path, *, uid: int) -> LoadedState | None:
    """The state at `path`; None when there is none. Raises UntrustedFile for a state that is
    not ours (see check_ours) and ValueError for one that is not a JSON object."""
    try:
        fd, info = _open_ours(path, uid, None)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(MAX_STATE_BYTES + 1)
    if len(raw) > MAX_STATE_BYTES:
        raise ValueError("the state file is too large")
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("the state file is not a JSON object")
    return LoadedState(data=data, file=CreatedFile(path, info.st_dev, info.st_ino))
