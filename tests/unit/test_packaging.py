"""What ships is pinned: every distribution the broker (and its dev tools) install comes from
constraints.txt at an exact version, and every image starts from a base image with an exact
tag, so a rebuild next month runs the code that was tested, not whatever was newest.

pyproject.toml keeps its ranges (for people who install errand as a library); the Makefile's
venv, the broker image and the action image install through the constraints file.

The base install (`pip install errand`) is the client side only: errand_client, errand_rs
and errand_jose with requests, PyJWT and cryptography. The broker's dependencies are the
`server` extra (`dev` includes it), so a CI job or a resource server pulls in no web
server, queue or Redis client."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
DOCKERFILES = ("Dockerfile", "action.Dockerfile")
# A tag that names a patch release and a distribution: python:3.11.7-slim-bookworm.
# "3.11-slim", "3-slim", "slim" and "latest" move under you.
EXACT_TAG = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+(?:-[a-z0-9]+)*-(?:bookworm|bullseye|trixie)$")
DIGEST = re.compile(r"^[\w./:-]+@sha256:[0-9a-f]{64}$")


def pyproject() -> dict:  # type: ignore[type-arg]
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def requirements(*extras: str) -> list[str]:
    """The base dependencies plus these extras, with the extras' references to errand itself
    (`errand[server]` in `dev`) replaced by what they name, from pyproject.toml (not from the
    installed metadata, which may be older)."""
    project = pyproject()["project"]
    optional = project["optional-dependencies"]
    found: list[str] = list(project["dependencies"])
    todo, done = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for raw in optional[extra]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == "errand":
                todo.extend(req.extras)
            else:
                found.append(raw)
    return found


def all_extras() -> tuple[str, ...]:
    return tuple(pyproject()["project"]["optional-dependencies"])


def names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line must be `name==version`."""
    assert CONSTRAINTS.exists(), "constraints.txt is missing"
    found: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert m, f"constraints.txt: not an exact pin: {raw!r}"
        name = canonicalize_name(m.group(1))
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = m.group(2)
    return found


def closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions these requirements pull in, transitively (markers
    evaluated for this interpreter, extras followed)."""
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    env = default_environment()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        wanted = [(name, e) for e in ("", *sorted(req.extras))]
        for dist_name, dist_extra in wanted:
            key = f"{dist_name}[{dist_extra}]"
            if key in seen:
                continue
            seen.add(key)
            try:
                reqs = metadata.requires(dist_name) or []
            except metadata.PackageNotFoundError:
                continue
            todo.extend((Requirement(r), dist_extra) for r in reqs)
    return {k.split("[", 1)[0] for k in seen}


@pytest.mark.parametrize("extras", [(), ("server",), ("flask",)], ids=["base", "server", "flask"])
def test_every_runtime_dependency_is_pinned_exactly(extras: tuple[str, ...]) -> None:
    """The client image ships the base install, the broker image the `server` extra."""
    reqs = requirements(*extras)
    pinned = pins()
    missing = sorted(names(reqs) - pinned.keys())
    assert not missing, f"runtime dependencies not pinned in constraints.txt: {missing}"
    # What they pull in ships too (cffi under cryptography, hiredis from redis[hiredis], ...).
    missing = sorted(closure(reqs) - pinned.keys())
    assert not missing, f"transitive runtime dependencies not pinned: {missing}"


def test_dev_dependencies_are_pinned_too() -> None:
    """`make venv` installs `.[dev]` through the same file: the test tools are reproducible."""
    missing = sorted(closure(requirements("dev")) - pins().keys())
    assert not missing, f"dev dependencies not pinned in constraints.txt: {missing}"


# What only the broker and its workers import: never in the base install.
SERVER_ONLY = {"flask", "gunicorn", "rq", "redis", "marshmallow", "prometheus-client"}


def test_base_install_is_the_client_and_server_is_an_extra() -> None:
    project = pyproject()["project"]
    optional = project["optional-dependencies"]
    base = names(project["dependencies"])
    leaked = sorted(base & SERVER_ONLY)
    assert not leaked, f"`pip install errand` would pull in the broker's {leaked}"
    # What errand_client, errand_rs and errand_jose import (tests/unit/test_client_install.py
    # installs the wheel and imports them).
    assert {"requests", "pyjwt", "cryptography"} <= base
    missing = sorted(SERVER_ONLY - names(requirements("server")))
    assert not missing, f"the server extra lacks {missing}"
    assert optional["client"] == [], "`client` is the base install under its own name"
    assert names(optional["flask"]) == {"flask"}  # errand_rs.flask
    # `make venv` installs `.[dev]`: the broker's tests need the server's dependencies.
    assert names(requirements("dev")) >= SERVER_ONLY
    assert "errand[server]" in optional["dev"]
    # The broker's CLI says which extra is missing instead of a traceback (broker.cli.main).
    assert project["scripts"]["errand"] == "broker.cli:main"


def test_nothing_stray_is_pinned() -> None:
    """A tool installed into .venv by hand (a profiler, say) must not sneak into the image."""
    wanted = closure(requirements(*all_extras()))
    stray = sorted(pins().keys() - wanted)
    assert not stray, f"constraints.txt pins what neither errand nor its dev tools need: {stray}"


def test_constraints_match_what_was_tested() -> None:
    """The pins are the versions in this venv (regenerate with `make constraints`), and the
    project itself is not among them (pip refuses a constraint on an editable install)."""
    pinned = pins()
    assert "errand" not in pinned
    wrong = {
        name: (version, metadata.version(name))
        for name, version in pinned.items()
        if _installed(name) and metadata.version(name) != version
    }
    assert not wrong, f"constraints.txt differs from the installed versions: {wrong}"


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_makefile_installs_through_the_constraints_file() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [ln for ln in makefile.splitlines() if re.search(r"\bpip install\b", ln)]
    assert installs, "the Makefile installs nothing?"
    for line in installs:
        assert re.search(r"(-c|--constraint)\s+constraints\.txt", line), line
    # The venv is rebuilt when the pins change.
    assert re.search(r"^\$\(VENV\)/\.installed:.*\bconstraints\.txt\b", makefile, re.M)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_uses_an_exact_base_image_and_the_constraints(name: str) -> None:
    text = (ROOT / name).read_text()
    images = re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, re.M)
    assert images, f"{name}: no FROM line"
    for image in images:
        assert EXACT_TAG.match(image) or DIGEST.match(image), (
            f"{name}: base image {image!r} floats; pin an exact tag like "
            "python:3.11.7-slim-bookworm (or a digest)"
        )
    assert re.search(r"^COPY\s+(?:\S+\s+)*constraints\.txt\s", text, re.M), (
        f"{name}: constraints.txt is not copied into the image"
    )
    installs = re.findall(r"pip install[^\n\\]*(?:\\\n[^\n\\]*)*", text)
    assert installs, f"{name}: no pip install"
    for cmd in installs:
        assert re.search(r"(-c|--constraint)\s+\S*constraints\.txt", cmd), (
            f"{name}: pip install without the constraints file: {cmd!r}"
        )


def test_dockerignore_keeps_the_constraints_in_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert not any(p.strip() in ("constraints.txt", "*.txt", "/constraints.txt") for p in ignored)
