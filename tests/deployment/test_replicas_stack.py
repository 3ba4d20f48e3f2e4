"""The replicas stacks: compose.replicas.yml (bridge), compose.replicas.host-network.yml, and deploy/nginx/.

Fast and offline (no container runtime): the compose files against the compose-spec schema, their
ports and mounts against the nginx files they mount, and the nginx settings whose values matter
(body limit, timeouts against the server's idle timeout, retries, failure detection). ``nginx -t``
checks the config's syntax where nginx is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from convserve_server.settings import Settings, load
from tests.deployment import balancer

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "compose.replicas.yml"
HOST = ROOT / "compose.replicas.host-network.yml"
NGINX = ROOT / "deploy" / "nginx"
CONF = (NGINX / "nginx.conf").read_text()
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


def _compose(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())  # YAML merge keys (<<) resolved by the loader
    assert isinstance(data, dict)
    return data


def _directive(name: str, text: str = CONF) -> list[str]:
    """The arguments of every ``name ...;`` directive (comments dropped)."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return [m.group(1).strip() for m in re.finditer(rf"(?:^|[;{{}}\s]){re.escape(name)}\s+([^;{{}}]*);", code)]


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|)", value).groups()  # type: ignore[union-attr]
    return float(number) * UNITS[unit]


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in service["environment"].items()}


@pytest.mark.parametrize("path", [BRIDGE, HOST], ids=["bridge", "host-network"])
def test_compose_file_is_valid_compose_spec(path: Path) -> None:
    pytest.importorskip("check_jsonschema")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_host_network_replicas_have_distinct_loopback_ports_and_nginx_balances_exactly_them() -> None:
    services = _compose(HOST)["services"]
    replicas = {name: s for name, s in services.items() if name.startswith("convserve-")}
    assert len(replicas) >= 2
    grpc_ports, metrics_ports = [], []
    for name, service in replicas.items():
        assert service["network_mode"] == "host" and "ports" not in service, name
        env = _env(service)
        settings = load({}, env)  # the server's own parser
        assert settings.is_loopback, name
        grpc_ports.append(settings.port)
        metrics_ports.append(settings.metrics_port)
    assert len(set(grpc_ports + metrics_ports)) == 2 * len(replicas), "every replica needs its own gRPC and metrics port"
    upstream = (NGINX / "host-network" / "convserve-upstream.conf").read_text()
    assert sorted(int(p) for p in re.findall(r"server\s+127\.0\.0\.1:(\d+)", upstream)) == sorted(grpc_ports)
    listen = re.search(r"listen\s+127\.0\.0\.1:(\d+)\s", (NGINX / "host-network" / "convserve-listen.conf").read_text())
    assert listen and int(listen.group(1)) not in grpc_ports + metrics_ports
    assert services["nginx"]["network_mode"] == "host"


@pytest.mark.parametrize(("path", "variant"), [(BRIDGE, "bridge"), (HOST, "host-network")])
def test_nginx_service_mounts_the_shipped_config_and_its_variant(path: Path, variant: str) -> None:
    nginx = _compose(path)["services"]["nginx"]
    mounts = {}
    for volume in nginx["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = (ROOT / source).resolve()
    assert mounts["/etc/nginx/nginx.conf"] == NGINX / "nginx.conf"
    for name in ("convserve-upstream.conf", "convserve-listen.conf"):
        assert mounts[f"/etc/nginx/{name}"] == NGINX / variant / name
        assert (NGINX / variant / name).is_file()
    assert nginx["build"]["context"] == "deploy/nginx" and (ROOT / "deploy" / "nginx" / "Dockerfile").is_file()


def test_bridge_replicas_publish_no_port_so_that_they_scale() -> None:
    services = _compose(BRIDGE)["services"]
    replica = services["convserve"]
    assert "ports" not in replica and "container_name" not in replica, "--scale needs replicas without fixed host ports or names"
    settings = load({}, _env(replica))
    assert settings.host == "0.0.0.0"
    assert {str(settings.port), str(settings.metrics_port)} <= {str(p) for p in replica["expose"]}
    assert services["nginx"]["ports"] == ["127.0.0.1:50051:50051"]
    upstream = (NGINX / "bridge" / "convserve-upstream.conf").read_text()
    assert re.search(rf"server\s+convserve:{settings.port}\s+max_fails=\d+\s+fail_timeout=\d+s;", upstream)
    assert re.search(r"listen\s+50051\s+http2;", (NGINX / "bridge" / "convserve-listen.conf").read_text())


def test_nginx_has_no_body_limit_and_outlasts_the_servers_idle_timeout() -> None:
    assert _directive("client_max_body_size") == ["0"]
    idle = Settings().idle_timeout_seconds
    for name in ("grpc_read_timeout", "grpc_send_timeout", "client_body_timeout", "keepalive_timeout"):
        (value,) = _directive(name)
        assert _seconds(value) > idle, f"{name} {value} must outlast the server's idle timeout ({idle:g} s)"
    assert "600 s" in CONF, "the config states the longest silence it carries"


def test_nginx_retries_only_calls_it_could_not_hand_over_and_answers_failures_the_grpc_way() -> None:
    (retry,) = _directive("grpc_next_upstream")
    assert retry.split() == ["error", "timeout"], "no non_idempotent: a call that reached a replica is never resent by nginx"
    assert _directive("grpc_pass") == ["grpc://convserve"]
    (pages,) = _directive("error_page")
    assert pages.split() == ["502", "503", "504", "=", "@unavailable"]
    unavailable = CONF[CONF.index("location @unavailable") :]
    assert "grpc-status 14" in unavailable and "application/grpc" in unavailable


@pytest.mark.parametrize("variant", ["host-network", "bridge"])
def test_upstream_drops_a_dead_replica_and_shares_that_between_workers(variant: str) -> None:
    text = (NGINX / variant / "convserve-upstream.conf").read_text()
    servers = _directive("server", text)
    assert servers and all(re.search(r"max_fails=[1-9]\d* fail_timeout=\d+s$", s) for s in servers), servers
    assert _directive("zone", text) and _directive("keepalive", text)


def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.skip("nginx is not installed (the balancer test installs it)")
    config = balancer.render(tmp_path, ["127.0.0.1:50051", "127.0.0.1:50052"], 50050)
    result = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(config), "-e", str(tmp_path / "error.log"), "-g", f"pid {tmp_path / 'nginx.pid'};"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
