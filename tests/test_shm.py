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
    error.add_note("seen by worker 3")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is BlockGone and str(again) == said and again.name == name
    assert isinstance(again, FileNotFoundError)
    assert again.__notes__ == ["seen by worker 3"]


def test_a_missing_loader_block_says_its_loader_was_closed_not_to_remake_the_source():
    """A worker that attaches a loader's own block (its batch slots) after the loader
    was closed was told to make the source again."""
    block = SharedBlock.create(64, purpose="batch slots")
    travelled = pickle.dumps(block)  # as an Attach message carries it to a worker
    block.release()
    with pytest.raises(BlockGone) as caught:
        pickle.loads(travelled)
    said = str(caught.value)
    assert f"{block.name} (batch slots) no longer exists: the loader that made it" in said
    assert "was closed" in said and "from_arrays" not in said, said
    dataset = SharedBlock.create(64, purpose="dataset")
    travelled = pickle.dumps(dataset)
    dataset.release()
    with pytest.raises(BlockGone, match=r"Make the source again"):
        pickle.loads(travelled)


def test_privatize_gives_the_pages_under_an_array_their_own_copy():
    from stoker.shm import prepare_privatize, privatize

    prepare_privatize()
    block = SharedBlock.create(3 * 4096, purpose="batch slots")
    other = SharedBlock.attach(block.name)  # another mapping of the same memory
    try:
        mine = block.ndarray((3 * 4096,), "uint8")[5000:6000]  # within page 1
        theirs = other.ndarray((3 * 4096,), "uint8")
        theirs[:] = 7
        assert privatize(mine)
        assert (mine == 7).all()  # the same bytes
        theirs[:] = 9  # no longer shows here, except outside the privatized pages
        mine[:] = 1  # and this no longer shows there
        assert (mine == 1).all() and (theirs[5000:6000] == 9).all()
        whole = block.ndarray((3 * 4096,), "uint8")
        assert (whole[:4096] == 9).all() and (whole[8192:] == 9).all()  # still shared
        assert (whole[4096:4999] == 7).all()  # page 1 is this mapping's own
        del mine, theirs, whole
    finally:
        other.release()
        block.release()
