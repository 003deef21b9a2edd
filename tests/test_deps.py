"""Every third-party package the code imports is declared in pyproject.toml and pinned in the constraints."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")

REPO = Path(__file__).resolve().parents[1]
# imported only where they are optional and say how to install them
OPTIONAL = {"bitsandbytes", "wandb", "tensorboard", "playwright", "ImageReward", "image-reward", "hpsv2"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level() -> set[str]:
    names: set[str] = set()
    for folder in ("senseflow", "evals"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("senseflow", "evals", "__future__")}


def test_every_imported_package_is_declared_and_pinned():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    pinned = {_norm(line.split("==")[0]) for line in (REPO / "requirements/constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    dists = packages_distributions()
    missing, unpinned = [], []
    for module in sorted(_imported_top_level()):
        names = {_norm(d) for d in dists.get(module, [])}
        if not names or names & {_norm(o) for o in OPTIONAL}:
            continue  # not installed here: an optional import (checked where it is used)
        if not names & declared:
            missing.append(f"{module} ({', '.join(sorted(names))})")
        if not names & pinned:
            unpinned.append(module)
    assert not missing, f"imported but not in pyproject.toml dependencies: {missing}"
    assert not unpinned, f"imported but not pinned in requirements/constraints.txt: {unpinned}"


def test_scipy_filelock_and_jinja2_are_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    assert {"scipy", "filelock", "jinja2", "huggingface-hub"} <= declared
