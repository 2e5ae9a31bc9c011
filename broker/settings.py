"""Process settings from the environment: the only module that reads os.environ.

Everything about *what* Errand trusts (issuers, identities, clients) lives in the YAML file
named by ERRAND_CONFIG (see broker/config.py); this module holds only where things are."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import BrokerError


class SettingsError(BrokerError):
    """A missing or contradictory environment setting; the process refuses to start."""


@dataclass(frozen=True)
class Settings:
    config_path: Path  # ERRAND_CONFIG: the YAML file with issuers, identities, clients
    redis_url: str  # REDIS_URL (or ERRAND_REDIS_URL)
    signing_key_dir: Path | None  # ERRAND_SIGNING_KEY_DIR: static keys from a mounted secret
    admin_token_file: Path | None = None  # ERRAND_ADMIN_TOKEN_FILE: protects /admin/*
    environment: str = "production"  # ERRAND_ENV: production | development
    bind: str = "127.0.0.1:8080"  # ERRAND_BIND
    web_workers: int = 3  # ERRAND_WEB_WORKERS
    redis_timeout_seconds: float = 0.5  # ERRAND_REDIS_TIMEOUT_SECONDS: connect and op timeout
    sweep_interval_seconds: float = 5.0  # ERRAND_SWEEP_INTERVAL_SECONDS: expiry safety net
    # ERRAND_RECONCILE_AFTER_SECONDS: re-enqueue clean-ups that no worker advanced this long
    reconcile_after_seconds: float = 30.0
    # ERRAND_KEY_ENCRYPTION_KEY_FILE: keys live in Redis, sealed with this KEK, and rotate.
    kek_file: Path | None = None
    key_rotation_days: float = 30.0  # ERRAND_KEY_ROTATION_DAYS: scheduled rotation (0: off)
    key_publish_lead_seconds: int = 120  # ERRAND_KEY_PUBLISH_LEAD_SECONDS: JWKS before signing
    # Values for ${NAME} / ${NAME:-default} references in the YAML configuration.
    config_vars: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_development(self) -> bool:
        return self.environment == "development"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    missing: list[str] = []

    def need(*names: str) -> str:
        for name in names:
            if env.get(name):
                return env[name]
        missing.append(" or ".join(names))
        return ""

    environment = env.get("ERRAND_ENV", "production")
    if environment not in ("production", "development"):
        raise SettingsError(
            f"ERRAND_ENV must be 'production' or 'development', not {environment!r}"
        )
    config_path = need("ERRAND_CONFIG")
    redis_url = need("REDIS_URL", "ERRAND_REDIS_URL")
    kek = env.get("ERRAND_KEY_ENCRYPTION_KEY_FILE")
    key_dir = env.get("ERRAND_SIGNING_KEY_DIR") or (None if kek else need("ERRAND_SIGNING_KEY_DIR"))
    if missing:
        raise SettingsError("missing environment settings: " + ", ".join(missing))
    admin = env.get("ERRAND_ADMIN_TOKEN_FILE")
    try:
        return Settings(
            config_path=Path(config_path),
            redis_url=redis_url,
            signing_key_dir=Path(key_dir) if key_dir else None,
            kek_file=Path(kek) if kek else None,
            key_rotation_days=float(env.get("ERRAND_KEY_ROTATION_DAYS", "30")),
            key_publish_lead_seconds=int(env.get("ERRAND_KEY_PUBLISH_LEAD_SECONDS", "120")),
            admin_token_file=Path(admin) if admin else None,
            environment=environment,
            bind=env.get("ERRAND_BIND", "127.0.0.1:8080"),
            web_workers=int(env.get("ERRAND_WEB_WORKERS", "3")),
            redis_timeout_seconds=float(env.get("ERRAND_REDIS_TIMEOUT_SECONDS", "0.5")),
            sweep_interval_seconds=float(env.get("ERRAND_SWEEP_INTERVAL_SECONDS", "5")),
            reconcile_after_seconds=float(env.get("ERRAND_RECONCILE_AFTER_SECONDS", "30")),
            config_vars=dict(env),
        )
    except ValueError as err:
        raise SettingsError(f"bad numeric environment setting: {err}") from err
