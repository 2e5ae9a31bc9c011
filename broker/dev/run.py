"""`errand run`: a development stack in one command.

Starts Redis (an embedded redis-server unless REDIS_URL is set), a local dev OIDC issuer, the
broker under gunicorn and an RQ worker, then prints how to try a real exchange. Secrets it
needs (signing key, admin credential, demo client secret) are generated into .errand/ with
mode 0600 on first run and reused after."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests

from broker.dev.embedded_redis import RedisProcess
from broker.dev.issuer import DevIssuer, load_or_create_key
from broker.tokens.keyring import generate_key

ROOT = Path(__file__).resolve().parents[2]


def _secret_file(path: Path, nbytes: int = 32) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(nbytes) + "\n")
    return path


def _wait_http(url: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def run_dev(port: int, state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = dict(os.environ)
    embedded: RedisProcess | None = None
    redis_url = env.get("REDIS_URL") or env.get("ERRAND_REDIS_URL")
    if redis_url:
        print(f"errand: using Redis at {redis_url.split('@')[-1]} (from REDIS_URL)")
        policy = (
            redis.Redis.from_url(redis_url).config_get("maxmemory-policy").get("maxmemory-policy")
        )
        if policy != "noeviction":
            print(f"errand: WARNING: that Redis runs maxmemory-policy={policy}, not noeviction")
    else:
        embedded = RedisProcess(state_dir / "redis").start()
        redis_url = embedded.url
        print(
            f"errand: REDIS_URL is not set: started an embedded redis-server at {redis_url} "
            f"(binary {embedded.binary}). This is for DEVELOPMENT ONLY: it keeps nothing on disk. "
            "Set REDIS_URL to use your own Redis."
        )

    key_dir = state_dir / "keys"
    if not list(key_dir.glob("*.pem")):
        generate_key(key_dir)
    admin_file = _secret_file(state_dir / "admin-token")
    client_secret = _secret_file(state_dir / "demo-rs.secret")
    dev_key = load_or_create_key(state_dir / "dev-issuer" / "key.pem")
    dev_port = int(env.get("ERRAND_DEV_ISSUER_PORT", str(port + 1)))
    issuer = DevIssuer(dev_key, port=dev_port).start()

    public_url = env.get("ERRAND_PUBLIC_URL", f"http://127.0.0.1:{port}")
    env.update(
        ERRAND_ENV="development",
        ERRAND_CONFIG=env.get("ERRAND_CONFIG", str(ROOT / "config" / "errand.dev.yaml")),
        REDIS_URL=redis_url,
        ERRAND_SIGNING_KEY_DIR=str(key_dir),
        ERRAND_ADMIN_TOKEN_FILE=str(admin_file),
        ERRAND_BIND=f"127.0.0.1:{port}",
        ERRAND_PUBLIC_URL=public_url,
        ERRAND_DEV_ISSUER_URL=issuer.issuer,
        ERRAND_DEMO_CLIENT_SECRET_FILE=str(client_secret.resolve()),
    )
    procs = [
        subprocess.Popen([sys.executable, "-m", "broker.cli", "serve"], env=env),
        subprocess.Popen([sys.executable, "-m", "workers"], env=env),
    ]

    def shutdown(*_: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        issuer.stop()
        if embedded:
            embedded.stop()

    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    try:
        if _wait_http(f"http://127.0.0.1:{port}/readyz"):
            print(_try_it(public_url, issuer.issuer, state_dir, client_secret))
        else:
            print("errand: the broker did not become ready; see the log above", file=sys.stderr)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("errand: a child process exited; shutting down", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        shutdown()


def _try_it(url: str, issuer_url: str, state_dir: Path, client_secret: Path) -> str:
    return f"""
errand is running at {url} (development mode), with an RQ worker and a dev OIDC issuer at
{issuer_url}. Try a real exchange in another shell:

  # a GitHub-Actions-shaped ID token from the dev issuer:
  TOKEN=$(.venv/bin/errand dev-token --issuer {issuer_url} --state-dir {state_dir})
  curl -s {url}/token \\
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\
    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \\
    --data-urlencode subject_token="$TOKEN" \\
    -d audience=https://deploy.acme.example -d scope=deploy:write

  # introspect it as the resource server 'demo-rs':
  curl -s -u demo-rs:$(cat {client_secret}) {url}/introspect --data-urlencode token=<access_token>
  # complete its task (every token of the task dies):
  curl -s -X POST -H "Authorization: Bearer <access_token>" {url}/tasks/complete
  # operator views (admin credential in {state_dir}/admin-token):
  .venv/bin/errand grants --url {url} --admin-token-file {state_dir}/admin-token
  .venv/bin/errand audit <task_id> --url {url} --admin-token-file {state_dir}/admin-token
"""
