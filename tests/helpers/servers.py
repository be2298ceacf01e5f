"""Real ``adamax-ps serve`` processes for the tests (see server/launcher.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from adamax_ps.server import launcher
from adamax_ps.server.launcher import LocalServer as Server
from adamax_ps.server.launcher import addresses

SCRIPT = Path(sys.executable).parent / "adamax-ps"

__all__ = ["SCRIPT", "Server", "addresses", "start_cluster"]


def start_cluster(
    count: int,
    folder: Path,
    *extra: str,
    checkpoints: bool = True,
    env: dict[str, str] | None = None,
) -> list[Server]:
    """``count`` servers of one cluster, two shards each, logs under ``folder``."""
    return launcher.start_cluster(
        count, folder, "--shards", "2", *extra, checkpoints=checkpoints, env=env
    )
