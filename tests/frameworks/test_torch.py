"""adamax_ps.torch in PyTorch training loops, on real servers: bit-identical
to the same loop with tf_keras's Adamax; the module and optimizer as PyTorch
users meet them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.servers import addresses
from test_push_reads import requests

from adamax_ps.client import connect
from adamax_ps.torch import Adamax, Embedding

JOB = Path(__file__).with_name("torch_job.py")


@pytest.fixture(scope="module")
def cluster(servers):
    with connect(addresses(servers)) as connected:
        yield connected


@pytest.mark.slow
def test_training_loop_is_bit_identical_to_tf_keras_adamax(servers, tmp_path):
    """30 steps, every variable split by rows over two servers: per-step
    losses, table, linear layer, all m and v slots and iterations equal a
    PyTorch loop whose gradients tf_keras's legacy Adamax applies; the
    optimizer's state_dict round trip restores the servers' slots."""
    out = tmp_path / "results.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, str(JOB), addresses(servers), "exact", str(out), "split"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    r = dict(np.load(out, allow_pickle=True))
    assert len(r["losses"]) == 30
    np.testing.assert_array_equal(r["losses"], r["ref_losses"])
    for ours, ref in zip(r["weights"], r["ref_weights"], strict=True):
        np.testing.assert_array_equal(ours, ref)
    for ours, ref in zip(r["slots"], r["ref_slots"], strict=True):
        np.testing.assert_array_equal(ours, ref)
    assert list(r["iterations"]) == [30, 30]
    np.testing.assert_array_equal(r["state_dict_table"], r["weights"][0])
    for ours, saved in zip(r["reloaded_slots"], r["slots"], strict=True):
        np.testing.assert_array_equal(ours, saved)
    assert r["reloaded_iterations"] == 30


def test_modules_attach_name_themselves_and_refuse_other_shapes(cluster):
    pretrained = np.arange(24, dtype=np.float32).reshape(6, 4)
    cluster.variable("torch_pretrained", initial_value=pretrained)
    module = Embedding(6, 4, name="torch_pretrained", cluster=cluster)
    ids = torch.tensor([[5, 5], [0, 2]])
    np.testing.assert_array_equal(module(ids).detach().numpy(), pretrained[ids.numpy()])
    assert isinstance(module, torch.nn.Module)
    np.testing.assert_array_equal(module.state_dict()["weight"].numpy(), pretrained)
    module.load_state_dict({"weight": torch.ones(6, 4), "handle": torch.zeros(())})
    np.testing.assert_array_equal(cluster.read("torch_pretrained"), np.ones((6, 4)))
    with pytest.raises(ValueError, match="has shape"):
        module.load_state_dict({"weight": torch.ones(4, 6), "handle": torch.zeros(())})
    with pytest.raises(ValueError, match="torch_pretrained"):
        Embedding(6, 8, name="torch_pretrained", cluster=cluster)
    with pytest.raises(TypeError, match="must be int32 or int64"):
        module(torch.tensor([[0.0]]))
    with pytest.raises(Exception, match=r"6 is not in \[0, 6\)"):
        module(torch.tensor([[6]]))


def test_unnamed_modules_are_named_in_order(cluster, monkeypatch):
    monkeypatch.setattr("adamax_ps.torch.modules._names", {})
    first, second = Embedding(3, 2, cluster=cluster), Embedding(3, 2, cluster=cluster)
    assert (first.name, second.name) == ("embedding", "embedding_1")


def test_gradients_accumulate_until_zero_grad(cluster):
    """Two backward passes then a step are one step of the summed gradient,
    as torch's .grad accumulation; zero_grad forgets pending rows."""
    start = np.zeros((5, 2), np.float32)
    cluster.variable("acc_a", initial_value=start)
    cluster.variable("acc_b", initial_value=start)
    a = Embedding(5, 2, name="acc_a", cluster=cluster)
    b = Embedding(5, 2, name="acc_b", cluster=cluster)
    opt_a = Adamax(a.parameters(), lr=0.1, name="acc_opt_a", cluster=cluster)
    opt_b = Adamax(b.parameters(), lr=0.1, name="acc_opt_b", cluster=cluster)
    ids = torch.tensor([1, 3, 1])
    opt_a.zero_grad()
    a(ids).sum().backward()
    a(ids).sum().backward()
    opt_a.step()
    opt_b.zero_grad()
    b(ids[:1]).sum().backward()  # forgotten by zero_grad
    opt_b.zero_grad()
    (2 * b(ids)).sum().backward()
    opt_b.step()
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    changed = np.flatnonzero(a.weight.numpy().any(axis=1))
    assert list(changed) == [1, 3]


def test_dense_parameters_take_the_servers_values(cluster):
    """The first worker's initial values win; every later one takes them."""
    first = torch.nn.Linear(3, 2)
    Adamax([("shared.weight", first.weight)], name="shared_opt", cluster=cluster)
    second = torch.nn.Linear(3, 2)
    assert not torch.equal(first.weight, second.weight)
    Adamax([("shared.weight", second.weight)], name="shared_opt", cluster=cluster)
    assert torch.equal(first.weight, second.weight)


def test_learning_rates_are_one_per_optimizer(cluster):
    linear = torch.nn.Linear(2, 1)
    groups = [{"params": [linear.weight]}, {"params": [linear.bias], "lr": 0.5}]
    with pytest.raises(ValueError, match=r"sets lr=0\.5"):
        Adamax(groups, lr=0.01, name="groups_opt", cluster=cluster)
    optimizer = Adamax(linear.parameters(), lr=0.01, name="sched_opt", cluster=cluster)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    linear(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler.step()  # halves the lr
    linear(torch.ones(1, 2)).sum().backward()
    with pytest.raises(ValueError, match=r"lr changed to 0\.005"):
        optimizer.step()
    with pytest.raises(ValueError, match="weight_decay"):
        Adamax(linear.parameters(), weight_decay=0.1, cluster=cluster)
    assert isinstance(optimizer, torch.optim.Optimizer)


class DenseFirst(torch.nn.Module):
    """A model whose linear layer runs before its embedding in the forward
    (or after it, ``gate_first=False``)."""

    def __init__(self, embedding: Embedding, gate_first: bool = True) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(2, 2)
        self.emb = embedding
        self.gate_first = gate_first

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.gate_first:
            gate = self.gate(torch.ones(ids.shape[0], 2))
            return (self.emb(ids).mean(dim=1) * gate).sum(dim=1)
        rows = self.emb(ids).mean(dim=1)
        return (rows * self.gate(torch.ones(ids.shape[0], 2))).sum(dim=1)


def train_dense_first(
    cluster, name: str, steps: int, gate_first: bool = True, **options
) -> tuple:
    torch.manual_seed(0)
    cluster.variable(name, initial_value=np.full((20, 2), 0.5, np.float32))
    model = DenseFirst(Embedding(20, 2, name=name, cluster=cluster), gate_first)
    params = [(f"{name}/{k}", v) for k, v in model.named_parameters()]
    optimizer = Adamax(params, lr=0.1, name=f"{name}_opt", cluster=cluster, **options)
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(steps):
        ids = torch.from_numpy(rng.integers(0, 20, (4, 3)))
        optimizer.zero_grad()
        loss = (model(ids) - 1.0).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if options.get("prefetch") is None and name.endswith("at_once"):
            optimizer.flush()  # the reference: every push sent at once
    return losses, model, optimizer


def test_a_held_push_reaches_a_layer_that_runs_before_the_embedding(cluster):
    """The push is held back until the next forward; a module using the
    optimizer's dense parameters before the embedding's lookup sends it
    first, so every forward sees what a push sent at once gives."""
    held, model, optimizer = train_dense_first(cluster, "first_held", 6)
    ref, ref_model, _ = train_dense_first(cluster, "first_at_once", 6)
    assert held == ref
    state, ref_state = model.state_dict(), ref_model.state_dict()  # sends the last
    for key in state:
        np.testing.assert_array_equal(state[key].numpy(), ref_state[key].numpy())
    assert int(optimizer.remote.iterations.numpy()) == 6


def test_prefetch_sends_the_push_while_the_next_batch_computes(cluster, servers):
    """prefetch=1: the push goes in the background and each forward reads its
    rows beside it (a gather a step, where the exact loop has only its
    first); the step after waits for it. Training still converges on the
    same data, every step counted."""

    def reads() -> float:
        return sum(requests(s).get("ReadInline", 0) for s in servers)

    before = reads()
    exact, _, _ = train_dense_first(cluster, "pre_exact", 30, gate_first=False)
    middle = reads()
    ahead, model, optimizer = train_dense_first(
        cluster, "pre_ahead", 30, gate_first=False, prefetch=1
    )
    assert (reads() - middle) - (middle - before) == 29
    state = optimizer.state_dict()  # waits for the push in flight
    assert state["adamax_ps"]["iterations"] == 30
    assert ahead[:1] == exact[:1]  # nothing stale before the first push
    assert ahead[-1] < ahead[0] / 2 and abs(ahead[-1] - exact[-1]) < 0.1
    with pytest.raises(ValueError, match="prefetch is 0"):
        Adamax(model.parameters(), prefetch=2, cluster=cluster)


def test_the_last_held_push_is_sent_when_the_worker_exits(servers, tmp_path):
    """A script that ends right after optimizer.step() (nothing read since)
    still applies its last step: at exit, and when its cluster closes."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, torch
            from adamax_ps.client import connect
            from adamax_ps.torch import Adamax, Embedding

            address, close = sys.argv[1], sys.argv[2] == "close"
            cluster = connect(address)
            name = "exit_" + sys.argv[2]
            emb = Embedding(10, 2, name=name, cluster=cluster)
            optimizer = Adamax(emb.parameters(), name=name + "_opt", cluster=cluster)
            for step in range(3):
                optimizer.zero_grad()
                emb(torch.tensor([step])).sum().backward()
                optimizer.step()
            if close:
                cluster.close()
            """
        )
    )
    for how in ("exit", "close"):
        done = subprocess.run(
            [sys.executable, str(script), addresses(servers), how],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "not applied" not in done.stderr
        with connect(addresses(servers)) as cluster:
            assert cluster.optimizer(f"exit_{how}_opt").iterations == 3
