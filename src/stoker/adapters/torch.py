"""``loader.torch()``: a Loader as a PyTorch iterable of tensor batches.

Iterating it runs one epoch of the loader and yields its batches as ``torch.Tensor``
(zero-copy: each batch is a fresh numpy array, shared with the tensor), in the sample's
structure. ``pin_memory=True`` pins each batch for fast, asynchronous copies to an
accelerator. It is a ``torch.utils.data.IterableDataset`` with ``len`` (batches per
epoch), so it also fits where PyTorch code expects one; stoker does the batching, the
shuffling and the parallelism, so wrap it in no ``DataLoader`` (or one with
``batch_size=None, num_workers=0``); a ``DataLoader`` with workers is refused with that
advice the moment it starts them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .._extras import require

if TYPE_CHECKING:
    from ..loader import Loader

__all__ = ["TorchBatches"]

torch = require("torch", "loader.torch()")
IterableDataset = torch.utils.data.IterableDataset


_NO_DATALOADER_WORKERS = (
    "loader.torch() was handed to a torch DataLoader with num_workers > 0; stoker already "
    "runs the workers, the batching and the shuffling, and a loader cannot run inside "
    "DataLoader workers. Iterate loader.torch() directly, or use DataLoader(loader.torch(), "
    "batch_size=None, num_workers=0), and set the worker count with Loader(workers=N)"
)


class TorchBatches(IterableDataset):
    """``loader``'s epochs as PyTorch tensor batches (what ``loader.torch()`` returns);
    ``pin_memory=True`` pins each batch (a CUDA device is needed)."""

    def __init__(self, loader: Loader, *, pin_memory: bool = False) -> None:
        if pin_memory and not torch.cuda.is_available():
            raise ValueError(
                "pin_memory=True needs a CUDA device, and torch sees none here; pinning only "
                "helps copies to an accelerator, so leave it off on a CPU machine"
            )
        self.loader = loader
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.loader)

    def __reduce__(self) -> Any:
        # DataLoader workers started by spawn/forkserver get the dataset pickled.
        raise TypeError(_NO_DATALOADER_WORKERS)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor.pin_memory() if self.pin_memory else tensor

    def __iter__(self) -> Iterator[Any]:
        if torch.utils.data.get_worker_info() is not None:
            raise TypeError(_NO_DATALOADER_WORKERS)
        for batch in self.loader:
            if isinstance(batch, dict):
                yield {key: self._tensor(value) for key, value in batch.items()}
            elif isinstance(batch, tuple):
                yield tuple(self._tensor(value) for value in batch)
            else:
                yield self._tensor(batch)
