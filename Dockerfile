# One image for both processes:
#   docker run ... errand                  -> `errand serve` (gunicorn, the HTTP broker)
#   docker run ... errand errand worker    -> the RQ worker
# Configuration, Redis URL, signing keys and the admin credential come from the environment
# and mounted secrets at run time (see config/broker.env.example); nothing secret is baked in.
#
# The base image is pinned to an exact tag (the Python the constraints were tested with), and
# every Python package to an exact version from constraints.txt. Bump both on purpose.
# Pin a digest too (python:3.11.7-slim-bookworm@sha256:...) where the registry is reachable
# when this file is edited: the digest also fixes the Debian packages under the tag.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY broker ./broker
COPY errand_jose ./errand_jose
COPY errand_rs ./errand_rs
COPY workers ./workers
COPY errand_client ./errand_client
COPY config ./config
# Installed in place (-e): `errand serve` loads config/gunicorn.conf.py from the source tree
# next to the `broker` package, so the package must not be copied into site-packages.
# The `server` extra: the broker's and workers' dependencies (the base install is the client).
RUN pip install -c constraints.txt -e '.[server]' \
 && useradd --create-home --uid 10001 --user-group errand

# Listen on all interfaces inside the container; terminate TLS in front of it.
# Default locations for the mounted configuration and signing keys; override as needed.
# REDIS_URL must be given at run time.
ENV ERRAND_BIND=0.0.0.0:8080 \
    ERRAND_CONFIG=/etc/errand/errand.yaml \
    ERRAND_SIGNING_KEY_DIR=/var/run/secrets/errand/signing-keys

# Non-root. Its home directory is writable for gunicorn's control socket.
USER errand
EXPOSE 8080
# Liveness of `errand serve` (no curl in a slim image). /healthz answers 200 without touching
# Redis. It probes 127.0.0.1:8080, the default ERRAND_BIND above: if you move the port, or run
# the worker from this image (which serves no HTTP), override or disable it
# (`docker run --no-healthcheck`, or the orchestrator's own probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
CMD ["errand", "serve"]
