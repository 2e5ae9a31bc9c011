"""Reload the configuration file (issuers, identities, clients) without a restart.

How: every web process checks the file's (mtime, size, inode) at most every
`broker.config_reload_seconds` (default 5 s), at the start of a request, in the request's
own thread; SIGHUP sent to a worker process, or POST /admin/identities/reload, forces a check
in that process. A changed file is parsed and validated in full (broker/config/). Only a
complete, valid configuration replaces the running one, in one swap of (verifier, matcher,
config) between requests; anything else keeps the old configuration, logs the error, records
a `config.reload` audit event and shows it at GET /admin/identities/reload.

Cached issuer keys are dropped (in this process and in the Redis mirror) for every issuer
whose key source changed, that is new to the configuration (an id removed by an earlier
reload and added back must not find its old keys) or that was removed.

Refused even when the file is valid:
- a file that changed while it was being read (a half-written file; retried next check);
- a file that lists no identities while the running one has some (a truncated file?);
- a change of `broker.issuer`, which every issued token names (restart to change it).

Which configuration a process runs: the status names it by `config_sha256` (the first 16 hex
digits of the SHA-256 of the file's bytes as loaded) and `config_mtime` (the file's mtime,
seconds), the same in every process that loaded the same file, so a client may compare them
across workers. `generation` counts this process's applied configurations (1 at start, +1 at
each applied reload); each process counts on its own, so it is not comparable across
processes. `process_generation` is the same number under a name that says so.

Don't send SIGHUP to the gunicorn *master*: that restarts the workers, and a worker that
cannot load a bad file does not start. Write the file atomically (write, then rename)."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.config import ConfigError, load_config
from broker.domain.contracts import widened_contracts
from broker.domain.models import Config, TrustedIssuer
from broker.identity.verifier import SubjectTokenVerifier
from broker.metrics import CONFIG_LAST_RELOAD_OK, CONFIG_RELOAD_FAILURES
from broker.policy.cedar_engine import policy_dir_stamp
from broker.policy.matcher import IdentityMatcher
from broker.runtime import Runtime

log = logging.getLogger("errand.reload")

Stamp = tuple[int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _all_issuers(config: Config) -> dict[str, TrustedIssuer]:
    return {**config.issuers, **{i.id: i for i in config.agent_issuers.values()}}


def issuers_to_forget(old: Config, new: Config) -> list[str]:
    """Issuers whose cached keys must go: a changed key source, one absent before (an id
    removed by an earlier reload and now back must not find its old keys), or one removed."""
    before, after = _all_issuers(old), _all_issuers(new)
    changed = [
        issuer_id
        for issuer_id, issuer in after.items()
        if issuer_id not in before or before[issuer_id].key_source != issuer.key_source
    ]
    return changed + [issuer_id for issuer_id in before if issuer_id not in after]


class ConfigReloader:
    def __init__(
        self, svc: Runtime, path: Path, variables: Mapping[str, str] | None = None
    ) -> None:
        self._svc = svc
        self._path = path
        self._vars = dict(variables or {})
        self._stamp = _stamp(path)
        # The runtime policy's files (config `policy.dir`) are part of the configuration:
        # a changed policy file reloads it all, and a bad one is refused the same way.
        self._policy_stamp = policy_dir_stamp(svc.config.policy_options.dir)
        self._next_check = 0.0
        self._force = False
        self._lock = threading.Lock()
        self.generation = 1
        # The running configuration was loaded before this reloader existed; the file is read
        # again here, so a file replaced in between is named as the one on disk.
        data = _read_bytes(path)
        self.status = self._loaded_status(
            None if data is None else _fingerprint(data),
            self._stamp,
            len(svc.config.identities),
            svc.config.warnings,
        )
        CONFIG_LAST_RELOAD_OK.set(1)

    def request_reload(self) -> None:
        """Async-signal-safe: only sets a flag; the next request does the work."""
        self._force = True

    def maybe_reload(self) -> None:
        interval = float(self._svc.config.broker.config_reload_seconds)
        now = time.monotonic()
        if not self._force and (interval <= 0 or now < self._next_check):
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread of this process is on it
        try:
            self._next_check = now + max(interval, 0.5)
            force, self._force = self._force, False
            stamp = _stamp(self._path)
            policies = policy_dir_stamp(self._svc.config.policy_options.dir)
            if stamp == self._stamp and policies == self._policy_stamp and not force:
                return
            self._reload(stamp)
        finally:
            self._lock.release()

    def reload_now(self) -> dict[str, Any]:
        with self._lock:
            self._force = False
            self._reload(_stamp(self._path))
        return dict(self.status)

    # -- internals -----------------------------------------------------------------------------
    def _loaded_status(
        self, digest: str | None, stamp: Stamp | None, identities: int, warnings: Any
    ) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),  # each web process reloads on its own; this says which answered
            "path": str(self._path),
            "config_sha256": digest,  # same file, same value, in every process
            "config_mtime": None if stamp is None else stamp[0] / 1e9,
            "generation": self.generation,  # this process's count: not comparable across them
            "process_generation": self.generation,
            "loaded_at": time.time(),
            "identities": identities,
            "error": None,
            "warnings": list(warnings),
        }

    def _refuse(self, stamp: Stamp | None, error: str) -> None:
        self._stamp = stamp  # do not re-parse the same bad file at every check
        self._policy_stamp = policy_dir_stamp(self._svc.config.policy_options.dir)
        self.status.update(ok=False, error=error, failed_at=time.time())
        CONFIG_RELOAD_FAILURES.inc()
        CONFIG_LAST_RELOAD_OK.set(0)
        log.error("configuration reload refused; keeping the running configuration: %s", error)
        self._audit("refused", error=error[:2000])

    def _reload(self, stamp: Stamp | None) -> None:
        if stamp is None:
            self._refuse(stamp, f"cannot read {self._path}")
            return
        data = _read_bytes(self._path)  # the stamp check below ties it to what load_config read
        try:
            new = load_config(self._path, self._vars)
        except ConfigError as err:
            self._refuse(stamp, str(err))
            return
        if _stamp(self._path) != stamp:
            log.info("configuration changed while it was read; trying again at the next check")
            self._force = True
            return
        old: Config = self._svc.config
        if old.identities and not new.identities:
            self._refuse(
                stamp,
                "the new file lists no identities (truncated?); restart to apply it on purpose",
            )
            return
        if new.broker.issuer != old.broker.issuer:
            self._refuse(stamp, "broker.issuer cannot change while running: restart to change it")
            return
        self._apply(old, new)
        self._stamp = stamp
        self._policy_stamp = policy_dir_stamp(new.policy_options.dir)
        self.generation += 1
        CONFIG_LAST_RELOAD_OK.set(1)
        self.status = self._loaded_status(
            None if data is None else _fingerprint(data), stamp, len(new.identities), new.warnings
        )
        for warning in new.warnings:
            log.warning("configuration: %s", warning)
        log.info(
            "configuration reloaded: %d identities, %d issuers",
            len(new.identities),
            len(new.issuers),
        )
        self._audit(
            "loaded",
            identities=len(new.identities),
            generation=self.generation,
            config_sha256=self.status["config_sha256"],
            policy_sha256=new.runtime_policy.digest if new.runtime_policy else None,
        )
        schedule_contract_revocations(self._svc, old, new)

    def _apply(self, old: Config, new: Config) -> None:
        jwks = self._svc.jwks
        for issuer_id in issuers_to_forget(old, new):
            jwks.forget(issuer_id)
        verifier = SubjectTokenVerifier(new, jwks)
        matcher = IdentityMatcher(new)
        # One swap, between requests: the exchange reads the three together at its start.
        # A single update of the instance dict, so no thread sees one of them changed alone.
        vars(self._svc).update(verifier=verifier, matcher=matcher, config=new)

    def _audit(self, outcome: str, **fields: Any) -> None:
        try:
            self._svc.audit.record(
                {
                    "ts": time.time(),
                    "event": "config.reload",
                    "outcome": outcome,
                    "pid": os.getpid(),
                    **fields,
                }
            )
        except Exception:  # the log line above already holds it
            log.warning("could not audit the configuration reload")


def schedule_contract_revocations(svc: Runtime, old: Config, new: Config) -> None:
    """An audience that now declares a new, widening contract version: its grants issued
    under older versions are revoked by a worker job (workers/contracts.py)."""
    for change in widened_contracts(old, new):
        svc.audit.record(
            {
                "ts": time.time(),
                "event": "contract.widened",
                "audience": change.audience,
                "old_version": change.old_version,
                "new_version": change.new_version,
            }
        )
        schedule = getattr(svc.jobs, "schedule_contract_revocation", None)
        if schedule is None:
            log.error("no job scheduler for contract revocations; grants stay until expiry")
            continue
        try:
            schedule(change.audience, change.new_version)
        except Exception as err:  # retried at the next reload that sees the change? no: log
            log.error("could not enqueue the contract revocation: %s", type(err).__name__)


def install_reloader(svc: Runtime) -> ConfigReloader | None:
    """Attach a reloader when the running configuration came from a file; SIGHUP forces a
    check when we run in the main thread (a gunicorn worker does)."""
    if isinstance(svc.reloader, ConfigReloader):
        return svc.reloader
    path = svc.settings.config_path
    if not path.is_file():
        return None
    reloader = ConfigReloader(svc, path, svc.settings.config_vars)
    svc.reloader = reloader
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: reloader.request_reload())
    return reloader
