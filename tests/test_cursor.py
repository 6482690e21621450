"""The consumer cursor's contract (cursor.py), written once and run over every executor
and start method (the Ray runs are in test_ray.py, which has the cluster): whatever the
consumer does (break, set_epoch, state_dict, a second iterator, close from another
thread), each sample comes exactly once per epoch, and the batches are those of an
undisturbed run, bit for bit."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import stoker
from conftest import noisy

RUNNERS = [
    pytest.param({"workers": 0}, id="inline"),
    pytest.param({"workers": 2, "start_method": "fork"}, id="fork-2"),
    pytest.param({"workers": 2, "start_method": "forkserver"}, id="forkserver-2"),
    pytest.param({"workers": 2, "start_method": "spawn"}, id="spawn-2"),
    pytest.param({"workers": "auto", "prefetch": "auto"}, id="auto"),
]

BATCH = 32  # 203 samples: 7 batches, the last one short


def make(images, runner, **options):
    data = stoker.from_arrays(*images)
    return stoker.Loader(data, batch_size=BATCH, transform=noisy, seed=11, **runner, **options)


def copy(batch):
    return tuple(np.copy(a) for a in batch)


def undisturbed(images, epochs=3):
    """The reference: the batches of epochs 0.. of an inline loader, never interrupted."""
    with make(images, {"workers": 0}) as loader:
        return [[copy(b) for b in loader] for _ in range(epochs)]


def same(batches, expected):
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected, strict=True):
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def once_each(batches, n):
    labels = np.concatenate([b[1] for b in batches])
    assert sorted(labels.tolist()) == list(range(n))


# -- the scenarios (also run on Ray by test_ray.py) -------------------------------------


def scenario_break_then_continue(images, runner):
    """A break leaves the cursor after the last batch taken; the next loop continues."""
    reference = undisturbed(images)
    with make(images, runner) as loader:
        taken = []
        for batch in loader:
            taken.append(copy(batch))
            if len(taken) == 3:
                break
        assert loader.state_dict()["batches_done"] == 3 and loader.epoch == 0
        taken += [copy(b) for b in loader]
        same(taken, reference[0])
        once_each(taken, len(images[0]))
        assert loader.epoch == 1 and loader.state_dict()["batches_done"] == 0
        same([copy(b) for b in loader], reference[1])


def scenario_break_set_epoch_state(images, runner):
    """break, set_epoch(1), state_dict(): the state is epoch 1 from its start."""
    reference = undisturbed(images)
    with make(images, runner) as loader:
        for i, _ in enumerate(loader):
            if i == 2:
                break
        loader.set_epoch(1)
        state = loader.state_dict()
        assert (state["epoch"], state["batches_done"]) == (1, 0)
    with make(images, runner) as resumed:
        resumed.load_state_dict(json.loads(json.dumps(state)))
        same([copy(b) for b in resumed], reference[1])


def scenario_resume_mid_epoch(images, runner):
    """The state after k batches, loaded into a new loader, gives the other batches."""
    reference = undisturbed(images)
    for k in (1, 4, 6):
        with make(images, runner) as loader:
            epoch = iter(loader)
            taken = [copy(next(epoch)) for _ in range(k)]
            state = json.loads(json.dumps(loader.state_dict()))
        with make(images, runner) as resumed:
            resumed.load_state_dict(state)
            rest = [copy(b) for b in resumed]
            same(taken + rest, reference[0])
            assert resumed.epoch == 1
            same([copy(b) for b in resumed], reference[1])


def scenario_two_iterators(images, runner):
    """A second live iterator ends the first with a LoaderError, never a hang; the
    second gives the batches from the cursor."""
    reference = undisturbed(images)
    with make(images, runner) as loader:
        first = iter(loader)
        taken = [copy(next(first)), copy(next(first))]
        second = iter(loader)
        started = time.monotonic()
        taken.append(copy(next(second)))
        with pytest.raises(stoker.LoaderError, match="newer iteration"):
            next(first)
        taken += [copy(b) for b in second]
        assert time.monotonic() - started < 60
        same(taken, reference[0])
    with make(images, runner) as loader, pytest.raises(stoker.LoaderError, match="newer"):
        for _ in zip(loader, loader, strict=False):
            pass


def scenario_set_epoch_during_a_run(images, runner):
    """set_epoch() while iterating ends that iteration; the next one runs the new epoch."""
    reference = undisturbed(images, epochs=8)
    with make(images, runner) as loader:
        epoch = iter(loader)
        next(epoch)
        loader.set_epoch(7)
        with pytest.raises(stoker.LoaderError, match="set_epoch"):
            next(epoch)
        assert loader.epoch == 7
        same([copy(b) for b in loader], reference[7])
        assert loader.epoch == 8


def scenario_close_from_another_thread(images, runner):
    """close() while the consumer is between batches: its next step is a LoaderError,
    not a quiet end of the epoch."""
    with make(images, runner) as loader:
        epoch = iter(loader)
        next(epoch)
        closer = threading.Thread(target=loader.close)
        closer.start()
        closer.join(30)
        with pytest.raises(stoker.LoaderError, match="closed"):
            next(epoch)


SCENARIOS = [
    scenario_break_then_continue,
    scenario_break_set_epoch_state,
    scenario_resume_mid_epoch,
    scenario_two_iterators,
    scenario_set_epoch_during_a_run,
    scenario_close_from_another_thread,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[9:])
@pytest.mark.parametrize("runner", RUNNERS)
def test_the_cursor_contract(images, runner, scenario):
    scenario(images, runner)


# -- load_state_dict refuses garbage, changing nothing -----------------------------------


def test_load_state_dict_checks_everything_before_changing_anything(images):
    with make(images, {"workers": 0}) as loader:
        good = loader.state_dict()
        next(iter(loader))
        before = loader.state_dict()
        bad = [
            (None, TypeError, "the dict that state_dict"),
            ([1, 2], TypeError, "the dict that state_dict"),
            ({"foo": 1}, ValueError, "lacks version"),
            ({**good, "foo": 1}, ValueError, "never has: foo"),
            ({**good, "batches_done": 7}, ValueError, "not below the 7 batches"),
            ({**good, "batches_done": -1}, ValueError, "batches_done must be >= 0"),
            ({**good, "batches_done": 1.9}, ValueError, "batches_done must be an int"),
            ({**good, "batches_done": True}, ValueError, "batches_done must be an int"),
            ({**good, "epoch": "2"}, ValueError, "epoch must be an int"),
            ({**good, "seed": 5, "batch_size": 16}, ValueError, "batch_size=16"),
            ({**good, "shuffle": 1}, ValueError, "shuffle=1"),
            ({**good, "num_samples": 204}, ValueError, "num_samples=204"),
            ({**good, "version": 9}, ValueError, "another version"),
            ({**good, "version": True}, ValueError, "version True is not 1"),
            ({**good, "version": 1.0}, ValueError, "version 1.0 is not 1"),
        ]
        for state, kind, message in bad:
            with pytest.raises(kind, match=message):
                loader.load_state_dict(state)
            assert loader.state_dict() == before  # nothing changed, not even the seed
        loader.load_state_dict({**good, "batches_done": 6})
        assert len(list(loader)) == 1 and loader.epoch == 1


def test_an_empty_shard_is_refused_at_construction():
    data = stoker.from_arrays(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"shard=\(3, 4\) of a source of 3 samples is empty"):
        stoker.Loader(data, batch_size=2, shard=(3, 4), workers=0)
    assert len(stoker.Loader(data, batch_size=2, shard=(2, 3), workers=0)) == 1
