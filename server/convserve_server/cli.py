"""The ``convserve`` command: ``serve`` runs the server; ``health`` checks one; ``calibrate`` measures the host.

``main`` is ``python -m convserve_server``. The client's ``convserve`` script finds the three commands
through the entry points this package registers (group ``convserve.commands`` in pyproject.toml):
``serve_command``, ``health_command`` and ``calibrate_command``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from convserve_server import settings as settings_module


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``convserve`` command."""
    parser = argparse.ArgumentParser(prog="convserve", description="Convolution as a gRPC service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (default 127.0.0.1:50051)")
    settings_module.add_arguments(serve)
    commands.add_parser("calibrate", help="measure this host and save the cost model of `auto` (see --help)", add_help=False)
    health = commands.add_parser("health", help="exit 0 if the server at --target is SERVING")
    health.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    return parser


# What the `convserve-server` distribution brings (an ImportError of one of them: the server is not installed whole).
SERVER_DEPENDENCIES = ("pyfftw", "cv2", "grpc_health", "grpc_reflection", "grpc_status", "prometheus_client", "onnxruntime")
INSTALL_SERVER = "pip install convserve-server (from the repository: pip install ./client ./server)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``convserve`` command; return its exit code (2 with an install hint when a server dependency is missing)."""
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SERVER_DEPENDENCIES:
            raise
        print(f"convserve: the server needs {exc.name}, which is not installed; install the server: {INSTALL_SERVER}", file=sys.stderr)
        return 2


def _run(arguments: list[str]) -> int:
    """Dispatch one command."""
    if arguments[:1] == ["calibrate"]:
        from convserve_server.calibrate import main as calibrate

        return calibrate(arguments[1:])
    args = build_parser().parse_args(arguments)
    if args.command == "health":
        return _health(args.target, args.timeout)
    try:
        settings = settings_module.load(vars(args))
    except settings_module.SettingsError as exc:
        print(f"convserve: invalid setting: {exc}", file=sys.stderr)
        return 2
    from convserve_server.app import run

    return run(settings)


def serve_command(argv: Sequence[str]) -> int:
    """Run the server (default 127.0.0.1:50051); every flag is also a CONVSERVE_* variable."""
    return main(["serve", *argv])


def health_command(argv: Sequence[str]) -> int:
    """Exit 0 if the server at --target is SERVING (grpc.health.v1)."""
    return main(["health", *argv])


def calibrate_command(argv: Sequence[str]) -> int:
    """Measure this host and save the cost model of `auto`."""
    return main(["calibrate", *argv])


def _health(target: str, timeout: float) -> int:
    """Query grpc.health.v1 at ``target``; 0 when SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as error:
            print(f"{target}: {error.code().name}", file=sys.stderr)
            return 1
    print(f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
