"""The README's code blocks run as written, each in a fresh process from the
repository's root (as a reader would paste them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_block(heading: str, index: int = 0) -> str:
    """The ``index``-th Python block after the README heading ``heading``."""
    readme = (ROOT / "README.md").read_text()
    position = readme.index(f"\n## {heading}\n")
    for _ in range(index + 1):
        position = readme.index("```python\n", position) + len("```python\n")
    return readme[position:readme.index("\n```", position)]


@pytest.mark.slow
def test_the_questions_job_runs_as_written(tmp_path):
    block = readme_block("The question's job, moved onto stoker")
    assert "distort_sample" in block and "undistorted" in block
    script = tmp_path / "question_job.py"
    script.write_text(block + "\nprint('val_accuracy' in model.history.history)\n")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=400, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().endswith("True"), done.stdout[-2000:]
    assert "will be ignored" not in done.stderr  # no Keras warning about shuffle=
