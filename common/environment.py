"""Settings from the environment: every option ``--some-name`` may also be
given as ``ADAMAX_PS_SOME_NAME`` (a flag wins), for the server and the CLI."""

from __future__ import annotations

import os

PREFIX = "ADAMAX_PS_"


def variable(option: str) -> str:
    """The environment variable of an option: ``steps`` -> ``ADAMAX_PS_STEPS``."""
    return PREFIX + option.upper().replace("-", "_")


def lookup(option: str) -> str | None:
    """The option's value in the environment, or None."""
    return os.environ.get(variable(option))


def truthy(text: str) -> bool:
    """A flag given as text: ``1``, ``true``, ``yes`` or ``on`` (any case)."""
    return text.strip().lower() in ("1", "true", "yes", "on")
