"""broker/config/: a bad file stops start-up, and every error names its key path."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import ConfigError, expand_vars, load_config, parse_config
from tests.support.builders import UNIT_ISSUER, config_dict

REPO = Path(__file__).resolve().parents[3]


def raw() -> dict[str, Any]:
    return copy.deepcopy(config_dict(UNIT_ISSUER))


def refused(data: Any, base_dir: Path = Path(".")) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=base_dir)
    return str(info.value)


def write_yaml(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "errand.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- the baseline ------------------------------------------------------------------------------


def test_baseline_config_parses_with_defaults() -> None:
    config = parse_config(raw())
    assert config.broker.clock_skew_seconds == 60
    assert set(config.issuers) == {"gha"}
    assert config.issuers["gha"].algorithms == ("ES256",)
    assert config.issuers["gha"].replay == "single-use"
    ids = [i.id for i in config.identities]
    assert ids == ["acme-deploy", "acme-release"]
    release = config.identity("acme-release")
    assert release is not None and release.expires == date(2099, 1, 1)
    assert release.allow.default_scopes == ()
    assert release.rules[0].id == "acme-release#0"


def test_top_level_must_be_a_mapping() -> None:
    assert "top level must be a mapping" in refused(["not", "a", "mapping"])


# -- missing and unknown keys name their path -------------------------------------------------


@pytest.mark.parametrize("key", ["owner", "purpose"])
def test_identity_without_owner_or_purpose_is_refused(key: str) -> None:
    data = raw()
    del data["identities"][1][key]
    message = refused(data)
    assert f"identities.1.{key}:" in message
    assert "Missing data" in message


SAFE_ID_BUG = pytest.mark.regression  # fixed: marshmallow error strings hold no braces


@SAFE_ID_BUG
@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d["identities"][0].update(owner=""), "identities.0.owner:"),
        (lambda d: d["identities"][0].update(owner="platform team"), "identities.0.owner:"),
        (lambda d: d["identities"][0].update(id="bad id"), "identities.0.id:"),
        (lambda d: d["issuers"][0].update(id="gha/*"), "issuers.0.id:"),
        (lambda d: d["clients"][0].update(client_id="a b"), "clients.0.client_id:"),
        (
            lambda d: d["identities"][0]["match"][0].update(issuer="g h"),
            "identities.0.match.0.issuer:",
        ),
    ],
)
def test_bad_identifiers_are_refused_with_their_path(mutate: Any, where: str) -> None:
    data = raw()
    mutate(data)
    assert where in refused(data)


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ((), "colour"),
        (("broker",), "broker.colour"),
        (("issuers", 0), "issuers.0.colour"),
        (("identities", 0), "identities.0.colour"),
        (("identities", 0, "allow"), "identities.0.allow.colour"),
        (("identities", 1, "match", 0), "identities.1.match.0.colour"),
        (("clients", 0), "clients.0.colour"),
    ],
)
def test_unknown_keys_are_refused_with_their_path(path: tuple[Any, ...], where: str) -> None:
    data = raw()
    node: Any = data
    for step in path:
        node = node[step]
    node["colour"] = "blue"
    message = refused(data)
    assert f"{where}: Unknown field" in message


def test_every_error_is_reported_at_once_each_with_its_path() -> None:
    data = raw()
    del data["identities"][0]["owner"]
    data["identities"][1]["type"] = "robot"
    data["issuers"][0]["algorithms"] = ["HS256"]
    message = refused(data)
    assert "identities.0.owner:" in message
    assert "identities.1.type:" in message
    assert "issuers.0.algorithms.0:" in message


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d["broker"].update(issuer="ftp://x"), "broker.issuer:"),
        (
            lambda d: d["broker"].update(max_token_ttl_seconds="900"),
            "broker.max_token_ttl_seconds:",
        ),
        (lambda d: d["broker"].update(clock_skew_seconds=600), "broker.clock_skew_seconds:"),
        (
            lambda d: d["broker"].update(default_token_ttl_seconds=1000),
            "broker.default_token_ttl_seconds:",
        ),
        (lambda d: d["broker"].update(task_tombstone_seconds=10), "broker.task_tombstone_seconds:"),
        (lambda d: d["issuers"][0].update(issuer="https://x/?q=1"), "issuers.0.issuer:"),
        (lambda d: d["issuers"][0].update(algorithms=["none"]), "issuers.0.algorithms.0:"),
        (lambda d: d["issuers"][0].update(replay="sometimes"), "issuers.0.replay:"),
        (
            lambda d: d["identities"][0]["allow"].update(scopes=['"quoted"']),
            "identities.0.allow.scopes.0:",
        ),
        (
            lambda d: d["identities"][0]["allow"].update(audiences=[]),
            "identities.0.allow.audiences:",
        ),
        (lambda d: d["identities"][0].update(match=[]), "identities.0.match:"),
        (
            lambda d: d["identities"][0]["match"][0].update(claims={}),
            "identities.0.match.0.claims:",
        ),
        (
            lambda d: d["identities"][0]["match"][0]["claims"].update(ref=True),
            "identities.0.match.0.claims.ref",
        ),
        (lambda d: d["clients"][0].update(secret_sha256="xyz"), "clients.0.secret_sha256:"),
        (lambda d: d["clients"][0].update(secret_file="x"), "clients.0.client_id:"),
    ],
)
def test_field_errors_name_the_key_path(mutate: Any, where: str) -> None:
    data = raw()
    mutate(data)
    assert where in refused(data)


def test_duplicate_ids_are_refused() -> None:
    data = raw()
    data["identities"][1]["id"] = "acme-deploy"
    data["identities"][1]["match"][0]["claims"]["ref"] = "refs/heads/other"
    message = refused(data)
    assert "identities.1.id: duplicate identity id 'acme-deploy'" in message

    data = raw()
    data["issuers"].append({**data["issuers"][0], "issuer": "https://other.example"})
    assert "issuers.1.id: duplicate issuer id 'gha'" in refused(data)

    data = raw()
    data["issuers"].append({**data["issuers"][0], "id": "gha2"})
    assert "issuers.1.issuer: issuer URL listed twice" in refused(data)


# -- references, overlaps, default scopes -------------------------------------------------------


def test_match_naming_an_unknown_issuer_is_refused() -> None:
    data = raw()
    data["identities"][1]["match"][0]["issuer"] = "gitlab"
    assert "identities.1.match.0.issuer: no issuer with id 'gitlab'" in refused(data)


def test_default_scopes_must_be_a_subset_of_scopes() -> None:
    data = raw()
    data["identities"][0]["allow"]["default_scopes"] = ["deploy:read", "admin"]
    assert "identities.0.allow.default_scopes: must be a subset of scopes" in refused(data)


def _third_identity(claims: dict[str, Any], issuer: str = "gha") -> dict[str, Any]:
    return {
        "id": "acme-broad",
        "type": "service",
        "owner": "platform-team",
        "purpose": "anything in the repository",
        "match": [{"issuer": issuer, "claims": claims}],
        "allow": {"audiences": ["https://x.example"], "scopes": ["x"]},
    }


def test_overlapping_identities_are_refused() -> None:
    # A rule naming fewer claims matches every token the narrower rule matches.
    data = raw()
    data["identities"].append(_third_identity({"repository_id": "100200300"}))
    message = refused(data)
    assert "identities:" in message
    assert "'acme-deploy' (acme-deploy#0) and 'acme-broad' (acme-broad#0)" in message
    assert "'acme-release' (acme-release#0) and 'acme-broad' (acme-broad#0)" in message


def test_overlap_compares_integers_and_strings_as_text() -> None:
    data = raw()
    data["identities"].append(
        _third_identity({"repository_id": 100200300, "ref": "refs/heads/main"})
    )
    assert "could match the same token" in refused(data)


def test_identities_told_apart_by_a_shared_claim_are_accepted() -> None:
    data = raw()
    data["identities"].append(
        _third_identity({"repository_id": "100200300", "ref": "refs/heads/staging"})
    )
    config = parse_config(data)
    assert len(config.identities) == 3


def test_same_claims_on_different_issuers_do_not_overlap() -> None:
    data = raw()
    data["issuers"].append(
        {"id": "gitlab", "issuer": "https://gitlab.example", "audience": "errand"}
    )
    data["identities"].append(
        _third_identity({"repository_id": "100200300", "ref": "refs/heads/main"}, issuer="gitlab")
    )
    assert len(parse_config(data).identities) == 3


def test_claim_values_written_as_yaml_integers_become_text() -> None:
    data = raw()
    data["identities"][0]["match"][0]["claims"]["repository_id"] = 100200300
    config = parse_config(data)
    assert ("repository_id", "100200300") in config.identities[0].rules[0].claims


# -- dates ------------------------------------------------------------------------------------


def test_expires_as_yaml_date_and_as_string(tmp_path: Path) -> None:
    text = write_yaml(tmp_path, raw()).read_text()
    text = text.replace("expires: '2099-01-01'", "expires: 2027-06-30")
    assert "expires: 2027-06-30" in text  # an unquoted YAML date
    (tmp_path / "errand.yaml").write_text(text)
    config = load_config(tmp_path / "errand.yaml")
    assert config.identities[1].expires == date(2027, 6, 30)

    data = raw()
    data["identities"][1]["expires"] = "2027-06-30"
    assert parse_config(data).identities[1].expires == date(2027, 6, 30)


@pytest.mark.parametrize("value", ["30/06/2027", "soon", 20270630, "2027-06-30T10:00:00"])
def test_bad_expires_is_refused_with_its_path(value: Any) -> None:
    data = raw()
    data["identities"][1]["expires"] = value
    assert "identities.1.expires:" in refused(data)


def test_expires_as_yaml_timestamp_is_refused(tmp_path: Path) -> None:
    text = write_yaml(tmp_path, raw()).read_text()
    (tmp_path / "errand.yaml").write_text(
        text.replace("expires: '2099-01-01'", "expires: 2027-06-30 10:00:00")
    )
    with pytest.raises(ConfigError, match=r"identities\.1\.expires: must be a date"):
        load_config(tmp_path / "errand.yaml")


# -- YAML loading -----------------------------------------------------------------------------


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    text = write_yaml(tmp_path, raw()).read_text()
    # A second `ref:` inside the same claims mapping would silently replace the first.
    text = text.replace(
        "      ref: refs/heads/main\n",
        "      ref: refs/heads/main\n      ref: refs/heads/anything\n",
        1,
    )
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"duplicate key 'ref' at line \d+"):
        load_config(path)


def test_duplicate_top_level_section_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(write_yaml(tmp_path, raw()).read_text() + "clients: []\n")
    with pytest.raises(ConfigError, match="duplicate key 'clients'"):
        load_config(path)


def test_unhashable_yaml_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "weird.yaml"
    path.write_text("? [a, b]\n: 1\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("broker: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "absent.yaml")


# -- ${VAR} expansion -------------------------------------------------------------------------


def test_expand_vars_uses_value_then_default() -> None:
    assert expand_vars("a ${X:-dflt} b", {}) == "a dflt b"
    assert expand_vars("a ${X:-dflt} b", {"X": "set"}) == "a set b"
    assert expand_vars("${X}", {"X": "v"}) == "v"
    # ${X:-d}: an empty value counts as unset, as in the shell.
    assert expand_vars("${X:-d}", {"X": ""}) == "d"
    assert expand_vars("${X:-}", {}) == ""


def test_unset_variable_without_default_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        expand_vars("${B_VAR} ${A_VAR} ${SET} ${B_VAR}", {"SET": "1"})
    message = str(info.value)
    assert "A_VAR, B_VAR" in message
    assert "SET" not in message.replace("unset", "")


def test_load_config_expands_variables(tmp_path: Path) -> None:
    data = raw()
    data["broker"]["issuer"] = "${PUBLIC_URL:-https://fallback.example}"
    path = write_yaml(tmp_path, data)
    assert load_config(path).broker.issuer == "https://fallback.example"
    assert (
        load_config(path, {"PUBLIC_URL": "https://set.example"}).broker.issuer
        == "https://set.example"
    )

    data["broker"]["issuer"] = "${PUBLIC_URL}"
    path = write_yaml(tmp_path, data)
    with pytest.raises(ConfigError, match="unset variables: PUBLIC_URL"):
        load_config(path, {})


# -- client secrets ---------------------------------------------------------------------------


def test_client_secret_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "rs.secret").write_text("x" * 40 + "\n")
    data = raw()
    data["clients"] = [{"client_id": "rs", "secret_file": "rs.secret"}]
    config = load_config(write_yaml(tmp_path, data))
    import hashlib

    assert config.clients["rs"].secret_sha256 == hashlib.sha256(b"x" * 40).digest()
    assert "x" * 40 not in repr(config.clients["rs"])


def test_short_or_missing_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "short.secret").write_text("tooshort")
    data = raw()
    data["clients"] = [{"client_id": "rs", "secret_file": "short.secret"}]
    assert "clients.0.secret_file: the secret must be at least 16" in refused(data, tmp_path)
    data["clients"] = [{"client_id": "rs", "secret_file": "absent.secret"}]
    assert "clients.0.secret_file: cannot read" in refused(data, tmp_path)


# -- the shipped development configuration ---------------------------------------------------


def test_dev_config_validates(tmp_path: Path) -> None:
    secret = tmp_path / "demo-rs.secret"
    secret.write_text("d" * 40)
    config = load_config(
        REPO / "config" / "errand.dev.yaml", {"ERRAND_DEMO_CLIENT_SECRET_FILE": str(secret)}
    )
    assert config.broker.issuer == "http://127.0.0.1:8080"
    assert [i.id for i in config.identities] == ["acme-app-deploy", "acme-app-pr-checks"]
    assert set(config.clients) == {"demo-rs"}
    assert config.issuers["dev-ci"].algorithms == ("ES256",)
