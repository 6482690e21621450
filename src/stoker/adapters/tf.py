"""``loader.tf_dataset()``: a Loader as a ``tf.data.Dataset``.

Each iteration of the dataset is the rest of the loader's current epoch, from its
cursor (so ``fit(dataset, epochs=N)`` sees N fresh epochs). Its declared cardinality is
what the first iteration has (fewer than ``len(loader)`` after a mid-epoch resume); an
iteration that would have another number is refused with a LoaderError saying to make
a new dataset, never cut short by tf.data's assertion. Batches keep the sample's
structure (a tensor, a tuple or a dict) with an ``element_spec`` read off the loader's
layout, the batch axis unknown (the last batch may be short). Prefetching is stoker's
(its ring of batch slots), and tf.data's own (injected by its optimizer) is turned off,
so a batch leaves the loader when it is asked for and the loader's cursor is what the
consumer took; a ``.prefetch()`` of your own runs ahead of the cursor. tf.data reads
the loader from threads of its own, so the loader is registered for a safe exit
(``_tf_exit``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from ..errors import LoaderError
from ._tf_exit import read_by_tensorflow, tensorflow_call

if TYPE_CHECKING:
    from ..loader import Loader

__all__ = ["tf_dataset"]


def tf_dataset(loader: Loader) -> tf.data.Dataset:
    """``loader`` as a ``tf.data.Dataset`` (what ``loader.tf_dataset()`` returns): each
    iteration is one loader epoch from the cursor, the ``element_spec`` comes from the
    batch layout with a variable batch dimension."""
    layout = loader.layout
    specs = [tf.TensorSpec(shape=(None, *field.shape), dtype=tf.as_dtype(field.dtype))
             for field in layout.fields]
    if layout.kind == "dict":
        signature: Any = dict(zip(layout.keys, specs, strict=True))
    elif layout.kind == "tuple":
        signature = tuple(specs)
    else:
        signature = specs[0]

    declared = len(loader) - loader.position.batch

    def batches() -> Iterator[Any]:
        position = loader.position
        if len(loader) - position.batch != declared:
            raise LoaderError(
                f"this tf.data.Dataset was made for {declared} batches an iteration, but the "
                f"loader's cursor is at batch {position.batch} of epoch {position.epoch} (a "
                f"resume, or an iteration left early), so the next iteration has "
                f"{len(loader) - position.batch}; call loader.tf_dataset() again for it"
            )
        epoch = iter(loader)
        try:
            while True:
                with tensorflow_call():
                    batch = next(epoch, None)
                if batch is None:
                    return
                yield batch
        finally:
            epoch.close()  # type: ignore[attr-defined]

    read_by_tensorflow(loader)

    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    # No prefetch that tf.data would inject by itself: a batch leaves the loader when the
    # consumer asks for it, so the loader's cursor is what the consumer took (stoker's
    # workers already run ahead).
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    dataset = dataset.with_options(options)
    # Known length: Keras then counts steps per epoch instead of warning that the data
    # "ran out" at the end of the first one.
    return dataset.apply(tf.data.experimental.assert_cardinality(declared))
