"""A PyTorch recommender whose embedding rows live on the servers.

An ordinary PyTorch training loop; the two lines marked ``adamax-ps`` are the
change from training locally (the import of ``torch.nn.Embedding`` and
``torch.optim.Adamax``, and the table's name). Run it against a cluster, one
process or several under torchrun::

    adamax-ps cluster --servers 2 &          # prints ADAMAX_PS_ADDRESS=...
    export ADAMAX_PS_ADDRESS=grpc://127.0.0.1:50051,grpc://127.0.0.1:50052
    torchrun --nproc-per-node 2 -m adamax_ps.examples.torch_recommender --steps 200

Each worker (``RANK`` of ``WORLD_SIZE``) trains on its own shard of the data,
asynchronously, one shared model: no process group is needed, the servers
are where the workers meet. It prints the held-out loss before and after.
"""

from __future__ import annotations

import numpy as np
import torch

from adamax_ps.client.discovery import worker_rank
from adamax_ps.examples.recsys_data import (
    VOCABULARY,
    make_data,
    shard,
    training_arguments,
)
from adamax_ps.torch import Adamax, Embedding  # adamax-ps


class Recommender(torch.nn.Module):
    def __init__(self, embedding: torch.nn.Module) -> None:
        super().__init__()
        self.items = embedding
        self.score = torch.nn.Linear(16, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.items(ids).mean(dim=1))


def main(argv: list[str] | None = None) -> float:
    args = training_arguments(__doc__.splitlines()[0]).parse_args(argv)

    torch.manual_seed(0)
    me = worker_rank()
    x, y = shard(
        make_data(args.steps * args.batch * me.world_size, seed=1),
        me.rank,
        me.world_size,
    )
    x_test, y_test = (torch.from_numpy(a) for a in make_data(4096, seed=2))
    table = Embedding(VOCABULARY, 16, name="torch_items")  # adamax-ps
    model = Recommender(table)
    optimizer = Adamax(model.named_parameters(), lr=args.learning_rate)
    loss_fn = torch.nn.MSELoss()

    def held_out() -> float:
        with torch.no_grad():
            return float(loss_fn(model(x_test), y_test))

    before = held_out()
    for start in range(0, len(x), args.batch):
        ids = torch.from_numpy(x[start : start + args.batch])
        target = torch.from_numpy(y[start : start + args.batch])
        optimizer.zero_grad()
        loss = loss_fn(model(ids), target)
        loss.backward()
        optimizer.step()
    after = held_out()
    zero = float(np.mean(y_test.numpy() ** 2))
    print(
        f"worker {me.rank}/{me.world_size}: held-out loss {before:.4f} -> {after:.4f} "
        f"(predicting zero: {zero:.4f}); optimizer iterations "
        f"{int(optimizer.remote.iterations.numpy())}",
        flush=True,
    )
    return after


if __name__ == "__main__":
    main()
