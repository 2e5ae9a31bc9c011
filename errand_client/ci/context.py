"""What a CI command touches outside itself (Context), and the exit codes it returns."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

import requests

from errand_client.runner import escape_command_data, in_github_actions

EXIT_OK = 0
EXIT_TERMINAL = 2
EXIT_RETRIES_EXHAUSTED = 3


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
