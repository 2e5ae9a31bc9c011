"""The observability settings, the shipped alert rules, the work horses' metric files, and
tracing that costs nothing when it is off."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from broker import metrics
from broker.errors import BrokerError
from broker.metrics_gauges import describe_names
from broker.settings_observability import load_observability_settings

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "errand-alerts.yaml"


def exported_names() -> set[str]:
    """Every series name /metrics can show: the registered metrics and the scrape gauges."""
    names = set(describe_names())
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "counter":
                names.add(family.name + "_total")
    return names


def test_every_alert_rule_uses_metrics_errand_exports() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert rules
    exported = exported_names()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        used = set(re.findall(r"\berrand_[a-z_]+\b", rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)
    assert any("errand_grants_live_after_task_end" in rule["expr"] for rule in rules), (
        "the should-be-zero gauge has its alert"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ERRAND_WORKER_HEARTBEAT_SECONDS": "31"}, "at least twice"),
        ({"ERRAND_READY_WORKER_MAX_AGE_SECONDS": "-1"}, "must be 0"),
        ({"ERRAND_WORKER_METRICS_BIND": "9464"}, "not host:port"),
        ({"ERRAND_OTLP_ENDPOINT": "collector:4318"}, "http:// or https://"),
        ({"ERRAND_METRICS_CACHE_SECONDS": "soon"}, "bad numeric"),
    ],
)
def test_contradictions_are_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(BrokerError, match=message):
        load_observability_settings(env)


def test_defaults_and_the_standard_otlp_variable() -> None:
    settings = load_observability_settings({})
    assert (settings.worker_metrics_bind, settings.otlp_endpoint) == ("", "")
    assert settings.ready_worker_max_age_seconds == 60 and settings.ready_requires_reload_ok
    standard = load_observability_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert standard.otlp_endpoint == "http://c:4318"
    ours = load_observability_settings(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "ERRAND_OTLP_ENDPOINT": "http://e:1"}
    )
    assert ours.otlp_endpoint == "http://e:1"
    assert load_observability_settings({"ERRAND_READY_WORKER_MAX_AGE_SECONDS": "0"})


def test_work_horses_of_one_worker_share_one_file_name(monkeypatch) -> None:
    assert metrics._process_identifier() == str(__import__("os").getpid())
    monkeypatch.setattr(metrics, "_horse_of", 4242)
    assert metrics._process_identifier() == "horse4242"


# Runs in a fresh interpreter where importing opentelemetry fails (as without the `otel`
# extra) and each attempt is recorded with the file that made it. redis-py tries it on its
# own at import (redis/observability, off unless configured); Errand's code must not.
_PROBE = """
import sys, traceback

attempts = []

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            frames = [f.filename for f in traceback.extract_stack()[:-1]]  # not this one
            attempts.append([f for f in frames if "importlib" not in f][-1])
            raise ImportError(name)
        return None

sys.meta_path.insert(0, Block())
import broker.app, broker.domain.exchange, broker.http.tracing, broker.services, workers.worker
from broker.domain.ports import NO_TRACER
from broker.settings_observability import load_observability_settings
from broker.tracing import build_tracer
assert build_tracer(load_observability_settings({})) is NO_TRACER
ours = [f for f in attempts if "/broker/" in f or "/workers/" in f]
assert not ours, ours
assert not [m for m in sys.modules if m.startswith("opentelemetry")]
"""


@pytest.mark.slow  # a fresh interpreter
def test_tracing_off_loads_no_opentelemetry() -> None:
    """No endpoint: the no-op tracer, and no Errand module asks for opentelemetry, after
    importing everything a web process and a worker import and building the tracer."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
