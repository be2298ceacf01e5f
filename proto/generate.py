"""Regenerates the committed Python code of the .proto files.

    python proto/generate.py            # write proto/v1/*_pb2*.py(i)
    python proto/generate.py --check    # exit 1 if the committed code is stale

The import root is mapped so the generated code imports
``adamax_ps.proto.v1`` (the installed name), never a bare ``proto``.
Needs grpcio-tools (pinned in the ``test`` extra).
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTOS = sorted((HERE / "v1").glob("*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Generate into ``out``; returns the files written (under adamax_ps/proto/v1)."""
    args = [
        "grpc_tools.protoc",
        f"-Iadamax_ps/proto={HERE}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "adamax_ps" / "proto" / "v1").iterdir())


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for path in generate(Path(tmp)):
            target = HERE / "v1" / path.name
            if check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(target.name)
            else:
                shutil.copyfile(path, target)
        if stale:
            names = ", ".join(stale)
            print(f"stale generated code: {names}; run python proto/generate.py")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
