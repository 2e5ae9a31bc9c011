"""Process settings from the environment: every ERRAND_* setting the web and worker processes use.

Everything about *what* Errand trusts (issuers, identities, clients) lives in the YAML file
named by ERRAND_CONFIG (see broker/config/); this module holds only where things are."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from broker.errors import BrokerError
from broker.settings_observability import ObservabilitySettings, load_observability_settings


class SettingsError(BrokerError):
    """A missing or contradictory environment setting; the process refuses to start."""


@dataclass(frozen=True)
class Settings:
    config_path: Path  # ERRAND_CONFIG: the YAML file with issuers, identities, clients
    redis_url: str  # REDIS_URL (or ERRAND_REDIS_URL); "" when Sentinel finds Redis
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
    # ERRAND_TRUSTED_PROXIES: comma-separated networks of the proxies in front. Only a peer in
    # them may say, in one forwarding header, who the client is. Empty: the TCP peer counts.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    # ERRAND_TRUSTED_PROXY_HOPS: or exactly this many proxies in front, whatever their
    # addresses (only when nothing else can reach the broker). 0: off.
    trusted_proxy_hops: int = 0
    # ERRAND_TRUSTED_PROXY_HEADER: the one header those proxies write: x-forwarded-for or
    # forwarded (RFC 7239). The other is the caller's own and never read.
    trusted_proxy_header: str = "x-forwarded-for"
    # ERRAND_REDIS_SENTINELS: host:port,host:port of the Sentinels that name the primary,
    # instead of a URL. Every client follows a failover without a restart.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_service: str = ""  # ERRAND_REDIS_SENTINEL_SERVICE: the monitored name
    # ERRAND_REDIS_SENTINEL_PASSWORD_FILE: the Sentinels' own password (requirepass)
    redis_sentinel_password_file: Path | None = None
    # ERRAND_REDIS_PASSWORD_FILE: Redis's password, kept out of the URL and the environment
    redis_password_file: Path | None = None
    redis_db: int = 0  # ERRAND_REDIS_DB: database number with Sentinel (a URL names its own)
    # ERRAND_REDIS_WAIT_REPLICAS: grant writes, revocations, completions and revoke-all wait
    # (WAIT) until this many replicas have them, so a failover cannot lose them. 0: off.
    redis_wait_replicas: int = 0
    # ERRAND_REDIS_WAIT_TIMEOUT_MS: how long one such write waits for its replicas
    redis_wait_timeout_ms: int = 100
    # ERRAND_CONSOLE: on | off. The web console under /console (docs/console.md). Default: on
    # when an admin credential is configured (it is the console's login), off otherwise.
    console: bool = True
    # ERRAND_CONSOLE_IDLE_SECONDS: a console session unused this long ends
    console_idle_seconds: int = 900
    # ERRAND_CONSOLE_MAX_SECONDS: and every console session ends this long after its login
    console_max_seconds: int = 28800
    # Worker metrics and heartbeat, /readyz, tracing: broker/settings_observability.py
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    # ERRAND_AUDIT_CHECKPOINT_SECONDS: the sealer signs a checkpoint at most this often
    # (docs/audit.md: an unsealed entry could be altered unnoticed for about this long)
    audit_checkpoint_seconds: float = 60.0
    # ERRAND_AUDIT_RETENTION_SECONDS: audit entries older than this are trimmed, up to a
    # signed checkpoint only. 0: kept until the stream bound (audit_stream_maxlen) trims them.
    audit_retention_seconds: int = 0
    # ERRAND_AUDIT_KEY_FILE: base64 of 32 bytes, the key of the HMACs that stand for tokens
    # and jtis in audit events. Unset: derived from the KEK, else kept in Redis (docs/audit.md).
    audit_key_file: Path | None = None
    # ERRAND_REDIS_CLUSTER=1, or a redis+cluster:// URL listing seed nodes: Redis is a Redis
    # Cluster found from these nodes (broker/store/connection.py). Empty: not a cluster.
    redis_cluster_nodes: tuple[tuple[str, int], ...] = ()
    # ERRAND_QUEUE_REDIS_URL: a plain Redis for the RQ job queues (RQ cannot use a cluster).
    # Empty: the main Redis. Required with a cluster.
    queue_redis_url: str = ""
    # Values for ${NAME} / ${NAME:-default} references in the YAML configuration.
    config_vars: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_development(self) -> bool:
        return self.environment == "development"


@dataclass(frozen=True)
class ServerSettings:
    """What config/gunicorn.conf.py and the worker class need: read in the gunicorn master
    at start-up, without the broker's own settings."""

    bind: str = "127.0.0.1:8080"  # ERRAND_BIND
    web_workers: int = 3  # ERRAND_WEB_WORKERS: processes
    web_threads: int = 4  # ERRAND_WEB_THREADS: request threads per process
    # ERRAND_REQUEST_READ_TIMEOUT_SECONDS: a request (headers and body) must arrive whole
    # within this, from the connection's accept, or the connection is closed. Waiting costs
    # no thread: slow clients cannot hold the workers.
    request_read_timeout_seconds: float = 10.0
    # ERRAND_KEEPALIVE_SECONDS: an idle kept-alive connection is closed after this (0: none)
    keepalive_seconds: int = 5
    access_log: bool = True  # ERRAND_ACCESS_LOG: "1" on, anything else off


def load_server_settings(environ: Mapping[str, str] | None = None) -> ServerSettings:
    env = os.environ if environ is None else environ
    try:
        server = ServerSettings(
            bind=env.get("ERRAND_BIND", "127.0.0.1:8080"),
            web_workers=int(env.get("ERRAND_WEB_WORKERS", "3")),
            web_threads=int(env.get("ERRAND_WEB_THREADS", "4")),
            request_read_timeout_seconds=float(
                env.get("ERRAND_REQUEST_READ_TIMEOUT_SECONDS", "10")
            ),
            keepalive_seconds=int(env.get("ERRAND_KEEPALIVE_SECONDS", "5")),
            access_log=env.get("ERRAND_ACCESS_LOG", "1") == "1",
        )
    except ValueError as err:
        raise SettingsError(f"bad numeric environment setting: {err}") from err
    if server.web_workers < 1 or not 1 <= server.web_threads <= 64:
        raise SettingsError("ERRAND_WEB_WORKERS must be >= 1 and ERRAND_WEB_THREADS 1 to 64")
    # A read timeout of 0 or NaN would close every connection, or none.
    if not 0 < server.request_read_timeout_seconds <= 300:
        raise SettingsError("ERRAND_REQUEST_READ_TIMEOUT_SECONDS must be in (0, 300]")
    if not 0 <= server.keepalive_seconds <= 300:
        raise SettingsError("ERRAND_KEEPALIVE_SECONDS must be in [0, 300]")
    return server


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
    sentinels = _sentinel_addresses(env)
    if sentinels and (env.get("REDIS_URL") or env.get("ERRAND_REDIS_URL")):
        raise SettingsError(
            "set REDIS_URL (or ERRAND_REDIS_URL) or ERRAND_REDIS_SENTINELS, not both: "
            "they say differently where Redis is"
        )
    redis_url = "" if sentinels else need("REDIS_URL", "ERRAND_REDIS_URL", "ERRAND_REDIS_SENTINELS")
    kek = env.get("ERRAND_KEY_ENCRYPTION_KEY_FILE")
    key_dir = env.get("ERRAND_SIGNING_KEY_DIR") or (None if kek else need("ERRAND_SIGNING_KEY_DIR"))
    if missing:
        raise SettingsError("missing environment settings: " + ", ".join(missing))
    admin = env.get("ERRAND_ADMIN_TOKEN_FILE")
    proxies, hops, header = _proxy_trust(env)
    server = load_server_settings(env)
    redis_where = _redis_where(env, redis_url, sentinels)
    console = _console(env, admin_configured=bool(admin))
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
            bind=server.bind,
            web_workers=server.web_workers,
            redis_timeout_seconds=float(env.get("ERRAND_REDIS_TIMEOUT_SECONDS", "0.5")),
            sweep_interval_seconds=float(env.get("ERRAND_SWEEP_INTERVAL_SECONDS", "5")),
            reconcile_after_seconds=float(env.get("ERRAND_RECONCILE_AFTER_SECONDS", "30")),
            audit_checkpoint_seconds=float(env.get("ERRAND_AUDIT_CHECKPOINT_SECONDS", "60")),
            audit_retention_seconds=int(env.get("ERRAND_AUDIT_RETENTION_SECONDS", "0")),
            audit_key_file=Path(env["ERRAND_AUDIT_KEY_FILE"])
            if env.get("ERRAND_AUDIT_KEY_FILE")
            else None,
            trusted_proxies=proxies,
            trusted_proxy_hops=hops,
            trusted_proxy_header=header,
            observability=load_observability_settings(env),
            config_vars=dict(env),
            **redis_where,
            **console,
        )
    except ValueError as err:
        raise SettingsError(f"bad numeric environment setting: {err}") from err


def _console(env: Mapping[str, str], *, admin_configured: bool) -> dict[str, Any]:
    """ERRAND_CONSOLE and its session lifetimes; on by default when the admin credential (its
    login) is configured, and refused when asked for without one."""
    raw = env.get("ERRAND_CONSOLE", "").strip().lower()
    if raw not in ("", "on", "off"):
        raise SettingsError(f"ERRAND_CONSOLE must be 'on' or 'off', not {raw!r}")
    if raw == "on" and not admin_configured:
        raise SettingsError(
            "ERRAND_CONSOLE=on needs ERRAND_ADMIN_TOKEN_FILE: the admin credential is the "
            "console's login"
        )
    try:
        idle = int(env.get("ERRAND_CONSOLE_IDLE_SECONDS", "900").strip() or "900")
        most = int(env.get("ERRAND_CONSOLE_MAX_SECONDS", "28800").strip() or "28800")
    except ValueError as err:
        raise SettingsError(f"bad numeric environment setting: {err}") from err
    if not 60 <= idle <= most <= 7 * 86400:
        raise SettingsError(
            "ERRAND_CONSOLE_IDLE_SECONDS must be at least 60 and at most "
            "ERRAND_CONSOLE_MAX_SECONDS, itself at most 7 days (604800)"
        )
    return {
        "console": admin_configured if raw == "" else raw == "on",
        "console_idle_seconds": idle,
        "console_max_seconds": most,
    }


MAX_PROXY_HOPS = 10
PROXY_HEADERS = ("x-forwarded-for", "forwarded")


def _proxy_trust(
    env: Mapping[str, str],
) -> tuple[tuple[IPv4Network | IPv6Network, ...], int, str]:
    """ERRAND_TRUSTED_PROXIES / _HOPS / _HEADER, refusing what would make the client address
    the caller's choice or leave the operator believing a setting is in force."""
    raw = env.get("ERRAND_TRUSTED_PROXIES", "").strip()
    networks: list[IPv4Network | IPv6Network] = []
    if raw:
        for item in raw.split(","):
            try:
                # strict: "10.0.0.1/8" has host bits set; refuse rather than guess what was meant
                net = ip_network(item.strip(), strict=True)
            except ValueError as err:
                raise SettingsError(
                    f"ERRAND_TRUSTED_PROXIES: {item.strip()!r} is not a network ({err})"
                ) from err
            if net.prefixlen == 0:
                raise SettingsError(
                    f"ERRAND_TRUSTED_PROXIES: {net} trusts every address, so any caller "
                    "could choose the address it is counted as"
                )
            networks.append(net)
    try:
        hops = int(env.get("ERRAND_TRUSTED_PROXY_HOPS", "0").strip() or "0")
    except ValueError as err:
        raise SettingsError(f"ERRAND_TRUSTED_PROXY_HOPS: not a number ({err})") from err
    if not 0 <= hops <= MAX_PROXY_HOPS:
        raise SettingsError(f"ERRAND_TRUSTED_PROXY_HOPS must be between 0 and {MAX_PROXY_HOPS}")
    if networks and hops:
        raise SettingsError(
            "set ERRAND_TRUSTED_PROXIES or ERRAND_TRUSTED_PROXY_HOPS, not both: "
            "they answer the same question differently"
        )
    header = env.get("ERRAND_TRUSTED_PROXY_HEADER", "").strip().lower()
    if header and not (networks or hops):
        raise SettingsError(
            "ERRAND_TRUSTED_PROXY_HEADER is set but no proxy is trusted "
            "(ERRAND_TRUSTED_PROXIES or ERRAND_TRUSTED_PROXY_HOPS): it would be ignored"
        )
    header = header or PROXY_HEADERS[0]
    if header not in PROXY_HEADERS:
        raise SettingsError(
            f"ERRAND_TRUSTED_PROXY_HEADER must be one of {', '.join(PROXY_HEADERS)}, not {header!r}"
        )
    return tuple(networks), hops, header


MAX_WAIT_REPLICAS = 16


def _sentinel_addresses(env: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """ERRAND_REDIS_SENTINELS: `host:port,host:port` (IPv6 as `[::1]:26379`)."""
    raw = env.get("ERRAND_REDIS_SENTINELS", "").strip()
    if not raw:
        return ()
    out: list[tuple[str, int]] = []
    for item in (i.strip() for i in raw.split(",")):
        host, sep, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"ERRAND_REDIS_SENTINELS: {item!r} is not host:port (give every Sentinel, "
                "comma-separated)"
            )
        if (host, int(port)) not in out:
            out.append((host, int(port)))
    return tuple(out)


def _redis_where(
    env: Mapping[str, str], redis_url: str, sentinels: tuple[tuple[str, int], ...]
) -> dict[str, Any]:
    """The Sentinel, credential and WAIT settings, refusing a setting that the chosen way of
    finding Redis would silently ignore or that would contradict it."""
    service = env.get("ERRAND_REDIS_SENTINEL_SERVICE", "").strip()
    sentinel_password = env.get("ERRAND_REDIS_SENTINEL_PASSWORD_FILE", "").strip()
    password = env.get("ERRAND_REDIS_PASSWORD_FILE", "").strip()
    db = env.get("ERRAND_REDIS_DB", "").strip()
    if sentinels and not service:
        raise SettingsError(
            "missing environment settings: ERRAND_REDIS_SENTINEL_SERVICE "
            "(the name the Sentinels monitor, as in `sentinel monitor NAME …`)"
        )
    if not sentinels:
        ignored = [
            name
            for name, value in (
                ("ERRAND_REDIS_SENTINEL_SERVICE", service),
                ("ERRAND_REDIS_SENTINEL_PASSWORD_FILE", sentinel_password),
                ("ERRAND_REDIS_DB", db),
            )
            if value
        ]
        if ignored:
            raise SettingsError(
                f"{', '.join(ignored)} set without ERRAND_REDIS_SENTINELS: it would be ignored "
                "(with REDIS_URL, the URL names the database)"
            )
    if password and _url_has_password(redis_url):
        raise SettingsError(
            "ERRAND_REDIS_PASSWORD_FILE is set and the Redis URL carries a password: "
            "give it in one place"
        )
    try:
        redis_db = int(db or "0")
        replicas = int(env.get("ERRAND_REDIS_WAIT_REPLICAS", "0").strip() or "0")
        wait_ms = int(env.get("ERRAND_REDIS_WAIT_TIMEOUT_MS", "100").strip() or "100")
        timeout = float(env.get("ERRAND_REDIS_TIMEOUT_SECONDS", "0.5"))
    except ValueError as err:
        raise SettingsError(f"bad numeric environment setting: {err}") from err
    if redis_db < 0:
        raise SettingsError("ERRAND_REDIS_DB must be 0 or more")
    if not 0 <= replicas <= MAX_WAIT_REPLICAS:
        raise SettingsError(f"ERRAND_REDIS_WAIT_REPLICAS must be between 0 and {MAX_WAIT_REPLICAS}")
    # WAIT 0 ms would block forever; the reply must also come back before the client's own
    # operation timeout gives up on it.
    if replicas and not 0 < wait_ms <= timeout * 1000 / 2:
        raise SettingsError(
            "ERRAND_REDIS_WAIT_TIMEOUT_MS must be at least 1 and at most half of "
            f"ERRAND_REDIS_TIMEOUT_SECONDS ({timeout * 1000:g} ms), so that the write's reply "
            "arrives before the client stops waiting for it"
        )
    cluster = _redis_cluster(env, redis_url, sentinels, replicas)
    return {
        **cluster,
        "redis_sentinels": sentinels,
        "redis_sentinel_service": service,
        "redis_sentinel_password_file": Path(sentinel_password) if sentinel_password else None,
        "redis_password_file": Path(password) if password else None,
        "redis_db": redis_db,
        "redis_wait_replicas": replicas,
        "redis_wait_timeout_ms": wait_ms,
    }


def _redis_cluster(
    env: Mapping[str, str], redis_url: str, sentinels: tuple[tuple[str, int], ...], replicas: int
) -> dict[str, Any]:
    """ERRAND_REDIS_CLUSTER / redis+cluster:// and ERRAND_QUEUE_REDIS_URL, with the
    combinations a cluster cannot honour refused."""
    queue_url = env.get("ERRAND_QUEUE_REDIS_URL", "").strip()
    flag = env.get("ERRAND_REDIS_CLUSTER", "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no"):
        raise SettingsError("ERRAND_REDIS_CLUSTER must be 1 or 0")
    scheme, sep, _ = redis_url.partition("://")
    cluster_url = scheme in ("redis+cluster", "rediss+cluster")
    if not (cluster_url or flag in ("1", "true", "yes")):
        return {"redis_cluster_nodes": (), "queue_redis_url": queue_url}
    if sentinels:
        raise SettingsError("a Redis Cluster and ERRAND_REDIS_SENTINELS exclude each other")
    if replicas:
        raise SettingsError(
            "ERRAND_REDIS_WAIT_REPLICAS is not supported on a Redis Cluster: a grant write "
            "there is several steps on several nodes, and WAIT covers one connection's writes"
        )
    if not queue_url:
        raise SettingsError(
            "missing environment settings: ERRAND_QUEUE_REDIS_URL (RQ cannot use a Redis "
            "Cluster: give it a plain Redis for the job queues)"
        )
    netloc = urlsplit(redis_url).netloc.rpartition("@")[2] if sep else ""
    nodes = _host_ports(netloc, "REDIS_URL")
    if not nodes:
        raise SettingsError("a Redis Cluster URL must name at least one node (host:port)")
    return {"redis_cluster_nodes": nodes, "queue_redis_url": queue_url}


def _host_ports(text: str, name: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"{name}: {item!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


def _url_has_password(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.password) or "password" in parse_qs(parts.query)
