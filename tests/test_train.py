"""The main job end to end, on a small configuration: `stoker train` as a user runs it."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_stoker_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "train", "--epochs", "1", "--classes", "4",
         "--batch-size", "32", "--workers", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val_accuracy" in result.stdout
    assert "validation accuracy on the unseen font" in result.stdout
    for banner in ("absl::InitializeLog", "oneDNN"):  # TensorFlow's start-up noise
        assert banner not in result.stderr, result.stderr[-3000:]
    assert (out / "model.keras").stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import keras
    import numpy as np

    model = keras.saving.load_model(out / "model.keras")
    assert model.predict(np.zeros((2, 64, 64, 1), np.float32), verbose=0).shape == (2, 4)


def test_stoker_train_refuses_bad_options(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stoker", "train", "--epochs", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "argument --epochs: must be 1 or more, got 0" in result.stderr


def test_stoker_train_on_a_users_store(tmp_path):
    import numpy as np

    from stoker import store

    rng = np.random.default_rng(0)
    x = np.zeros((60, 32, 32, 1), np.uint8)
    y = rng.integers(0, 3, 60).astype(np.int32)
    for image, label in zip(x, y, strict=True):  # a learnable pattern per class
        image[label * 10:label * 10 + 8] = 255
    store.save(tmp_path / "mine.stoker", (x, y), classes=["top", "middle", "bottom"],
               progress=False)
    store.save(tmp_path / "floats.stoker", (x.astype(np.float32), y), classes=["a", "b", "c"],
               progress=False)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "train", "--data", str(tmp_path / "mine.stoker"),
         "--epochs", "1", "--batch-size", "16", "--workers", "1", "--out",
         str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "54 training and 6 validation samples" in result.stdout
    # 54 samples in batches of 16: 4 batches an epoch, too few to judge, and it says so
    assert "loader:" in result.stdout and "not enough data to judge" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "stoker", "train", "--data", str(tmp_path / "floats.stoker"),
         "--out", str(tmp_path / "run2")], capture_output=True, text=True, timeout=300,
        env=env)
    assert bad.returncode == 2 and "square uint8 HxWx1 images" in bad.stderr
    store.save(tmp_path / "jpegs.stoker", ([b"\xff\xd8\xff" + bytes(20)] * 3, y[:3]),
               classes=["a", "b", "c"])
    encoded = subprocess.run(
        [sys.executable, "-m", "stoker", "train", "--data", str(tmp_path / "jpegs.stoker"),
         "--out", str(tmp_path / "run3")], capture_output=True, text=True, timeout=300,
        env=env)
    assert encoded.returncode == 2 and "holds encoded images" in encoded.stderr
    assert "without --encoded, with --size 64" in encoded.stderr
