import numpy as np
import pytest

from stoker.layout import BatchLayout, LayoutMismatch


def test_layout_of_tuple_dict_and_array_round_trips():
    for sample in (
        (np.zeros((4, 4), np.uint8), np.int64(3)),
        {"image": np.zeros((4, 4), np.float32), "label": 2},
        np.zeros(5, np.float16),
    ):
        layout = BatchLayout.of(sample)
        arrays = layout.empty(3)
        for row in range(3):
            for target, leaf in zip(arrays, layout.leaves(sample), strict=True):
                target[row] = leaf
        batch = layout.assemble(arrays)
        assert type(batch) is (np.ndarray if isinstance(sample, np.ndarray) else type(sample))


def test_views_are_packed_and_aligned_in_one_buffer():
    layout = BatchLayout.of((np.zeros((3, 3), np.uint8), np.int64(0)))
    buffer = np.zeros(layout.batch_nbytes(10), np.uint8)
    images, labels = layout.views(buffer, 10)
    assert images.shape == (10, 3, 3) and labels.shape == (10,)
    assert all(offset % 64 == 0 for offset in layout.offsets(10))
    labels[:] = 7
    assert images.sum() == 0


@pytest.mark.parametrize(("sample", "match"), [
    ((np.zeros((4, 5), np.uint8), np.int64(1)), r"shape \(4, 5\)"),
    ((np.zeros((4, 4), np.float32), np.int64(1)), r"dtype float32.*cast to one dtype in "
                                                   r"the transform, e\.g\. \.astype"),
    ((np.zeros((4, 5), np.uint8), np.int64(1)), r"images of differing sizes"),
    ((np.zeros(9, np.uint8), np.int64(1)), r"resize or cast"),
    ((np.zeros((4, 4), np.uint8), np.int32(1)), "element 1"),
    ((np.zeros((4, 4), np.uint8),), "tuple of 2"),
    (None, "tuple of 2"),
    ((None, np.int64(1)), "forget `return`"),
])
def test_mismatches_name_the_field_and_the_fix(sample, match):
    layout = BatchLayout.of((np.zeros((4, 4), np.uint8), np.int64(0)))
    with pytest.raises(LayoutMismatch, match=match):
        layout.leaves(sample)


def test_object_leaves_and_empty_samples_are_refused():
    with pytest.raises(LayoutMismatch, match="numeric"):
        BatchLayout.of((np.zeros(2), "text"))
    with pytest.raises(LayoutMismatch, match="empty"):
        BatchLayout.of({})
