"""The Keras and PyTorch embedding layers on a hash-keyed table, on real
servers: int64 keys of any value (hashed ids above 2**53, negative ones)
looked up and trained exactly as the same steps done by hand with the client,
one request a server per step, unseen keys reading their initial rows."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from helpers.keras_jobs import run_keras_job
from helpers.servers import addresses

from adamax_ps.client import Adamax as ClientAdamax
from adamax_ps.client import IndexedSlices, connect
from adamax_ps.keras import Adamax as KerasAdamax
from adamax_ps.keras import Embedding as KerasEmbedding
from adamax_ps.torch import Adamax, Embedding

JOB = Path(__file__).with_name("tables_keras_job.py")
sys.path.insert(0, str(JOB.parent))
from tables_keras_job import EDGES, requests  # noqa: E402

IDS, DIM, BATCH, STEPS = 4, 8, 16, 12
INITIALIZER = {
    "class_name": "RandomUniform",
    "config": {"minval": -0.05, "maxval": 0.05, "seed": 5},
}


@pytest.fixture(scope="module")
def cluster(servers):
    with connect(addresses(servers)) as connected:
        yield connected


def batches(steps: int = STEPS) -> tuple[np.ndarray, list]:
    """A pool of hashed keys (and the int64 edges), and batches drawn from it
    with repeats."""
    rng = np.random.default_rng(2)
    hashed = rng.integers(-(2**63), 2**63 - 1, 40, dtype=np.int64, endpoint=True)
    pool = np.concatenate([hashed, np.array(EDGES, np.int64)])
    drawn = [
        (rng.choice(pool, (BATCH, IDS)), rng.standard_normal(BATCH).astype(np.float32))
        for _ in range(steps)
    ]
    return pool, drawn


# Keras (model.fit in its own process: Keras 3 and tf_keras) -------------------------


@pytest.mark.parametrize("keras_kind", ["keras3", "tf_keras"])
def test_keras_fit_on_a_table_is_exact_and_one_request_a_server(
    servers, tmp_path, keras_kind
):
    """12 steps of model.fit on Embedding(table=...): rows, m and v slots of
    every key and the dense layer bit-equal to the same steps done by hand
    with the client; one ApplyGradients a server per step (steps 3 to 12);
    keys above 2**53 and negative ones reach the servers exact; unseen keys
    read their initial rows before and after training."""
    out = tmp_path / "tables.json"
    result = run_keras_job(JOB, servers, out, keras_kind, f"{keras_kind}_")
    assert result["keras"] == (2 if keras_kind == "tf_keras" else 3)
    assert result["equal"] == {"rows": True, "dense": True, "m": True, "v": True}
    assert result["moved"] and result["iterations"] == 12
    assert result["keys"] == result["pushed"]
    assert set(EDGES) <= set(result["keys"])
    assert result["unseen_before"] and result["unseen_after"]
    assert result["spent"] == [{"ApplyGradients": 1.0}] * 2


def test_keras_layer_on_a_table_as_keras_users_meet_it(cluster, tmp_path, monkeypatch):
    """Keys of any int64 value looked up eagerly; config round trip by the
    table's name; get_weights/set_weights, .weights.h5 files and TensorFlow
    checkpoints are the table's keys and rows; a float input and a row bound
    are refused."""
    table = cluster.embedding_table("k_items", DIM, initializer=INITIALIZER)
    layer = KerasEmbedding(table=table)
    keys = np.array([[2**53 + 1, -7], [2**63 - 1, -(2**63)]], np.int64)
    np.testing.assert_array_equal(
        layer(keys).numpy(), table.gather(keys.reshape(-1)).reshape(2, 2, DIM)
    )
    assert layer.compute_output_shape((None, 2)) == (None, 2, DIM)
    config = layer.get_config()
    assert config["table"] == "k_items" and config["input_dim"] is None
    # With no cluster given, the layer attaches on the environment's.
    monkeypatch.setattr("adamax_ps.client.cluster._default", cluster)
    again = KerasEmbedding.from_config({**config, "name": "again"})
    assert again.embeddings.name == "k_items" and again.output_dim == DIM
    assert KerasEmbedding.from_table(table).embeddings is table

    rows = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    layer.set_weights([np.array([2**53 + 1, -7]), rows])
    exported_keys, exported_rows = layer.get_weights()
    order = np.argsort(exported_keys)
    np.testing.assert_array_equal(exported_keys[order], [-7, 2**53 + 1])
    np.testing.assert_array_equal(exported_rows[order], rows[::-1])
    model = keras.Sequential([keras.Input(shape=(2,), dtype="int64"), layer])
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    layer.set_weights([np.array([-7]), np.zeros((1, DIM), np.float32)])
    model.load_weights(path)
    np.testing.assert_array_equal(table.gather([2**53 + 1, -7]), rows)
    checkpoint = tf.train.Checkpoint(table=layer.table_checkpoint)  # tf_keras's format
    saved = checkpoint.save(str(tmp_path / "ckpt"))
    layer.set_weights([np.array([-7]), np.zeros((1, DIM), np.float32)])
    checkpoint.restore(saved)
    np.testing.assert_array_equal(table.gather([2**53 + 1, -7]), rows)

    with pytest.raises(TypeError, match=r'inputs are int64 keys, not float32.*"int64"'):
        layer(np.array([[1.0]], np.float32))
    with pytest.raises(ValueError, match="no input_dim"):
        KerasEmbedding(100, table=table)
    with pytest.raises(ValueError, match="output_dim = 3 is not the dim"):
        KerasEmbedding(output_dim=3, table=table)
    with pytest.raises(TypeError, match="or table="):
        KerasEmbedding()
    cluster.variable("k_rows", shape=(4, DIM))
    with pytest.raises(ValueError, match="row-indexed server variable"):
        KerasEmbedding(table="k_rows", cluster=cluster)
    with pytest.raises(ValueError, match="expects 2 weights"):
        layer.set_weights([rows])


def test_keras_optimizer_pushes_keys_in_a_custom_training_loop(cluster):
    """Outside model.fit (a GradientTape loop) the layer's gradient is the
    keys' summed rows, pushed at once."""
    table = cluster.embedding_table("k_loop", DIM, initializer=INITIALIZER)
    layer = KerasEmbedding(table=table)
    optimizer = KerasAdamax(0.1, name="k_loop_opt", cluster=cluster)
    keys = np.array([[2**62 + 1, -3, -3]], np.int64)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(keys))
    (gradient,) = tape.gradient(loss, [layer.handle])
    optimizer.apply_gradients([(gradient, layer.handle)])
    client = ClientAdamax(0.1, name="k_loop_ref", cluster=cluster)
    reference = cluster.embedding_table("k_loop_ref", DIM, initializer=INITIALIZER)
    ones = np.ones((3, DIM), np.float32)
    client.apply_gradients([(IndexedSlices(ones, keys[0]), reference)])
    wanted = [2**62 + 1, -3, 9]
    np.testing.assert_array_equal(table.gather(wanted), reference.gather(wanted))
    assert sorted(table.export().keys) == [-3, 2**62 + 1]


# PyTorch ------------------------------------------------------------------------


class Tower(torch.nn.Module):
    def __init__(self, embedding: Embedding) -> None:
        super().__init__()
        self.emb = embedding
        self.out = torch.nn.Linear(DIM, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids).mean(dim=1)).squeeze(-1)


def train_module(cluster, prefix: str, drawn: list, after_step) -> tuple:
    torch.manual_seed(0)
    table = cluster.embedding_table(f"{prefix}_items", DIM, initializer=INITIALIZER)
    model = Tower(Embedding.from_table(table))
    params = [(f"{prefix}/{k}", v) for k, v in model.named_parameters()]
    optimizer = Adamax(params, lr=0.05, name=f"{prefix}_opt", cluster=cluster)
    losses = []
    for step, (ids, y) in enumerate(drawn):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(
            model(torch.from_numpy(ids)), torch.tensor(y)
        )
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        after_step(step)
    return table, model, optimizer, losses


def train_by_hand(cluster, prefix: str, drawn: list) -> tuple:
    """The same steps with the client: gather, torch's gradient of the same
    forward at those rows, apply_gradients of IndexedSlices(rows, keys)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(DIM, 1)
    table = cluster.embedding_table(f"{prefix}_items", DIM, initializer=INITIALIZER)
    weight = cluster.variable(
        f"{prefix}/w", initial_value=linear.weight.detach().numpy()
    )
    bias = cluster.variable(f"{prefix}/b", initial_value=linear.bias.detach().numpy())
    optimizer = ClientAdamax(0.05, name=f"{prefix}_opt", cluster=cluster)
    losses = []
    for ids, y in drawn:
        keys = ids.reshape(-1)
        rows = torch.from_numpy(table.gather(keys).reshape(*ids.shape, DIM))
        rows.requires_grad_()
        w = torch.from_numpy(weight.numpy()).requires_grad_()
        b = torch.from_numpy(bias.numpy()).requires_grad_()
        pred = torch.nn.functional.linear(rows.mean(dim=1), w, b).squeeze(-1)
        loss = torch.nn.functional.mse_loss(pred, torch.tensor(y))
        loss.backward()
        optimizer.apply_gradients(
            [
                (IndexedSlices(rows.grad.reshape(-1, DIM).numpy(), keys), table),
                (w.grad.numpy(), weight),
                (b.grad.numpy(), bias),
            ]
        )
        losses.append(loss.item())
    return table, weight.numpy(), bias.numpy(), losses


def test_torch_training_on_a_table_is_exact_and_one_request_a_server(cluster, servers):
    """12 steps with Embedding.from_table: losses, every key's rows and m/v
    slots, and the linear layer bit-equal to the steps done by hand; in the
    steady state one ApplyGradients a server per step and nothing else."""
    pool, drawn = batches()
    seen: dict[int, list] = {}

    def after_step(step: int) -> None:
        if step in (1, STEPS - 1):  # the steady state: steps 3 to 12
            seen[step] = [requests(s.http_address) for s in servers]

    table, model, optimizer, losses = train_module(cluster, "t_fit", drawn, after_step)
    optimizer.flush()
    reference, w, b, ref_losses = train_by_hand(cluster, "t_ref", drawn)
    assert losses == ref_losses
    np.testing.assert_array_equal(table.gather(pool), reference.gather(pool))
    for slot in ("m", "v"):
        ours = table.gather_slot(pool, "t_fit_opt", slot)
        np.testing.assert_array_equal(
            ours, reference.gather_slot(pool, "t_ref_opt", slot)
        )
    np.testing.assert_array_equal(model.out.weight.detach().numpy(), w)
    np.testing.assert_array_equal(model.out.bias.detach().numpy(), b)
    assert int(optimizer.remote.iterations.numpy()) == STEPS
    pushed = np.unique(np.concatenate([ids.reshape(-1) for ids, _ in drawn]))
    np.testing.assert_array_equal(np.sort(table.export().keys), pushed)
    assert set(EDGES) <= set(pushed.tolist())
    for was, now in zip(seen[1], seen[STEPS - 1], strict=True):
        spent = {m: (now[m] - was.get(m, 0)) / (STEPS - 2) for m in now}
        assert {m: n for m, n in spent.items() if n} == {"ApplyGradients": 1.0}


def test_torch_unseen_keys_read_their_initial_rows(cluster):
    """Keys never pushed read the rows the table's initializer gives them
    (the same for every table of that seed), before and after training."""
    table = cluster.embedding_table("t_unseen", DIM, initializer=INITIALIZER)
    fresh = cluster.embedding_table("t_unseen_fresh", DIM, initializer=INITIALIZER)
    module = Embedding(table=table)
    optimizer = Adamax(
        module.parameters(), lr=0.1, name="t_unseen_opt", cluster=cluster
    )
    unseen = torch.tensor([[2**53 + 1, -1], [-(2**63), 2**63 - 1]])
    initial = fresh.gather(unseen.reshape(-1).numpy()).reshape(2, 2, DIM)
    np.testing.assert_array_equal(module(unseen).detach().numpy(), initial)
    trained = torch.tensor([[2**60 + 9, -2, -2]])
    for _ in range(3):
        optimizer.zero_grad()
        module(trained).sum().backward()
        optimizer.step()
    np.testing.assert_array_equal(module(unseen).detach().numpy(), initial)
    keys = [2**60 + 9, -2]
    assert (module.weight.gather(keys) != fresh.gather(keys)).all()
    assert sorted(module.weight.export().keys) == [-2, 2**60 + 9]
    assert int(optimizer.remote.iterations.numpy()) == 3


def test_torch_module_on_a_table_as_pytorch_users_meet_it(cluster):
    """state_dict holds the table's keys and rows and loads them back; the
    optimizer's state_dict leaves a table's slots on the servers; arguments
    that contradict the table are clear errors."""
    table = cluster.embedding_table("t_state", DIM, initializer=INITIALIZER)
    module = Embedding(table=table)
    assert module.name == "t_state" and module.embedding_dim == DIM
    assert "t_state" in repr(module)
    optimizer = Adamax(module.parameters(), name="t_state_opt", cluster=cluster)
    optimizer.zero_grad()
    module(torch.tensor([3, -(2**62)])).sum().backward()
    optimizer.step()
    state = module.state_dict()  # sends the held push first
    assert sorted(state["keys"].tolist()) == [-(2**62), 3]
    saved = {k: v.clone() for k, v in state.items()}
    optimizer.zero_grad()
    module(torch.tensor([3])).sum().backward()
    optimizer.step()
    module.load_state_dict(saved)
    order = np.argsort(saved["keys"].numpy())
    np.testing.assert_array_equal(
        table.gather(saved["keys"].numpy()[order]), saved["weight"].numpy()[order]
    )
    opt_state = optimizer.state_dict()
    assert opt_state["adamax_ps"]["iterations"] == 2
    assert "t_state" not in opt_state["adamax_ps"]["slots"]
    optimizer.load_state_dict(opt_state)
    with pytest.raises(ValueError, match="comes with keys"):
        module.load_state_dict({"weight": saved["weight"], "handle": torch.zeros(())})
    with pytest.raises(ValueError, match="no num_embeddings"):
        Embedding(10, table=table)
    with pytest.raises(ValueError, match="embedding_dim 3 is not the dim"):
        Embedding(embedding_dim=3, table=table)
    with pytest.raises(ValueError, match="its own initializer"):
        Embedding(table=table, initializer="zeros")
    with pytest.raises(TypeError, match="hash-keyed table"):
        Embedding(table="t_state")
    with pytest.raises(TypeError, match="or table="):
        Embedding()
