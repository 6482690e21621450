"""loader.stats() and the input-bound / model-bound verdict."""

from __future__ import annotations

import time

import pytest

import stoker
from stoker.stats import LoaderStats


def snapshot(**changes) -> LoaderStats:
    values = {"batches": 10, "samples": 640, "elapsed_s": 10.0, "wait_s": 0.2,
              "worker_busy_s": 6.0, "workers": 2, "queue_depth": 3.0}
    return LoaderStats(**{**values, **changes})


def test_a_loader_that_keeps_up_is_model_bound():
    stats = snapshot()
    assert not stats.input_bound
    assert stats.verdict().startswith("model-bound")
    assert stats.samples_per_s == 64 and stats.wait_fraction == pytest.approx(0.02)
    assert stats.worker_utilisation == pytest.approx(0.3)


def test_an_input_bound_run_gets_the_worker_count_that_balances_it():
    # The consumer computed 2 s of the 10; making the data took the workers 12 s.
    stats = snapshot(wait_s=8.0, worker_busy_s=12.0)
    assert stats.input_bound and stats.balanced_workers() == 6
    assert "about 6 workers would balance it (workers=6)" in stats.verdict(usable_cpus=8)
    assert "more than the 4 usable cores" in stats.verdict(usable_cpus=4)
    assert "stoker.augment" in stats.verdict(usable_cpus=4)


def test_the_verdict_never_advises_more_workers_than_cores_nor_fewer_workers():
    for needed_work in (12.0, 1200.0):  # 6 workers' worth, or 600 workers' worth
        text = snapshot(wait_s=8.0, worker_busy_s=needed_work).verdict(usable_cpus=2)
        assert "more than the 2 usable cores" in text and "(workers=" not in text
    # Waiting, yet one worker's worth of work: the bottleneck is not making samples.
    text = snapshot(wait_s=5.0, worker_busy_s=2.0, workers=2).verdict(usable_cpus=2)
    assert "input-bound" in text and "more workers would not help" in text
    assert "about 1 workers" not in text


def test_too_few_batches_are_not_judged():
    text = snapshot(judged_batches=3).verdict()
    assert text.startswith("not enough data to judge: 3 batches after the first")
    assert snapshot(judged_batches=1).verdict().startswith(
        "not enough data to judge: 1 batch after")
    assert not snapshot(judged_batches=9).judgeable and snapshot(judged_batches=10).judgeable
    assert not snapshot(judged_batches=50, elapsed_s=0.0).judgeable


def test_inline_loading_counts_the_consumers_own_time_as_the_work():
    stats = snapshot(workers=0, wait_s=5.0, worker_busy_s=5.0)
    assert stats.balanced_workers() == 1 and stats.input_bound


def slow(sample, rng):
    time.sleep(0.02)
    return sample


@pytest.mark.parametrize("workers", [0, 2])
def test_stats_count_what_was_delivered(images, workers):
    x, y = images
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=16, workers=workers) as loader:
        assert loader.stats().batches == 0 and loader.stats().samples_per_s == 0
        for _ in loader:
            pass
        stats = loader.stats()
        assert stats.batches == len(loader) and stats.samples == len(x)
        assert stats.workers == workers
        assert 0 <= stats.wait_s <= stats.elapsed_s
        assert stats.worker_busy_s > 0
        assert loader.stats(reset=True).batches == len(loader)
        assert loader.stats().batches == 0


def test_a_slow_transform_makes_the_consumer_wait(images):
    """Sleep-based, not speed-based: each sample takes 20 ms in a worker while the
    consumer does nothing, so it waits nearly all the time on any machine."""
    x, y = images
    with stoker.Loader(stoker.from_arrays(x[:48], y[:48]), batch_size=8, workers=2,
                       transform=slow) as loader:
        for _ in loader:
            pass
        stats = loader.stats()
    assert stats.input_bound and stats.wait_fraction > 0.5
    assert stats.balanced_workers() > 2


def test_a_slow_consumer_is_model_bound(images):
    x, y = images
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=16, workers=2) as loader:
        for _ in loader:
            time.sleep(0.05)  # the "model": the loader has plenty of time
        stats = loader.stats()
    assert not stats.input_bound and "model-bound" in stats.verdict()
    assert stats.queue_depth >= 1


def test_stats_print_as_one_line(images):
    x, y = images
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=50, workers=0) as loader:
        next(iter(loader))
        text = str(loader.stats())
    assert text.startswith("1 batch, 50 samples") and "\n" not in text
    assert "start-up" in text
    # a rate over the batches that were waiting already says nothing: none is printed
    assert "too few batches after the first to time (0; it takes 10)" in text
    assert "samples/s" not in text


def test_stats_print_rates_once_there_are_enough_batches(images):
    x, y = images
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=10, workers=0) as loader:
        for _ in loader:
            pass
        stats = loader.stats()
    assert stats.judged_batches == len(loader) - 1 >= 10
    text = str(stats)
    assert "samples/s, waited" in text and "too few" not in text, text


def test_a_snapshot_with_batches_but_no_time_says_so_not_that_they_were_too_few():
    text = str(snapshot(batches=12, elapsed_s=0.0))
    assert "no time measured after the first batch (12 batches)" in text, text
    assert "too few" not in text and "samples/s" not in text, text
    for elapsed in (0.0, -1.0, float("nan"), float("inf")):
        stats = snapshot(batches=12, elapsed_s=elapsed)
        assert not stats.judgeable, elapsed
        assert "no time measured after the first batch (12 batches)" in stats.verdict()
