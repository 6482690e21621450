"""stoker keeps the accelerator fed: parallel, shared-memory, deterministic data loading.

The public surface is this module's ``__all__`` and four documented subpackages,
imported on first use (``import stoker`` stays light; ``stoker.store.save`` just works):
``stoker.store`` (on-disk stores), ``stoker.augment`` (seeded image augmentation),
``stoker.adapters`` (Keras, tf.data, PyTorch) and ``stoker.datasets`` (the built-in
kanji, ETL files). Everything else is internal.
"""

import importlib as _importlib

from .errors import LoaderError, TransformError, WorkerCrashed
from .loader import Loader
from .many import Many
from .mixing import concat, mix
from .plan import register_global_rng
from .sources import Source, from_arrays, split

__all__ = [
    "Loader",
    "LoaderError",
    "Many",
    "Source",
    "TransformError",
    "WorkerCrashed",
    "concat",
    "from_arrays",
    "mix",
    "register_global_rng",
    "split",
]

__version__ = "0.1.0"

SUBPACKAGES = ("adapters", "augment", "datasets", "store")


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'stoker' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *SUBPACKAGES})
