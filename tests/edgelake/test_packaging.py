"""What the two distributions install: edgelake (every stage, under the edgelake namespace) and edgelake-edge (the core
the agent needs and edgelake.edge, nothing of the cloud side)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.edge.conftest import edge_python

REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "lake", "training", "api", "edge", "bench")
EDGE_MODULES = {
    "edgelake.console", "edgelake.contracts", "edgelake.device_api", "edgelake.errors", "edgelake.fashion_mnist", "edgelake.files",
    "edgelake.interpreters", "edgelake.kafka", "edgelake.logs", "edgelake.retry", "edgelake.settings", "edgelake.signing",
    "edgelake.edge", "edgelake.edge.__main__", "edgelake.edge.agent", "edgelake.edge.cli", "edgelake.edge.client", "edgelake.edge.enrollment",
    "edgelake.edge.events", "edgelake.edge.fleet", "edgelake.edge.forwarding", "edgelake.edge.frames", "edgelake.edge.inference",
    "edgelake.edge.options", "edgelake.edge.outbox", "edgelake.edge.runner", "edgelake.edge.state", "edgelake.edge.updates",
}


def run(python: Path | str, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-I", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """edgelake's wheel, built from the files git would commit (a copy, so a stale build/ cannot leak in)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    files = source.parent / "files"
    files.write_text("".join(f"{name}\n" for name in listing.stdout.splitlines() if (REPO / name).exists() or (REPO / name).is_symlink()))
    subprocess.run(f"tar -cf - -T {files} | tar -xf - -C {source}", shell=True, cwd=REPO, check=True, timeout=120)
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(source)]
    subprocess.run(command, check=True, timeout=300)
    return next(out.glob("edgelake-*.whl"))


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"edgelake", "edgelake-0.1.0.dist-info"}
    for stage in STAGES:
        assert f"edgelake/{stage}/__init__.py" in names
    assert "edgelake/api/dashboard/index.html" in names
    assert "edgelake/lake/features/online_redis.lua" in names  # the online features' Redis script, read as package data


def test_a_venv_from_the_wheel_imports_edgelake_api_and_not_api(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", str(wheel)], check=True, timeout=300)
    # The cloud dependencies come from the main venv (a path line: its own .pth files, edgelake's editable finder among them, are not read).
    site = Path(run(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])", tmp_path).stdout.strip())
    (site / "zz-main-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for stage in ("api", "ingest", "lake", "training", "edge", "bench"):
        assert "ModuleNotFoundError" in run(python, f"import {stage}", tmp_path).stderr
    result = run(python, "import edgelake.api.app, edgelake.cli; print(edgelake.api.app.__file__)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(site)
    migrated = run(python, f"from edgelake.control_db import ControlDb; ControlDb('sqlite:///{tmp_path}/control.sqlite').migrate()", tmp_path)
    assert migrated.returncode == 0, migrated.stderr  # the control plane's migrations ship in the wheel


@pytest.mark.parametrize("runtime", ["litert", "tflite_runtime"])
def test_the_edge_venv_holds_the_core_and_the_edge_only(runtime: str, tmp_path: Path) -> None:
    python = edge_python(runtime)
    listing = run(python, "import edgelake, pkgutil; print(*sorted(m.name for m in pkgutil.walk_packages(edgelake.__path__, 'edgelake.')))", tmp_path)
    assert set(listing.stdout.split()) == EDGE_MODULES
    for name in ("api", "edgelake.api", "edgelake.lake", "edgelake.training", "edgelake.ingest", "edgelake.bench", "edgelake.cli"):
        assert "ModuleNotFoundError" in run(python, f"import {name}", tmp_path).stderr
    distributions = run(python, "import importlib.metadata as m; print(*sorted(d.metadata['Name'] for d in m.distributions()))", tmp_path).stdout.split()
    assert "edgelake-edge" in distributions and "edgelake" not in distributions


def test_the_edge_distribution_is_edgelake_s_version_and_its_links_resolve() -> None:
    edge_project = tomllib.loads((REPO / "infra" / "edge-dist" / "pyproject.toml").read_text())["project"]
    assert edge_project["version"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    links = sorted((REPO / "infra" / "edge-dist" / "edgelake").iterdir())
    assert links and all(link.is_symlink() and link.exists() for link in links)
