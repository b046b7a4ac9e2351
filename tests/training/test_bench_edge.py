"""``edgelake bench edge``: both TFLite models timed and a real agent run on the registry's production vision model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edgelake.bench.edge import production_dir
from edgelake.control_db import ControlDb
from edgelake.lake.catalog import Lake
from edgelake.settings import Settings
from edgelake.training import registry

if TYPE_CHECKING:
    from edgelake.training.vision import VisionResult


def test_bench_edge_reports_latency_size_and_agent_memory(vision_run: VisionResult, tmp_path: Path) -> None:
    lake_root, data_dir = str(tmp_path / "lake"), tmp_path / "data"
    registry.publish_run(
        Lake(lake_root), ControlDb.from_settings(Settings(data_dir=data_dir, lake_root=lake_root)), data_dir / registry.KEYS_DIR, "vision",
        vision_run.files, metrics=vision_run.metrics,
        lineage=vision_run.lineage, extra=vision_run.extra, promote_to="production",
    )
    env = {**os.environ, "EDGELAKE_DATA_DIR": str(data_dir), "EDGELAKE_LAKE_ROOT": lake_root}
    command = [sys.executable, "-m", "edgelake", "bench", "edge", "--runs", "20", "--frames", "40", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"float_ms", "int8_ms", "size_ratio", "agent_rss_mb"} <= set(figures)
    assert figures["float_ms"] > 0 and figures["int8_ms"] > 0
    assert figures["size_ratio"] > 3
    assert figures["agent_rss_mb"] > 0
    assert figures["model"] == "vision v1" and figures["agent_frames"] == 40


def test_without_a_production_vision_model_the_bench_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="edgelake train vision"):
        production_dir(Settings(data_dir=tmp_path / "data", lake_root=str(tmp_path / "lake")))
