"""build_services(settings): the one place that names concrete classes."""

from __future__ import annotations

import logging

from broker.audit import AuditLog
from broker.clock import Clock, SystemClock
from broker.config import load_config
from broker.domain.models import Config
from broker.domain.ports import Services, StoreUnavailable
from broker.identity.jwks import HttpJwksFetcher, JwksCache, JwksFetcher
from broker.identity.verifier import SubjectTokenVerifier
from broker.jobs import RqScheduler
from broker.policy.matcher import IdentityMatcher
from broker.settings import Settings
from broker.store.jwks_mirror import JwksMirror
from broker.store.limits import RedisLimits
from broker.store.redis import RedisGrantStore, connect
from broker.store.revocations import RedisRevocationStore
from broker.tokens.keyring import KeyRing
from broker.tokens.keystore import RedisKeyRecords, RedisKeyRing, load_kek

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
    r = redis_client or connect(settings.redis_url, timeout=settings.redis_timeout_seconds)
    keyring = build_keyring(settings, config, r, clock)
    r_rq = rq_client or connect(settings.redis_url, timeout=5.0, decode=False)
    store = RedisGrantStore(r, audit_maxlen=config.broker.audit_stream_maxlen)  # type: ignore[arg-type]
    jwks = JwksCache(fetcher or HttpJwksFetcher(), JwksMirror(r), clock)  # type: ignore[arg-type]
    try:
        store.ensure_epoch()
    except StoreUnavailable:
        log.warning("Redis unreachable at start-up; the epoch is created on first use")
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
        revocations=RedisRevocationStore(r, audit_maxlen=config.broker.audit_stream_maxlen),  # type: ignore[arg-type]
        limits=RedisLimits(r),  # type: ignore[arg-type]
    )


def build_keyring(settings: Settings, config: Config, r: object, clock: Clock) -> object:
    """Files (static, from a mounted secret) or Redis (sealed with a KEK, rotating)."""
    if settings.kek_file is not None:
        return RedisKeyRing(
            RedisKeyRecords(r),
            load_kek(settings.kek_file),
            max_token_ttl_seconds=config.broker.max_token_ttl_seconds,
            publish_lead_seconds=settings.key_publish_lead_seconds,
            clock=clock,
        )
    if settings.signing_key_dir is None:
        raise SystemExit("errand: set ERRAND_SIGNING_KEY_DIR or ERRAND_KEY_ENCRYPTION_KEY_FILE")
    return KeyRing.from_dir(settings.signing_key_dir)


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
