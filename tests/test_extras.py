"""A missing optional dependency is named with the ``pip install`` that brings it, by
whatever needed it: each case runs in a fresh process where that module cannot be
imported (``sys.modules[name] = None``, Python's own way to block an import)."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOADER = """
import numpy as np, stoker
loader = stoker.Loader(stoker.from_arrays(np.zeros((8, 2), np.float32)), batch_size=4,
                       workers=0)
"""

CASES = [
    # (blocked modules, what the user does, the words that must be said)
    (["keras"], "loader.keras()",
     "stoker.adapters.keras (loader.keras()) needs Keras (with TensorFlow), which cannot be "
     "imported here"),
    (["tensorflow"], "loader.keras()", "pip install 'stoker[keras]'"),
    (["keras"], "from stoker.adapters.keras import BackupAndRestore",
     "pip install 'stoker[keras]'"),
    (["tensorflow"], "loader.tf_dataset()",
     "loader.tf_dataset() needs TensorFlow, which cannot be imported here"),
    (["torch"], "loader.torch()", "loader.torch() needs PyTorch, which cannot be imported "
     "here (import of torch halted; None in sys.modules): pip install 'stoker[torch]'"),
    (["PIL"], "from stoker.datasets import glyphs; glyphs.render(('亜',), glyphs.TRAIN_FACES[0])",
     "rendering the built-in kanji needs Pillow, which cannot be imported here"),
    (["matplotlib"], "from stoker import bench; bench.plot([], 'p.png', 't')",
     "the plot of samples/s needs matplotlib, which cannot be imported here"),
]


@pytest.mark.parametrize(("blocked", "call", "said"), CASES, ids=[c[1][:40] for c in CASES])
def test_a_missing_extra_is_named_with_its_install(tmp_path, blocked, call, said):
    script = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
              + LOADER + f"try:\n    {call}\nexcept ModuleNotFoundError as error:\n"
              "    print(error)\n    assert error.__cause__ is not None\n"
              "else:\n    print('nothing raised')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert said in done.stdout, done.stdout + done.stderr


def test_stoker_train_without_keras_is_one_line_naming_the_train_extra(tmp_path):
    script = ("import sys\nsys.modules['keras'] = sys.modules['tensorflow'] = None\n"
              "from stoker.cli import main\n"
              "sys.exit(main(['train', '--epochs', '1', '--classes', '2', '--out', 'r']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["stoker train: training needs Keras (with TensorFlow), which cannot be "
                     "imported here (import of keras halted; None in sys.modules): "
                     "pip install 'stoker[train]'"], done.stderr
    assert not (tmp_path / "r").exists()


def test_stoker_bench_without_matplotlib_says_so_before_measuring(tmp_path):
    """It measured for minutes, printed the table, then failed on the plot."""
    script = ("import sys\nsys.modules['matplotlib'] = None\nfrom stoker.cli import main\n"
              "sys.exit(main(['bench', '--no-compare', '--samples', '512']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.strip().splitlines() == [
        "stoker bench: stoker bench's plot (--out) needs matplotlib, which cannot be imported "
        "here (import of matplotlib halted; None in sys.modules): pip install matplotlib"]
