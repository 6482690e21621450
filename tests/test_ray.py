"""backend='ray' on a real local Ray cluster (ray.init(num_cpus=2)): the same batches as
the inline reference, the data put in the object store once, crashed and hung actors
recovered exactly once, and every failure a clear error.

Ray listens on the host's addresses unless loopback is all there is, so these tests run
only in a private network namespace (`make test` runs the suite in one, through
tests/in-private-network); elsewhere they are skipped, saying so. The two-node cluster
is in test_ray_cluster.py (one Ray connection per process at a time).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import stoker
import stoker.store
from conftest import gone, noisy, wait_until
from epochs import assert_same, epochs_of, held_after_the_first_batch
from test_cursor import SCENARIOS
from test_loader import legacy_distort

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TESTS = Path(__file__).resolve().parent


def only_loopback() -> bool:
    """Whether every IPv4 address of this network namespace is a loopback one."""
    import socket

    import psutil

    return all(a.address.startswith("127.") for addrs in psutil.net_if_addrs().values()
               for a in addrs if a.family == socket.AF_INET)


def start_ray(**init) -> None:
    """Connect this process to a Ray cluster whose workers can import the test modules
    (transforms defined here travel by reference, as a user's own modules would)."""
    if not only_loopback():
        pytest.skip("Ray tests run in a private network namespace: make test, or "
                    "tests/in-private-network python -m pytest tests/test_ray.py")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}}, **init)


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    # address="local": a new cluster of our own, never one that another run left
    # registered in /tmp/ray (ray.init() would try to join that one)
    start_ray(address="local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def reference(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=11, workers=0) as loader:
        return epochs_of(loader, 2)


@pytest.mark.parametrize("workers", [1, 2, None])
def test_batches_are_bit_identical_to_the_inline_reference(images, reference, workers):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=11, backend="ray",
                       workers=workers) as loader:
        assert loader.workers == (workers or 2)  # None: every CPU of the cluster
        assert_same(epochs_of(loader, 2), reference)


def test_legacy_transforms_dict_samples_and_shards_match_inline(images):
    x, y = images
    data = stoker.from_arrays(image=x, label=y)

    def legacy(sample):
        image, label = legacy_distort((sample["image"], sample["label"]))
        return {"image": image, "label": label}

    for options in ({"transform": legacy}, {"transform": None, "shard": (1, 3)}):
        with stoker.Loader(data, batch_size=24, seed=4, workers=0, **options) as loader:
            expected = epochs_of(loader, 2)
        with stoker.Loader(data, batch_size=24, seed=4, backend="ray", **options) as loader:
            assert_same(epochs_of(loader, 2), expected)


def test_a_mixed_source_of_concatenated_ones_matches_inline(images):
    x, y = images
    a, b = stoker.from_arrays(x[:60], y[:60]), stoker.from_arrays(x[60:], y[60:])
    data = stoker.mix([a, stoker.concat([b, a])], [1, 2], length=150, seed=9)
    from stoker.executors.ray import ObjectStoreArrays, portable

    travels = portable(data)  # for actors on other nodes: no shared-memory names inside
    assert isinstance(travels.sources[0], ObjectStoreArrays)
    assert all(isinstance(inner, ObjectStoreArrays) for inner in travels.sources[1].sources)
    assert data.sources[0] is a  # the loader's own source is left as it was
    with stoker.Loader(data, batch_size=24, transform=noisy, seed=4, workers=0) as loader:
        expected = epochs_of(loader, 2)
    with stoker.Loader(data, batch_size=24, transform=noisy, seed=4, backend="ray") as loader:
        assert_same(epochs_of(loader, 2), expected)


def test_batch_transformed_batches_and_a_resume_match_the_plan():
    import test_batch_transforms as batched

    source = batched.data()
    expected = batched.run_epochs(source, epochs=2, workers=0)
    assert_batches = batched.assert_same
    got = batched.run_epochs(source, epochs=2, backend="ray", workers=2)
    for mine, theirs in zip(got, expected, strict=True):
        assert_batches(mine, theirs)
    options = dict(batch_size=16, seed=5, transform=batched.brighten,
                   batch_transform=batched.tagged, backend="ray", workers=2)
    with stoker.Loader(source, **options) as loader:
        epoch = iter(loader)
        next(epoch), next(epoch)
        state = loader.state_dict()
    with stoker.Loader(source, **options) as loader:
        loader.load_state_dict(state)
        assert_batches([{k: v.copy() for k, v in b.items()} for b in loader], expected[0][2:])


def test_samples_that_become_several_or_none_match_the_plan_and_resume():
    import test_many as many

    source = many.data()
    for transform, max_outputs in ((many.zero_to_three, 3), (many.original_and_noisy, None)):
        options = dict(batch_size=16, seed=5, transform=transform, max_outputs=max_outputs,
                       backend="ray", workers=2)
        expected = [many.expected_epoch(source, transform, seed=5, epoch=e) for e in (0, 1)]
        with stoker.Loader(source, **options) as loader:
            for mine, theirs in zip(many.epochs_of(loader), expected, strict=True):
                many.assert_same(mine, theirs)
            loader.set_epoch(0)
            epoch = iter(loader)
            next(epoch), next(epoch)
            state = loader.state_dict()
        with stoker.Loader(source, **options) as loader:
            loader.load_state_dict(state)
            many.assert_same([(x.copy(), y.copy()) for x, y in loader], expected[0][2:])


def test_an_encoded_store_is_decoded_by_the_actors_as_the_plan_says(tmp_path):
    import test_photo as photo

    source = stoker.store.open(stoker.store.save(tmp_path / "photos",
                                                 (photo.encoded(40), np.arange(40))))
    options = dict(batch_size=16, seed=4, transform=photo.recipe(), backend="ray", workers=2)
    expected = [photo.expected_epoch(source, photo.recipe(), seed=4, epoch=e) for e in (0, 1)]
    with stoker.Loader(source, **options) as loader:
        for mine, theirs in zip(photo.epochs_of(loader), expected, strict=True):
            photo.assert_same(mine, theirs)
        loader.set_epoch(0)
        epoch = iter(loader)
        next(epoch)
        state = loader.state_dict()
    with stoker.Loader(source, **options) as loader:
        loader.load_state_dict(state)
        photo.assert_same([(x.copy(), y.copy()) for x, y in loader], expected[0][1:])


def test_the_data_is_put_in_the_object_store_once_and_read_zero_copy(images):
    from stoker.executors.ray import portable

    data = stoker.from_arrays(*images)
    train, validation = data.split(0.75, seed=0)
    assert portable(train).base is portable(validation).base  # one copy for both splits

    def writes(sample, rng):
        sample[0][0, 0, 0] = 1
        return sample

    with stoker.Loader(train, batch_size=16, transform=writes, backend="ray") as loader:
        with pytest.raises(stoker.TransformError, match="read-only"):
            next(iter(loader))


def test_actors_on_this_node_write_batches_into_shared_memory(images, reference):
    """Same node, same cost as processes: every batch lands in the executor's slots, none
    goes through the object store, and the landing block is gone after close()."""
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=11, backend="ray",
                       workers=2) as loader:
        got = epochs_of(loader, 2)
        executor = loader._get_executor()
        name = executor._landing.block.name
        assert os.path.exists(f"/dev/shm/{name}")
        assert executor.landed == sum(len(epoch) for epoch in got) and executor.shipped == 0
    assert_same(got, reference)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_an_abandoned_epoch_lands_later_batches_in_a_fresh_block(images, reference):
    """A cancelled actor task that is running goes on and may still write into its slot:
    after an abandoned epoch with batches in flight, no slot of that block is lent again."""
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=slow_noisy, seed=11, backend="ray",
                       prefetch=4) as loader:
        epoch = iter(loader)
        first = tuple(np.copy(a) for a in next(epoch))
        executor = loader._get_executor()
        old = executor._landing.block.name
        assert executor._in_flight  # tasks running or queued with slots of it
        epoch.close()
        rest = epochs_of(loader, 1)[0]
        assert executor._landing.block.name != old
        assert not os.path.exists(f"/dev/shm/{old}")
    with stoker.Loader(data, batch_size=32, transform=slow_noisy, seed=11,
                       workers=0) as loader:
        assert_same([[first, *rest]], epochs_of(loader, 1))


def test_an_actor_that_cannot_write_into_the_slot_ships_its_batch(images):
    """Another node, a block it cannot map, a slot too small: the batch comes back through
    the object store, the same bytes (the actor's own code, called here)."""
    from stoker.executors._produce import Transform
    from stoker.executors.ray import BatchActor, Landing, _LandingSlots, portable

    actor = BatchActor()
    source = stoker.from_arrays(*images)
    arguments = [ray.put(portable(source)), ray.put(Transform.wrap(noisy))]
    indices = np.arange(5, 13)
    _, ok, layouts = actor.probe(arguments, 1, 2, tuple(int(i) for i in indices), None)
    assert ok
    node = ray.get_runtime_context().get_node_id()
    slots = _LandingSlots(layouts[0], 8, 2, node)
    try:
        here = slots.lend()
        cases = {"none": None, "here": here,
                 "another node": Landing(here.name, "elsewhere", here.offset, 8),
                 "no such block": Landing("stoker_nowhere", node, 0, 8),
                 "too small": Landing(here.name, node, here.offset, 4)}
        expected = None
        for name, landing in cases.items():
            _, [(ok, (_, arrays, rows))] = actor.produce(
                arguments, 1, 2, indices, (8,), layouts, 0, (landing,), None, 0)
            assert ok and rows == 8, name
            if name == "here":
                assert arrays is None
                arrays = [a[:rows].copy() for a in slots.views(landing)]
            else:
                assert arrays is not None, name
            expected = arrays if expected is None else expected
            for got, want in zip(arrays, expected, strict=True):
                np.testing.assert_array_equal(got, want, err_msg=name)
    finally:
        slots.release()


def test_an_actor_counts_its_samples_on_the_board_and_skips_an_abandoned_task(images):
    """The actor's own code, called here: each sample it finishes is counted in its word
    of the board; a task whose issue is past makes none of its batches."""
    from stoker.executors._produce import Transform
    from stoker.executors.ray import BatchActor, Board, _Board, portable

    actor = BatchActor()
    arguments = [ray.put(portable(stoker.from_arrays(*images))),
                 ray.put(Transform.wrap(noisy))]
    node = ray.get_runtime_context().get_node_id()
    board = _Board(3, node)
    try:
        mine = Board(board.block.name, node, 2)
        assert actor.ready(arguments, mine)[1] and not actor.ready(
            arguments, Board(board.block.name, "elsewhere", 2))[1]
        _, ok, layouts = actor.probe(arguments, 1, 2, (0,), mine)
        assert ok
        counted = board.samples(2)
        indices = np.arange(16)
        _, results = actor.produce(arguments, 1, 2, indices, (8, 8), layouts, 0,
                                   (None, None), mine, board.issue)
        assert [ok for ok, _ in results] == [True, True]
        assert board.samples(2) == counted + 16 and board.samples(1) == 0
        issue = board.issue
        board.abandon()
        _, results = actor.produce(arguments, 1, 2, indices, (8, 8), layouts, 0,
                                   (None, None), mine, issue)
        assert results == [] and board.samples(2) == counted + 16
    finally:
        board.release()


def fails_on(label):
    def transform(sample, rng):
        if sample[1] == label:
            raise ValueError(f"bad sample {label}")
        return noisy(sample, rng)
    return transform


@pytest.mark.parametrize("workers, prefetch, sizes", [
    (2, 8, [1, 2, 2, 2]), (1, 5, [1, 2, 2, 2]), (2, None, [1, 2, 4]), (1, 32, [1, 2, 4]),
    (2, 3, [1] * 7)])
def test_tasks_of_several_batches_match_inline_and_fail_at_the_right_batch(
        images, reference, workers, prefetch, sizes, monkeypatch):
    """A Ray task makes prefetch // (2 * workers) consecutive batches, at most 4, a run's
    first tasks 1 and 2 (its first batch waits for one) and the epoch's last fewer: the
    same bytes as inline, each batch once, also after an epoch abandoned mid-task; a
    failing sample inside a task ends the epoch at its own batch, after every batch
    before it."""
    from stoker.executors.ray import RayExecutor

    made: list[int] = []
    submit = RayExecutor._submit
    monkeypatch.setattr(RayExecutor, "_submit", lambda self, batches, *rest: (
        made.append(len(batches)), submit(self, batches, *rest))[1])
    data = stoker.from_arrays(*images)
    options = dict(batch_size=32, seed=11, backend="ray", workers=workers, prefetch=prefetch)
    with stoker.Loader(data, transform=noisy, **options) as loader:
        got = epochs_of(loader, 2)  # 7 batches each: 203 samples
        assert made == sizes * 2
        assert_same(got, reference)
        loader.set_epoch(0)
        epoch = iter(loader)
        next(epoch), next(epoch)  # the second task partly taken, later ones in flight
        epoch.close()  # the next iteration goes on from there
        assert_same(epochs_of(loader, 1), [reference[0][2:]])
    # the second batch of the first task of two or more (the third batch if none is)
    victim_batch = next((sum(sizes[:t]) + 1 for t, n in enumerate(sizes) if n > 1), 2)
    order = [int(label) for _, labels in reference[0] for label in labels]
    victim = order[32 * victim_batch + 5]
    with stoker.Loader(data, transform=fails_on(victim), **options) as loader:
        epoch, got = iter(loader), []
        with pytest.raises(stoker.TransformError, match=f"sample {victim}"):
            for batch in epoch:
                got.append(tuple(np.copy(a) for a in batch))
        assert_same([got], [reference[0][:victim_batch]])


def test_a_store_is_memory_mapped_by_each_actor(images, tmp_path):
    x, y = images
    stoker.store.save(tmp_path / "s", stoker.from_arrays(x, y), progress=False)
    source = stoker.store.open(tmp_path / "s")
    with stoker.Loader(source, batch_size=50, transform=noisy, seed=2, workers=0) as loader:
        expected = epochs_of(loader, 1)
    with stoker.Loader(source, batch_size=50, transform=noisy, seed=2, backend="ray") as loader:
        assert_same(epochs_of(loader, 1), expected)


def slow_noisy(sample, rng):
    time.sleep(0.004)
    return noisy(sample, rng)


def test_a_killed_actor_is_restarted_by_ray_and_nothing_is_lost_or_repeated(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=16, transform=slow_noisy, seed=5, workers=0) as loader:
        expected = epochs_of(loader, 2)
    with stoker.Loader(data, batch_size=16, transform=slow_noisy, seed=5, backend="ray",
                       max_worker_restarts=4) as loader:
        epoch = iter(loader)
        got = [tuple(np.copy(a) for a in next(epoch))]
        victim = loader.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        got += [tuple(np.copy(a) for a in batch) for batch in epoch]
        got = [got, *epochs_of(loader, 1)]
        assert_same(got, expected)
        assert loader.crashes == [(0, None)]
        assert victim not in loader.worker_pids


def test_without_restarts_a_killed_actor_is_worker_crashed_with_advice(images, tmp_path):
    data = stoker.from_arrays(*images)
    gate = tmp_path / "open"
    held = held_after_the_first_batch(data, gate, batch_size=16, seed=6, then=noisy)
    with stoker.Loader(data, batch_size=16, transform=held, seed=6, backend="ray") as loader:
        epoch = iter(loader)
        next(epoch)
        os.kill(loader.worker_pids[0], signal.SIGKILL)  # it holds a task, at the gate
        gate.touch()
        with pytest.raises(stoker.WorkerCrashed, match="max_worker_restarts=N") as caught:
            for _ in epoch:
                pass
        assert caught.value.crashes


def exit_on_50(sample, rng):
    if sample[1] == 50:
        os._exit(3)
    return sample


def test_a_crash_after_a_resume_names_the_batch_of_the_epoch(images):
    """As with processes (test_failures.py): batches of the epoch, not of the run. A Ray
    task makes several consecutive batches, and Ray reports the actor's death on the
    task the consumer waits for, which may be the one before the task holding sample 50
    (batch 6) when its reply was still on the way: batches 5-6 of the epoch, never the
    run's 0-1 after a resume at batch 5."""
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=8, transform=exit_on_50, backend="ray", shuffle=False,
                       workers=1) as loader:
        loader.load_state_dict({**loader.state_dict(), "batches_done": 5})
        with pytest.raises(stoker.WorkerCrashed) as caught:
            list(loader)
    named = re.search(r"producing batch(?:es)? (\d+)(?:-(\d+))? of epoch 0", str(caught.value))
    assert named, caught.value
    first, last = int(named[1]), int(named[2] or named[1])
    assert 5 <= first <= 6 and first <= last, caught.value


def exit_at_once(sample, rng):
    os._exit(3)


@pytest.mark.parametrize("restarts", [0, 1])
def test_an_actor_that_dies_on_the_first_sample_is_worker_crashed_saying_so(images, restarts):
    """As with processes (test_first_sample.py): the layout is learnt in an actor, so
    its death is an error naming the first sample, and the training script lives on."""
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=16, transform=exit_at_once, backend="ray",
                       max_worker_restarts=restarts) as loader:
        started = time.monotonic()
        with pytest.raises(stoker.WorkerCrashed,
                           match="died while making the first sample") as caught:
            next(iter(loader))
        assert "max_worker_restarts" in str(caught.value) and caught.value.crashes
        assert time.monotonic() - started < 60
        assert loader.worker_pids == []


def test_a_stopped_actor_is_killed_after_the_timeout_and_its_batches_redone(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=16, transform=slow_noisy, seed=6, workers=0) as loader:
        expected = epochs_of(loader, 1)
    with stoker.Loader(data, batch_size=16, transform=slow_noisy, seed=6, backend="ray",
                       timeout=2, max_worker_restarts=2) as loader:
        epoch = iter(loader)
        got = [tuple(np.copy(a) for a in next(epoch))]
        stopped = loader.worker_pids[1]
        os.kill(stopped, signal.SIGSTOP)
        try:
            got += [tuple(np.copy(a) for a in batch) for batch in epoch]
        finally:
            if not gone(stopped):
                os.kill(stopped, signal.SIGCONT)
        assert_same([got], expected)
        assert loader.crashes == [(1, None)]  # killed once, then given time to restart


def ten_ms(sample, rng):
    time.sleep(0.01)
    return sample


def test_timeout_is_about_progress_not_the_size_of_a_batch():
    """A batch of 300 samples at 10 ms each takes 3 s on its actor, more than timeout=2,
    yet every sample finishes well within it: nothing is killed (the actors count their
    samples on the board in shared memory, as process workers do)."""
    data = stoker.from_arrays(np.zeros((600, 2), np.float32), np.arange(600))
    with stoker.Loader(data, batch_size=300, transform=ten_ms, backend="ray", workers=2,
                       timeout=2) as loader:
        labels = np.concatenate([labels for _, labels in loader])
        assert sorted(labels.tolist()) == list(range(600)) and loader.crashes == []


def hangs_on_33(sample, rng):
    if sample[1] == 33:
        time.sleep(7)
    return sample


def test_a_sample_that_hangs_past_the_timeout_is_caught_in_a_task_of_several_batches():
    """Sample 33 is in batch 8, the second of a task of 4 batches (one actor, prefetch
    8). It hangs 7 s: more than timeout=2, less than the task's 4 x 2 s, so judging the
    task as a whole would let it through. It is killed for the 2 s without a sample."""
    data = stoker.from_arrays(np.zeros((64, 2), np.float32), np.arange(64))
    with stoker.Loader(data, batch_size=4, transform=hangs_on_33, backend="ray", workers=1,
                       prefetch=8, shuffle=False, timeout=2) as loader:
        with pytest.raises(stoker.WorkerCrashed,
                           match=r"made no progress for 2 s and was killed while making "
                                 r"batches 7-10 of epoch 0; pass max_worker_restarts"):
            for _ in loader:
                pass


def fails_on_1900(sample, rng):
    if sample[1] == 1900:
        raise ValueError("bad sample")
    return sample


def test_an_abandoned_pass_never_stalls_the_next_one():
    """Each pass ends in the transform's error with batches in flight. Those tasks are
    abandoned, not cancelled in Ray: a cancelled actor task leaves a gap in the actor's
    ordered queue, and Ray then held the next pass's tasks for 30 s."""
    data = stoker.from_arrays(np.zeros((2048, 8, 8), np.uint8), np.arange(2048))
    with stoker.Loader(data, batch_size=16, transform=fails_on_1900, backend="ray",
                       workers=2, shuffle=False) as loader:
        started = time.monotonic()
        for _ in range(30):  # the first pass fails at batch 118, the others at once
            with pytest.raises(stoker.TransformError, match="sample 1900"):
                for _ in loader:
                    pass
            time.sleep(0.05)  # the cancelled tasks' RPCs settle (how the stall was met)
        for epoch in (1, 2):  # and passes broken off early
            loader.set_epoch(epoch)
            assert len([batch for _, batch in zip(range(3), loader, strict=False)]) == 3
        assert time.monotonic() - started < 25  # one stall is 30 s


def fails_on_17(sample, rng):
    if sample[1] == 17:
        raise ValueError("bad sample")
    return sample


def test_a_transform_error_names_the_sample_as_with_processes(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=fails_on_17, backend="ray") as loader:
        with pytest.raises(stoker.TransformError, match="sample 17") as caught:
            epochs_of(loader, 1)
    assert isinstance(caught.value.__cause__, ValueError)
    assert "Traceback in the worker" in str(caught.value)


class ImportsOnlyHere:
    """Unpickles as a module the Ray workers cannot import."""

    def __call__(self, sample, rng):
        return sample

    def __reduce__(self):
        import importlib

        return (importlib.import_module, ("module_only_the_driver_has",))


def test_a_worker_that_cannot_load_the_transform_says_how_to_ship_it(images):
    data = stoker.from_arrays(*images)
    loader = stoker.Loader(data, batch_size=8, transform=ImportsOnlyHere(), backend="ray")
    with pytest.raises(stoker.LoaderError, match=r"could not start.*runtime_env"):
        next(iter(loader))
    loader.close()


def test_a_store_replaced_since_it_was_opened_is_refused_naming_the_fix(images, tmp_path):
    # The actor refuses it while Ray unpickles its arguments, which Ray reports as text
    # only: the consumer still gets stoker's own message, with no guess about modules.
    path = stoker.store.save(tmp_path / "s", images)
    source = stoker.store.open(path)
    stoker.store.save(path, tuple(a[:10] for a in images), overwrite=True)
    with stoker.Loader(source, batch_size=8, workers=1, backend="ray") as loader:
        with pytest.raises(stoker.LoaderError, match="could not start") as caught:
            next(iter(loader))
    said = str(caught.value).split("\n")[0]
    assert said.endswith("make a new Loader."), said
    assert "StoreError: the store at" in said and "importable" not in said, said
    assert "Traceback in the worker" in str(caught.value)


def test_a_restarted_actor_refuses_a_store_replaced_meanwhile(images, tmp_path):
    path = stoker.store.save(tmp_path / "s", images)
    with stoker.Loader(stoker.store.open(path), batch_size=16, transform=slow_noisy,
                       backend="ray", max_worker_restarts=4) as loader:
        epoch = iter(loader)
        next(epoch)
        stoker.store.save(path, tuple(a[:10] for a in images), overwrite=True)
        os.kill(loader.worker_pids[0], signal.SIGKILL)  # Ray restarts it: it loads again
        with pytest.raises(stoker.LoaderError, match="could not start") as caught:
            for _ in range(3):
                for _ in epoch:
                    pass
                epoch = iter(loader)
    said = str(caught.value).split("\n")[0]
    assert said.endswith("make a new Loader."), said
    assert "importable" not in said, said


def test_more_workers_than_cluster_cpus_is_an_error_after_start_timeout(images):
    data = stoker.from_arrays(*images)
    with pytest.warns(UserWarning, match="cluster has 2 CPUs"):
        loader = stoker.Loader(data, batch_size=8, backend="ray", workers=3, start_timeout=5)
        # 1 of 3 (the third can never start), 2 or 3 of 3 on a machine so loaded that
        # an actor takes 5 s to start
        with pytest.raises(stoker.LoaderError,
                           match=r"[123] of 3 Ray workers did not start"):
            next(iter(loader))
    loader.close()


def test_close_from_another_thread_while_actors_start_does_not_wait_out_start_timeout(images):
    data = stoker.from_arrays(*images)
    with pytest.warns(UserWarning, match="cluster has 2 CPUs"):
        loader = stoker.Loader(data, batch_size=8, backend="ray", workers=3, start_timeout=60)
        threading.Timer(2.0, loader.close).start()
        started = time.monotonic()
        with pytest.raises(stoker.LoaderError, match="closed"):
            next(iter(loader))
    assert time.monotonic() - started < 20  # not the 60 s of start_timeout


def test_a_legacy_torch_transform_matches_inline_on_ray(images):
    pytest.importorskip("torch")
    from test_worker_contract import torch_noise

    data = stoker.from_arrays(np.zeros((40, 4), np.float32), np.arange(40))
    epochs = []
    for backend, workers in (("inline", 0), ("ray", 2)):
        with stoker.Loader(data, batch_size=8, transform=torch_noise, backend=backend,
                           workers=workers, seed=5) as loader:
            epochs.append(np.concatenate([x for x, _ in loader]))
    np.testing.assert_array_equal(*epochs)


def test_close_from_another_thread_ends_the_epoch_and_kills_the_actors(images, tmp_path):
    data = stoker.from_arrays(*images)
    # the gate is never opened: the epoch cannot end before close(), however fast
    held = held_after_the_first_batch(data, tmp_path / "open", batch_size=4, seed=6,
                                      then=noisy)
    loader = stoker.Loader(data, batch_size=4, transform=held, seed=6, backend="ray")
    epoch = iter(loader)
    next(epoch)
    pids = loader.worker_pids
    threading.Timer(0.2, loader.close).start()
    with pytest.raises(stoker.LoaderError, match="closed"):
        for _ in epoch:
            pass
    assert wait_until(lambda: all(gone(pid) for pid in pids), 15), "actors left running"


def test_an_abandoned_epoch_does_not_disturb_the_next(images, reference):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=11, backend="ray") as loader:
        epoch = iter(loader)
        first = tuple(np.copy(a) for a in next(epoch))
        epoch.close()  # the next iteration continues epoch 0 after the batch taken
        assert_same([[first, *epochs_of(loader, 1)[0]]], reference[:1])
        assert_same(epochs_of(loader, 1), reference[1:])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[9:])
def test_the_cursor_contract_on_ray(images, scenario):
    """The cursor contract of test_cursor.py, on Ray actors."""
    scenario(images, {"backend": "ray", "workers": 2})


@pytest.mark.parametrize("consumer", ["via_tf", "via_torch"])
def test_the_cursor_contract_through_tf_dataset_and_torch_on_ray(images, consumer):
    """test_cursor_consumers.py's break, resume and second iterator, on Ray actors."""
    import test_cursor_consumers as consumers

    consumers.test_break_resume_and_a_second_iterator(
        images, {"backend": "ray", "workers": 2}, getattr(consumers, consumer))


def test_keras_fits_on_ray_batches(images):
    import keras

    x, y = images
    data = stoker.from_arrays(x.astype(np.float32) / 255, y % 4)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    with stoker.Loader(data, batch_size=32, backend="ray") as loader:
        history = model.fit(loader.keras(), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_without_ray_installed_the_error_says_how_to_install_it():
    script = (
        "import sys; sys.modules['ray'] = None\n"
        "import numpy as np, stoker\n"
        "try:\n"
        "    stoker.Loader(stoker.from_arrays(np.zeros((8, 2))), batch_size=4, backend='ray')\n"
        "except ModuleNotFoundError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "pip install 'stoker[ray]'" in done.stdout


def test_the_readme_scaling_out_example_runs():
    """The README's example, as written, in a fresh process (its own ray.init())."""
    readme = (TESTS.parent / "README.md").read_text()
    marker = "tested by tests/test_ray.py::test_the_readme_scaling_out_example_runs"
    block = readme.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_AUTH_MODE": "disabled",
           "RAY_ADDRESS": "local"}  # its own new cluster, as on a machine without one
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          timeout=280, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accuracy" in done.stdout and "Epoch 2/2" in done.stdout
    # No error-level line from Ray's C++ core ("[date time E pid tid] ...") on a good run.
    assert not re.search(r"^\[[^\]]* E \d+ \d+\]", done.stderr, re.M), done.stderr[-3000:]
