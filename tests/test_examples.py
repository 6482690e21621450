"""The examples in examples/ run as documented (each in its own processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_pytorch_ddp_trains_on_stoker_shards():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "ddp_train.py"), "--world-size", "2", "--epochs", "2",
         "--classes", "10"],
        capture_output=True, text=True, timeout=280, env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = re.findall(r"epoch (\d): loss ([\d.]+), accuracy [\d.]+ over (\d+) samples "
                        r"\(2 processes x (\d+) steps\)", done.stdout)
    assert [e[0] for e in epochs] == ["1", "2"], done.stdout
    for _, loss, samples, steps in epochs:
        # 10 classes x 10 training fonts = 100 samples, shards of 50 = 2 batches of 32
        assert int(steps) == 2 and int(samples) == 100 and float(loss) > 0
