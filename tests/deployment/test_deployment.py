"""Deployment files: Dockerfile, docker-compose.yml and the host-network override.

Fast and offline: no container runtime, no network. The compose files are validated against
the compose-spec JSON schema that check-jsonschema ships (``--builtin-schema vendor.compose-spec``
reads it from the installed package, no download), and the Dockerfile and compose file are
checked against each other and against the ``convserve`` command they run.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

from convserve_server.cli import build_parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
OVERRIDE = ROOT / "compose.host-network.yml"
SERVICE = "convserve"


# ---- compose loading and merging -----------------------------------------------------------


class _Reset:
    """The compose ``!reset`` tag: removes the key from the merged result."""


class _Override:
    """The compose ``!override`` tag: replaces the base value instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    pass


def _construct_any(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())
_ComposeLoader.add_constructor("!override", lambda loader, node: _Override(_construct_any(loader, node)))

# Sequences that compose merges by appending (the others are replaced).
_APPENDED = {
    "ports",
    "expose",
    "volumes",
    "devices",
    "dns",
    "dns_search",
    "tmpfs",
    "cap_add",
    "cap_drop",
    "security_opt",
    "extra_hosts",
    "env_file",
    "configs",
    "secrets",
    "external_links",
    "links",
}


def _load(path: Path) -> dict[str, Any]:
    with path.open() as stream:
        data = yaml.load(stream, Loader=_ComposeLoader)
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def _merge(base: Any, extra: Any, key: str | None = None) -> Any:
    """Merge ``extra`` over ``base`` as ``docker compose -f base -f extra`` does (the rules used here)."""
    if isinstance(extra, _Override):
        return extra.value
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for name, value in extra.items():
            if isinstance(value, _Reset):
                merged.pop(name, None)
            elif name in merged:
                merged[name] = _merge(merged[name], value, name)
            else:
                merged[name] = value.value if isinstance(value, _Override) else value
        return merged
    if isinstance(base, list) and isinstance(extra, list) and key in _APPENDED:
        return base + [item for item in extra if item not in base]
    return extra


def _strip_tags(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_tags(v) for k, v in value.items() if not isinstance(v, _Reset)}
    if isinstance(value, list):
        return [_strip_tags(v) for v in value]
    if isinstance(value, _Override):
        return _strip_tags(value.value)
    return value


def _merged() -> dict[str, Any]:
    return _strip_tags(_merge(_load(COMPOSE), _load(OVERRIDE)))


def _service(config: dict[str, Any]) -> dict[str, Any]:
    assert SERVICE in config.get("services", {}), f"no {SERVICE!r} service"
    return config["services"][SERVICE]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: str(v) for k, v in env.items() if v is not None}


def _interpolated_default(text: str) -> str:
    """``${VAR:-default}`` / ``${VAR-default}`` -> default (what a fresh shell gives)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", text)


def _container_ports(service: dict[str, Any]) -> list[int]:
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.append(int(entry["target"]))
        else:
            spec = str(entry).split("/")[0]
            ports.append(int(spec.rsplit(":", 1)[-1]))
    return ports


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("check_jsonschema")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- Dockerfile parsing --------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    result = []
    for text in logical:
        word, _, rest = text.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def _one(word: str) -> str:
    found = [args for w, args in _final_stage() if w == word]
    assert len(found) == 1, f"expected one {word} in the final stage, found {len(found)}"
    return found[0]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in _final_stage():
        if word == "ENV":
            for token in shlex.split(args):
                if "=" in token:
                    name, value = token.split("=", 1)
                    env[name] = value
    return env


def _healthcheck_argv(command: str) -> list[str]:
    """The argv of a shell-form healthcheck, defaults substituted, ``|| exit 1`` dropped."""
    command = _interpolated_default(command).split("||")[0]
    return shlex.split(command)


def _dockerfile_healthcheck_command() -> str:
    args = _one("HEALTHCHECK")
    assert " CMD " in f" {args} ", "HEALTHCHECK must run a command"
    command = args.split("CMD", 1)[1].strip()
    if command.startswith("["):
        return shlex.join(json.loads(command))
    return command


# ---- (a) schema validation -----------------------------------------------------------------


def test_compose_file_is_valid_compose_spec() -> None:
    result = _check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_with_host_network_override_is_valid_compose_spec(tmp_path: Path) -> None:
    merged = tmp_path / "merged.yml"
    merged.write_text(yaml.safe_dump(_merged(), sort_keys=False))
    result = _check_jsonschema(merged)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_an_invalid_compose_file(tmp_path: Path) -> None:
    """The validation above can fail: a service with a misspelt key does not pass."""
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  convserve:\n    image: convserve:latest\n    restart_policy: always\n")
    assert _check_jsonschema(bad).returncode != 0


def test_host_network_override_listens_on_loopback_without_published_ports() -> None:
    service = _service(_merged())
    assert service["network_mode"] == "host"
    assert "ports" not in service, "host networking ignores published ports: reset them"
    env = _environment(service)
    assert env["CONVSERVE_HOST"] == "127.0.0.1"
    assert _interpolated_default(env["CONVSERVE_PORT"]) == _one("EXPOSE").split("/")[0]


# ---- (b) Dockerfile <-> compose consistency ------------------------------------------------


def test_every_stage_starts_from_python_3_11_slim() -> None:
    froms = [args.split()[0] for word, args in _instructions() if word == "FROM"]
    assert froms and all(image == "python:3.11-slim" for image in froms)


def test_port_is_the_same_in_expose_env_and_compose() -> None:
    exposed = {int(p.split("/")[0]) for p in _one("EXPOSE").split()}
    assert len(exposed) == 1
    (port,) = exposed
    assert int(_dockerfile_env()["CONVSERVE_PORT"]) == port
    service = _service(_load(COMPOSE))
    assert _container_ports(service) == [port]
    assert int(_interpolated_default(_environment(service)["CONVSERVE_PORT"])) == port


def test_container_listens_on_all_interfaces() -> None:
    assert _dockerfile_env()["CONVSERVE_HOST"] == "0.0.0.0"
    assert _environment(_service(_load(COMPOSE)))["CONVSERVE_HOST"] == "0.0.0.0"


def test_cmd_runs_convserve_serve_in_exec_form() -> None:
    cmd = _one("CMD")
    assert cmd.startswith("["), "CMD must be the exec form so that SIGTERM reaches the server"
    assert json.loads(cmd) == ["convserve", "serve"]
    assert _one("STOPSIGNAL") == "SIGTERM"


def test_healthchecks_use_convserve_health_on_the_served_port() -> None:
    port = _one("EXPOSE").split("/")[0]
    docker_argv = _healthcheck_argv(_dockerfile_healthcheck_command())
    test = _service(_load(COMPOSE))["healthcheck"]["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    assert test[0] in ("CMD", "CMD-SHELL")
    compose_command = test[1] if test[0] == "CMD-SHELL" else shlex.join(test[1:])
    compose_argv = _healthcheck_argv(compose_command.replace("$$", "$"))
    for argv in (docker_argv, compose_argv):
        assert argv[:2] == ["convserve", "health"], argv
        target = argv[argv.index("--target") + 1]
        assert target == f"127.0.0.1:{port}", target


def test_compose_service_builds_this_dockerfile() -> None:
    service = _service(_load(COMPOSE))
    build = service["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (ROOT / build.get("context", ".")).resolve()
    assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    assert service["image"] == "convserve:latest"


def test_compose_stop_and_runtime_settings() -> None:
    service = _service(_load(COMPOSE))
    assert service["init"] is True
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert service.get("restart") in ("always", "unless-stopped", "on-failure")
    assert "shm_size" in service
    grace = float(_interpolated_default(_environment(service).get("CONVSERVE_GRACE_SECONDS", "10")))
    assert _seconds(service["stop_grace_period"]) > grace, "the container must outlive the server's grace period"


def _seconds(duration: str | int) -> float:
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration):
        total += float(number) * units[unit]
    return total


def test_image_runs_as_a_non_root_user() -> None:
    user = _one("USER").split(":")[0]
    assert user not in ("root", "0")


def test_dockerfile_copies_only_existing_sources_that_dockerignore_lets_through() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore starts by excluding everything"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = []
    for word, args in _instructions():
        if word == "COPY" and "--from" not in args:
            copied += [token.rstrip("/") for token in shlex.split(args)[:-1] if not token.startswith("--")]
    assert copied
    for source in copied:
        assert (ROOT / source).exists() or source == "README.md", f"COPY {source}: not in the repository"
        assert source in allowed, f"COPY {source}: excluded by .dockerignore"
    assert {"client", "server", "proto"} <= set(copied)


def test_image_carries_fftw_licence() -> None:
    text = DOCKERFILE.read_text()
    assert "GPL" in text and "/usr/share/licenses/" in text
    assert re.search(r'distribution\("pyfftw"\)|pip show', text), "licence files come from the installed pyfftw"


# ---- (c) the commands named exist ----------------------------------------------------------


def test_cmd_parses_as_the_serve_command() -> None:
    argv = json.loads(_one("CMD"))
    assert argv[0] == "convserve"
    assert build_parser().parse_args(argv[1:]).command == "serve"


def test_healthcheck_parses_as_the_health_command() -> None:
    for command in (_dockerfile_healthcheck_command(), _service(_load(COMPOSE))["healthcheck"]["test"][1].replace("$$", "$")):
        argv = _healthcheck_argv(command)
        args = build_parser().parse_args(argv[1:])
        assert args.command == "health" and args.target.startswith("127.0.0.1:")


def test_convserve_console_script_is_declared_by_the_client_and_the_server_adds_its_commands() -> None:
    tomllib = pytest.importorskip("tomllib")
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    server = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text())["project"]
    assert client["scripts"]["convserve"] == "convserve.cli:main" and "scripts" not in server
    assert set(server["entry-points"]["convserve.commands"]) == {"serve", "health", "calibrate"}


def test_compose_files_set_the_metrics_port_apart_from_the_grpc_port() -> None:
    """Two servers on one host must not share the default metrics port silently: the compose files
    set it, and the host-network override lets a second instance choose its own."""
    base = _environment(_service(_load(COMPOSE)))
    merged = _environment(_service(_merged()))
    for env in (base, merged):
        metrics = int(_interpolated_default(env["CONVSERVE_METRICS_PORT"]))
        assert 0 < metrics != int(_interpolated_default(env["CONVSERVE_PORT"]))
    assert re.fullmatch(r"\$\{CONVSERVE_METRICS_PORT:-\d+\}", merged["CONVSERVE_METRICS_PORT"])
    build_parser().parse_args(["serve", "--metrics-port", _interpolated_default(merged["CONVSERVE_METRICS_PORT"])])
