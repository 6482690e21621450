"""The optional dependencies: importing one that is missing says which extra brings it.

``pip install stoker`` is the loader and the augmentation (numpy, OpenCV, cloudpickle,
tqdm); each framework adapter and the main job need more. A missing one is a
``ModuleNotFoundError`` naming what needed it and the ``pip install`` that fixes it,
with the import's own error kept as the cause (it may be a broken install, not a
missing one).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

# module -> (what it is, the extra that installs it)
_EXTRAS = {
    "keras": ("Keras (with TensorFlow)", "keras"),
    "tensorflow": ("TensorFlow", "keras"),
    "torch": ("PyTorch", "torch"),
    "matplotlib": ("matplotlib", "train"),
    "PIL": ("Pillow", "train"),
}


def require(module: str, needed_by: str, *, extra: str | None = None,
            install: str | None = None) -> ModuleType:
    """``import module``, or a ModuleNotFoundError saying that ``needed_by`` needs it and
    how to install it (``extra``: the extra to name, if not the module's own;
    ``install``: the whole command, where an extra would bring far more)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        what, own = _EXTRAS[module.split(".")[0]]
        command = install or f"pip install 'stoker[{extra or own}]'"
        raise ModuleNotFoundError(
            f"{needed_by} needs {what}, which cannot be imported here ({error}): {command}",
            name=module,
        ) from error
