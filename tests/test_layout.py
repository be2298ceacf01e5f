"""The code's shape: imports flow one way, the client stays light.

The import graph is read from the source (every ``import`` of an
``adamax_ps`` module, at module level or inside a function, except under
``if TYPE_CHECKING:``): it has no cycle; the server imports neither the
client, the examples nor the command line; the client imports nothing of the
server; the shared code (``proto``, ``common``) imports neither side.
Importing the client loads neither numba, FastAPI, uvicorn nor httpx.
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"
]


def modules() -> dict[str, Path]:
    """Every module of the distribution: dotted name -> file."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "_pb2" in path.name:
                continue  # generated code
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The adamax_ps modules ``name`` (at ``path``) imports."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, name, set(found)) for name, path in found.items()}


def test_the_graph_covers_the_code(graph):
    assert "adamax_ps.server.service" in graph
    assert "adamax_ps.server.pushes" in graph["adamax_ps.server.service"]


def test_there_is_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)


@pytest.mark.parametrize(
    ("side", "forbidden"),
    [
        ("server", ("client", "examples", "cli", "keras", "torch")),
        ("client", ("server", "examples", "cli", "keras", "torch")),
        ("proto", ("server", "client", "common", "examples", "cli", "keras", "torch")),
        ("common", ("server", "client", "examples", "cli", "keras", "torch")),
        # The framework layers are workers: the client, never the server.
        ("keras", ("server", "examples", "cli", "torch")),
        ("torch", ("server", "examples", "cli", "keras")),
    ],
)
def test_imports_flow_one_way(graph, side, forbidden):
    def within(module: str, package: str) -> bool:
        name = f"adamax_ps.{package}"
        return module == name or module.startswith(name + ".")

    wrong = {
        (module, target)
        for module, targets in graph.items()
        if within(module, side)
        for target in targets
        if any(within(target, f) for f in forbidden)
    }
    assert not wrong, sorted(wrong)


def test_importing_the_client_loads_nothing_heavy():
    probe = (
        "import json, sys, time\n"
        "started = time.perf_counter()\n"
        "import adamax_ps.client\n"
        "seconds = time.perf_counter() - started\n"
        "heavy = ('numba', 'llvmlite', 'fastapi', 'uvicorn', 'starlette', 'httpx',\n"
        "         'adamax_ps.server')\n"
        "print(json.dumps({'seconds': seconds,\n"
        "                  'loaded': [m for m in heavy if m in sys.modules]}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["loaded"] == [], report
    print(f"import adamax_ps.client: {report['seconds']:.3f} s")


# The files a dense push crosses from Adamax.apply_gradients to the kernel, as
# the README lists them: the client's stack when the request leaves, and the
# server's when the kernel is called.
DENSE_PUSH_PATH = [
    "client/optimizer.py",
    "client/cluster.py",
    "client/calls.py",
    "client/grpc_transport.py",
    "client/retry.py",
    "server/grpc/handlers.py",
    "server/grpc/servicer.py",
    "server/pushes.py",
    "server/store.py",
    "server/adamax.py",
]


def _ours(stack: list[inspect.FrameInfo]) -> list[str]:
    """The project's files on a stack, outermost first (tests excluded)."""
    folders = set(PACKAGES.values())
    found: list[str] = []
    for frame in reversed(stack):
        path = Path(frame.filename).resolve()
        if not path.is_relative_to(ROOT):
            continue
        name = path.relative_to(ROOT).as_posix()
        if name.split("/")[0] in folders and name not in found:
            found.append(name)
    return found


def test_a_dense_push_crosses_ten_files_to_the_kernel(monkeypatch):
    from adamax_ps.client import Adamax, connect
    from adamax_ps.client.grpc_transport import GrpcTransport
    from adamax_ps.server import kernels
    from adamax_ps.server.grpc.server import create_grpc_server
    from adamax_ps.server.service import ParameterService, ServiceSettings

    stacks: dict[str, list[str]] = {}
    kernel = kernels.dense_adamax

    def traced_kernel(*args):
        stacks["server"] = _ours(inspect.stack())
        return kernel(*args)

    monkeypatch.setattr(kernels, "dense_adamax", traced_kernel)
    service = ParameterService(ServiceSettings(shards=1))  # the kernel runs inline
    server = create_grpc_server(service, "127.0.0.1:0")
    try:
        with connect(f"grpc://127.0.0.1:{server.port}") as cluster:
            w = cluster.variable("w", shape=(4,))
            opt = Adamax(cluster=cluster)
            transport: GrpcTransport = cluster.transports[0]
            send = transport.stub.ApplyGradients

            def traced_send(*args, **kwargs):
                stacks["client"] = _ours(inspect.stack())
                return send(*args, **kwargs)

            transport.stub.ApplyGradients = traced_send
            opt.apply_gradients([(np.ones(4, np.float32), w)])
    finally:
        server.stop(0)
        service.close()
    crossed = stacks["client"] + stacks["server"]
    assert crossed == DENSE_PUSH_PATH, crossed


def test_every_module_is_small_and_says_its_job():
    """Each module opens with a docstring (its job) and stays near 400 lines."""
    for name, path in modules().items():
        text = path.read_text()
        assert ast.get_docstring(ast.parse(text)), f"{name} has no docstring"
        lines = text.count("\n")
        assert lines <= 450, f"{name} has {lines} lines"
