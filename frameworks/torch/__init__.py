"""adamax-ps for PyTorch: an embedding module on the servers and a
``torch.optim.Optimizer``; a training loop changes these two classes only.

    from adamax_ps.torch import Adamax, Embedding

    model = Recommender(embedding=Embedding(1_000_000, 64, name="items"))
    optimizer = Adamax(model.named_parameters(), lr=1e-3)
    for ids, y in loader:
        optimizer.zero_grad()
        loss_fn(model(ids), y).backward()
        optimizer.step()

``Embedding.from_table(cluster.embedding_table("items", 64))`` looks up a
hash-keyed table instead: int64 keys of any value.

Given no ``cluster``, both connect to the one the environment names
(``ADAMAX_PS_ADDRESS``, else ``TF_CONFIG``'s ``ps`` tasks); under ``torchrun``
every worker process runs the same script against the same servers.
"""

from adamax_ps.torch.modules import Embedding
from adamax_ps.torch.optimizer import Adamax

__all__ = ["Adamax", "Embedding"]
