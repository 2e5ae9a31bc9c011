"""The documentation stays true to the code.

The example configuration must load with the broker's own loader; the OpenAPI document must
list every route the HTTP layer registers; the configuration reference must name every
environment variable and YAML key the code reads; links between the documents must resolve;
the commands the documents show must exist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from marshmallow import Schema, fields

from broker.cli import build_parser
from broker.config import ConfigSchema, load_config
from broker.domain.bulk_revocation import check_reason
from broker.domain.models import IDENTITY_TYPES
from broker.errors import InvalidRequest
from broker.http.admin import ROTATION_UNSUPPORTED

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLE = ROOT / "config" / "errand.example.yaml"
OPENAPI = DOCS / "openapi.yaml"
CONFIG_DOC = DOCS / "configuration.md"
ENV_EXAMPLE = ROOT / "config" / "broker.env.example"

# Variables the example configuration references; the test supplies every one of them.
EXAMPLE_VARS = {"ERRAND_PUBLIC_URL": "https://errand.test"}

# Written by others, possibly later than these documents.
EXTERNAL_DOCS = {"docs/benchmarks.md"}

_VAR_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::-[^}]*)?\}")
_ENV_NAME = re.compile(r"\b(ERRAND_[A-Z0-9_]*[A-Z0-9]|REDIS_URL)\b")
# `[^"]*`: a blueprint's own root is registered as "" (`@bp.get("")` under its url_prefix).
_ROUTE = re.compile(r"@bp\.(get|post|put|patch|delete)\(\s*\"([^\"]*)\"")
_PREFIX = re.compile(r"Blueprint\([^)]*url_prefix=\"([^\"]+)\"")
_FLASK_ARG = re.compile(r"<(?:[a-z]+(?:\([^)]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")
# `<any(a, b):name>` matches the literal segments a and b: one path each, as Flask routes them.
_FLASK_ANY = re.compile(r"<any\(([^)]*)\):[A-Za-z_][A-Za-z0-9_]*>")


# -- the example configuration ------------------------------------------------------------------
def test_example_config_references_only_supplied_variables() -> None:
    referenced = set(_VAR_REF.findall(EXAMPLE.read_text()))
    assert referenced <= set(EXAMPLE_VARS), (
        f"supply these in EXAMPLE_VARS: {referenced - set(EXAMPLE_VARS)}"
    )


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, EXAMPLE_VARS)

    assert config.broker.issuer == "https://errand.test"
    github = [
        i
        for i in config.issuers.values()
        if i.issuer == "https://token.actions.githubusercontent.com"
    ]
    assert len(github) == 1 and github[0].audience == "https://errand.test"
    assert {i.type for i in config.identities} == set(IDENTITY_TYPES)
    assert all(i.owner and i.purpose for i in config.identities)
    assert config.clients and all(len(c.secret_sha256) == 32 for c in config.clients.values())


def test_example_config_loads_with_defaults_only() -> None:
    """`errand config check` with no environment must pass on the shipped example."""
    config = load_config(EXAMPLE, {})
    assert config.broker.issuer == "https://errand.example.com"


def test_example_binds_github_ids_not_names() -> None:
    config = load_config(EXAMPLE, EXAMPLE_VARS)
    github_ids = {i.id for i in config.issuers.values() if "githubusercontent" in i.issuer}
    for identity in config.identities:
        for rule in identity.rules:
            if rule.issuer_id in github_ids:
                names = dict(rule.claims)
                assert {"repository_id", "repository_owner_id"} <= names.keys(), rule.id
                assert not {"sub", "repository", "repository_owner"} & names.keys(), rule.id


# -- OpenAPI --------------------------------------------------------------------------------------
def _routes() -> set[tuple[str, str]]:
    """(method, OpenAPI path) for every route registered in broker/http/*.py."""
    found: set[tuple[str, str]] = set()
    for module in sorted((ROOT / "broker" / "http").glob("*.py")):
        text = module.read_text()
        prefix_match = _PREFIX.search(text)
        prefix = prefix_match.group(1) if prefix_match else ""
        for method, rule in _ROUTE.findall(text):
            for path in _expand_any(prefix + rule):
                found.add((method, _FLASK_ARG.sub(r"{\1}", path)))
    return found


def _expand_any(rule: str) -> list[str]:
    match = _FLASK_ANY.search(rule)
    if match is None:
        return [rule]
    choices = [c.strip().strip("'\"") for c in match.group(1).split(",")]
    return [
        path
        for choice in choices
        for path in _expand_any(rule[: match.start()] + choice + rule[match.end() :])
    ]


def _openapi() -> dict[str, Any]:
    spec = yaml.safe_load(OPENAPI.read_text())
    assert isinstance(spec, dict)
    return spec


def test_openapi_is_3_1() -> None:
    spec = _openapi()
    assert str(spec["openapi"]).startswith("3.1")
    assert spec["info"]["title"] and spec["info"]["version"]
    assert isinstance(spec["paths"], dict) and spec["paths"]


def test_openapi_documents_every_route() -> None:
    routes = _routes()
    assert ("post", "/token") in routes  # the extraction works
    paths = _openapi()["paths"]
    missing = sorted(
        f"{method.upper()} {path}"
        for method, path in routes
        if method not in (paths.get(path) or {})
    )
    assert not missing, f"routes missing from docs/openapi.yaml: {missing}"


def test_openapi_documents_no_route_that_does_not_exist() -> None:
    routes = _routes()
    methods = {"get", "post", "put", "patch", "delete"}
    extra = sorted(
        f"{method.upper()} {path}"
        for path, item in _openapi()["paths"].items()
        for method in item
        if method in methods and (method, path) not in routes
    )
    assert not extra, f"docs/openapi.yaml documents routes the code does not have: {extra}"


def test_openapi_refs_resolve() -> None:
    spec = _openapi()

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(spec):
        assert ref.startswith("#/"), ref
        node: Any = spec
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
            node = node[part]


@pytest.mark.slow  # the validator takes seconds to import and to walk the whole document
def test_openapi_validates() -> None:
    # Imported here, not at the top: collecting this module must stay cheap for test-fast.
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    spec, _ = read_from_filename(str(OPENAPI))
    validate(spec)


# -- the configuration reference ------------------------------------------------------------------
def _env_names(*paths: Path) -> set[str]:
    names: set[str] = set()
    for path in paths:
        names |= set(_ENV_NAME.findall(path.read_text()))
    return names


SERVER_ENV_SOURCES = (
    ROOT / "broker" / "settings.py",
    ROOT / "broker" / "settings_observability.py",
    ROOT / "config" / "gunicorn.conf.py",
)
ALL_ENV_SOURCES = (
    *SERVER_ENV_SOURCES,
    ROOT / "broker" / "dev" / "run.py",
    *sorted((ROOT / "broker" / "cli").glob("*.py")),
)


def test_configuration_doc_names_every_environment_variable() -> None:
    doc = CONFIG_DOC.read_text()
    missing = sorted(n for n in _env_names(*ALL_ENV_SOURCES) if f"`{n}`" not in doc)
    assert not missing, f"environment variables missing from docs/configuration.md: {missing}"


def test_env_example_lists_every_server_variable() -> None:
    listed = {
        line.lstrip("# ").split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"#? ?[A-Z][A-Z0-9_]*=", line)
    }
    missing = sorted(_env_names(*SERVER_ENV_SOURCES) - listed)
    assert not missing, f"variables missing from config/broker.env.example: {missing}"


def _schema_keys(schema: Schema | type[Schema], path: str = "") -> Iterator[str]:
    instance = schema() if isinstance(schema, type) else schema
    for name, field in instance.fields.items():
        yield f"{path}{name}"
        nested = field
        if isinstance(nested, fields.List):
            nested = nested.inner
        elif isinstance(nested, fields.Dict) and nested.value_field is not None:
            nested = nested.value_field
        if isinstance(nested, fields.Nested):
            yield from _schema_keys(nested.schema, f"{path}{name}.")


def test_configuration_doc_names_every_yaml_key() -> None:
    doc = CONFIG_DOC.read_text()
    keys = list(_schema_keys(ConfigSchema))
    assert "identities.allow.default_scopes" in keys  # the walk reaches nested schemas
    missing = sorted(k for k in keys if f"`{k.rsplit('.', 1)[-1]}`" not in doc)
    assert not missing, f"YAML keys missing from docs/configuration.md: {missing}"


# -- links and commands ---------------------------------------------------------------------------
# The documents this module checks (other documents in docs/ have their own owners).
OWNED_DOCS = (
    "README.md",
    "docs/api.md",
    "docs/configuration.md",
    "docs/runbook.md",
    "docs/architecture.md",
    "docs/security-model.md",
)


def _markdown_files() -> list[Path]:
    return [ROOT / name for name in OWNED_DOCS]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an external URL
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        relative = (
            linked.relative_to(ROOT).as_posix() if linked.is_relative_to(ROOT) else str(linked)
        )
        if relative in EXTERNAL_DOCS and not linked.exists():
            continue
        assert linked.exists(), f"{doc.name}: broken link {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{doc.name}: no heading for #{anchor} in {relative}"


def test_documented_commands_exist() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    used: set[str] = set()
    for doc in [*_markdown_files(), ROOT / "config" / "errand.example.yaml", ENV_EXAMPLE]:
        used |= set(
            re.findall(r"(?:^|[\s`(/])errand ([a-z][a-z-]*[a-z])\b", doc.read_text(), flags=re.M)
        )
    unknown = sorted(used - set(commands))
    assert not unknown, f"documents mention errand commands that do not exist: {unknown}"


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_runbook_revoke_all_example_is_what_the_cli_prints(monkeypatch, capsys) -> None:
    from broker.cli import grants

    runbook = (DOCS / "runbook.md").read_text()
    record_id = re.search(r"^# revocation record (rev_\S+) ", runbook, flags=re.M)
    assert record_id, "the runbook's revoke-all example shows no revocation record"
    body = {"epoch": 7, "revoked": 48213, "record_id": record_id[1], "record": "JWS"}
    monkeypatch.setattr(grants, "admin_request", lambda *a, **k: body)
    args = build_parser().parse_args(["revoke-all", "--reason", "INC-43", "--yes"])
    assert args.fn(args) == 0
    printed = capsys.readouterr().out.splitlines()[:-1]  # the record itself is an example
    for line in printed:
        assert f"# {line}\n" in runbook, f"the runbook does not show: {line}"


def test_docs_quote_the_rotation_refusals_as_the_broker_words_them() -> None:
    with pytest.raises(InvalidRequest) as missing:
        check_reason("")
    for name in ("runbook.md", "api.md"):
        text = _flat((DOCS / name).read_text())
        assert ROTATION_UNSUPPORTED in text, name
        assert missing.value.description in text, name
    # The reason is checked before the key is rotated (broker/http/admin.py revoke_everything).
    for doc in [*_markdown_files(), OPENAPI]:
        text = _flat(doc.read_text())
        assert "rotation runs before" not in text, doc.name
        assert "before `reason` is validated" not in text, doc.name


# -- the container ---------------------------------------------------------------------------
def test_dockerfile_runs_non_root_errand_serve() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11.7-slim-bookworm"
    users = [line.split(None, 1)[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines[-1] == 'CMD ["errand", "serve"]'


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".errand", ".git"} <= entries


def _dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def test_dockerfile_has_a_healthcheck_without_curl() -> None:
    checks = [ln for ln in _dockerfile_instructions() if ln.startswith("HEALTHCHECK ")]
    assert len(checks) == 1, "the broker image needs one HEALTHCHECK"
    check = checks[0]
    for option in ("--interval=", "--timeout=", "--retries="):
        assert option in check, f"HEALTHCHECK without {option}"
    # A slim image has no curl or wget: Python's urllib against the image's own listen port.
    assert "urllib" in check and "http://127.0.0.1:8080/healthz" in check, check
    assert not re.search(r"\b(curl|wget)\b", check)
    env = " ".join(ln for ln in _dockerfile_instructions() if ln.startswith("ENV "))
    assert "ERRAND_BIND=0.0.0.0:8080" in env  # what the check's port relies on


def _env_example_settings() -> dict[str, str]:
    """The variables config/broker.env.example sets (commented-out lines excluded)."""
    found: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def test_env_example_keeps_the_images_bind_address() -> None:
    """`docker run --env-file broker.env` must not move the image's 0.0.0.0:8080 back to
    loopback (unreachable from outside the container)."""
    assert "ERRAND_BIND" not in _env_example_settings()


def test_env_example_names_the_mounted_admin_credential() -> None:
    """The admin credential is not left unset: the example names the file the README's
    `docker run` mounts."""
    path = _env_example_settings().get("ERRAND_ADMIN_TOKEN_FILE", "")
    assert path.startswith("/"), "ERRAND_ADMIN_TOKEN_FILE is unset in the env example"
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"-v \S+:{re.escape(path)}:ro", readme), (
        f"README.md's docker run does not mount {path}"
    )


def test_readme_runs_the_worker_from_the_same_image() -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^docker run .*(?:\\\n.*)*errand:\S+ errand worker$", readme, re.M)
