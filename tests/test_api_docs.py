"""The public surface is documented: every public name has a docstring, every parameter
of every public callable is named in it, and the reference (MkDocs with mkdocstrings,
from those docstrings) builds with warnings as errors."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ["stoker", "stoker.augment", "stoker.augment.functional", "stoker.store",
                  "stoker.adapters.keras", "stoker.adapters.tf", "stoker.adapters.torch",
                  "stoker.datasets.glyphs", "stoker.datasets.etl", "stoker.stats",
                  "stoker.errors"]


def _public_objects():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            target = getattr(module, name)
            if inspect.ismodule(target) or not (inspect.isclass(target) or callable(target)):
                continue
            yield f"{module_name}.{name}", target


def _documented(target) -> str:
    return inspect.getdoc(target) or ""


def _undocumented_parameters(function, doc: str) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters
            if name not in ("self", "cls") and not name.startswith("_")
            and not re.search(rf"\b{re.escape(name)}\b", doc)]


def _own_methods(cls):
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            yield name, member.fget, False
        elif inspect.isfunction(member):
            yield name, member, True


def test_every_public_name_has_a_docstring_naming_each_parameter():
    problems = []
    for qualified, target in _public_objects():
        doc = _documented(target)
        if not doc:
            problems.append(f"{qualified}: no docstring")
            continue
        if inspect.isclass(target):
            init_doc = doc + "\n" + (inspect.getdoc(target.__init__) or "")
            protocol = getattr(target, "_is_protocol", False)
            if not protocol and (dataclasses.is_dataclass(target)
                                 or target.__init__ is not object.__init__):
                for name in _undocumented_parameters(target, init_doc):
                    problems.append(f"{qualified}: parameter {name!r} not described")
            if issubclass(target, BaseException):
                continue
            for name, method, check_parameters in _own_methods(target):
                method_doc = inspect.getdoc(method) or ""
                if not method_doc:
                    problems.append(f"{qualified}.{name}: no docstring")
                elif check_parameters:
                    for parameter in _undocumented_parameters(method, method_doc):
                        problems.append(f"{qualified}.{name}: parameter {parameter!r} "
                                        "not described")
        else:
            for name in _undocumented_parameters(target, doc):
                problems.append(f"{qualified}: parameter {name!r} not described")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_the_api_reference_builds_without_warnings(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists() and shutil.which("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]'")
    done = subprocess.run([str(mkdocs if mkdocs.exists() else "mkdocs"), "build", "--strict",
                           "--site-dir", str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-6000:]
    page = (tmp_path / "site" / "reference" / "loader" / "index.html").read_text()
    assert "batch_size" in page and "state_dict" in page
