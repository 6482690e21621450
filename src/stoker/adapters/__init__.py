"""Adapters hand a loader's batches to a framework: Keras (``keras.py``), tf.data
(``tf.py``), PyTorch (``torch.py``); JAX takes the loader's numpy batches as they are."""

import importlib as _importlib

_ADAPTERS = ("keras", "tf", "torch")


def __getattr__(name: str):
    # ``stoker.adapters.keras`` after ``import stoker``; each imports its framework
    if name in _ADAPTERS:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'stoker.adapters' has no attribute {name!r}")
