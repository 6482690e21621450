"""stoker.blobs.Blobs: variable-length records over one offsets and one data array."""

from __future__ import annotations

import numpy as np
import pytest

from stoker.blobs import Blobs, as_blobs, is_blob_list, offsets_problem

RECORDS = [b"abc", b"", bytearray(b"xy"), memoryview(b"q"), np.frombuffer(b"zz", np.uint8)]


def test_records_come_back_as_read_only_views_byte_for_byte():
    blobs = Blobs.from_bytes(RECORDS)
    assert len(blobs) == 5 and blobs.nbytes == 8
    assert [blobs[i].tobytes() for i in range(5)] == [b"abc", b"", b"xy", b"q", b"zz"]
    assert blobs[-1].tobytes() == b"zz"
    assert list(blobs.sizes) == [3, 0, 2, 1, 2]
    record = blobs[0]
    assert record.dtype == np.uint8 and not record.flags.writeable
    assert np.shares_memory(record, blobs.data)  # a view, no copy
    with pytest.raises(IndexError):
        blobs[5]


def test_slices_and_index_arrays_give_blobs_of_those_records():
    blobs = Blobs.from_bytes(RECORDS)
    tail = blobs[2:]
    assert [r.tobytes() for r in tail] == [b"xy", b"q", b"zz"]
    assert tail.offsets[0] == 0 and tail.nbytes == 5
    assert np.shares_memory(tail.data, blobs.data)  # a contiguous slice copies nothing
    picked = blobs[np.array([4, 0, 4])]
    assert [r.tobytes() for r in picked] == [b"zz", b"abc", b"zz"]
    assert [r.tobytes() for r in blobs[::2]] == [b"abc", b"xy", b"zz"]
    assert [r.tobytes() for r in blobs[np.array([True, False, False, False, True])]] == [
        b"abc", b"zz"]
    assert len(blobs[3:1]) == 0
    with pytest.raises(TypeError, match="indexed by an int, a slice"):
        blobs[np.array([0.5])]


def test_offsets_are_checked():
    data = np.zeros(5, np.uint8)
    assert offsets_problem(np.array([0, 2, 5]), 5) == ""
    assert "start at 1" in offsets_problem(np.array([1, 2, 5]), 5)
    assert "decrease at record 1" in offsets_problem(np.array([0, 3, 2, 5]), 5)
    assert "end at 4, but the data holds 5" in offsets_problem(np.array([0, 4]), 5)
    assert "1-D integer" in offsets_problem(np.array([0.0, 5.0]), 5)
    with pytest.raises(ValueError, match="blob offsets decrease"):
        Blobs(np.array([0, 3, 2, 5]), data)
    with pytest.raises(ValueError, match="1-D uint8"):
        Blobs(np.array([0, 5]), np.zeros(5, np.int8))


def test_what_counts_as_a_list_of_records():
    assert is_blob_list([b"a", bytearray(b"b")]) and is_blob_list(Blobs.from_bytes([b"a"]))
    assert not is_blob_list([]) and not is_blob_list([b"a", 1]) and not is_blob_list(b"ab")
    assert not is_blob_list(np.array([b"a"])) and not is_blob_list([np.zeros(2, np.uint8)])
    blobs = Blobs.from_bytes([b"a"])
    assert as_blobs(blobs) is blobs and as_blobs([b"a"])[0].tobytes() == b"a"
    listed = as_blobs([b"ab", b"c", b"def"])  # a list is not joined until it is written
    assert len(listed) == 3 and listed.nbytes == 6
    assert [r.tobytes() for r in listed[1:]] == [b"c", b"def"]
    assert [r.tobytes() for r in listed[np.array([2, 0])]] == [b"def", b"ab"]
