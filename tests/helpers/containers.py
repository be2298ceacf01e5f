"""Build and run the adamax-ps image with podman, without a daemon or a registry.

No base image can be pulled here, so the base is a Debian bookworm made by
debootstrap from the machine's own Debian mirror and imported into podman once
(kept as ``BASE_IMAGE`` between runs). The project goes into the build as a
wheelhouse made on the host, so the build needs no network. Containers run
with runc and cgroupfs, set by a containers.conf that ``podman_env`` writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from helpers import skips

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / "build" / "wheelhouse"  # the Dockerfile copies this folder
BASE_IMAGE = "localhost/adamax-ps-base:bookworm"
IMAGE = "localhost/adamax-ps:test"  # and :test-install, its first stage
SUITE = "bookworm"

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def require(*tools: str, root: bool = False) -> None:
    """Skip (fail under CI=true) unless every tool is on PATH (and, with
    ``root``, the process is root: rootful podman and debootstrap need it)."""
    skips.require(
        *tools, root="rootful podman and debootstrap need it" if root else None
    )


def tool(name: str) -> str:
    """A console script of this venv (kubernetes-validate, yamllint, ...)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name


def run(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    stdin=subprocess.DEVNULL,
) -> subprocess.CompletedProcess:
    """Run, capture text output, and fail with that output on a non-zero exit."""
    result = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=stdin,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def podman_env(folder: Path) -> dict[str, str]:
    """The environment for podman and podman-compose: runc, cgroupfs, ulimits."""
    conf = folder / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def debian_mirror(sources: Iterable[Path] | None = None) -> str:
    """The first Debian mirror of the machine's apt sources that serves a
    release suite (not -security or -updates)."""
    if sources is None:
        folder = Path("/etc/apt")
        sources = [folder / "sources.list", *sorted(folder.glob("sources.list.d/*"))]
    for path in sources:
        if not path.is_file() or path.suffix not in (".list", ".sources"):
            continue
        entries = (
            _deb822_entries(path.read_text())
            if path.suffix == ".sources"
            else _one_line_entries(path.read_text())
        )
        for uri, suites in entries:
            if any(re.fullmatch(r"[a-z]+", suite) for suite in suites):
                return uri.rstrip("/")
    raise LookupError("no Debian release suite in the machine's apt sources")


def _deb822_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        entries += [(uri, suites) for uri in fields.get("uris", "").split()]
    return entries


def _one_line_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for line in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            entries.append((line[1], [line[2]]))
    return entries


def image_exists(name: str, env: dict[str, str]) -> bool:
    result = subprocess.run(
        ["podman", "image", "exists", name], env=env, capture_output=True, timeout=60
    )
    return result.returncode == 0


def ensure_base_image(env: dict[str, str]) -> float:
    """Make ``BASE_IMAGE`` unless podman already has it; seconds spent."""
    if image_exists(BASE_IMAGE, env):
        return 0.0
    started = time.monotonic()
    # Outside the repository; removed once imported (podman keeps the image).
    with tempfile.TemporaryDirectory(prefix="adamax-ps-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                SUITE,
                str(rootfs),
                debian_mirror(),
            ],
            env=env,
            timeout=900,
        )
        # Package downloads and lists are not needed inside an image.
        for leftover in ("var/cache/apt", "var/lib/apt/lists"):
            for item in (rootfs / leftover).rglob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        try:
            run(
                ["podman", "import", "-", BASE_IMAGE],
                env=env,
                timeout=600,
                stdin=tar.stdout,
            )
        finally:
            tar.stdout.close()
            assert tar.wait(60) == 0, "tar of the debootstrap root failed"
    return time.monotonic() - started


def make_wheelhouse() -> None:
    """``WHEELHOUSE`` holds exactly this tree's wheels and its dependencies'.

    Unchanged wheels keep their files (and times), and the project's wheel is
    made with fixed timestamps, so the build's layer cache holds while
    nothing changed.
    """
    WHEELHOUSE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WHEELHOUSE.parent) as tmp:
        run(
            [sys.executable, "-m", "pip", "wheel", "-q", "-w", tmp, str(ROOT)],
            env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
            timeout=900,
        )
        WHEELHOUSE.mkdir(exist_ok=True)
        fresh = {path.name: path for path in Path(tmp).iterdir()}
        for old in WHEELHOUSE.iterdir():
            if old.name not in fresh:
                old.unlink()
        for name, path in fresh.items():
            kept = WHEELHOUSE / name
            if not (kept.is_file() and kept.read_bytes() == path.read_bytes()):
                path.replace(kept)


def build_image(env: dict[str, str], tag: str = IMAGE) -> dict[str, float]:
    """The wheelhouse on the host, then the real Dockerfile; seconds per part.

    The install stage is tagged too (``<tag>-install``), so that replacing
    either tag leaves an image this function can remove: podman's storage
    keeps one build of each, not one per change of the sources.
    """
    times = {"base": ensure_base_image(env)}
    started = time.monotonic()
    make_wheelhouse()
    times["wheelhouse"] = time.monotonic() - started
    started = time.monotonic()
    stages = {"install": f"{tag}-install", None: tag}
    before = {name: image_id(name, env) for name in stages.values()}
    for target, name in stages.items():
        run(
            [
                "podman",
                "build",
                "--isolation=chroot",
                # The OCI format would drop HEALTHCHECK.
                "--format=docker",
                "--build-arg",
                f"BASE={BASE_IMAGE}",
                *(["--target", target] if target else []),
                "-t",
                name,
                str(ROOT),
            ],
            env=env,
            timeout=1200,
        )
    for name, old in before.items():
        if old and old != image_id(name, env):
            # Fails harmlessly while a container still uses it.
            subprocess.run(
                ["podman", "rmi", old], env=env, capture_output=True, timeout=120
            )
    times["build"] = time.monotonic() - started
    return times


def image_id(name: str, env: dict[str, str]) -> str | None:
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def free_port() -> int:
    """A port free on 127.0.0.1 now (podman binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(
    urls: Iterable[str],
    timeout: float = 120,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll each ``/readyz`` until it answers 200, bounded in time; stop early
    (``RuntimeError``) once ``alive`` says the servers have exited."""
    pending = list(urls)
    deadline = time.monotonic() + timeout
    while pending:
        if alive is not None and not alive():
            raise RuntimeError(f"exited before {pending[0]} was ready")
        url = pending[0]
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    pending.pop(0)
                    continue
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout} s")
        time.sleep(0.2)  # the poll interval of a bounded wait, not a synchronisation


def inspect(name: str, env: dict[str, str], kind: str = "container") -> dict:
    (info,) = json.loads(run(["podman", kind, "inspect", name], env=env).stdout)
    return info


def running(names: Iterable[str], env: dict[str, str]) -> Callable[[], bool]:
    """True while every named container runs."""
    names = list(names)
    return lambda: all(inspect(name, env)["State"]["Running"] for name in names)


def logs(name: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        ["podman", "logs", name], env=env, capture_output=True, text=True, timeout=60
    )
    return result.stdout + result.stderr
