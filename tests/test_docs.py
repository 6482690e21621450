"""Every code block of the README and of docs/ runs as written.

Each block runs in a fresh process, in a folder of its own, after the fixture named in
the ``<!-- setup: ... -->`` comment just above it (Python, from ``tests/doc_fixtures.py``;
for a shell block it makes the files the commands read). A block that another test runs
with assertions of its own says so with ``<!-- tested by PATH[::TEST] ... -->``, and this
test checks that each named test exists. Output blocks are fenced as ``text``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*(setup|tested by):?\s*(.*?)\s*-->\Z", re.S)
RUN = {"python", "sh"}
NOT_CODE = {"text"}


@dataclass(frozen=True)
class Block:
    document: Path
    line: int
    language: str
    code: str
    directive: str | None  # "setup" or "tested by"
    argument: str

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            before = text[:match.start()].rstrip()
            directive = DIRECTIVE.search(before[before.rfind("<!--"):]) if \
                before.endswith("-->") else None
            found.append(Block(document, text.count("\n", 0, match.start()) + 1,
                               match.group(1), match.group(2),
                               directive.group(1) if directive else None,
                               directive.group(2) if directive else ""))
    return found


BLOCKS = blocks()


def test_the_documents_have_code_blocks_and_each_says_what_it_is():
    assert len([b for b in BLOCKS if b.language in RUN]) >= 8
    for block in BLOCKS:
        assert block.language in RUN | NOT_CODE, (
            f"{block.name}: fence the block as one of {sorted(RUN | NOT_CODE)}")


CITED = re.compile(r"(?:tests/)?(test_\w+\.py)::(\w+)")


def test_every_test_the_documents_cite_exists():
    """docs/errors.md pairs each mistake with the tests that show its message, and the
    other documents cite tests for their claims: a renamed or deleted test must not
    leave a citation of nothing behind."""
    documents = [*DOCUMENTS, ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md"]
    cited = [(document.relative_to(ROOT), *match.groups()) for document in documents
             if document.is_file() for match in CITED.finditer(document.read_text())]
    assert len({c for c in cited if c[0] == Path("docs/errors.md")}) >= 20
    for document, file, test in cited:
        source = ROOT / "tests" / file
        assert source.is_file(), f"{document} cites tests/{file}, which does not exist"
        assert re.search(rf"^def {test}\(", source.read_text(), re.M), (
            f"{document} cites {file}::{test}, which {file} does not define")


def _environment() -> dict[str, str]:
    bin_folder = str(Path(sys.executable).parent)
    return {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "KERAS_BACKEND": "tensorflow",
            "PATH": f"{bin_folder}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in RUN],
                         ids=lambda b: b.name)
def test_every_code_block_runs(block, tmp_path):
    if block.directive == "tested by":
        targets = block.argument.split()
        assert targets, f"{block.name}: 'tested by' names no test"
        for target in targets:
            path, _, test = target.partition("::")
            assert (ROOT / path).is_file(), f"{block.name}: {path} does not exist"
            if test:
                assert f"def {test}(" in (ROOT / path).read_text(), \
                    f"{block.name}: {path} has no test {test}"
        return
    setup = block.argument if block.directive == "setup" else ""
    if block.language == "python":
        (tmp_path / "block.py").write_text(f"{setup}\n{block.code}")
        command = [sys.executable, "block.py"]
    else:
        (tmp_path / "setup.py").write_text(setup)
        (tmp_path / "block.sh").write_text(f"{sys.executable} setup.py\n{block.code}")
        command = ["bash", "-euo", "pipefail", "block.sh"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400,
                          cwd=tmp_path, env=_environment())
    assert done.returncode == 0, f"{block.name} failed:\n{done.stderr[-4000:]}"
    for symptom in ("Traceback", "Exception ignored", "will be ignored"):
        assert symptom not in done.stderr, f"{block.name}:\n{done.stderr[-4000:]}"
