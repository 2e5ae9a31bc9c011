"""build_services(settings): the one place that names concrete classes."""

from __future__ import annotations

import logging

import redis

from broker.audit import AuditLog
from broker.audit_key import configure_audit_key
from broker.clock import Clock, SystemClock
from broker.config import load_config
from broker.domain.models import Config
from broker.domain.ports import RotatingKeys, SigningKeys, StoreUnavailable
from broker.identity.jwks import HttpJwksFetcher, JwksCache, JwksFetcher
from broker.identity.verifier import SubjectTokenVerifier
from broker.jobs import RqScheduler
from broker.policy.matcher import IdentityMatcher
from broker.runtime import Runtime
from broker.settings import Settings, SettingsError
from broker.store.approvals import RedisApprovals
from broker.store.auth_failures import RedisAuthFailures
from broker.store.chains import RedisChains
from broker.store.cluster_grants import ClusterChains
from broker.store.connection import RedisLocation, ReplicaWait, connect, is_cluster, store_errors
from broker.store.console_sessions import RedisConsoleSessions
from broker.store.dpop_replay import RedisDpopReplay
from broker.store.gauges import RedisGauges
from broker.store.jwks_mirror import JwksMirror
from broker.store.key_migration import old_keys_present
from broker.store.limits import RedisLimits
from broker.store.redis import ClusterGrantStore, RedisGrantStore
from broker.store.revocations import RedisRevocationStore
from broker.store.signing_keys import RedisKeyRecords
from broker.tokens.keyrecord import load_kek
from broker.tokens.keyring import KeyRing
from broker.tokens.keystore import RedisKeyRing
from broker.tracing import build_tracer

log = logging.getLogger(__name__)


def build_services(
    settings: Settings,
    *,
    config: Config | None = None,
    clock: Clock | None = None,
    fetcher: JwksFetcher | None = None,
    redis_client: redis.Redis | None = None,
    rq_client: redis.Redis | None = None,
) -> Runtime:
    """The process's Services, with the handles only the process uses (broker/runtime.py)."""
    config = config or load_config(settings.config_path, settings.config_vars)
    clock = clock or SystemClock()
    where, wait = RedisLocation.of(settings), ReplicaWait.of(settings)
    r = redis_client or connect(where, timeout=settings.redis_timeout_seconds)
    # RQ needs a plain Redis: ERRAND_QUEUE_REDIS_URL when set (required with a cluster).
    queue = settings.queue_redis_url or where
    r_rq = rq_client or connect(queue, timeout=5.0, decode=False)
    keyring = build_keyring(settings, config, r, clock)
    configure_audit_key(settings, r)
    cluster = is_cluster(r)
    store_class = ClusterGrantStore if cluster else RedisGrantStore
    store = store_class(r, audit_maxlen=config.broker.audit_stream_maxlen, wait=wait)
    chains_class = ClusterChains if cluster else RedisChains
    jobs = RqScheduler(r_rq)
    jwks = JwksCache(fetcher or HttpJwksFetcher(), JwksMirror(r), clock)
    try:
        with store_errors():
            if old_keys_present(r):
                raise SettingsError(
                    "Redis holds keys under the names before the hash-tagged key scheme: stop "
                    "the old version and run `python -m broker.store.key_migration REDIS_URL` "
                    "once (docs/runbook.md)"
                )
        store.ensure_epoch()
    except StoreUnavailable:
        log.warning("Redis unreachable at start-up; the epoch is created on first use")
    return Runtime(
        config=config,
        keyring=keyring,
        rotating_keys=keyring if isinstance(keyring, RedisKeyRing) else None,
        verifier=SubjectTokenVerifier(config, jwks),
        matcher=IdentityMatcher(config),
        store=store,
        inventory=store,
        revocations=RedisRevocationStore(
            r, audit_maxlen=config.broker.audit_stream_maxlen, wait=wait
        ),
        limiter=RedisLimits(r),
        auth_failures=RedisAuthFailures(r),
        audit=AuditLog(store),
        jobs=jobs,
        clock=clock,
        dpop_replay=RedisDpopReplay(r),
        tracer=build_tracer(settings.observability),
        approvals=RedisApprovals(r),
        chains=chains_class(r, audit_maxlen=config.broker.audit_stream_maxlen, wait=wait),
        settings=settings,
        redis=r,
        rq_redis=r_rq,
        jwks=jwks,
        health=store,
        console_sessions=RedisConsoleSessions(r),
        gauges=RedisGauges(r, jobs.job_keys(), r_rq),
    )


def build_keyring(
    settings: Settings, config: Config, r: redis.Redis, clock: Clock
) -> SigningKeys | RotatingKeys:
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


def check_redis_policy(runtime: Runtime, settings: Settings) -> None:
    """Refuse to run on a Redis that may evict keys: an evicted revocation record would let a
    revoked token back in. In development, warn loudly instead."""
    policy = runtime.health.eviction_policy()
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
