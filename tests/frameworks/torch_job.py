"""A PyTorch training loop, run as its own process by test_torch.py.

``python torch_job.py ADDRESS NAME OUT.npz [split]`` trains one small
recommender (an embedding bag averaged, then a linear layer) for 30 steps
twice from the same initial values on the same batches: as a plain PyTorch
loop whose gradients (the embedding's sparse) are applied by tf_keras's legacy
Adamax, the reference; and as the same loop with only the embedding class and
the optimizer swapped for ``adamax_ps.torch``'s (table and linear layer on the
servers at ADDRESS, under names starting with NAME). Saves both sides'
losses, weights, slots and iterations to OUT.npz, then checks that the
optimizer's ``state_dict`` round trip restores the servers' slots.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf
import tf_keras
import torch

from adamax_ps.client import Adamax as ClientAdamax
from adamax_ps.client import connect, placement
from adamax_ps.torch import Adamax, Embedding

VOCABULARY, DIM, IDS, BATCH, STEPS = 1000, 8, 4, 32, 30
LEARNING_RATE = 0.01


class Model(torch.nn.Module):
    def __init__(self, embedding: torch.nn.Module) -> None:
        super().__init__()
        self.emb = embedding
        self.fc = torch.nn.Linear(DIM, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(dim=1))


def batches():
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        ids = (rng.zipf(1.3, (BATCH, IDS)) % VOCABULARY).astype(np.int64)
        y = rng.standard_normal((BATCH, 1)).astype(np.float32)
        yield torch.from_numpy(ids), torch.from_numpy(y)


def reference():
    torch.manual_seed(0)
    model = Model(torch.nn.Embedding(VOCABULARY, DIM, sparse=True))
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [model.emb.weight, model.fc.weight, model.fc.bias]
    variables = [tf.Variable(p.detach().numpy()) for p in params]
    optimizer = tf_keras.optimizers.legacy.Adamax(learning_rate=LEARNING_RATE)
    losses = []
    for ids, y in batches():
        for p in params:
            p.grad = None
        loss = torch.nn.functional.mse_loss(model(ids), y)
        loss.backward()
        sparse = params[0].grad  # uncoalesced: one row per id, in input order
        grads = [
            tf.IndexedSlices(sparse._values().numpy(), sparse._indices()[0].numpy()),
            params[1].grad.numpy(),
            params[2].grad.numpy(),
        ]
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        with torch.no_grad():
            for p, v in zip(params, variables, strict=True):
                p.copy_(torch.from_numpy(v.numpy()))
        losses.append(loss.item())
    slots = [optimizer.get_slot(v, s).numpy() for v in variables for s in ("m", "v")]
    weights = [v.numpy() for v in variables]
    return initial, losses, weights, slots, int(optimizer.iterations.numpy())


def on_servers(address, name, initial):
    cluster = connect(address)
    cluster.variable(f"{name}_emb", initial_value=initial["emb.weight"].numpy())
    model = Model(Embedding(VOCABULARY, DIM, name=f"{name}_emb", cluster=cluster))
    model.fc.load_state_dict(
        {"weight": initial["fc.weight"], "bias": initial["fc.bias"]}
    )
    optimizer = Adamax(
        [(f"{name}_{k}", v) for k, v in model.named_parameters()],
        lr=LEARNING_RATE,
        name=f"{name}_opt",
        cluster=cluster,
    )
    losses = []
    for ids, y in batches():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(ids), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # The last step's push is held back until something reads what it
    # changes: the table's weight sends it.
    weights = [
        model.emb.weight.numpy(),
        model.fc.weight.detach().numpy(),
        model.fc.bias.detach().numpy(),
    ]
    remote = ClientAdamax(
        name=f"{name}_opt", learning_rate=LEARNING_RATE, cluster=cluster
    )
    names = [f"{name}_emb", f"{name}_fc.weight", f"{name}_fc.bias"]
    variables = [cluster.variable(n, shape=cluster.placement(n).shape) for n in names]
    slots = [remote.get_slot(v, s).numpy() for v in variables for s in ("m", "v")]
    return model, optimizer, remote, variables, losses, weights, slots


def main() -> None:
    address, name, out = sys.argv[1:4]
    if sys.argv[4:] == ["split"]:
        placement.SPLIT_BYTES = 1
    initial, ref_losses, ref_weights, ref_slots, ref_iterations = reference()
    model, optimizer, remote, variables, losses, weights, slots = on_servers(
        address, name, initial
    )
    results = {
        "ref_losses": ref_losses,
        "losses": losses,
        "ref_weights": np.array(ref_weights, dtype=object),
        "weights": np.array(weights, dtype=object),
        "ref_slots": np.array(ref_slots, dtype=object),
        "slots": np.array(slots, dtype=object),
        "iterations": [ref_iterations, int(remote.iterations.numpy())],
        # The module's state_dict holds the server table as "weight".
        "state_dict_table": model.state_dict()["emb.weight"].numpy(),
    }
    # The optimizer's state_dict round trip restores the servers' state.
    saved = optimizer.state_dict()
    for variable in variables:
        for slot in ("m", "v"):
            remote.get_slot(variable, slot).assign(np.zeros(variable.shape, np.float32))
    remote.iterations.assign(0)
    optimizer.load_state_dict(saved)
    results["reloaded_slots"] = np.array(
        [remote.get_slot(v, s).numpy() for v in variables for s in ("m", "v")],
        dtype=object,
    )
    results["reloaded_iterations"] = int(remote.iterations.numpy())
    np.savez(out, **results, allow_pickle=True)


if __name__ == "__main__":
    main()
