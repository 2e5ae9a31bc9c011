# The Errand GitHub Action's image (action.yml: runs.using docker, image action.Dockerfile).
# GitHub builds a local Dockerfile with the directory that holds it as the build context;
# this file sits at the repository root so the image copies errand_client/ itself (no
# vendored copy to drift). It installs errand without extras (the base install): the client's
# dependencies (requests, PyJWT, cryptography) and none of the broker's (no `server` extra: no
# Flask, gunicorn, RQ or Redis).
# Base image and packages are pinned exactly (constraints.txt, shared with the broker image):
# bump them on purpose, never by rebuilding.
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md constraints.txt /opt/errand/
COPY broker/ /opt/errand/broker/
COPY workers/ /opt/errand/workers/
COPY errand_jose/ /opt/errand/errand_jose/
COPY errand_rs/ /opt/errand/errand_rs/
COPY errand_client/ /opt/errand/errand_client/
RUN pip install -c /opt/errand/constraints.txt /opt/errand \
 && rm -rf /opt/errand/build /opt/errand/*.egg-info
COPY action/main.py action/post.py /opt/errand/action/
RUN chmod 0755 /opt/errand/action/main.py /opt/errand/action/post.py

# No USER line: GitHub runs container actions as the image's default user (root) so that
# they can write the runner's file-command files ($GITHUB_ENV, $GITHUB_OUTPUT, $GITHUB_STATE).
ENTRYPOINT ["/opt/errand/action/main.py"]
