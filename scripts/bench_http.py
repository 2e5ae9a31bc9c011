#!/usr/bin/env python3
# ruff: noqa: E501 - report lines are formatted f-strings, easier to read unwrapped
"""HTTP throughput and latency of Errand's token exchange and introspection.

Starts everything privately on 127.0.0.1 (never the Redis on 6379): a redis-server on a free
port, a signing-key directory, the dev OIDC issuer, a YAML configuration and the broker under
gunicorn (config/gunicorn.conf.py, ERRAND_ENV=production, access log off, audit lines to a
file). For each web-worker count it then drives

  1. POST /token (RFC 8693 exchange) with a fresh, pre-minted subject token per request
     (the jti is single-use), and
  2. POST /introspect (RFC 7662, client_secret_basic) over a pool of live access tokens,

at a fixed concurrency for a fixed time, with wrk (scripts/wrk/bodies.lua) when it is
installed, else with a Python generator (threads + http.client), and prints requests/s,
p50/p90/p99/max latency and the error count (HTTP status >= 400, socket errors, timeouts).

    .venv/bin/python scripts/bench_http.py                     # workers 2,3,4; 32 clients; 20 s
    .venv/bin/python scripts/bench_http.py --workers 3 --json  # one JSON summary line at the end
    .venv/bin/python scripts/bench_http.py --workers 3 --profile   # py-spy on the workers
    .venv/bin/python scripts/bench_http.py --workers 3 --variants 'sync=-k sync;conf='
        # gunicorn set-ups side by side in one run: each LABEL=ARGS (extra gunicorn options;
        # empty: config/gunicorn.conf.py as it is) runs in turn for each worker count

Every load loop is bounded by a request count (the token pool) and by time (--duration)."""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import http.client
import json
import math
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from broker.dev.embedded_redis import RedisProcess, free_port  # noqa: E402
from broker.dev.issuer import DevIssuer, github_claims, load_or_create_key, mint_with  # noqa: E402
from broker.domain.models import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT  # noqa: E402
from broker.tokens.keyring import generate_key  # noqa: E402

LUA = ROOT / "scripts" / "wrk" / "bodies.lua"
BROKER_ISSUER = "https://errand.bench.example"
SUBJECT_AUDIENCE = "errand-bench"
AUDIENCE = "https://deploy.acme.example"
SCOPE = "deploy:write"
CLIENT_ID = "bench-rs"
TARGETS = {"exchange": 1000.0, "introspect": 2000.0}  # requests/s, from the issue
TARGET_P99_MS = 50.0

CONFIG_TEMPLATE = """\
# Written by scripts/bench_http.py for one benchmark run.
broker:
  issuer: {broker_issuer}
  default_token_ttl_seconds: 300
  max_token_ttl_seconds: 900
{limits}issuers:
  - id: bench-ci
    issuer: {issuer_url}
    audience: {subject_audience}
    algorithms: [ES256]
    refresh_cooldown_seconds: 10
identities:
  - id: acme-app-deploy
    type: service
    owner: platform-team
    purpose: Deploy acme/app from its main branch
    match:
      - issuer: bench-ci
        claims:
          repository_id: "100200300"
          repository_owner_id: "4242"
          ref: refs/heads/main
          event_name: push
    allow:
      audiences: [{audience}]
      scopes: [deploy:read, deploy:write]
      default_scopes: [deploy:read]
      max_ttl_seconds: {max_ttl}
  - id: acme-app-pr-checks
    type: service
    owner: platform-team
    purpose: Read-only checks for pull requests on acme/app
    match:
      - issuer: bench-ci
        claims:
          repository_id: "100200300"
          repository_owner_id: "4242"
          event_name: pull_request
    allow:
      audiences: [{audience}]
      scopes: [deploy:read]
      default_scopes: [deploy:read]
      max_ttl_seconds: 300
  # --delegation: two agents, each allowed to act for acme-app-deploy (one hop each).
{agents}clients:
  - client_id: {client_id}
    secret_file: {client_id}.secret
"""

# One agent per hop of the chain, told apart by the ref its token names.
AGENT_TEMPLATE = """\
  - id: bench-agent-{letter}
    type: agent
    owner: agents-team
    purpose: {ordinal} hop of a delegation chain
    match:
      - issuer: bench-ci
        claims: {{repository_id: "100200300", repository_owner_id: "4242", ref: refs/heads/agent-{letter}, event_name: push}}
    allow: {{audiences: [{audience}], scopes: [deploy:read, deploy:write], max_ttl_seconds: 600}}
    delegation: {{act_for: [acme-app-deploy]}}
"""


def agents_yaml(audience: str) -> str:
    """The --delegation agents' identities, bench-agent-a (first hop) and -b (second)."""
    hops = (("a", "First"), ("b", "Second"))
    return "".join(AGENT_TEMPLATE.format(letter=x, ordinal=o, audience=audience) for x, o in hops)


# A limit the load never reaches: the rate counters and the live-grant quota still run (their
# cost is part of a real request) but never refuse. 0 would switch them off.
UNREACHABLE_LIMIT = 1_000_000_000


def limits_yaml() -> str:
    """The broker.limits block, for broker versions whose configuration has one."""
    try:
        from broker.config import BrokerSchema
    except ImportError:
        return ""
    nested = BrokerSchema._declared_fields.get("limits")
    schema = getattr(nested, "schema", None)
    if schema is None:
        return ""
    names = [
        n
        for n in ("per_address", "per_issuer", "per_identity", "max_live_grants_per_identity")
        if n in schema.fields
    ]
    if not names:
        return ""
    return "  limits: {" + ", ".join(f"{n}: {UNREACHABLE_LIMIT}" for n in names) + "}\n"


# ----------------------------------------------------------------------------------------
# Processes and CPU accounting
# ----------------------------------------------------------------------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / _CLK_TCK, steal / _CLK_TCK


def wait_for_quiet(max_wait: float, threshold: float, log: Any) -> float:
    """Wait (at most max_wait s) until the rest of the machine is nearly idle: this host may
    be shared, and a benchmark on 2 cores measures whatever else runs. Returns the busy cores
    seen in the last 1-second window (our own stack is idle while this runs)."""
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        b0 = machine_cpu()[0]
        time.sleep(1.0)
        busy = machine_cpu()[0] - b0
        if busy <= threshold or time.monotonic() >= deadline:
            if waited:
                log(
                    f"   machine busy {busy:.2f} cores before the phase"
                    + ("" if busy <= threshold else " (gave up waiting: results will be noisy)")
                )
            return busy
        waited = True


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        redis_version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=5
        ).stdout.split()[2]
    except (OSError, IndexError, subprocess.SubprocessError):
        redis_version = "?"
    try:
        import gunicorn

        gunicorn_version = gunicorn.__version__
    except ImportError:
        gunicorn_version = "?"
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "redis": redis_version.removeprefix("v="),
        "gunicorn": gunicorn_version,
        "kernel": platform.release(),
        "code": code_version(),
    }


def code_version() -> str:
    """Which broker code ran: the git commit of this checkout (and whether broker/, workers/
    or config/ differ from it), or what a snapshot's .bench-source file says."""
    marker = ROOT / ".bench-source"
    if marker.exists():
        return marker.read_text().strip()
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "broker", "workers", "config"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"git {head}" + (
        f" + uncommitted changes in {len(dirty.splitlines())} file(s)" if dirty else ""
    )


def wrk_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=5)
        m = re.search(r"wrk (\S+)", out.stdout + out.stderr)
        return m.group(1) if m else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# ----------------------------------------------------------------------------------------
# The private stack: redis-server, keys, dev issuer, config, gunicorn, RQ worker
# ----------------------------------------------------------------------------------------
class Stack:
    """Everything one benchmark needs, on loopback, in `workdir`. Use as a context manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        max_ttl: int = 600,
        audit_to: str = "file",
        gunicorn_args: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.gunicorn_args = gunicorn_args or []
        self.max_ttl = max_ttl
        self.audit_to = audit_to
        self.redis: RedisProcess | None = None
        self.issuer: DevIssuer | None = None
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.rq_worker: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.workers = 0
        self._logs: list[Any] = []

    # -- set-up ------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        self.redis = RedisProcess(self.workdir / "redis").start()
        self.key_dir = self.workdir / "keys"
        generate_key(self.key_dir)
        self.issuer_key = load_or_create_key(self.workdir / "issuer" / "key.pem")
        self.issuer = DevIssuer(self.issuer_key).start()
        self.client_secret = secrets.token_urlsafe(24)
        secret_file = self.workdir / f"{CLIENT_ID}.secret"
        secret_file.write_text(self.client_secret + "\n")
        secret_file.chmod(0o600)
        self.config_path = self.workdir / "errand.bench.yaml"
        self.config_path.write_text(
            CONFIG_TEMPLATE.format(
                broker_issuer=BROKER_ISSUER,
                issuer_url=self.issuer.issuer,
                subject_audience=SUBJECT_AUDIENCE,
                audience=AUDIENCE,
                client_id=CLIENT_ID,
                max_ttl=self.max_ttl,
                limits=limits_yaml(),
                agents=agents_yaml(AUDIENCE),
            )
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.stop_rq_worker()
        self.stop_gunicorn()
        if self.issuer is not None:
            self.issuer.stop()
            self.issuer = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        for fh in self._logs:
            fh.close()
        self._logs.clear()

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    @property
    def basic_auth(self) -> str:
        raw = f"{CLIENT_ID}:{self.client_secret}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def env(self, workers: int, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ERRAND_") and k not in ("REDIS_URL",)
        }
        env.update(
            ERRAND_CONFIG=str(self.config_path),
            REDIS_URL=self.redis_url,
            ERRAND_SIGNING_KEY_DIR=str(self.key_dir),
            ERRAND_BIND=f"127.0.0.1:{self.port}",
            ERRAND_WEB_WORKERS=str(workers),
            ERRAND_ACCESS_LOG="0",
            ERRAND_ENV="production",
            # The benchmark runs no RQ worker: readiness must not wait for a worker's report.
            ERRAND_READY_WORKER_MAX_AGE_SECONDS="0",
            # The broker code next to these scripts, even if another checkout is installed
            # into the venv in editable mode.
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def _log(self, name: str) -> Any:
        fh = open(self.workdir / name, "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(fh)
        return fh

    def audit_log_path(self, workers: int) -> Path:
        return self.workdir / f"gunicorn-w{workers}.stdout"

    def start_gunicorn(self, workers: int, timeout: float = 30.0) -> None:
        self.stop_gunicorn()
        self.port = free_port()
        self.workers = workers
        stdout: Any = (
            subprocess.DEVNULL
            if self.audit_to == "devnull"
            else self._log(self.audit_log_path(workers).name)
        )
        self.gunicorn = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "config/gunicorn.conf.py",
                *self.gunicorn_args,
                "broker.app:create_app()",
            ],
            cwd=ROOT,
            env=self.env(workers),
            stdout=stdout,
            stderr=self._log(f"gunicorn-w{workers}.stderr"),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                tail = (self.workdir / f"gunicorn-w{workers}.stderr").read_text()[-3000:]
                raise RuntimeError(f"gunicorn exited (rc={self.gunicorn.returncode}):\n{tail}")
            if len(children(self.gunicorn.pid)) >= workers:
                try:
                    status, _ = http_call(self.port, "GET", "/readyz", None, {}, timeout=1.0)
                    if status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("gunicorn did not become ready in time")

    def worker_pids(self) -> list[int]:
        return children(self.gunicorn.pid) if self.gunicorn else []

    def stop_gunicorn(self) -> None:
        proc, self.gunicorn = self.gunicorn, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def start_rq_worker(self, sweep_interval: float = 1.0) -> None:
        self.rq_worker = subprocess.Popen(
            [sys.executable, "-m", "workers"],
            cwd=ROOT,
            env=self.env(1, ERRAND_SWEEP_INTERVAL_SECONDS=str(sweep_interval)),
            stdout=self._log("worker.stdout"),
            stderr=self._log("worker.stderr"),
            start_new_session=True,
        )

    def stop_rq_worker(self) -> None:
        proc, self.rq_worker = self.rq_worker, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    # -- requests ----------------------------------------------------------------------
    def mint_subject_tokens(self, n: int, *, lifetime: int = 300) -> list[str]:
        assert self.issuer is not None
        now = time.time()
        return [
            mint_with(
                self.issuer_key,
                github_claims(
                    issuer=self.issuer.issuer, audience=SUBJECT_AUDIENCE, lifetime=lifetime, now=now
                ),
            )
            for _ in range(n)
        ]

    def exchange_bodies(
        self, n: int, *, lifetime: int | None = None, subject_lifetime: int = 300
    ) -> list[str]:
        return [
            exchange_body(t, lifetime=lifetime)
            for t in self.mint_subject_tokens(n, lifetime=subject_lifetime)
        ]

    def issue_access_tokens(self, n: int, *, threads: int = 8) -> list[str]:
        """n real exchanges over HTTP (warm-up, and the introspection pool)."""
        bodies = self.exchange_bodies(n)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}

        def one(body: str) -> str:
            status, data = http_call(self.port, "POST", "/token", body, headers)
            if status != 200:
                raise RuntimeError(f"exchange failed during set-up: HTTP {status} {data[:300]!r}")
            return str(json.loads(data)["access_token"])

        # One exchange first, alone: on a cold JWKS cache, concurrent first requests in other
        # workers lose the refresh lock and answer 503 until the mirror is in Redis.
        first = [one(bodies[0])] if bodies else []
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            return first + list(pool.map(one, bodies[1:]))

    def introspect_bodies(self, tokens: list[str]) -> list[str]:
        return ["token=" + urllib.parse.quote(t, safe="") for t in tokens]


_EXCHANGE_PREFIX = urllib.parse.urlencode(
    {
        "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
        "subject_token_type": TOKEN_TYPE_JWT,
        "audience": AUDIENCE,
        "scope": SCOPE,
    }
)


def exchange_body(subject_token: str, *, lifetime: int | None = None) -> str:
    body = _EXCHANGE_PREFIX + "&subject_token=" + urllib.parse.quote(subject_token, safe="")
    if lifetime:
        body += f"&requested_lifetime={lifetime}"
    return body


def http_call(
    port: int,
    method: str,
    path: str,
    body: str | None,
    headers: dict[str, str],
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------
# Delegation chains (--delegation): what a hop adds to an exchange
# ----------------------------------------------------------------------------------------
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def hop_body(stack: Stack, subject_token: str, actor_ref: str) -> str:
    """A delegation request: our token as subject, a fresh CI token of the actor's branch."""
    assert stack.issuer is not None
    claims = github_claims(issuer=stack.issuer.issuer, audience=SUBJECT_AUDIENCE, now=time.time())
    claims["ref"] = actor_ref
    return urllib.parse.urlencode(
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "actor_token": mint_with(stack.issuer_key, claims),
            "actor_token_type": TOKEN_TYPE_JWT,
            "purpose": "bench hop",
            "scope": SCOPE,
        }
    )


def post_all(stack: Stack, bodies: list[str], threads: int = 8) -> list[str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    def one(body: str) -> str:
        status, data = http_call(stack.port, "POST", "/token", body, headers)
        if status != 200:
            raise RuntimeError(f"set-up request failed: HTTP {status} {data[:300]!r}")
        return str(json.loads(data)["access_token"])

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, bodies))


def delegation_cpu(stack: Stack, n: int, rounds: int = 5) -> dict[str, float]:
    """CPU per call (process_time, min over `rounds` interleaved rounds) of exchange_token in
    this process against the private Redis: a plain exchange, a first and a second hop."""
    import logging

    from broker.domain.exchange import exchange_token
    from broker.domain.models import ExchangeRequest
    from broker.services import build_services
    from broker.settings import load_settings

    saved = dict(os.environ)
    os.environ.update(stack.env(1))
    try:
        svc = build_services(load_settings())
    finally:
        os.environ.clear()
        os.environ.update(saved)
    audit = logging.getLogger("errand.audit")
    audit.handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]  # noqa: SIM115
    audit.propagate = False
    assert stack.issuer is not None

    def ci(ref: str) -> str:
        claims = github_claims(
            issuer=stack.issuer.issuer, audience=SUBJECT_AUDIENCE, now=time.time()
        )  # type: ignore[union-attr]
        claims["ref"] = ref
        return mint_with(stack.issuer_key, claims)

    def plain() -> Any:
        return ExchangeRequest(
            subject_token=ci("refs/heads/main"),
            subject_token_type=TOKEN_TYPE_JWT,
            audiences=(AUDIENCE,),
            scopes=(SCOPE,),
        )

    def hop(subject_token: str, ref: str) -> Any:
        return ExchangeRequest(
            subject_token=subject_token,
            subject_token_type=ACCESS_TOKEN_TYPE,
            actor_token=ci(ref),
            actor_token_type=TOKEN_TYPE_JWT,
            scopes=(SCOPE,),
            purpose="bench hop",
        )

    exchange_token(plain(), svc)  # loads the JWKS
    best = {"exchange": math.inf, "hop 1": math.inf, "hop 2": math.inf}
    for _ in range(rounds):
        plains = [plain() for _ in range(n)]
        t0 = time.process_time()
        roots = [exchange_token(r, svc).access_token for r in plains]
        best["exchange"] = min(best["exchange"], (time.process_time() - t0) / n)
        firsts_req = [hop(t, "refs/heads/agent-a") for t in roots]
        t0 = time.process_time()
        firsts = [exchange_token(r, svc).access_token for r in firsts_req]
        best["hop 1"] = min(best["hop 1"], (time.process_time() - t0) / n)
        seconds_req = [hop(t, "refs/heads/agent-b") for t in firsts]
        t0 = time.process_time()
        for r in seconds_req:
            exchange_token(r, svc)
        best["hop 2"] = min(best["hop 2"], (time.process_time() - t0) / n)
    return {k: v * 1e6 for k, v in best.items()}


def delegation_costs(
    stack: Stack, args: Any, workers: int, rounds: int = 3
) -> list[dict[str, Any]]:
    """What a hop adds to an exchange, side by side in one run: in process, CPU per call;
    then over HTTP, three phases with the same load, interleaved in `rounds` rounds so that
    drifting machine load hits them alike: a plain exchange (CI token -> token), the first
    hop (root token + actor token) and the second hop (first hop's token + actor token).
    Every body is prepared before the timed phases; no request repeats a single-use token."""
    cpu = delegation_cpu(stack, 200)
    stack.start_gunicorn(workers)
    slice_s = args.duration / rounds
    pool = max(200, int(slice_s * 400))
    print(f"delegation: {workers} workers, {rounds} rounds of {slice_s:g} s per phase", flush=True)
    timed: dict[str, list[dict[str, Any]]] = {"exchange": [], "hop 1": [], "hop 2": []}
    for _ in range(rounds):
        plain = stack.exchange_bodies(pool)
        roots = stack.issue_access_tokens(pool)
        hop1 = [hop_body(stack, t, "refs/heads/agent-a") for t in roots]
        firsts = post_all(stack, [hop_body(stack, t, "refs/heads/agent-a") for t in roots])
        hop2 = [hop_body(stack, t, "refs/heads/agent-b") for t in firsts]
        for phase, bodies in (("exchange", plain), ("hop 1", hop1), ("hop 2", hop2)):
            timed[phase].append(
                run_python(
                    stack.port,
                    "/token",
                    bodies,
                    cycle=False,
                    auth="",
                    concurrency=args.concurrency,
                    duration=slice_s,
                )
            )
    stack.stop_gunicorn()
    rows = []
    for phase, runs in timed.items():
        requests_ = sum(r["requests"] for r in runs)
        rows.append(
            {
                "phase": phase,
                "workers": workers,
                "cpu_us": round(cpu[phase]),
                "requests": requests_,
                "rps": requests_ / sum(r["seconds"] for r in runs),
                "mean_ms": sum(r["mean_ms"] * r["requests"] for r in runs) / max(requests_, 1),
                "p50_ms": sorted(r["p50_ms"] for r in runs)[len(runs) // 2],
                "p99_ms": max(r["p99_ms"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
            }
        )
    base = rows[0]
    print(
        f"\n{'phase':<10} {'CPU us':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>8} "
        f"{'errors':>6}"
    )
    for r in rows:
        print(
            f"{r['phase']:<10} {r['cpu_us']:>7} {r['rps']:>8.0f} {r['p50_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['mean_ms']:>8.2f} {r['errors']:>6}"
            + (
                ""
                if r is base
                else f"   (+{r['cpu_us'] - base['cpu_us']} us CPU, "
                f"{r['mean_ms'] - base['mean_ms']:+.2f} ms mean vs a plain exchange)"
            )
        )
    return rows


# ----------------------------------------------------------------------------------------
# Load generators
# ----------------------------------------------------------------------------------------
def split_round_robin(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts)]


def run_wrk(
    wrk: str,
    port: int,
    path: str,
    bodies: list[str],
    *,
    cycle: bool,
    auth: str,
    threads: int,
    concurrency: int,
    duration: float,
    prefix: Path,
    stop_when: Any = None,
) -> dict[str, Any]:
    """One wrk run; `stop_when()` (polled) may end it early with SIGINT, which makes wrk
    stop, print its summary and report the time it actually ran."""
    for i, part in enumerate(split_round_robin(bodies, threads), start=1):
        Path(f"{prefix}.{i}").write_text("\n".join(part) + "\n")
    cmd = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{duration:g}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
        "--",
        path,
        str(prefix),
        "1" if cycle else "0",
        auth,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 gives the generator's own CPU time; bounded by wrk's -d plus a margin.
    deadline = time.monotonic() + duration + 60
    status, rusage = 0, None
    interrupted = False
    while time.monotonic() < deadline:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if stop_when is not None and not interrupted and stop_when():
            proc.send_signal(signal.SIGINT)
            interrupted = True
        time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("wrk did not finish in time")
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    for f in prefix.parent.glob(prefix.name + ".*"):
        f.unlink()
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed (rc={proc.returncode}):\n{out}\n{err}")
    raw = json.loads(m.group(1))
    secs = raw["duration_us"] / 1e6
    # Spare GET /healthz requests sent after a single-use pool ran out are not counted.
    raw["requests"] = max(0, raw["requests"] - raw["exhausted"])
    socket_errors = (
        raw["errors_connect"] + raw["errors_read"] + raw["errors_write"] + raw["errors_timeout"]
    )
    return {
        "requests": raw["requests"],
        "seconds": round(secs, 2),
        "rps": raw["requests"] / secs if secs else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "errors": raw["errors_status"] + socket_errors,
        "http_errors": raw["errors_status"],
        "socket_errors": socket_errors,
        "exhausted": raw["exhausted"],
        "loadgen_cpu_s": (rusage.ru_utime + rusage.ru_stime) if rusage else 0.0,
    }


def run_python(
    port: int,
    path: str,
    bodies: list[str],
    *,
    cycle: bool,
    auth: str,
    concurrency: int,
    duration: float,
) -> dict[str, Any]:
    """Fallback generator: one thread per connection, http.client with keep-alive where the
    server allows it (gunicorn's sync workers close after each response)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth:
        headers["Authorization"] = auth
    parts = split_round_robin(bodies, concurrency)
    lock = threading.Lock()
    latencies: list[float] = []
    counts = collections.Counter[str]()
    start = time.monotonic()
    deadline = start + duration
    cpu0 = time.process_time()

    def worker(mine: list[str]) -> None:
        conn: http.client.HTTPConnection | None = None
        local: list[float] = []
        local_counts = collections.Counter[str]()
        i = 0
        while time.monotonic() < deadline:
            if i >= len(mine):
                if not cycle or not mine:
                    local_counts["exhausted"] += 1
                    break
                i = 0
            body = mine[i]
            i += 1
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.will_close:
                    conn.close()
                    conn = None
            except OSError:
                local_counts["socket_errors"] += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            local.append(time.perf_counter() - t0)
            if resp.status >= 400:
                local_counts["http_errors"] += 1
        if conn is not None:
            conn.close()
        with lock:
            latencies.extend(local)
            counts.update(local_counts)

    threads = [threading.Thread(target=worker, args=(p,), daemon=True) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    secs = time.monotonic() - start
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, math.ceil(p / 100 * len(latencies)) - 1)] * 1000

    return {
        "requests": len(latencies),
        "seconds": round(secs, 2),
        "rps": len(latencies) / secs if secs else 0.0,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
        "mean_ms": sum(latencies) / len(latencies) * 1000 if latencies else 0.0,
        "errors": counts["http_errors"] + counts["socket_errors"],
        "http_errors": counts["http_errors"],
        "socket_errors": counts["socket_errors"],
        "exhausted": counts["exhausted"],
        "loadgen_cpu_s": time.process_time() - cpu0,
    }


# ----------------------------------------------------------------------------------------
# Profiling (py-spy)
# ----------------------------------------------------------------------------------------
def find_py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


# What the profile report names: (label, function, file). A function of "*" with a file
# ending in "/" counts every frame of that package. Names match with or without the class.
PROFILE_FOCUS = [
    (
        "gunicorn: read + parse the HTTP request",
        "RequestParser.__next__",
        "gunicorn/http/parser.py",
    ),
    ("flask: wsgi_app (the whole app)", "Flask.wsgi_app", "flask/app.py"),
    ("read_form (werkzeug form parsing)", "read_form", "broker/http/forms.py"),
    ("load (marshmallow schema)", "load", "broker/http/forms.py"),
    ("exchange_token", "exchange_token", "broker/domain/exchange.py"),
    ("  SubjectTokenVerifier.verify", "SubjectTokenVerifier.verify", "broker/identity/verifier.py"),
    ("    read_compact_jws (strict JSON)", "read_compact_jws", "errand_jose/compact.py"),
    ("    JwksCache.key_for", "JwksCache.key_for", "broker/identity/jwks.py"),
    ("  RedisGrantStore.preflight", "RedisGrantStore.preflight", "broker/store/redis.py"),
    ("  IdentityMatcher.match", "IdentityMatcher.match", "broker/policy/matcher.py"),
    ("  mint_access_token", "mint_access_token", "broker/tokens/mint.py"),
    ("  RedisGrantStore.save_grant", "RedisGrantStore.save_grant", "broker/store/redis.py"),
    ("  AuditLog.record (JSON log line)", "AuditLog.record", "broker/audit.py"),
    ("introspect", "introspect", "broker/domain/introspection.py"),
    ("  read_our_token", "read_our_token", "broker/domain/access.py"),
    ("  RedisGrantStore.grant_state", "RedisGrantStore.grant_state", "broker/store/redis.py"),
    ("authenticate_client", "authenticate_client", "broker/http/client_auth.py"),
    ("json_response (flask jsonify)", "json_response", "broker/http/responses.py"),
    ("PyJWT decode (all)", "PyJWT.decode", "jwt/api_jwt.py"),
    ("PyJWT encode (all)", "PyJWT.encode", "jwt/api_jwt.py"),
    ("ECDSA verify (cryptography)", "ECAlgorithm.verify", "jwt/algorithms.py"),
    ("ECDSA sign (cryptography)", "ECAlgorithm.sign", "jwt/algorithms.py"),
    ("redis-py (all, incl. waiting for replies)", "*", "redis/"),
    (
        "  blocked reading a Redis reply",
        "SocketBuffer._read_from_socket",
        "redis/_parsers/socket.py",
    ),
    ("marshmallow (all)", "*", "marshmallow/"),
    ("werkzeug (all)", "*", "werkzeug/"),
    ("logging (all)", "*", "logging/"),
    ("json (all)", "*", "json/"),
]


def _frame_key(frame: str) -> str:
    """'SyncWorker.handle (gunicorn/workers/sync.py:134)' -> 'SyncWorker.handle (gunicorn/workers/sync.py)'"""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    name, path = m.groups()
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        m2 = re.search(r"/lib/python3\.\d+/(.*)$", path)
        if m2:
            path = m2.group(1)
    return f"{name} ({path})"


def _split_key(key: str) -> tuple[str, str]:
    name, _, rest = key.rpartition(" (")
    return name, rest.rstrip(")")


# Where a worker starts serving one request: the sync worker's handle(), or a pool thread's
# handle() under gthread and Errand's worker class (broker/gunicorn_worker.py).
REQUEST_ROOTS = [
    ("handle", "gunicorn/workers/sync.py"),
    ("handle", "gunicorn/workers/gthread.py"),
    ("handle", "broker/gunicorn_worker.py"),
]


def _is_request_root(key: str) -> bool:
    return any(_matches(key, name, path) for name, path in REQUEST_ROOTS)


def _matches(key: str, name: str, path: str) -> bool:
    fname, fpath = _split_key(key)
    if name == "*":
        return fpath.startswith(path)
    return fpath == path and (fname == name or fname.endswith("." + name))


def analyse_profile(raw_file: Path, top: int = 25) -> dict[str, Any]:
    """Shares of request time from py-spy's collapsed stacks (--idle: includes time blocked
    on Redis sockets). 'Request time' is every sample under a worker's handle() (REQUEST_ROOTS)."""
    total = 0
    in_request = 0
    inclusive = collections.Counter[str]()
    self_time = collections.Counter[str]()
    for line in raw_file.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [_frame_key(f) for f in stack.split(";") if not f.startswith("process ")]
        root = next((i for i, f in enumerate(frames) if _is_request_root(f)), None)
        if root is None and not any(
            _matches(f, "init_process", "gunicorn/workers/base.py") for f in frames
        ):
            continue  # the arbiter (master) process, not a worker
        total += count
        if root is None:
            continue
        req_frames = frames[root:]
        in_request += count
        for f in set(req_frames):
            inclusive[f] += count
        self_time[req_frames[-1]] += count
    if not in_request:
        return {"samples": total, "request_samples": 0}

    def share(n: int) -> float:
        return round(100.0 * n / in_request, 1)

    focus = []
    for label, name, path in PROFILE_FOCUS:
        hits = [k for k in inclusive if _matches(k, name, path)]
        if not hits:
            continue
        if name == "*":
            # Inclusive share of a package: samples with any of its frames (not a sum).
            n = 0
            for line in raw_file.read_text().splitlines():
                stack, _, count_s = line.rpartition(" ")
                if not count_s.isdigit():
                    continue
                frames = [_frame_key(f) for f in stack.split(";")]
                if any(_is_request_root(f) for f in frames) and any(
                    _matches(f, name, path) for f in frames
                ):
                    n += int(count_s)
        else:
            n = max(inclusive[k] for k in hits)
        focus.append({"what": label, "function": f"{name} ({path})", "pct": share(n)})
    return {
        "samples": total,
        "request_samples": in_request,
        "request_share_of_worker_samples_pct": round(100.0 * in_request / total, 1)
        if total
        else 0.0,
        "focus": focus,
        "top_inclusive": [{"function": k, "pct": share(v)} for k, v in inclusive.most_common(top)],
        "top_self": [{"function": k, "pct": share(v)} for k, v in self_time.most_common(top)],
    }


def start_py_spy(
    py_spy: str, pid: int, duration: float, out: Path, rate: int, *, idle: bool
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            *(["--idle"] if idle else []),
            "--function",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--duration",
            str(int(duration)),
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(str(out) + ".log", "wb"),
    )


# ----------------------------------------------------------------------------------------
# One phase and one worker count
# ----------------------------------------------------------------------------------------
def audit_outcomes(path: Path, offset: int) -> dict[str, int]:
    """Exchange outcomes from the audit lines gunicorn's workers wrote after `offset`."""
    counts = collections.Counter[str]()
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        fh.seek(offset)
        for line in fh:
            if b'"event":"token.exchange"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            key = event.get("outcome", "?")
            if key != "issued":
                key = f"{key}:{event.get('reason')}"
            counts[key] += 1
    return dict(counts)


def run_phase(
    stack: Stack,
    args: argparse.Namespace,
    phase: str,
    bodies: list[str],
    *,
    duration: float,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    idle_busy = 0.0
    if not phase.endswith("calibrate") and args.quiet_wait > 0:
        idle_busy = wait_for_quiet(args.quiet_wait, args.quiet_threshold, print)
    path = "/token" if phase.startswith("exchange") else "/introspect"
    cycle = phase == "introspect"
    auth = stack.basic_auth if phase == "introspect" else ""
    audit_path = stack.audit_log_path(stack.workers)
    offset = audit_path.stat().st_size if audit_path.exists() else 0
    assert stack.gunicorn is not None and stack.redis is not None and stack.redis.proc is not None
    pids = [stack.gunicorn.pid, *stack.worker_pids()]
    redis_pid = stack.redis.proc.pid
    cpu0 = {p: cpu_seconds(p) for p in pids}
    redis0 = cpu_seconds(redis_pid)
    machine0 = machine_cpu()
    spy = None
    if profile_dir is not None:
        py_spy = find_py_spy()
        if py_spy is None:
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        raw = profile_dir / f"py-spy-w{stack.workers}-{phase}.txt"
        spy = start_py_spy(
            py_spy,
            stack.gunicorn.pid,
            duration,
            raw,
            args.profile_rate,
            idle=args.profile == "wall",
        )
        time.sleep(0.5)  # let it attach before the load starts
    if args.generator == "wrk":
        result = run_wrk(
            args.wrk_path,
            stack.port,
            path,
            bodies,
            cycle=cycle,
            auth=auth,
            threads=args.wrk_threads,
            concurrency=args.concurrency,
            duration=duration,
            prefix=stack.workdir / f"bodies-{phase}",
        )
    else:
        result = run_python(
            stack.port,
            path,
            bodies,
            cycle=cycle,
            auth=auth,
            concurrency=args.concurrency,
            duration=duration,
        )
    machine1 = machine_cpu()
    secs = result["seconds"] or duration
    broker_cpu = sum(cpu_seconds(p) - cpu0.get(p, 0.0) for p in pids)
    redis_cpu = cpu_seconds(redis_pid) - redis0
    loadgen_cpu = result.pop("loadgen_cpu_s")
    busy = machine1[0] - machine0[0]
    result.update(
        workers=stack.workers,
        phase=phase,
        broker_cpu_cores=round(broker_cpu / secs, 2),
        redis_cpu_cores=round(redis_cpu / secs, 2),
        loadgen_cpu_cores=round(loadgen_cpu / secs, 2),
        # Everything else that ran meanwhile (other tenants, kernel softirq): noise to watch.
        other_cpu_cores=round(max(0.0, busy - broker_cpu - redis_cpu - loadgen_cpu) / secs, 2),
        machine_busy_cores=round(busy / secs, 2),
        steal_cores=round((machine1[1] - machine0[1]) / secs, 2),
        busy_before_cores=round(idle_busy, 2),
    )
    # Noise-robust view (this host may be shared): CPU per request, and the rate the whole
    # machine would reach if broker + Redis + load generator had every core to themselves.
    n = max(1, result["requests"])
    ours = broker_cpu + redis_cpu + loadgen_cpu
    result["broker_cpu_ms_per_req"] = round(1000 * broker_cpu / n, 3)
    result["cpu_ms_per_req"] = round(1000 * ours / n, 3)
    result["ceiling_rps"] = round(len(os.sched_getaffinity(0)) * n / ours) if ours else 0
    if path == "/token":
        result["outcomes"] = audit_outcomes(audit_path, offset)
    if spy is not None:
        try:
            spy.wait(duration + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
        raw = profile_dir / f"py-spy-w{stack.workers}-{phase}.txt"  # type: ignore[operator]
        result["profile"] = (
            analyse_profile(raw) if raw.exists() else {"error": "py-spy wrote nothing"}
        )
        result["profile_file"] = str(raw)
        result["profile_mode"] = args.profile
    return result


def bench_workers(
    stack: Stack, args: argparse.Namespace, workers: int, log: Any, server: str = "conf"
) -> list[dict[str, Any]]:
    stack.start_gunicorn(workers)
    how = " ".join(stack.gunicorn_args) or "config/gunicorn.conf.py"
    log(f"\n== {workers} web workers, server {server!r} ({how}) on 127.0.0.1:{stack.port}")
    # Warm-up and the introspection pool: real exchanges over HTTP (also loads the JWKS).
    t0 = time.monotonic()
    access_tokens = stack.issue_access_tokens(args.introspect_pool)
    log(
        f"   warm-up: {len(access_tokens)} exchanges for the introspection pool in {time.monotonic() - t0:.1f} s"
    )
    # Calibrate the exchange rate briefly, so the timed run gets rate x duration x 1.5 tokens.
    cal_pool = int(args.calibrate * args.max_rate_guess)
    cal = run_phase(
        stack, args, "exchange-calibrate", stack.exchange_bodies(cal_pool), duration=args.calibrate
    )
    # At least the target rate: a calibration on a busy machine may read low.
    rate = max(cal["rps"], TARGETS["exchange"])
    n_tokens = math.ceil(rate * args.duration * args.pool_factor) + args.concurrency
    t0 = time.monotonic()
    bodies = stack.exchange_bodies(n_tokens)
    log(
        f"   calibration: {cal['rps']:.0f} exchanges/s over {args.calibrate:g} s; minted {n_tokens} "
        f"subject tokens in {time.monotonic() - t0:.1f} s"
    )
    profile_dir = stack.workdir if args.profile else None
    out = []
    for rep in range(1, args.repeat + 1):
        if rep > 1:
            bodies = stack.exchange_bodies(n_tokens)
        ex = run_phase(
            stack, args, "exchange", bodies, duration=args.duration, profile_dir=profile_dir
        )
        del bodies
        ex["rep"] = rep
        out.append(ex)
        log("   " + format_row(ex))
        intro = run_phase(
            stack,
            args,
            "introspect",
            stack.introspect_bodies(access_tokens),
            duration=args.duration,
            profile_dir=profile_dir,
        )
        intro["rep"] = rep
        out.append(intro)
        log("   " + format_row(intro))
    stack.stop_gunicorn()
    for r in out:
        r["server"] = server
    # With --repeat, the run that shared the machine least ("other" CPU) is the one reported.
    for phase in ("exchange", "introspect"):
        runs = [r for r in out if r["phase"] == phase]
        min(runs, key=lambda r: r["other_cpu_cores"])["cleanest"] = True
    return out


# ----------------------------------------------------------------------------------------
# Component costs: the pieces of a request, in process, without HTTP
# ----------------------------------------------------------------------------------------
def component_costs(stack: Stack, n: int, rounds: int = 5) -> list[dict[str, Any]]:
    """CPU (process_time: user + kernel) and wall time per call of each piece of an exchange
    and an introspection, run in this process against the private Redis. The minimum over
    `rounds` rounds is reported: it is the figure least disturbed by other load."""
    import dataclasses
    import logging

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from werkzeug.test import EnvironBuilder

    from broker.app import create_app
    from broker.domain.access import read_our_token
    from broker.domain.exchange import exchange_token
    from broker.domain.introspection import introspect
    from broker.domain.models import ExchangeRequest
    from broker.http.forms import TokenExchangeForm, TokenForm, load
    from broker.services import build_services
    from broker.settings import load_settings
    from broker.tokens.mint import mint_access_token
    from errand_jose import read_compact_jws

    saved = dict(os.environ)
    # A generous Redis timeout: on a loaded machine a 0.5 s stall must not end the run.
    os.environ.update(stack.env(1, ERRAND_REDIS_TIMEOUT_SECONDS="5"))
    try:
        settings = load_settings()
        svc = build_services(settings)
        app = create_app(settings, services=svc)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    audit = logging.getLogger("errand.audit")
    audit.handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]  # noqa: SIM115
    audit.propagate = False
    subjects = iter(stack.mint_subject_tokens(n * rounds * 4 + 20, lifetime=600))

    def request() -> Any:
        return ExchangeRequest(
            subject_token=next(subjects),
            subject_token_type=TOKEN_TYPE_JWT,
            audiences=(AUDIENCE,),
            scopes=(SCOPE,),
            client_address="127.0.0.1",
            request_id="bench",
        )

    issued = exchange_token(request(), svc)  # also loads the JWKS
    token, grant = issued.access_token, issued.grant
    exchange_form = {
        "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
        "subject_token": next(subjects),
        "subject_token_type": TOKEN_TYPE_JWT,
        "audience": [AUDIENCE],
        "scope": SCOPE,
    }
    event = {
        "event": "token.exchange",
        "request_id": "0" * 16,
        "client_address": "127.0.0.1",
        "token_sha256": "0" * 64,
        "issuer": "bench-ci",
        "identity": grant.identity_id,
        "task": grant.task_id,
        "subject": "repo:acme/app:ref:refs/heads/main",
        "rule": "r#0",
        "owner": grant.owner,
        "outcome": "issued",
        "jti": grant.jti,
        "audience": [AUDIENCE],
        "scope": SCOPE,
        "exp": grant.exp,
        "ts": time.time(),
    }
    key = ec.generate_private_key(ec.SECP256R1())
    sig = key.sign(b"x" * 400, ec.ECDSA(hashes.SHA256()))
    pub = key.public_key()
    form_headers = {"Content-Type": "application/x-www-form-urlencoded"}

    def wsgi(env_factory: Any) -> Any:
        # WSGI environs are built beforehand, so the timing covers the app only.
        environs = iter([env_factory() for _ in range(n * rounds + 1)])

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            if not status.startswith("200"):
                raise RuntimeError(f"{status} from the in-process app")

        def call() -> None:
            b"".join(app(next(environs), start_response))

        return call

    def save_grant() -> None:
        g = dataclasses.replace(grant, jti=secrets.token_urlsafe(16))
        svc.store.save_grant(
            g,
            replay=("bench-ci", secrets.token_hex(16), int(time.time()) + 300),
            audit=event,
            now=int(time.time()),
        )

    redis_client = svc.redis
    pieces: list[tuple[str, str, Any]] = [
        (
            "exchange",
            "whole WSGI app, POST /token (no server)",
            wsgi(
                lambda: EnvironBuilder(
                    method="POST",
                    path="/token",
                    data=exchange_body(next(subjects)),
                    headers=form_headers,
                ).get_environ()
            ),
        ),
        ("exchange", "exchange_token (domain, real Redis)", lambda: exchange_token(request(), svc)),
        (
            "exchange",
            "SubjectTokenVerifier.verify",
            lambda: svc.verifier.verify(next(subjects), now=time.time()),
        ),
        (
            "exchange",
            "  read_compact_jws (strict parse)",
            lambda: read_compact_jws(token, max_bytes=8192),
        ),
        (
            "exchange",
            "RedisGrantStore.preflight (1 round trip)",
            lambda: svc.store.preflight(
                issuer_id="bench-ci", jti=secrets.token_hex(16), task_id=grant.task_id
            ),
        ),
        (
            "exchange",
            "mint_access_token (PyJWT ES256 sign)",
            lambda: mint_access_token(grant, svc.keyring, svc.config.broker.issuer),
        ),
        ("exchange", "RedisGrantStore.save_grant (1 EVALSHA)", save_grant),
        (
            "exchange",
            "AuditLog.record (log line to /dev/null)",
            lambda: svc.audit.record(event, stored=True),
        ),
        ("exchange", "TokenExchangeForm() (new schema)", lambda: TokenExchangeForm()),
        (
            "exchange",
            "load(TokenExchangeForm(), form) as the view",
            lambda: load(TokenExchangeForm(), exchange_form),
        ),
        (
            "introspect",
            "whole WSGI app, POST /introspect (no server)",
            wsgi(
                lambda: EnvironBuilder(
                    method="POST",
                    path="/introspect",
                    data="token=" + token,
                    headers={**form_headers, "Authorization": stack.basic_auth},
                ).get_environ()
            ),
        ),
        ("introspect", "introspect (domain, real Redis)", lambda: introspect(token, svc)),
        ("introspect", "read_our_token (PyJWT ES256 verify)", lambda: read_our_token(token, svc)),
        (
            "introspect",
            "RedisGrantStore.grant_state (1 round trip)",
            lambda: svc.store.grant_state(grant.jti, grant.task_id),
        ),
        (
            "introspect",
            "load(TokenForm(), form) as the view",
            lambda: load(TokenForm(), {"token": token}),
        ),
        (
            "baseline",
            "GET /healthz, whole WSGI app (no server)",
            wsgi(lambda: EnvironBuilder(method="GET", path="/healthz").get_environ()),
        ),
        ("baseline", "redis-py PING (1 round trip)", lambda: redis_client.ping()),
        (
            "baseline",
            "cryptography ECDSA P-256 sign, raw",
            lambda: key.sign(b"x" * 400, ec.ECDSA(hashes.SHA256())),
        ),
        (
            "baseline",
            "cryptography ECDSA P-256 verify, raw",
            lambda: pub.verify(sig, b"x" * 400, ec.ECDSA(hashes.SHA256())),
        ),
    ]
    out = []
    for group, name, fn in pieces:
        fn()
        best_cpu = best_wall = float("inf")
        for _ in range(rounds):
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            best_cpu = min(best_cpu, (time.process_time() - c0) / n)
            best_wall = min(best_wall, (time.perf_counter() - w0) / n)
        out.append(
            {
                "group": group,
                "piece": name,
                "cpu_us": round(best_cpu * 1e6, 1),
                "wall_us": round(best_wall * 1e6, 1),
            }
        )
    return out


def print_components(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'group':<11} {'piece':<48} {'CPU us':>8} {'wall us':>8}")
    for r in rows:
        print(f"{r['group']:<11} {r['piece']:<48} {r['cpu_us']:>8.1f} {r['wall_us']:>8.1f}")
    print("(in process, one thread, private Redis; minimum over rounds; CPU = user + kernel time)")


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------
HEADER = (
    f"{'server':<8} {'workers':>7} {'phase':<10} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
    f"{'max ms':>7} {'errors':>6}  {'cpu: broker':>11} {'redis':>5} {'loadgen':>7} {'other':>5} "
    f"{'ms/req':>6} {'ceiling':>7}  target"
)


def verdict(r: dict[str, Any]) -> str:
    target = TARGETS.get(r["phase"])
    if target is None:
        return ""
    ok = (
        r["rps"] >= target
        and r["p99_ms"] < TARGET_P99_MS
        and r["errors"] == 0
        and not r["exhausted"]
    )
    why = []
    if r["rps"] < target:
        why.append(f"<{target:.0f}/s")
    if r["p99_ms"] >= TARGET_P99_MS:
        why.append(f"p99>={TARGET_P99_MS:.0f}ms")
    if r["errors"]:
        why.append("errors")
    if r["exhausted"]:
        why.append("token pool ran out")
    return "PASS" if ok else "FAIL (" + ", ".join(why) + ")"


def format_row(r: dict[str, Any]) -> str:
    return (
        f"{r.get('server', 'conf'):<8} {r['workers']:>7} {r['phase']:<10} {r['rps']:>8.0f} {r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f} "
        f"{r['p99_ms']:>7.1f} {r['max_ms']:>7.1f} {r['errors']:>6}  {r['broker_cpu_cores']:>11.2f} "
        f"{r['redis_cpu_cores']:>5.2f} {r['loadgen_cpu_cores']:>7.2f} {r['other_cpu_cores']:>5.2f} "
        f"{r['broker_cpu_ms_per_req']:>6.2f} {r['ceiling_rps']:>7}  {verdict(r)}"
    )


def print_profile(r: dict[str, Any]) -> None:
    prof = r.get("profile")
    if not prof or not prof.get("request_samples"):
        print(f"   (no profile samples for {r['phase']})")
        return
    print(
        f"\n-- profile: {r['workers']} workers, {r['phase']}: {prof['request_samples']} samples in "
        f"request handling ({prof['request_share_of_worker_samples_pct']}% of worker samples); "
        f"raw stacks: {r['profile_file']}"
    )
    what = (
        "wall time (inclusive, includes waiting on Redis)"
        if r.get("profile_mode") == "wall"
        else "CPU time (inclusive)"
    )
    print(f"   share of request {what}:")
    for f in prof["focus"]:
        print(f"     {f['pct']:5.1f}%  {f['what']:<38} {f['function']}")
    print("   top self time (leaf frames):")
    for f in prof["top_self"][:15]:
        print(f"     {f['pct']:5.1f}%  {f['function']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--workers", default="2,3,4", help="gunicorn web-worker counts to try (comma list)"
    )
    p.add_argument("--concurrency", type=int, default=32, help="concurrent connections")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per timed phase")
    p.add_argument("--calibrate", type=float, default=3.0, help="seconds of exchange calibration")
    p.add_argument(
        "--max-rate-guess", type=float, default=4000.0, help="tokens/s minted for calibration"
    )
    p.add_argument(
        "--pool-factor", type=float, default=1.5, help="subject tokens = rate x duration x this"
    )
    p.add_argument(
        "--introspect-pool", type=int, default=1000, help="live access tokens to introspect"
    )
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument(
        "--audit-log",
        choices=("file", "devnull"),
        default="file",
        help="where gunicorn's stdout (the audit JSON lines) goes",
    )
    p.add_argument(
        "--gunicorn-args",
        default="",
        help="extra gunicorn command-line options for experiments, e.g. '-k gthread --threads 4' "
        "(they override config/gunicorn.conf.py)",
    )
    p.add_argument(
        "--variants",
        default="",
        help="compare gunicorn set-ups side by side in one run: 'LABEL=ARGS;LABEL=ARGS', e.g. "
        "'sync=-k sync;conf=' (ARGS are added after --gunicorn-args; empty: the config file "
        "as it is); every worker count runs each variant in turn",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="wall",
        choices=("wall", "cpu"),
        default=None,
        help="run py-spy on the workers during each phase: 'wall' (default) includes "
        "time blocked on Redis and sockets (py-spy --idle), 'cpu' only on-CPU time",
    )
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="timed runs per phase and worker count; the one with the least other CPU is reported",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each timed phase, wait up to this many s for the machine to go idle",
    )
    p.add_argument(
        "--quiet-threshold", type=float, default=0.3, help="busy cores that count as idle"
    )
    p.add_argument(
        "--components",
        type=int,
        nargs="?",
        const=400,
        default=0,
        metavar="N",
        help="instead of the HTTP load, time each piece of a request in process (N calls x 5 rounds)",
    )
    p.add_argument(
        "--delegation",
        action="store_true",
        help="instead of the exchange/introspect targets, compare a plain exchange with the "
        "first and second hop of a delegation chain, side by side (first --workers count)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, profiles)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON summary line at the end")
    args = p.parse_args(argv)

    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    variants: list[tuple[str, list[str]]] = []
    for item in filter(None, (v.strip() for v in args.variants.split(";"))):
        label, eq, extra = item.partition("=")
        if not eq or not label.strip():
            p.error(f"--variants: {item!r} is not LABEL=ARGS")
        variants.append((label.strip(), shlex.split(extra)))
    variants = variants or [("conf", [])]
    runs = args.repeat * 2 * len(worker_counts) * len(variants)
    if args.repeat < 1 or runs * args.duration > 900:
        p.error("--repeat x --duration x 2 phases x worker counts x variants must stay under 900 s")
    if args.concurrency < 1 or args.duration <= 0 or args.duration > 120:
        p.error("--concurrency must be >= 1 and --duration in (0, 120] seconds")
    wrk_path = shutil.which("wrk")
    if args.generator == "auto":
        args.generator = "wrk" if wrk_path else "python"
    if args.generator == "wrk" and not wrk_path:
        p.error("wrk is not installed (apt-get install -y wrk), or use --generator python")
    args.wrk_path = wrk_path
    args.wrk_threads = max(1, min(args.wrk_threads, args.concurrency))

    machine = machine_info()
    generator = (
        f"wrk {wrk_version(wrk_path)} ({args.wrk_threads} threads)"
        if args.generator == "wrk"
        else (
            "python threads + http.client ("
            + ("chosen with --generator python" if wrk_path else "FALLBACK: wrk not found")
            + "; the generator shares the CPU with the broker, so these numbers understate it)"
        )
    )
    print(
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['mem_gib']} GiB, "
        f"Python {machine['python']}, redis {machine['redis']}, gunicorn {machine['gunicorn']}"
    )
    print(f"code: {machine['code']} at {ROOT}")
    if args.gunicorn_args:
        print(f"gunicorn: config/gunicorn.conf.py overridden by: {args.gunicorn_args}")
    print(
        f"load: {args.concurrency} connections, {args.duration:g} s per phase, generator: {generator}"
    )
    if args.profile:
        print(
            f"PROFILING ({args.profile}): py-spy samples the workers; throughput is lower than without it"
        )

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="errand-bench-http-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.components:
        try:
            with Stack(workdir) as stack:
                rows = component_costs(stack, args.components)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print_components(rows)
        if args.json:
            print(
                json.dumps(
                    {"bench": "components", "machine": machine, "rows": rows}, separators=(",", ":")
                )
            )
        return 0
    if args.delegation:
        try:
            with Stack(workdir, audit_to=args.audit_log) as stack:
                rows = delegation_costs(stack, args, worker_counts[0])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if args.json:
            print(json.dumps({"bench": "delegation", "machine": machine, "rows": rows}))
        return 0
    results: list[dict[str, Any]] = []
    try:
        base_args = shlex.split(args.gunicorn_args)
        with Stack(workdir, audit_to=args.audit_log, gunicorn_args=base_args) as stack:
            for w in worker_counts:
                for label, extra in variants:
                    stack.gunicorn_args = base_args + extra
                    results.extend(bench_workers(stack, args, w, print, server=label))
    finally:
        if not args.keep and not args.profile and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nwork directory kept: {workdir}")

    print("\n" + HEADER)
    for r in results:
        mark = "" if args.repeat == 1 else (" <- least disturbed" if r.get("cleanest") else "")
        print(format_row(r) + mark)
    print(
        "(latency: wrk, from request written to response read; errors: HTTP >= 400 + socket errors + timeouts;"
        " cpu: cores busy on average; other = rest of the machine, incl. kernel softirq and other tenants;\n"
        " ms/req = broker CPU per request; ceiling = req/s if broker + redis + loadgen had all cores)"
    )
    for r in results:
        if r.get("outcomes") and set(r["outcomes"]) - {"issued"}:
            print(f"   {r['workers']} workers {r['phase']}: audit outcomes {r['outcomes']}")
        if r["exhausted"]:
            print(
                f"   {r['workers']} workers {r['phase']}: token pool ran out; raise --pool-factor"
            )
    if args.profile:
        for r in results:
            print_profile(r)
    best = {
        phase: max(
            (r for r in results if r["phase"] == phase and r.get("cleanest")),
            key=lambda r: r["rps"],
            default=None,
        )
        for phase in TARGETS
    }
    print("\nbest per phase vs the issue's targets (2 cores, 32 clients, p99 < 50 ms):")
    for label, _ in variants:
        for phase in TARGETS:
            r = max(
                (
                    r
                    for r in results
                    if r["phase"] == phase and r.get("cleanest") and r["server"] == label
                ),
                key=lambda r: r["rps"],
                default=None,
            )
            if r:
                print(
                    f"   {label:<8} {phase:<10} {r['rps']:.0f}/s p99 {r['p99_ms']:.1f} ms with {r['workers']} workers: {verdict(r)}"
                )
    if args.json:
        summary = {
            "bench": "http",
            "machine": machine,
            "generator": args.generator,
            "generator_detail": generator,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "profiled": args.profile,
            "gunicorn_args": args.gunicorn_args,
            "variants": args.variants,
            "results": [
                {
                    k: (round(v, 2) if isinstance(v, float) else v)
                    for k, v in r.items()
                    if k != "profile"
                }
                for r in results
            ],
            "targets": {
                phase: {
                    "target_rps": TARGETS[phase],
                    "best_rps": round(r["rps"], 1),
                    "p99_ms": r["p99_ms"],
                    "workers": r["workers"],
                    "pass": verdict(r) == "PASS",
                }
                for phase, r in best.items()
                if r
            },
        }
        print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
