"""stoker preview: the grid, the PNG written atomically, the command line."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from stoker import augment
from stoker.augment.preview import grid, load_recipe, write_png
from stoker.cli import main


def test_grid_shows_originals_then_what_a_loader_would_draw():
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 20, 1), dtype=np.uint8)
    recipe = augment.kanji_distort()
    picture = grid(images, recipe, augmentations=4, seed=5, zoom=1)
    assert picture.shape == (32 + 3 * (16 + 2) + 2, 5 * (20 + 2) + 2 + 4)
    assert picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[34:50, 2:22], images[0, :, :, 0])
    # The header holds text (white pixels on the grey), one line per header row.
    assert (picture[:16] == 255).any() and (picture[16:32] > 200).any()
    plain = grid(images, recipe, augmentations=4, seed=5, zoom=1, labels=False)
    np.testing.assert_array_equal(plain, picture[32:])
    # The same seed gives the same grid; another seed another one.
    np.testing.assert_array_equal(picture, grid(images, recipe, augmentations=4, seed=5, zoom=1))
    assert not np.array_equal(picture, grid(images, recipe, augmentations=4, seed=6, zoom=1))


def test_the_header_names_the_columns_and_the_recipe():
    images = np.zeros((2, 64, 64), np.uint8)
    picture = grid(images, augment.Sharpen(), augmentations=3, zoom=2, title="mine:recipe")
    # "original" over the first column, "epoch 0".."epoch 2" over the others: each label
    # sits in its own column's span, and the title line is drawn across the top.
    cell = 64 * 2 + 2
    for column in range(4):
        left = 2 + column * cell + (4 if column else 0)
        assert (picture[16:32, left:left + 128] > 128).any(), column
    assert (picture[:16] > 128).sum() > (picture[16:32, :cell] > 128).sum()
    tiny = grid(np.zeros((1, 8, 8), np.uint8), augment.Sharpen(), augmentations=12, zoom=1)
    assert tiny.shape == (32 + 10 + 2, 13 * 10 + 2 + 4)  # numbers only, still a header


def test_grid_of_float_and_colour_images():
    rng = np.random.default_rng(1)
    colour = rng.random((2, 12, 12, 3)).astype(np.float32)
    picture = grid(colour, augment.Rotate(), augmentations=2, zoom=3)
    assert picture.shape == (32 + 2 * (36 + 2) + 2, 3 * (36 + 2) + 2 + 4, 3)


def test_write_png_is_atomic_and_refuses_other_formats(tmp_path):
    image = np.zeros((10, 30), np.uint8)
    path = write_png(tmp_path / "sub" / "grid.png", image)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (10, 30)
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]
    with pytest.raises(ValueError, match=r"ending in \.png"):
        write_png(tmp_path / "grid.jpg", image)


def test_recipes_are_found_by_name():
    assert isinstance(load_recipe("kanji_distort"), augment.Compose)
    assert isinstance(load_recipe("stoker.augment:kanji_distort"), augment.Compose)
    assert isinstance(load_recipe("stoker.augment:Sharpen"), augment.Sharpen)
    assert load_recipe("stoker.train:training_transform").p == 0.5
    with pytest.raises(ValueError, match="module:callable"):
        load_recipe("no.such.module:recipe")


def test_cli_writes_a_png_of_the_expected_size(tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["preview", "--images", "4", "--augmentations", "5", "--zoom", "1",
                 "--out", str(out)]) == 0
    with open(out, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    picture = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert picture.shape == (32 + 4 * (64 + 2) + 2, 6 * (64 + 2) + 2 + 4)
    assert "4 images x 5 augmentations" in capsys.readouterr().out


def test_cli_reads_images_from_an_npy_file_and_reports_bad_input(tmp_path, capsys):
    images = np.random.default_rng(2).random((5, 24, 24)).astype(np.float16)
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "grid.png"
    assert main(["preview", "--from", str(tmp_path / "x.npy"), "--images", "2",
                 "--augmentations", "3", "--zoom", "2", "--out", str(out)]) == 0
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).shape == (32 + 2 * 50 + 2, 4 * 50 + 2 + 4)
    np.save(tmp_path / "flat.npy", np.zeros(10))
    assert main(["preview", "--from", str(tmp_path / "flat.npy"), "--out", str(out)]) == 2
    assert main(["preview", "--recipe", "nowhere:nothing", "--out", str(out)]) == 2
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    assert main(["preview", "--from", str(tmp_path / "junk.npy"), "--out", str(out)]) == 2
    errors = capsys.readouterr().err
    assert "expected images" in errors and "cannot find recipe" in errors
    assert "cannot read" in errors and "junk.npy as a .npy array: it is no .npy file" in errors


def test_the_installed_command_runs(tmp_path):
    out = tmp_path / "p.png"
    done = subprocess.run([sys.executable, "-m", "stoker", "preview", "--images", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0
