"""Generate the Python protobuf and gRPC code of the client package from ``proto/``.

Usage: ``python scripts/generate_proto.py [OUTPUT_ROOT]``. Without an argument the code is written
into ``client/`` (so ``proto/convserve/v1/convserve.proto`` becomes
``client/convserve/v1/convserve_pb2.py``); the freshness test passes a temporary directory and
compares. Never edit the generated files by hand: change the proto and run this script.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
GENERATED_PACKAGE = "convserve/v1"


def generate(output_root: Path) -> list[Path]:
    """Run protoc on every proto file; return the generated files."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    output_root.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_dir = output_root / GENERATED_PACKAGE
    init = package_dir / "__init__.py"
    init.write_text('"""Generated protobuf and gRPC code (scripts/generate_proto.py). Do not edit."""\n')
    return sorted(p for p in package_dir.iterdir() if p.is_file())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "client"
    for path in generate(target):
        print(path)
