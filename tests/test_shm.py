"""Shared-memory blocks (``stoker.shm``): what a missing one says, wherever it is read."""

from __future__ import annotations

import os
import pickle

import pytest

from stoker.shm import NAME_PREFIX, BlockGone, SharedBlock


def test_a_missing_block_says_who_freed_it_and_survives_pickling():
    """Workers send their errors to the consumer pickled: the message came back with
    the whole message taken for the block's name (doubled)."""
    name = f"{NAME_PREFIX}{os.getpid()}_deadbeef"
    with pytest.raises(BlockGone) as caught:
        SharedBlock.attach(name)
    error = caught.value
    said = str(error)
    assert said.startswith(f"the shared memory {name} no longer exists: the process that "
                           f"made it (pid {os.getpid()}, still running) freed it"), said
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is BlockGone and str(again) == said and again.name == name
    assert isinstance(again, FileNotFoundError)
