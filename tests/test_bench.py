"""stoker bench: a table and a PNG plot of samples/s against workers."""

from __future__ import annotations

import subprocess
import sys

import cv2
import pytest

from stoker import bench
from stoker.cli import main


def test_bench_writes_its_table_and_plot(tmp_path, capsys):
    out = tmp_path / "bench.png"
    assert main(["bench", "--workers", "0,1", "--samples", "512", "--batch-size", "128",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("stoker ")]
    assert [line.split()[1] for line in rows] == ["0", "1"]
    assert "Keras PyDataset (threads)" in printed  # compared when Keras is installed
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 200 and picture.shape[1] > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.png"]


def test_bench_prints_no_tensorflow_banners(tmp_path):
    """TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL; the CLI holds them back."""
    done = subprocess.run([sys.executable, "-m", "stoker", "bench", "--workers", "1",
                           "--samples", "256", "--batch-size", "128", "--out", "b.png"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Keras PyDataset" in done.stdout
    for banner in ("absl::InitializeLog", "oneDNN", "Traceback"):
        assert banner not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize(("argv", "message"), [
    (["--workers", "a,b"], "comma-separated integers"),
    (["--workers", "-1"], ">= 0"),
    (["--samples", "10"], "at least one --batch-size"),
    (["--out", "plot.jpg"], "ending in .png"),
    (["--recipe", "nowhere:nothing"], "cannot find recipe"),
])
def test_bench_refuses_bad_options(tmp_path, capsys, argv, message):
    assert main(["bench", "--no-compare", "--out", str(tmp_path / "b.png"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_table_shows_speed_ups_against_stoker_inline():
    rows = [bench.BenchRow("stoker", 0, 100.0), bench.BenchRow("stoker", 2, 190.0),
            bench.BenchRow("PyTorch DataLoader", 2, 150.0)]
    text = bench.table(rows)
    assert "1.90x" in text and "1.50x" in text and text.count("\n") == 3
