"""deploy/kubernetes: every manifest is valid for the Kubernetes API it targets, and says what
operators rely on.

The schema check is offline: kubernetes-validate bundles the Kubernetes OpenAPI schemas
(converted to JSON Schema) for each minor version, and its strict variant refuses unknown
fields, so a misspelt key (`readinesProbe`) fails here instead of being dropped, or refused,
by the API server. Manifests are checked against the oldest version we support and the newest
the package bundles.

The broker's own code is read as text, never imported: which environment variables it reads
comes from the string literals in broker/settings.py (the only module that reads os.environ
for the broker) and from the ${NAME} references in the mounted configuration file."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.slow  # validates every manifest against the Kubernetes schemas

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
SETTINGS = ROOT / "broker" / "settings.py"
OBSERVABILITY_SETTINGS = ROOT / "broker" / "settings_observability.py"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
SECRET_TEMPLATE = DEPLOY / "secrets.template.yaml"

OLDEST_SUPPORTED = "1.30"
VERSIONS = (OLDEST_SUPPORTED, kubernetes_validate.latest_version())

# A placeholder every consumer refuses: shorter than a client secret may be (16 characters),
# so also shorter than an admin credential (24), and never base64 of a 32-byte key.
PLACEHOLDER = re.compile(r"^<[a-z0-9-]{1,13}>$")

Doc = dict[str, Any]


def _documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p != KUSTOMIZATION)


def _all_manifests() -> list[tuple[Path, Doc]]:
    return [(p, d) for p in _manifest_files() for d in _documents(p)]


def _applied() -> list[Doc]:
    """What `kubectl apply -k` creates: the kustomization's resources, in its order."""
    kust = _documents(KUSTOMIZATION)[0]
    return [d for name in kust["resources"] for d in _documents(DEPLOY / name)]


def _one(kind: str, name: str) -> Doc:
    found = [d for d in _applied() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in the kustomization, found {len(found)}"
    return found[0]


def _deployment(component: str) -> Doc:
    return _one("Deployment", f"errand-{component}")


def _container(component: str) -> Doc:
    (container,) = _deployment(component)["spec"]["template"]["spec"]["containers"]
    return container


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(component: str) -> dict[str, str]:
    return _deployment(component)["spec"]["template"]["metadata"]["labels"]


def _env(component: str) -> dict[str, str]:
    """The container's environment: the ConfigMaps it takes whole, then its own entries."""
    container = _container(component)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{component}: envFrom other than a ConfigMap: {source}"
        env.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        assert set(item) == {"name", "value"}, f"{component}: env {item['name']} is not a value"
        env[item["name"]] = item["value"]
    return env


def _secret_mounts(component: str) -> dict[str, Doc]:
    """mountPath -> the Secret volume mounted there."""
    spec = _deployment(component)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {
        m["mountPath"]: volumes[m["name"]]
        for m in _container(component)["volumeMounts"]
        if "secret" in volumes[m["name"]]
    }


def _config_text() -> str:
    return _one("ConfigMap", "errand-config")["data"]["errand.yaml"]


def _port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def _validation_errors(doc: Doc, version: str) -> str | None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top)"
        return f"{where}: {err.message}"
    return None


# --- the schema check ------------------------------------------------------------------------


def test_there_are_manifests() -> None:
    kinds = {d["kind"] for _, d in _all_manifests()}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
    } <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_and_has_no_unknown_field(version: str) -> None:
    errors = []
    for path, doc in _all_manifests():
        problem = _validation_errors(doc, version)
        if problem:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            errors.append(f"{path.name}: {name}: {problem}")
    assert not errors, f"invalid for Kubernetes {version}:\n" + "\n".join(errors)


def test_the_schema_check_refuses_an_unknown_field_and_a_wrong_type() -> None:
    """The check itself: strict mode is on and the bundled schemas are used."""
    broker = copy.deepcopy(_deployment("broker"))
    broker["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert "readinesProbe" in (_validation_errors(broker, OLDEST_SUPPORTED) or "")
    broker = copy.deepcopy(_deployment("broker"))
    broker["spec"]["replicas"] = "2"
    assert "replicas" in (_validation_errors(broker, OLDEST_SUPPORTED) or "")


KUSTOMIZATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "resources"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "namespace": {"type": "string"},
        "resources": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "newName": {"type": "string"},
                    "newTag": {"type": "string"},
                    "digest": {"type": "string"},
                },
            },
        },
    },
}


def test_the_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    kust = _documents(KUSTOMIZATION)[0]
    jsonschema.validate(kust, KUSTOMIZATION_SCHEMA)
    listed = set(kust["resources"])
    files = {p.name for p in _manifest_files()}
    assert listed <= files, f"listed but missing: {sorted(listed - files)}"
    # Applying placeholders would overwrite real credentials: the template is never applied.
    assert SECRET_TEMPLATE.name not in listed
    assert files - listed == {SECRET_TEMPLATE.name}, "a manifest is not in the kustomization"
    assert not [d for d in _applied() if d["kind"] == "Secret"]


# --- what operators rely on ------------------------------------------------------------------


def test_probes_point_at_readyz_and_healthz_on_the_container_port() -> None:
    container = _container("broker")
    (port,) = container["ports"]
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    # Liveness must not follow Redis: an outage would restart every node at once.
    assert live["path"] == "/healthz"
    assert _port_number(container, ready["port"]) == port["containerPort"]
    assert _port_number(container, live["port"]) == port["containerPort"]
    if "startupProbe" in container:
        startup = container["startupProbe"]["httpGet"]
        assert startup["path"] == "/healthz"
        assert _port_number(container, startup["port"]) == port["containerPort"]
    # gunicorn listens where the probes and the Service look.
    assert _env("broker")["ERRAND_BIND"] == f"0.0.0.0:{port['containerPort']}"


def test_the_service_routes_to_broker_pods_only() -> None:
    service = _one("Service", "errand")
    selector = service["spec"]["selector"]
    assert _selects(selector, _pod_labels("broker"))
    assert not _selects(selector, _pod_labels("worker"))
    container = _container("broker")
    (port,) = service["spec"]["ports"]
    assert _port_number(container, port["targetPort"]) == container["ports"][0]["containerPort"]


def test_broker_and_worker_run_the_same_image() -> None:
    broker, worker = _container("broker"), _container("worker")
    assert broker["image"] == worker["image"]
    assert broker["command"] == ["errand", "serve"]
    assert worker["command"] == ["errand", "worker"]
    # The worker serves only its own metrics (ERRAND_WORKER_METRICS_BIND), nothing else.
    assert [p["name"] for p in worker.get("ports", [])] == ["metrics"]
    image_name = broker["image"].split("@", 1)[0].rsplit(":", 1)[0]
    images = _documents(KUSTOMIZATION)[0].get("images", [])
    assert [i["name"] for i in images] == [image_name], "kustomization images must name it"


def test_the_broker_has_two_replicas_and_a_disruption_budget_that_selects_them() -> None:
    broker = _deployment("broker")
    assert broker["spec"]["replicas"] == 2
    assert _selects(broker["spec"]["selector"]["matchLabels"], _pod_labels("broker"))
    pdb = _one("PodDisruptionBudget", "errand-broker")
    assert pdb["spec"]["minAvailable"] == 1
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert _selects(selector, _pod_labels("broker"))
    assert not _selects(selector, _pod_labels("worker"))
    # A budget as large as the Deployment would block every node drain.
    assert pdb["spec"]["minAvailable"] < broker["spec"]["replicas"]


@pytest.mark.parametrize("component", ["broker", "worker"])
def test_pods_run_as_non_root_with_a_read_only_root(component: str) -> None:
    spec = _deployment(component)["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001  # the image's user: the mounted files are readable to it
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    container = _container(component)
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][key]), f"{component}: {key}"
    # The writable paths are emptyDirs; /tmp holds the Prometheus multiprocess directory.
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = {
        m["mountPath"]: volumes[m["name"]]
        for m in container["volumeMounts"]
        if not m.get("readOnly")
    }
    assert "/tmp" in writable
    assert all("emptyDir" in v for v in writable.values()), writable


@pytest.mark.parametrize("component", ["broker", "worker"])
def test_secrets_are_mounted_files_never_environment_values(component: str) -> None:
    container = _container(component)
    assert not [s for s in container.get("envFrom", []) if "secretRef" in s]
    assert all("valueFrom" not in e for e in container.get("env", []))
    env = _env(component)
    secretish = [n for n in env if re.search(r"TOKEN|SECRET|PASSWORD|KEK", n)]
    assert all(n.endswith("_FILE") for n in secretish), secretish
    assert urlsplit(env["REDIS_URL"]).password is None, "REDIS_URL must not carry a password"
    mounts = _secret_mounts(component)
    template = {d["metadata"]["name"]: d for d in _documents(SECRET_TEMPLATE)}
    for name, value in env.items():
        if not name.endswith("_FILE"):
            continue
        directory, _, key = value.rpartition("/")
        assert directory in mounts, f"{component}: {name}={value} is not in a mounted Secret"
        secret = mounts[directory]["secret"]
        items = {i["path"]: i["key"] for i in secret.get("items", [])} or {key: key}
        assert key in items, f"{component}: {name}: {key} is not projected"
        assert items[key] in template[secret["secretName"]]["stringData"]
    for directory, volume in mounts.items():
        assert volume["secret"]["secretName"] in template, f"{directory}: no template"
    # The admin credential reaches the web nodes only.
    assert ("ERRAND_ADMIN_TOKEN_FILE" in env) == (component == "broker")


def test_the_configured_client_secret_files_are_mounted_on_every_process() -> None:
    """Loading the configuration reads each secret_file: a missing one stops the process."""
    clients = yaml.safe_load(_config_text())["clients"]
    files = [c["secret_file"] for c in clients if "secret_file" in c]
    assert files
    template = {d["metadata"]["name"]: d for d in _documents(SECRET_TEMPLATE)}
    for component in ("broker", "worker"):
        mounts = _secret_mounts(component)
        for path in files:
            directory, _, key = path.rpartition("/")
            assert directory in mounts, f"{component}: {path} is not mounted"
            secret_name = mounts[directory]["secret"]["secretName"]
            assert key in template[secret_name]["stringData"]


def _variables_errand_reads() -> set[str]:
    text = SETTINGS.read_text() + OBSERVABILITY_SETTINGS.read_text()
    settings = set(re.findall(r"""["'](REDIS_URL|ERRAND_[A-Z0-9_]+)["']""", text))
    assert {"ERRAND_CONFIG", "REDIS_URL", "ERRAND_KEY_ENCRYPTION_KEY_FILE"} <= settings
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?::-[^}]*)?\}", _config_text()))
    return settings | referenced


@pytest.mark.parametrize("component", ["broker", "worker"])
def test_every_variable_set_is_one_errand_reads(component: str) -> None:
    unknown = sorted(set(_env(component)) - _variables_errand_reads())
    assert not unknown, f"{component}: set but read by nothing: {unknown}"


def test_the_mounted_configuration_points_where_the_environment_says() -> None:
    env = _env("broker")
    directory, _, filename = env["ERRAND_CONFIG"].rpartition("/")
    spec = _deployment("broker")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in _container("broker")["volumeMounts"] if m["mountPath"] == directory]
    # Mounted as a directory, not with subPath: edits reach the pod and are reloaded.
    assert "subPath" not in mount
    assert volumes[mount["name"]]["configMap"]["name"] == "errand-config"
    assert filename in _one("ConfigMap", "errand-config")["data"]


def test_redis_is_the_operators_and_must_not_evict() -> None:
    host = urlsplit(_env("broker")["REDIS_URL"]).hostname
    redis = _one("Service", host or "")
    assert redis["spec"]["type"] == "ExternalName"
    assert "noeviction" in (DEPLOY / "redis-service.yaml").read_text()
    assert "noeviction" in (DEPLOY / "README.md").read_text()


def test_secret_templates_hold_placeholders_only() -> None:
    secrets = [(p, d) for p, d in _all_manifests() if d["kind"] == "Secret"]
    assert secrets and {p for p, _ in secrets} == {SECRET_TEMPLATE}
    for _, secret in secrets:
        name = secret["metadata"]["name"]
        assert "data" not in secret, f"{name}: base64 `data` could hide a real value"
        assert secret["stringData"], name
        for key, value in secret["stringData"].items():
            assert PLACEHOLDER.match(value), f"{name}.{key} is not a placeholder: {value!r}"


def _looks_like_a_key(run: str) -> bool:
    return all(re.search(cls, run) for cls in ("[A-Z]", "[a-z]", "[0-9]"))


def test_no_key_material_anywhere_under_deploy() -> None:
    # A base64 run as long as a 32-byte key (a KEK, a generated credential), mixing cases and
    # digits as random data does (paths and host names do not).
    base64_run = re.compile(r"[A-Za-z0-9+/]{42,}={0,2}")
    for path in sorted(DEPLOY.parent.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        assert "PRIVATE KEY" not in text, f"{path}: a PEM private key"
        keys = [run for run in base64_run.findall(text) if _looks_like_a_key(run)]
        assert not keys, f"{path}: {keys}"
