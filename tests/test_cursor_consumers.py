"""The cursor contract of test_cursor.py through the other consumers: ``loader.torch()``
and ``loader.tf_dataset()`` (Keras, on every backend, is in test_keras_cursor.py). A
break, a resume and a second iterator give each sample once per epoch and the batches
of an undisturbed run, bit for bit."""

from __future__ import annotations

import json

import pytest

from test_cursor import copy, make, once_each, same, undisturbed

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


def via_torch(loader):
    for batch in loader.torch():
        yield tuple(t.numpy() for t in batch)


def via_tf(loader):
    for batch in loader.tf_dataset():  # made at the cursor: declares what remains
        yield tuple(t.numpy() for t in batch)


CONSUMERS = [pytest.param(via_torch, id="torch"), pytest.param(via_tf, id="tf_dataset")]
RUNNERS = [pytest.param({"workers": 0}, id="inline"), pytest.param({"workers": 2}, id="processes"),
           pytest.param({"workers": 2, "start_method": "spawn"}, id="spawn"),
           pytest.param({"workers": "auto", "prefetch": "auto"}, id="auto")]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("consume", CONSUMERS)
def test_break_resume_and_a_second_iterator(images, runner, consume):
    reference = undisturbed(images, epochs=2)
    with make(images, runner) as loader:
        taken = []
        for batch in consume(loader):
            taken.append(copy(batch))
            if len(taken) == 2:
                break
        assert loader.position.batch == 2  # what the consumer took, not what was pulled
        state = json.loads(json.dumps(loader.state_dict()))
        taken += [copy(b) for b in consume(loader)]
        same(taken, reference[0])
        once_each(taken, len(images[0]))
        same([copy(b) for b in consume(loader)], reference[1])
    with make(images, runner) as resumed:
        resumed.load_state_dict(state)
        same([copy(b) for b in consume(resumed)], reference[0][2:])
    with make(images, runner) as loader:
        first = consume(loader)
        next(first)
        second = consume(loader)
        rest = [copy(b) for b in second]
        assert len(rest) == len(loader) - 1
        with pytest.raises(Exception, match="newer iteration"):
            next(first)


@pytest.mark.parametrize("consumer", ["keras", "tf_dataset"])
def test_close_during_a_suspended_pass_frees_the_memory_at_once(consumer):
    """A pass held open by an adapter (a Keras view indexed, a tf.data iterator part
    read) must not pin the source or the slots once the loader is closed (no garbage
    collection needed), nor keep the loader alive once the adapter goes."""
    import gc
    import weakref

    import numpy as np

    import stoker
    from conftest import own_segments, wait_until

    gc.collect()
    before = own_segments()
    x = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
    loader = stoker.Loader(stoker.from_arrays(x, np.arange(64)), batch_size=8, workers=2)
    if consumer == "keras":
        held = loader.keras()
        held[0]  # a pass begun, held suspended by the view
    else:
        held = iter(loader.tf_dataset())
        next(held)
    assert own_segments() > before
    loader.close()
    assert wait_until(lambda: own_segments() <= before, 5), "close() left memory pinned"
    alive = weakref.ref(loader)
    del loader, held  # the view or iterator is what holds the loader now
    gc.collect()
    assert alive() is None, "the loader outlived close() and its adapter"
