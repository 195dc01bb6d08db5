"""The package reads bottom-up: the layers contract in pyproject.toml ([tool.importlinter]) holds, and names every
module of ptune, so a new module has to take a place in it (docs/architecture.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def contract_layers() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [name.strip() for layer in contract["layers"] for name in layer.replace("|", ":").split(":")]


def test_every_ptune_module_has_a_layer():
    top = {f"ptune.{p.stem}" for p in (REPO / "ptune").glob("*.py") if p.stem != "__init__"}
    top |= {f"ptune.{p.parent.name}" for p in (REPO / "ptune").glob("*/__init__.py") if p.parent.name != "configs"}
    assert sorted(top - set(contract_layers())) == [], "place each new module in pyproject's [tool.importlinter]"
    assert sorted(set(contract_layers()) - top) == [], "a layer names a module that no longer exists"


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_no_module_imports_from_a_layer_above_it():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    done = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout
