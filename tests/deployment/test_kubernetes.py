"""The Kubernetes manifests in deploy/kubernetes/: valid, and the server's settings matched to the pod's limits.

Offline: kubernetes-validate checks each document against the API schemas it ships (strict: an
unknown or misspelt field fails), and the settings in the Deployment's environment are parsed by
``convserve_server.settings`` itself and compared with the container's CPU and memory limits.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from convserve_server import app
from convserve_server.settings import Settings, SettingsError, env_name, load

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# Kubernetes versions checked: the first with gRPC probes GA, and the newest the validator knows.
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# What a replica holds besides its accounted budgets: interpreter, numpy, pyFFTW, ONNX Runtime and
# gRPC (about 140 MiB resident after the first calls here), with room to spare for allocator slack.
BASE_BYTES = 512 * 1024 * 1024
SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [doc for doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["convserve"]
    return dict(containers[0])


def _env() -> dict[str, str]:
    env = {}
    for item in _container()["env"]:
        assert "value" in item, f"{item['name']} must be a literal so that it can be checked against the limits"
        env[item["name"]] = str(item["value"])
    return env


def _settings() -> Settings:
    return load({}, {k: v for k, v in _env().items() if k.startswith("CONVSERVE_")})


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _bytes(quantity: str) -> int:
    number, suffix = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()  # type: ignore[union-attr]
    return int(float(number) * SUFFIXES[suffix])


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    docs = _documents()
    assert {doc["kind"] for doc in docs} == {"Deployment", "Service", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validation_can_fail() -> None:
    """A misspelt probe field is caught (so that the test above checks something)."""
    deployment = _one("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_probes_are_grpc_health_checks_on_the_serving_port() -> None:
    container = _container()
    port = _settings().port
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    assert container["readinessProbe"]["grpc"].get("service", "") in ("", app.SERVICE_NAME)


def test_service_is_headless_on_the_grpc_and_metrics_ports() -> None:
    service = _one("Service")
    deployment = _one("Deployment")
    assert service["spec"]["clusterIP"] == "None", "a ClusterIP Service pins each client's connection to one pod"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    settings = _settings()
    assert ports["grpc"]["port"] == settings.port and ports["metrics"]["port"] == settings.metrics_port
    assert ports["grpc"].get("appProtocol") == "grpc"


def test_disruption_budget_keeps_replicas_serving() -> None:
    budget = _one("PodDisruptionBudget")["spec"]
    deployment = _one("Deployment")["spec"]
    assert budget["selector"] == deployment["selector"]
    assert budget.get("maxUnavailable", 0) == 1 or deployment["replicas"] - budget["minAvailable"] >= 1
    assert deployment["replicas"] >= 2
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_settings_parse_and_every_variable_is_a_setting() -> None:
    names = {env_name(item.name) for item in dataclasses.fields(Settings)}
    unknown = sorted(k for k in _env() if k.startswith("CONVSERVE_") and k not in names)
    assert not unknown, f"not settings: {unknown}"
    settings = _settings()  # raises SettingsError on an invalid value
    assert settings.host == "0.0.0.0" and settings.metrics_port > 0


def test_settings_sized_from_the_cores_match_the_cpu_limit() -> None:
    """os.cpu_count() sees the node: the settings whose defaults follow it are set, within the limit."""
    env, settings = _env(), _settings()
    limits = _container()["resources"]["limits"]
    cpus = _cpu(str(limits["cpu"]))
    for name in ("workers", "max_concurrent_requests", "fftw_threads"):
        assert env_name(name) in env, f"{env_name(name)} must be set: its default follows the node's cores"
    assert settings.workers * settings.fftw_threads <= cpus, "more compute threads than the CPU limit"
    assert settings.workers >= 1 and settings.max_concurrent_requests <= 4 * settings.workers
    for library in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert int(env[library]) <= cpus


def test_memory_the_server_may_hold_fits_the_memory_limit_with_headroom() -> None:
    env, settings = _env(), _settings()
    limit = _bytes(str(_container()["resources"]["limits"]["memory"]))
    assert env_name("memory_budget_bytes") in env
    accounted = (
        settings.memory_budget_bytes
        + settings.waiting_budget_bytes
        + settings.weights_cache_bytes
        + settings.fftw_cache_bytes
        + settings.layer_cache_bytes
        + settings.max_request_bytes  # one message being received, before admission sees it
    )
    assert accounted + BASE_BYTES <= limit, f"{accounted / 2**20:.0f} MiB accounted + {BASE_BYTES / 2**20:.0f} MiB base > {limit / 2**20:.0f} MiB limit"
    assert settings.max_output_bytes <= settings.memory_budget_bytes
    requests = _container()["resources"]["requests"]
    assert _bytes(str(requests["memory"])) == limit, "memory request = limit: the scheduler places the pod where its budget fits"


def test_grace_period_outlasts_the_servers_shutdown() -> None:
    settings = _settings()
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.grace_seconds + app.CANCEL_MARGIN_SECONDS + app.STOP_SECONDS + 5


def test_a_mismatched_setting_is_refused_by_the_settings_parser() -> None:
    """The comparison above goes through the server's own parser: an invalid pairing fails there too."""
    bad = {k: v for k, v in _env().items() if k.startswith("CONVSERVE_")}
    bad["CONVSERVE_MAX_CONCURRENT_REQUESTS"] = "1"
    with pytest.raises(SettingsError):
        load({}, bad)
