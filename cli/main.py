"""The ``adamax-ps`` command line: serve, cluster, demo, inspect, checkpoint,
health.

Every option can also be set by an environment variable, ``ADAMAX_PS_`` plus
the option's name in capitals (``--steps`` is ``ADAMAX_PS_STEPS``); a flag
wins over the environment.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adamax_ps.cli import rescale
from adamax_ps.common import environment

# A probe (``health``) imports nothing of the server: it runs every few
# seconds in a container.
ENV = environment.PREFIX


def _env(name: str, default: Any = None, kind: type = str) -> Any:
    value = environment.lookup(name)
    if value is None:
        return default
    if kind is bool:
        return environment.truthy(value)
    try:
        return kind(value)
    except ValueError:
        raise SystemExit(
            f"adamax-ps: {environment.variable(name)}={value!r} is not a "
            f"{kind.__name__}"
        ) from None


def _option(
    parser: argparse.ArgumentParser, name: str, kind: type, default: Any, help_text: str
) -> None:
    env = environment.variable(name)
    if kind is bool:
        parser.add_argument(
            f"--{name}",
            action="store_true",
            default=_env(name, default, bool),
            help=f"{help_text} [env {env}]",
        )
    else:
        parser.add_argument(
            f"--{name}",
            type=kind,
            default=_env(name, default, kind),
            help=f"{help_text} [env {env}, default {default}]",
        )


def build_parser(only_health: bool = False) -> argparse.ArgumentParser:
    """The whole command line; ``only_health``: just the probe (fast to load)."""
    parser = argparse.ArgumentParser(
        prog="adamax-ps", description="A parameter server for the Adamax optimizer."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    if only_health:
        _add_health(commands)
        return parser
    from adamax_ps.server import config

    serve = commands.add_parser(
        "serve",
        help="run one server process (gRPC and HTTP)",
        description="Run one parameter server process.",
    )
    config.add_arguments(serve)

    cluster = commands.add_parser(
        "cluster",
        help="run N local server processes as one cluster",
        description="Run N local servers of one cluster, their output prefixed "
        "with their names; Ctrl-C (or SIGTERM) stops them all after each writes "
        "a final checkpoint. Options after -- go to every `adamax-ps serve`.",
    )
    _option(cluster, "servers", int, 2, "number of servers")
    _option(cluster, "host", str, "127.0.0.1", "address the servers listen on")
    _option(
        cluster,
        "grpc-port",
        int,
        50051,
        "gRPC port of server 0 (server i: +i; 0 picks free ports)",
    )
    _option(
        cluster,
        "http-port",
        int,
        8080,
        "HTTP port of server 0 (server i: +i; 0 picks free ports)",
    )
    _option(
        cluster,
        "checkpoint-dir",
        Path,
        Path("adamax-ps-checkpoints"),
        "folder for the servers' checkpoints (server i in server-i/)",
    )
    cluster.add_argument(
        "serve_options",
        nargs=argparse.REMAINDER,
        help="-- then options for every server",
    )

    demo = commands.add_parser(
        "demo",
        help="train the embedded demo model on a local cluster",
        description="Start a local cluster and train a small recommendation model "
        "(an embedding table with sparse pushes and a dense layer) with worker "
        "processes, printing progress, the dashboard URL and the held-out error. "
        "With --address, run only the workers against running servers.",
    )
    _option(demo, "servers", int, 2, "servers to start")
    _option(demo, "workers", int, 4, "worker processes")
    _option(demo, "steps", int, 400, "training steps per worker")
    _option(demo, "batch-size", int, 128, "examples per step")
    _option(
        demo,
        "sync",
        bool,
        False,
        "synchronous training (servers wait for every worker each step)",
    )
    _option(
        demo,
        "checkpoint-dir",
        Path,
        None,
        "servers' folder (default: a new temporary folder)",
    )
    _option(
        demo,
        "address",
        str,
        None,
        "train against these running servers instead (grpc://a:50051,grpc://b:50051)",
    )
    _option(demo, "token", str, None, "bearer token for the servers")

    for name, help_text in (
        ("inspect", "show what servers hold"),
        ("checkpoint", "ask servers to write a checkpoint now"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text + ".")
        command.add_argument(
            "url",
            nargs="?",
            default=_env("url"),
            help=f"http://host:port of each server, comma-separated [env {ENV}URL]",
        )
        _option(command, "token", str, None, "bearer token")
        if name == "inspect":
            _option(command, "json", bool, False, "print JSON for scripts")
    _add_export(commands)
    rescale.add_parser(commands, _option)
    _add_health(commands)
    return parser


def _add_export(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write a hash-keyed table's keys and values for serving (.npz)",
        description="Write a table's keys and values (no optimizer slots) from "
        "every server to one .npz file; with --since, only the rows updated "
        "after that step and the keys evicted after it (see cli/export.py for "
        "the format).",
    )
    export.add_argument("table", help="the table's name")
    _option(
        export,
        "address",
        str,
        None,
        "the cluster's servers (grpc://a:50051,grpc://b:50051); default "
        "ADAMAX_PS_ADDRESS",
    )
    _option(export, "out", Path, None, "the file to write (default: TABLE.npz)")
    _option(
        export,
        "since",
        str,
        None,
        "a delta: the rows changed after an earlier export's through (a,b,...)",
    )
    _option(export, "token", str, None, "bearer token for the servers")


def _add_health(commands) -> None:
    health = commands.add_parser(
        "health",
        help="probe a server: exit 0 when it is up (or ready)",
        description="Ask a server's /healthz (or /readyz with --ready) and exit 0 "
        "if it answers 200, 1 otherwise: a container HEALTHCHECK or exec probe. "
        "Without a URL it probes this machine's server as `adamax-ps serve` would "
        f"listen from the same environment ({ENV}HTTP_PORT, https when "
        f"{ENV}TLS_CERT is set).",
    )
    health.add_argument(
        "url",
        nargs="?",
        default=_env("url"),
        help=f"http(s)://host:port of the server [env {ENV}URL]",
    )
    _option(health, "ready", bool, False, "ask /readyz: restored and warm")
    _option(
        health,
        "tls-ca",
        Path,
        None,
        "CA certificate (PEM) to verify an https server with (default: the "
        "system's; not verified on a loopback address)",
    )
    _option(health, "timeout", float, 4.0, "seconds to wait for the answer")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(only_health=argv[:1] == ["health"]).parse_args(argv)
    if args.command == "serve":
        from adamax_ps.server import config
        from adamax_ps.server.serve import run  # imports grpc, uvicorn: only here

        return run(config.from_arguments(args))
    if args.command == "cluster":
        return run_cluster(args)
    if args.command == "demo":
        from adamax_ps.examples import demo

        if args.workers < 1 or args.steps < 1 or args.servers < 1:
            raise SystemExit(
                "adamax-ps demo: --servers, --workers and --steps must be at least 1"
            )
        return demo.run(
            args.servers,
            args.workers,
            args.steps,
            args.batch_size,
            args.sync,
            args.checkpoint_dir,
            args.address,
            args.token,
        )
    if args.command == "export":
        from adamax_ps.cli.export import export

        out = args.out or Path(f"{args.table.replace('/', '_')}.npz")
        return export(args.address, args.table, out, args.since, args.token)
    if args.command == "rescale":
        return rescale.run(args)
    if args.command == "health":
        return health(args.url or _local_url(), args.ready, args.tls_ca, args.timeout)
    urls = _urls(args.url)
    if args.command == "inspect":
        from adamax_ps.cli.inspect import inspect

        return inspect(urls, args.token, args.json)
    return checkpoint(urls, args.token)


def _urls(text: str | None) -> list[str]:
    urls = [u.strip().rstrip("/") for u in (text or "").split(",") if u.strip()]
    if not urls:
        raise SystemExit(
            f"adamax-ps: give the servers' HTTP address (http://host:port) "
            f"or set {ENV}URL"
        )
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise SystemExit(
                f"adamax-ps: {url!r} is not an http:// or https:// address"
            )
    return urls


def checkpoint(urls: list[str], token: str | None) -> int:
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    failed = 0
    for url in urls:
        try:
            response = httpx.post(
                url + "/api/v1/checkpoint", headers=headers, timeout=600
            )
        except httpx.HTTPError as e:
            print(f"{url}: cannot reach the server: {e}", file=sys.stderr)
            failed += 1
            continue
        if response.status_code != 200:
            print(
                f"{url}: {response.json().get('message', response.text)}",
                file=sys.stderr,
            )
            failed += 1
            continue
        answer = response.json()
        print(
            f"{url}: checkpoint {answer['sequence']} at {answer['path']} "
            f"({answer['bytes'] / 1e6:.1f} MB in {answer['seconds']:.2f} s)"
        )
    return 1 if failed else 0


def run_cluster(args: argparse.Namespace) -> int:
    """N servers as one cluster, until Ctrl-C or SIGTERM."""
    from adamax_ps.server.launcher import LocalServer, addresses

    if args.servers < 1:
        raise SystemExit("adamax-ps cluster: --servers must be at least 1")
    extra = [a for a in args.serve_options if a != "--"]
    lock = threading.Lock()

    def relay(name: str):
        def write(line: str) -> None:
            with lock:
                print(
                    f"[{name}] {line}",
                    end="" if line.endswith("\n") else "\n",
                    flush=True,
                )

        return write

    servers = []
    try:
        for index in range(args.servers):
            grpc = args.grpc_port + index if args.grpc_port else 0
            http = args.http_port + index if args.http_port else 0
            server_args = [
                "--grpc-port",
                str(grpc),
                "--http-port",
                str(http),
                "--server-index",
                str(index),
                "--num-servers",
                str(args.servers),
                "--checkpoint-dir",
                str(args.checkpoint_dir / f"server-{index}"),
                *extra,
            ]
            servers.append(
                LocalServer(
                    server_args, host=args.host, on_line=relay(f"ps-{index}")
                ).start()
            )
    except BaseException:
        for server in servers:
            server.kill()
        raise
    print(f"cluster ready: ADAMAX_PS_ADDRESS={addresses(servers)}", flush=True)
    for index, server in enumerate(servers):
        print(f"ps-{index} dashboard: {server.http_address}/", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and all(s.process.poll() is None for s in servers):
        stop.wait(1.0)
    codes = [server.stop() for server in servers]
    print(f"cluster stopped (exit codes {codes})", flush=True)
    return 0 if all(code == 0 for code in codes) else 1


def _local_url() -> str:
    """The address ``adamax-ps serve`` would listen on, from the environment."""
    port = _env("http-port", 8080, int)
    scheme = "https" if _env("tls-cert") else "http"
    return f"{scheme}://127.0.0.1:{port}"


def health(url: str, ready: bool, tls_ca: Path | None, timeout: float) -> int:
    """Exit status 0 when ``url``'s /healthz (``ready``: /readyz) answers 200.

    On a loopback address without ``tls_ca`` the certificate is not verified:
    the probe sends no secret, and a server's own certificate rarely names
    127.0.0.1.
    """
    import ipaddress
    import ssl
    from urllib.parse import urlsplit

    import httpx

    urls = _urls(url)
    if len(urls) != 1:
        raise SystemExit("adamax-ps health: give one server's address")
    (url,) = urls
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    verify: bool | ssl.SSLContext = True
    if tls_ca is not None:
        verify = ssl.create_default_context(cafile=str(tls_ca))
    elif loopback:
        verify = False
    path = "/readyz" if ready else "/healthz"
    try:
        response = httpx.get(url + path, timeout=timeout, verify=verify)
    except (httpx.HTTPError, OSError) as e:
        print(f"{url}{path}: cannot reach the server: {e}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"{url}{path}: {response.status_code} {response.text}", file=sys.stderr)
        return 1
    print(f"{url}{path}: {response.json().get('status', 'ok')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
