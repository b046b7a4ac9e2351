"""The Prometheus rules under promtool itself (Debian's prometheus package, see infra/system-packages.sh): they
load, and the alerts pass their unit tests in infra/prometheus/rules.test.yml."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edgelake.training.drift import PSI_MAJOR, TIME_OF_DAY_INPUTS

PROMETHEUS = Path(__file__).resolve().parents[2] / "infra" / "prometheus"
RULES = PROMETHEUS / "rules.yml"
DRIFT_ALERTS = {"EdgelakeFraudInputDrift", "EdgelakeFraudScoreDrift", "EdgelakeFraudTrafficMixDrift"}


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """promtool with ``args``; the test fails (not skips) without it, since `make setup` installs it."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: run `make setup` (infra/system-packages.sh installs Debian's prometheus)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_the_rules_load() -> None:
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alerts_pass_their_unit_tests() -> None:
    tested = run_promtool("test", "rules", str(PROMETHEUS / "rules.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_drift_alerts_fire_past_the_major_psi_the_code_names() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    assert DRIFT_ALERTS <= set(alerts)
    for name in DRIFT_ALERTS:
        assert float(re.fullmatch(r"edgelake_fraud_\w+_psi(\{[^}]*\})? > ([\d.]+)", alerts[name]).group(2)) == PSI_MAJOR, name  # type: ignore[union-attr]
    assert alerts["EdgelakeFraudInputDrift"].startswith(f'edgelake_fraud_input_psi{{input!~"{"|".join(TIME_OF_DAY_INPUTS)}"}}')


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    shutil.copy(RULES, tmp_path / "rules.yml")
    tests = (PROMETHEUS / "rules.test.yml").read_text().replace("input: log_amount}", "input: hour_sin}")
    (tmp_path / "rules.test.yml").write_text(tests)
    tested = run_promtool("test", "rules", str(tmp_path / "rules.test.yml"))
    assert tested.returncode != 0 and 'input="hour_sin"' in tested.stdout + tested.stderr
