"""``edgelake bench api``: a real server and load generator, briefly, at low rates; and the sustainable-rate search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgelake.bench.api import MAX_RATE, sustainable_rate


def test_bench_api_reports_latency_and_errors_of_both_variants(tmp_path: Path) -> None:
    env = {**os.environ, "EDGELAKE_DATA_DIR": str(tmp_path), "EDGELAKE_LAKE_ROOT": str(tmp_path / "lake"), "EDGELAKE_SPARK_MASTER": "local[1]"}
    command = [sys.executable, "-m", "edgelake", "bench", "api", "--rates", "10,20", "--seconds", "1", "--no-search", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {"score", "baseline", "shadow", "load_average"}
    shadow = figures["shadow"]
    assert set(shadow) == {"rounds", "without", "with", "added_p99_ms"} and shadow["rounds"] == 3
    for variant in (figures["score"], figures["baseline"], shadow["without"], shadow["with"]):
        assert set(variant) == {"10", "20"}
        for measured in variant.values():
            assert set(measured) == {"p50_ms", "p99_ms", "errors"}
            assert 0 < measured["p50_ms"] <= measured["p99_ms"]
    assert all(v[rate]["errors"] == 0 for v in (figures["score"], shadow["without"], shadow["with"]) for rate in ("10", "20"))
    assert shadow["added_p99_ms"] == {rate: round(shadow["with"][rate]["p99_ms"] - shadow["without"][rate]["p99_ms"], 2) for rate in ("10", "20")}


@pytest.mark.parametrize(("capacity", "start", "found"), [(700, 100, 700), (7, 10, 7), (5000, 100, 3200), (0, 10, 0)])
def test_the_sustainable_rate_is_found_by_doubling_then_bisecting(capacity: int, start: int, found: int) -> None:
    tried: list[int] = []

    def sustains(rate: int) -> bool:
        tried.append(rate)
        return rate <= capacity

    assert sustainable_rate(sustains, start) == found
    assert max(tried) <= MAX_RATE and len(tried) <= 12
