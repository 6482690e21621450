"""adapters/_tf_exit.py: at exit, the loaders TensorFlow reads are closed and its last
calls waited out (the Ctrl-C-during-fit() freeze itself is in test_chaos.py)."""

from __future__ import annotations

import time

import numpy as np

import stoker
from stoker.adapters import _tf_exit


def test_wind_down_closes_open_loaders_and_waits_out_tensorflows_last_calls():
    data = stoker.from_arrays(np.zeros((64, 4), np.float32))
    loader = stoker.Loader(data, batch_size=8, workers=0)
    next(iter(loader))
    _tf_exit.read_by_tensorflow(loader)
    waited = _tf_exit.wind_down()
    assert loader.closed
    assert 0 < waited <= _tf_exit.GRACE_S  # closing it was the last activity


def test_wind_down_waits_for_nothing_once_tensorflow_has_been_quiet():
    _tf_exit.wind_down()  # whatever earlier tests left open is closed (and waited out)
    with _tf_exit.tensorflow_call():
        pass
    time.sleep(_tf_exit.GRACE_S)
    assert _tf_exit.wind_down() == 0.0


def test_every_batch_tensorflow_takes_counts_as_activity():
    data = stoker.from_arrays(np.zeros((64, 4), np.float32))
    with stoker.Loader(data, batch_size=8, workers=0) as loader:
        dataset = loader.tf_dataset()
        assert loader in set(_tf_exit._loaders)
        before = _tf_exit._last_activity
        for _ in dataset.take(1):
            pass
        assert _tf_exit._last_activity > before
