"""Which Keras the worker trains with, chosen the way TensorFlow chooses it.

``tf.keras`` is tf_keras (Keras 2) when ``TF_USE_LEGACY_KERAS`` is ``1`` or
``true``, and Keras 3 otherwise; the layer and optimizer of
``adamax_ps.keras`` subclass the same Keras, so they mix with the model's
other layers. Keras 3 needs its TensorFlow backend: the layer's lookup and the
optimizer's push are TensorFlow ops that ``model.fit`` compiles into its step
(``adamax_ps.torch`` serves PyTorch code).
"""

from __future__ import annotations

import os
from types import ModuleType

LEGACY_ENV = "TF_USE_LEGACY_KERAS"


def uses_legacy_keras() -> bool:
    """TensorFlow's own rule for what ``tf.keras`` is."""
    return os.environ.get(LEGACY_ENV) in ("true", "True", "1")


def keras_module() -> tuple[ModuleType, int]:
    """The Keras module and its major version (2 or 3)."""
    if uses_legacy_keras():
        try:
            import tf_keras
        except ImportError:
            raise ImportError(
                f"{LEGACY_ENV}=1 asks for Keras 2, but tf_keras is not installed: "
                "pip install tf-keras"
            ) from None
        return tf_keras, 2
    try:
        import keras
    except ImportError:
        raise ImportError(
            "adamax_ps.keras needs Keras: pip install tensorflow (Keras 3), or "
            f"tf-keras with {LEGACY_ENV}=1 (Keras 2)"
        ) from None
    major = int(keras.__version__.split(".")[0])
    if major >= 3 and keras.backend.backend() != "tensorflow":
        raise ImportError(
            "adamax_ps.keras runs on Keras's TensorFlow backend; KERAS_BACKEND is "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow, or use "
            "adamax_ps.torch with PyTorch code."
        )
    return keras, min(major, 3)
