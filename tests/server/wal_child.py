"""Child process of test_wal: pushes in wal mode, printing each acknowledged
push's sequence number, until it is killed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers
from helpers.workload import push, setup

from adamax_ps.server.service import ParameterService, ServiceSettings


def main(folder: str) -> None:
    service = ParameterService(
        ServiceSettings(
            shards=2, checkpoint_dir=Path(folder) / "server", durability="wal"
        )
    )
    service.restore()
    setup(service)
    for sequence in range(100_000):
        push(service, sequence)
        print(sequence, flush=True)
        if sequence == 25:
            service.checkpoint()  # some pushes before, some after a checkpoint


if __name__ == "__main__":
    main(sys.argv[1])
