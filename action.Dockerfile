# The Errand GitHub Action's image (action.yml: runs.using docker, image action.Dockerfile).
# GitHub builds a local Dockerfile with the directory that holds it as the build context;
# this file sits at the repository root so the image copies errand_client/ itself (no
# vendored copy to drift). The action needs `requests` and nothing else.
# Base image and packages are pinned exactly (constraints.txt, shared with the broker image):
# bump them on purpose, never by rebuilding.
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY constraints.txt /opt/errand/constraints.txt
RUN pip install -c /opt/errand/constraints.txt requests

COPY errand_client/ /opt/errand/errand_client/
COPY action/main.py action/post.py /opt/errand/action/
RUN chmod 0755 /opt/errand/action/main.py /opt/errand/action/post.py

# No USER line: GitHub runs container actions as the image's default user (root) so that
# they can write the runner's file-command files ($GITHUB_ENV, $GITHUB_OUTPUT, $GITHUB_STATE).
ENTRYPOINT ["/opt/errand/action/main.py"]
