"""Data sets that ship with stoker (nothing is downloaded)."""

import importlib as _importlib

_DATASETS = ("etl", "glyphs")


def __getattr__(name: str):
    # ``stoker.datasets.etl`` after ``import stoker``
    if name in _DATASETS:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'stoker.datasets' has no attribute {name!r}")
