"""The import layers in pyproject.toml's [tool.importlinter]: they hold, and they catch a core module reaching up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "lake", "training", "api", "edge", "bench", "cli")
CONTRACTS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the ``edgelake`` package found under ``root``, with ``root``'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(CONTRACTS)} kept, 0 broken" in result.stdout


def test_every_core_module_is_under_the_core_contract() -> None:
    """A new core module cannot slip past the contract by not being listed in it."""
    graph = grimp.build_graph("edgelake")
    core = {module for module in graph.modules if module.count(".") == 1 and module.split(".")[1] not in STAGES}
    listed = set(next(contract for contract in CONTRACTS if contract["id"] == "core")["source_modules"])
    assert core - {"edgelake.__main__"} == listed  # __main__ is `python -m edgelake`: the CLI's own entry point


def test_a_core_module_importing_a_stage_breaks_the_contract(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(REPO / "pyproject.toml", copy)
    shutil.copytree(REPO / "edgelake", copy / "edgelake", ignore=shutil.ignore_patterns("__pycache__"))  # links followed
    with (copy / "edgelake" / "settings.py").open("a") as settings:
        settings.write("\nfrom edgelake.lake.tables import TABLES  # noqa: E402\n")
    result = lint_imports(copy)
    assert result.returncode == 1
    assert "The core imports no stage and not the CLI BROKEN" in result.stdout
    assert "edgelake.settings -> edgelake.lake.tables" in result.stdout
