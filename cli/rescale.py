"""``adamax-ps rescale``: grow or shrink a running cluster (``client.rescale``).

    adamax-ps rescale --to 3 --address grpc://ps-0:50051,grpc://ps-1:50051,grpc://ps-2:50051

The addresses are the cluster's servers in order, then the spares to take in
(servers started with an index beyond their cluster and a checkpoint
folder). Prints each phase's seconds; exits 1 when the rescale failed (the
old layout then serves again), 2 on bad arguments. Run again after a crash:
it finishes the pending rescale; ``--abort`` undoes it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def add_parser(commands: Any, option: Callable[..., None]) -> None:
    rescale = commands.add_parser(
        "rescale",
        help="grow or shrink a running cluster without losing optimizer state",
        description="Freeze the cluster at a consistent cut, start the new "
        "layout from it (each server takes the rows it now owns, with m, v, "
        "iterations and the exactly-once ledger), and resume: workers wait, "
        "then follow the new layout. No acknowledged push is lost or applied "
        "twice.",
    )
    rescale.add_argument("--to", type=int, help="the new number of servers")
    option(
        rescale,
        "address",
        str,
        None,
        "the cluster's servers in order, then any spares (grpc://a:50051,...); "
        "default ADAMAX_PS_ADDRESS",
    )
    option(rescale, "abort", bool, False, "undo a pending rescale instead")
    option(
        rescale,
        "freeze-timeout",
        float,
        60.0,
        "seconds the changes in flight may take to finish",
    )
    option(rescale, "token", str, None, "bearer token for the servers")
    option(
        rescale,
        "tls-ca",
        str,
        None,
        "CA certificate (PEM) of servers started with --tls-cert (TLS gRPC)",
    )


def run(args: argparse.Namespace) -> int:
    from adamax_ps.client import errors
    from adamax_ps.client.discovery import addresses_from_environment
    from adamax_ps.client.rescale import rescale

    try:
        addresses = args.address or addresses_from_environment()
        if not args.abort and args.to is None:
            raise ValueError("rescale needs --to M (or --abort)")
        report = rescale(
            addresses,
            args.to,
            token=args.token,
            tls=args.tls_ca,
            abort=args.abort,
            freeze_timeout=args.freeze_timeout,
            progress=lambda phase: print(f"rescale: {phase}", flush=True),
        )
    except ValueError as e:
        print(f"adamax-ps rescale: {e}", file=sys.stderr)
        return 2
    except errors.ParameterServerError as e:
        print(f"adamax-ps rescale: failed: {e}", file=sys.stderr)
        return 1
    if report.aborted:
        print(f"rescale {report.rescale_id} aborted: {report.old_servers} servers")
        return 0
    phases = " ".join(f"{k}={v:.2f}s" for k, v in report.seconds.items())
    print(
        f"rescale {report.rescale_id}: {report.old_servers} -> {report.new_servers} "
        f"servers ({phases}; paused {report.paused:.2f}s); the cluster is "
        f"{','.join(report.addresses)}"
    )
    return 0
