"""adamax-ps for Keras: an embedding layer on the servers and an optimizer for
``model.compile``; ``model.fit`` runs unchanged.

    from adamax_ps.keras import Adamax, Embedding

    model = keras.Sequential([Embedding(1_000_000, 64, name="emb"), ...])
    model.compile(optimizer=Adamax(learning_rate=1e-3), loss="mse")
    model.fit(dataset, epochs=3)

``Embedding(table=cluster.embedding_table("items", 64))`` looks up a
hash-keyed table instead: int64 keys of any value (declare the input
``keras.Input(shape, dtype="int64")``).

The classes subclass the Keras that ``tf.keras`` is (``backend``): Keras 3 on
its TensorFlow backend, or tf_keras when ``TF_USE_LEGACY_KERAS=1``. Given no
``cluster``, both connect to the one the environment names
(``ADAMAX_PS_ADDRESS``, else ``TF_CONFIG``'s ``ps`` tasks).
"""

from adamax_ps.keras.layers import Embedding
from adamax_ps.keras.optimizer import Adamax

__all__ = ["Adamax", "Embedding"]
