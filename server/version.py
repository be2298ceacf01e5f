"""The installed adamax-ps version, as both transports report it."""

from __future__ import annotations

import functools


@functools.cache
def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adamax-ps")
    except PackageNotFoundError:
        return "unknown"
