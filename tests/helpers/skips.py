"""One rule for tests that need a system tool or root: skip with a printed reason,
or fail under ``CI=true``, where every test must run.

The tools come from Debian packages that ``.ci/system-deps`` installs as root
(``make test`` runs it); when it cannot, it names the packages and the tests
that will skip.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

SYSTEM_DEPS = "installed by .ci/system-deps when run as root"
# Tools that .ci/system-deps does not install.
HINTS = {"kubectl": "not installed by .ci/system-deps: put a kubectl binary on PATH"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip, printing why; under CI=true fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but {reason}")
    print(f"skipped: {reason}")
    pytest.skip(reason)


# Where root's tools live, often off a normal user's PATH: a tool there is
# installed, and the test skips for want of root instead.
SBIN = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))


def missing_tools(*tools: str) -> list[str]:
    return [
        tool
        for tool in tools
        if shutil.which(tool) is None and shutil.which(tool, path=SBIN) is None
    ]


def require(*tools: str, root: str | None = None, hint: str = SYSTEM_DEPS) -> None:
    """Skip (fail under CI=true) unless every tool is on PATH and, when ``root``
    says why root is needed, the process runs as root."""
    by_hint: dict[str, list[str]] = {}
    for tool in missing_tools(*tools):
        by_hint.setdefault(HINTS.get(tool, hint), []).append(tool)
    reasons = [
        f"it misses {', '.join(missing)} ({hint})" for hint, missing in by_hint.items()
    ]
    if root is not None and os.geteuid() != 0:
        reasons.append(f"it is not root ({root})")
    if reasons:
        skip_or_fail("; ".join(reasons))
