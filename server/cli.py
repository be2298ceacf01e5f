"""The ``adamax-ps`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from adamax_ps.server import adamax, config
from adamax_ps.server.demo import DemoProblem, batches, gradients, predict
from adamax_ps.server.hyperparams import AdamaxConfig


def run_demo(steps: int, batch_size: int, learning_rate: float) -> int:
    """Train the demo model in this process with the Adamax kernels.

    Prints the loss as it falls and the held-out error against the baseline.
    """
    problem = DemoProblem.generate()
    rng = np.random.default_rng(1)
    config = AdamaxConfig.from_keras(learning_rate=learning_rate)
    embedding = np.zeros((problem.users, problem.embedding_dim), np.float32)
    kernel = np.zeros(problem.dense_dim, np.float32)
    slots = [np.zeros_like(embedding), np.zeros_like(embedding)]
    kernel_slots = [np.zeros_like(kernel), np.zeros_like(kernel)]
    stream = batches(problem.train, batch_size, rng)
    for iterations in range(steps):
        batch = next(stream)
        loss, row_grads, kernel_grad = gradients(embedding[batch.ids], kernel, batch)
        step = config.step_scalars(iterations, np.float32)
        adamax.sparse_update(embedding, *slots, batch.ids, row_grads, step)
        adamax.dense_update(kernel, *kernel_slots, kernel_grad, step)
        if iterations % max(1, steps // 10) == 0 or iterations == steps - 1:
            print(f"step {iterations + 1:5d}/{steps}  loss {loss:8.4f}", flush=True)
    test = problem.test
    mse = float(
        np.mean(
            (predict(embedding[test.ids], kernel, test.features) - test.targets) ** 2
        )
    )
    baseline = float(np.mean((test.targets - problem.train.targets.mean()) ** 2))
    print(f"held-out MSE {mse:.4f}  (predicting the mean: {baseline:.4f})")
    return 0 if mse < baseline else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adamax-ps", description="A parameter server for the Adamax optimizer."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run one server process (gRPC and HTTP)",
        description="Run one parameter server process. Every option can also be "
        "set by its ADAMAX_PS_* environment variable.",
    )
    config.add_arguments(serve)
    demo = commands.add_parser("demo", help="train the embedded demo model")
    demo.add_argument("--steps", type=int, default=3000, help="training steps")
    demo.add_argument("--batch-size", type=int, default=256)
    demo.add_argument("--learning-rate", type=float, default=0.01)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from adamax_ps.server.serve import run  # imports grpc, uvicorn: only here

        return run(config.from_arguments(args))
    if args.command == "demo":
        return run_demo(args.steps, args.batch_size, args.learning_rate)
    return 2


if __name__ == "__main__":
    sys.exit(main())
