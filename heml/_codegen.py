"""Regenerate the protobuf/gRPC modules under heml/v1 from proto/ (``make proto``).

The generator is the pinned grpcio-tools from the ``dev`` extra; tests/test_repository_contracts.py
regenerates into a temporary folder and fails when the committed files differ. protoc runs in a
child process: grpc_tools' bundled protobuf and TenSEAL's cannot share one process (importing
tenseal after grpc_tools aborts the interpreter).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO_FILES = ["heml/v1/heml.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every proto file into ``out_dir``; return the generated paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args[2:])}: {done.stderr.strip()}")
    return sorted(p for p in (out_dir / "heml" / "v1").iterdir() if "_pb2" in p.name)


def main() -> int:
    paths = generate(ROOT)
    for path in paths:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
