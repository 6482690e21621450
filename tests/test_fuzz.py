"""Fuzzing the readers of untrusted files (hypothesis): random bytes, truncations and bit
flips in ETL files and stores give the documented errors (ValueError / StoreError) or
valid data, never another exception, a hang or a crash."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stoker import store
from stoker.datasets import etl
from test_etl import write_b, write_g

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def folder():
    path = Path(tempfile.mkdtemp(prefix="stoker-fuzz-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def read_all(path: Path, fmt: str | None = None) -> None:
    for record in etl.records(path, format=fmt):
        assert record.image.dtype == np.uint8 and record.image.shape == (64, 64)
    etl.characters(path, format=fmt)


@FUZZ
@given(data=st.binary(max_size=3 * 8199), fmt=st.sampled_from(sorted(etl.FORMATS)))
def test_random_bytes_as_any_etl_format(folder, data, fmt):
    path = folder / "random.bin"
    path.write_bytes(data)
    try:
        read_all(path, fmt)
    except ValueError:
        pass


@pytest.fixture(scope="module")
def valid_etl(folder):
    rng = np.random.default_rng(0)
    g = folder / "ETL9G_01"
    write_g(g, "ETL9G", [(0x3021 + i, rng.integers(0, 16, (127, 128)), i) for i in range(3)])
    b = folder / "ETL8B2C1"
    write_b(b, "ETL8B", [(0x3021 + i, rng.integers(0, 2, (63, 64))) for i in range(3)])
    return {"ETL9G": g.read_bytes(), "ETL8B": b.read_bytes()}


@FUZZ
@given(which=st.sampled_from(["ETL9G", "ETL8B"]), cut=st.integers(0, 3 * 8199),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=20))
def test_truncated_and_flipped_etl_files(folder, valid_etl, which, cut, flips):
    data = bytearray(valid_etl[which][:cut])
    for position, mask in flips:
        if data:
            data[position % len(data)] ^= mask
    path = folder / f"{which}_fuzz"
    path.write_bytes(bytes(data))
    try:
        read_all(path)
    except ValueError:
        pass


@pytest.fixture(scope="module")
def valid_store(folder):
    x = np.arange(5 * 6 * 4, dtype=np.uint8).reshape(5, 6, 4)
    return store.save(folder / "valid.stoker", {"image": x, "label": np.arange(5)},
                      classes=list("abcde"), progress=False)


def open_and_read(path: Path) -> None:
    try:
        data = store.open(path)
        for i in range(len(data)):
            data[i]
        store.verify(path)
    except store.StoreError:
        pass


@FUZZ
@given(target=st.sampled_from(["meta.json", 0, 1]),
       cut=st.one_of(st.none(), st.integers(0, 400)),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=10))
def test_damaged_stores_give_store_errors(folder, valid_store, target, cut, flips):
    copy = folder / "damaged.stoker"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(valid_store, copy)
    if not isinstance(target, str):  # a field, by position: its file is named by the manifest
        target = json.loads((copy / "meta.json").read_text())["fields"][target]["file"]
    data = bytearray((copy / target).read_bytes())
    if cut is not None:
        data = data[:cut]
    for position, mask in flips:
        if data:
            data[position % len(data)] ^= mask
    (copy / target).write_bytes(bytes(data))
    open_and_read(copy)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(key=st.sampled_from(["format", "version", "count", "kind", "fields", "classes"]),
       value=json_values, field_key=st.sampled_from(["name", "file", "dtype", "shape", None]))
def test_meta_json_with_wrong_types_gives_store_errors(folder, valid_store, key, value,
                                                       field_key):
    copy = folder / "typed.stoker"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(valid_store, copy)
    meta = json.loads((copy / "meta.json").read_text())
    if field_key is None:
        meta[key] = value
    else:
        meta["fields"][0][field_key] = value
    # With its checksum recomputed, as a hand-written manifest would be: the validation
    # of every field is what must refuse it.
    meta["meta_sha256"] = hashlib.sha256(store._canonical(meta)).hexdigest()
    (copy / "meta.json").write_text(json.dumps(meta))
    open_and_read(copy)
