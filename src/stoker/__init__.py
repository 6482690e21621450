"""stoker keeps the accelerator fed: parallel, shared-memory, deterministic data loading.

The public surface is this module's ``__all__``; everything else is internal.
"""

from .errors import LoaderError, TransformError, WorkerCrashed
from .loader import Loader
from .plan import register_global_rng
from .sources import Source, from_arrays, split

__all__ = [
    "Loader",
    "LoaderError",
    "Source",
    "TransformError",
    "WorkerCrashed",
    "from_arrays",
    "register_global_rng",
    "split",
]

__version__ = "0.1.0"
