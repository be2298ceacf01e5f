"""Child process of test_checkpoint: writes checkpoint 1, then stops inside
checkpoint 2 after its first shard file, waiting to be killed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers
from helpers.state import build_state

from adamax_ps.server.service import Gradient, ParameterService, ServiceSettings


def main(root: str) -> None:
    service = ParameterService(ServiceSettings(shards=2))
    build_state(service)
    service.checkpoint(root)
    print("checkpoint 1 written", flush=True)
    service.apply("Adamax", [Gradient.dense("dense", np.ones(7))])

    def hold(shard: int) -> None:
        print(f"checkpoint 2 shard {shard} written", flush=True)
        sys.stdin.readline()  # blocks until the parent kills this process

    service.checkpoint(root, progress=hold)


if __name__ == "__main__":
    main(sys.argv[1])
