"""build_services(settings): the one place that names concrete classes."""

from __future__ import annotations

import logging

from broker.audit import AuditLog
from broker.clock import Clock, SystemClock
from broker.config import load_config
from broker.domain.models import Config
from broker.domain.ports import Services
from broker.identity.jwks import HttpJwksFetcher, JwksCache, JwksFetcher
from broker.identity.verifier import SubjectTokenVerifier
from broker.jobs import RqScheduler
from broker.policy.matcher import IdentityMatcher
from broker.settings import Settings
from broker.store.redis import RedisGrantStore, RedisJwksState, connect
from broker.tokens.keyring import KeyRing

log = logging.getLogger(__name__)


def build_services(
    settings: Settings,
    *,
    config: Config | None = None,
    clock: Clock | None = None,
    fetcher: JwksFetcher | None = None,
    redis_client: object | None = None,
    rq_client: object | None = None,
) -> Services:
    config = config or load_config(settings.config_path, settings.config_vars)
    clock = clock or SystemClock()
    keyring = KeyRing.from_dir(settings.signing_key_dir)
    r = redis_client or connect(settings.redis_url, timeout=settings.redis_timeout_seconds)
    r_rq = rq_client or connect(settings.redis_url, timeout=5.0, decode=False)
    store = RedisGrantStore(r, audit_maxlen=config.broker.audit_stream_maxlen)  # type: ignore[arg-type]
    jwks = JwksCache(fetcher or HttpJwksFetcher(), RedisJwksState(r), clock)  # type: ignore[arg-type]
    return Services(
        config=config,
        keyring=keyring,
        verifier=SubjectTokenVerifier(config, jwks),
        matcher=IdentityMatcher(config),
        store=store,
        audit=AuditLog(store),
        jobs=RqScheduler(r_rq),  # type: ignore[arg-type]
        clock=clock,
        extras={"redis": r, "rq_redis": r_rq, "jwks": jwks, "settings": settings},
    )


def check_redis_policy(svc: Services, settings: Settings) -> None:
    """Refuse to run on a Redis that may evict keys: an evicted revocation record would let a
    revoked token back in. In development, warn loudly instead."""
    policy = svc.store.eviction_policy()  # type: ignore[attr-defined]
    if policy == "noeviction":
        return
    message = (
        f"Redis maxmemory-policy is {policy!r}, not 'noeviction': Redis could evict grants "
        "or revocation records under memory pressure"
    )
    if policy is None:
        message = "could not read Redis maxmemory-policy (CONFIG GET refused or Redis down)"
    if settings.is_development or policy is None:
        log.warning(message)
        return
    raise SystemExit(f"errand: refusing to start: {message}. Set maxmemory-policy noeviction.")
