"""petq's layering, as pyproject.toml's [tool.importlinter] contracts state it: the CLI on
top and imported by nothing else, the faces above the engine, the engine above the library,
no import cycles; and no module reaching into another's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the petq package under `root` (its pyproject.toml's contracts)."""
    command = shutil.which("lint-imports")
    if command is None:
        pytest.fail("lint-imports is missing: pip install -r requirements-dev.txt")
    return subprocess.run([command, "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PATH": str(Path(sys.executable).parent),
                                            "PYTHONPATH": str(root)})


def test_the_import_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("stats.py", "import petq.report", "No import cycles in petq"),  # report imports stats
    ("workspace.py", "import petq.engine", "Faces above the engine"),
    ("sweep.py", "import petq.cli", "The CLI is the top"),
])
def test_a_cycle_or_a_breach_fails_the_check(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "petq", tmp_path / "petq",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "petq" / module
    path.write_text(path.read_text() + f"\n{line}  # a deliberate breach\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert f"{broken}" in done.stdout and "BROKEN" in done.stdout


def test_no_module_imports_another_s_private_names():
    found = []
    for path in sorted((ROOT / "petq").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("petq"):
                found += [f"{path.name}: from {node.module} import {alias.name}"
                          for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not found
