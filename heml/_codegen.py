"""Regenerate the protobuf/gRPC modules under heml/v1 from proto/ (``make proto``).

The generator is the pinned grpcio-tools from the ``dev`` extra; tests/test_proto_codegen.py
regenerates into a temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO_FILES = ["heml/v1/heml.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every proto file into ``out_dir``; return the generated paths."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(p for p in (out_dir / "heml" / "v1").iterdir() if "_pb2" in p.name)


def main() -> int:
    paths = generate(ROOT)
    for path in paths:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
