"""The rollout gate against a real server: a canary is promoted or rolled back on the accuracy and health its devices report."""

from __future__ import annotations

from functools import cached_property

import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from typer.testing import CliRunner

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb
from edgelake.api.devices import DeviceStore
from edgelake.api.keys import KeyStore
from edgelake.api.rollout_gate import Evidence, Tally
from edgelake.cli import app as cli
from edgelake.settings import Settings
from tests.api.conftest import publish_model, serving
from tests.api.test_devices import enroll
from tests.api.test_errors_and_auth import assert_problem
from edgelake.training import registry
from edgelake.training.registry.rollout import judge

MODEL = "fraud"
LABELLED = 40  # per report
GATE = {"canary_percent": 50, "canary_version": 2, "promote_after_reports": 6, "min_labelled": 200, "max_accuracy_drop": 0.02}


@dataclass
class Unit:
    """A simulated edge device: its id, key and the version of the model it runs."""

    id: str
    token: str
    running: int = 0


@dataclass
class GatedFleet:
    """A server over a lake with ``fraud`` v1 in production and v2, v3 published, and enrolled devices on both sides of a 50% canary."""

    settings: Settings
    http: httpx2.Client
    admin_token: str
    devices: list[Unit] = field(default_factory=list)

    @cached_property
    def models(self) -> registry.Registry:
        """The registry, with connections of its own kept for the test."""
        return registry.Registry.from_settings(self.settings)

    def admin(self, method: str, path: str, **options: Any) -> httpx2.Response:
        return self.http.request(method, path, headers={"Authorization": f"Bearer {self.admin_token}"}, **options)

    def set_gate(self, **rules: Any) -> dict[str, Any]:
        response = self.admin("PUT", f"/v1/models/{MODEL}/rollout", json={**GATE, **rules})
        assert response.status_code == 200, response.text
        return response.json()

    def rollout(self) -> dict[str, Any]:
        response = self.admin("GET", f"/v1/models/{MODEL}/rollout")
        assert response.status_code == 200, response.text
        return response.json()

    def canary(self) -> list[Unit]:
        return [unit for unit in self.devices if registry.rollout_bucket(MODEL, unit.id) < GATE["canary_percent"]]

    def beat(self, unit: Unit, report: Mapping[str, int] | None = None, events: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """One heartbeat of ``unit``, which then runs the version it is assigned, as an agent would; the assignment."""
        body = {"models": {MODEL: unit.running} if unit.running else {}, "reports": {MODEL: report} if report else {}, "events": list(events)}
        answer = self.http.post(f"/v1/devices/{unit.id}/heartbeat", json=body, headers={"Authorization": f"Bearer {unit.token}"})
        assert answer.status_code == 200, answer.text
        unit.running = answer.json()["models"][MODEL]["version"]
        return answer.json()["models"][MODEL]

    def round(self, accuracy: Mapping[int, float]) -> None:
        """A heartbeat of every device at once, each reporting LABELLED labelled inferences at its version's ``accuracy``."""

        def beat(unit: Unit) -> dict[str, Any]:
            correct = round(LABELLED * accuracy[unit.running])
            return self.beat(unit, {"version": unit.running, "inferences": LABELLED + 10, "labelled": LABELLED, "correct": correct})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(beat, self.devices))

    def stage(self, version: int) -> str:
        return registry.versions(self.models, MODEL)[version]

    def history(self, version: int) -> list[registry.Transition]:
        return [t for t in registry.read_book(self.models, MODEL).history if t.version == version]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[GatedFleet]:
    settings = Settings(data_dir=tmp_path / "data", lake_root=str(tmp_path / "lake"))
    for run in ("run1", "run2", "run3"):
        publish_model(settings, tmp_path / run)
    registry.promote(registry.Registry.from_settings(settings), MODEL, 1, "production")
    admin_token = KeyStore(ControlDb.from_settings(settings)).create("test admin", "admin")[1]
    with serving(create_app(settings, rate_per_s=1e6, burst=10**6)) as url, httpx2.Client(base_url=url, timeout=30) as http:
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30) as admin:
            fleet = GatedFleet(settings, http, admin_token)
            while len(fleet.devices) < 10 or not 3 <= len(fleet.canary()) <= len(fleet.devices) - 3:
                device = enroll(http, admin, f"cam-{len(fleet.devices)}")
                fleet.devices.append(Unit(device["device_id"], device["device_token"]))
                assert len(fleet.devices) < 40
        for unit in fleet.devices:
            assert fleet.beat(unit) == {"version": 1, "track": "production"}
        yield fleet


def test_a_better_canary_is_promoted_once_and_every_device_moves_to_it(fleet: GatedFleet) -> None:
    assert fleet.set_gate()["policy"]["canary_version"] == 2
    assert fleet.stage(2) == "canary"
    for _ in range(3):  # 1: canary devices install v2; 2, 3: 6 healthy canary reports and 200+ labelled a side
        fleet.round({1: 0.8, 2: 0.9})
        if registry.current(fleet.models, MODEL) == 2:
            break
    assert registry.current(fleet.models, MODEL) == 2, fleet.rollout()["gate"]
    assert fleet.stage(1) == "archived"
    promoted = [t for t in fleet.history(2) if t.to == "production"]
    assert len(promoted) == 1 and promoted[0].actor == "rollout-gate", promoted
    reason = promoted[0].reason or ""
    assert "canary v2 accuracy 0.900 on" in reason and "vs production v1 0.800 on" in reason, reason
    assert "(within the max drop 0.02)" in reason and "healthy reports" in reason, reason
    after = fleet.rollout()
    assert after["production"] == 2 and after["policy"]["canary_version"] is None and after["policy"]["canary_percent"] == 50
    assert after["gate"] is None
    assert all(fleet.beat(unit) == {"version": 2, "track": "production"} for unit in fleet.devices)


def test_a_worse_canary_is_rolled_back_and_devices_return_to_production(fleet: GatedFleet) -> None:
    fleet.set_gate()
    for _ in range(3):
        fleet.round({1: 0.8, 2: 0.7})
    assert fleet.stage(2) == "rolled_back" and registry.current(fleet.models, MODEL) == 1
    rejected = fleet.history(2)[-1]
    assert rejected.actor == "rollout-gate" and "canary v2 accuracy 0.700" in (rejected.reason or ""), rejected
    assert "vs production v1 0.800" in (rejected.reason or "") and "(more than the max drop 0.02)" in (rejected.reason or "")
    assert fleet.rollout()["policy"]["canary_version"] is None
    assert all(fleet.beat(unit) == {"version": 1, "track": "production"} for unit in fleet.devices)


def test_a_device_claiming_implausible_counts_is_refused(fleet: GatedFleet) -> None:
    liar = fleet.devices[0]
    body = {"models": {MODEL: 1}, "reports": {MODEL: {"version": 1, "inferences": 10**9, "labelled": 10**9, "correct": 0}}}
    answer = fleet.http.post(f"/v1/devices/{liar.id}/heartbeat", json=body, headers={"Authorization": f"Bearer {liar.token}"})
    problem = assert_problem(answer, 422)
    assert "1,000,000,000 inferences since the previous heartbeat" in problem["errors"][0]["msg"], problem


def test_one_device_claiming_a_lot_does_not_decide_for_the_fleet(fleet: GatedFleet) -> None:
    # before: a production device's 9,000 labelled inferences, none correct, sank production's pooled accuracy, so a worse
    # canary was promoted; now each side's accuracy is the median of its devices'
    fleet.set_gate()
    liar = next(unit for unit in fleet.devices if unit not in fleet.canary())
    fleet.beat(liar, {"version": 1, "inferences": 9_000, "labelled": 9_000, "correct": 0})
    for _ in range(3):
        fleet.round({1: 0.8, 2: 0.7})
    assert fleet.stage(2) == "rolled_back" and registry.current(fleet.models, MODEL) == 1
    assert "vs production v1 0.800" in (fleet.history(2)[-1].reason or "")


@pytest.mark.parametrize(
    ("report", "events", "said"),
    [
        (
            {"version": 1, "inferences": 50},
            [{"kind": "smoke_test_failed", "model": MODEL, "version": 2, "detail": "outputs differ"}],
            "smoke_test_failed: outputs differ",
        ),
        ({"version": 2, "inferences": 50, "errors": 3}, [], "3 errors in 50 inferences"),
    ],
    ids=["smoke-test-failed", "errors"],
)
def test_one_unhealthy_canary_report_rolls_the_canary_back_at_once(
    fleet: GatedFleet, report: dict[str, int], events: list[dict[str, Any]], said: str
) -> None:
    fleet.set_gate()
    first = fleet.canary()[0]
    assert fleet.beat(first) == {"version": 2, "track": "canary"}
    assert fleet.beat(first, report, events) == {"version": 1, "track": "production"}
    assert fleet.stage(2) == "rolled_back"
    reason = fleet.history(2)[-1].reason or ""
    assert f"1 unhealthy canary report(s) of v2, the first from {first.id}: {said}" == reason


def test_a_canary_without_enough_evidence_by_its_deadline_is_rolled_back(fleet: GatedFleet) -> None:
    fleet.set_gate(deadline_s=2)
    set_at = time.monotonic()
    fleet.beat(fleet.devices[0])
    assert fleet.stage(2) == "canary"
    time.sleep(max(0.0, set_at + 2.1 - time.monotonic()))
    fleet.beat(fleet.devices[0])
    assert fleet.stage(2) == "rolled_back"
    reason = fleet.history(2)[-1].reason or ""
    assert reason.startswith("not enough evidence after 2 s: 0 of 6 healthy canary reports; 0 of 200 labelled canary inferences"), reason


def test_no_decision_before_the_reports_and_labels_are_in_and_the_gate_shows_its_progress(fleet: GatedFleet) -> None:
    fleet.set_gate(min_labelled=100_000)
    for _ in range(3):
        fleet.round({1: 0.8, 2: 0.9})
    assert fleet.stage(2) == "canary" and registry.current(fleet.models, MODEL) == 1
    gate = fleet.rollout()["gate"]
    canary, production = len(fleet.canary()), len(fleet.devices) - len(fleet.canary())
    assert gate["canary"] == {
        "version": 2, "healthy_reports": 2 * canary, "unhealthy_reports": 0, "labelled": 2 * canary * LABELLED,
        "correct": 2 * canary * 36, "accuracy": 0.9, "device_accuracies": [0.9] * canary,
    }  # the first round after the policy, canary devices still ran v1
    assert gate["production"]["version"] == 1 and gate["production"]["labelled"] == 3 * production * LABELLED
    assert gate["production"]["accuracy"] == 0.8 and gate["first_failure"] is None
    assert gate["missing"] == [
        f"{2 * canary * LABELLED:,} of 100,000 labelled canary inferences",
        f"{3 * production * LABELLED:,} of 100,000 labelled production inferences",
    ]
    assert 800 < gate["deadline_s_left"] <= 900


def test_reports_are_stored_with_their_track_and_failure_events_without_a_report_too(fleet: GatedFleet) -> None:
    since = datetime.now(UTC)
    fleet.set_gate()
    first = fleet.canary()[0]
    events = [{"kind": "update_refused", "model": MODEL, "version": 3, "detail": "bad signature"}, {"kind": "activated", "model": MODEL, "version": 1}]
    fleet.beat(first, {"version": 1, "inferences": 5, "labelled": 4, "correct": 3}, events)
    stored = DeviceStore(ControlDb.from_settings(fleet.settings)).reports(MODEL, since)
    assert [(r.device_id, r.version, r.track, r.inferences, r.labelled, r.correct, r.failed, r.detail) for r in stored] == [
        (first.id, 1, "canary", 5, 4, 3, False, ""),
        (first.id, 3, "canary", 0, 0, 0, True, "update_refused: bad signature"),
    ]
    assert fleet.stage(2) == "canary"  # a failure of another version than the canary's is no evidence on it


def test_the_policy_is_validated_and_a_version_past_canary_is_refused(fleet: GatedFleet) -> None:
    for bad in ({"max_accuracy_drop": 1.5}, {"deadline_s": 0}, {"promote_after_reports": 0}, {"min_labelled": 0}, {"canary_percent": 101}, {"surprise": 1}):
        problem = assert_problem(fleet.admin("PUT", f"/v1/models/{MODEL}/rollout", json={**GATE, **bad}), 422)
        assert any(next(iter(bad)) in error["loc"] for error in problem["errors"]), problem
    refused = assert_problem(fleet.admin("PUT", f"/v1/models/{MODEL}/rollout", json={**GATE, "canary_version": 1}), 409)
    assert "v1 is production" in refused["detail"]
    fleet.set_gate()
    fleet.set_gate(canary_version=3)
    assert (fleet.stage(2), fleet.stage(3)) == ("archived", "canary")


def test_the_cli_sets_and_shows_the_rollout_policy(fleet: GatedFleet) -> None:
    env = {"EDGELAKE_DATA_DIR": str(fleet.settings.data_dir), "EDGELAKE_LAKE_ROOT": fleet.settings.lake_root, "USER": "ops"}
    runner = CliRunner()
    changed = runner.invoke(cli, ["models", "rollout", MODEL, "--canary-percent", "30", "--canary-version", "2", "--promote-after", "4"], env=env)
    assert changed.exit_code == 0, changed.output
    policy = registry.rollout_policy(fleet.models, MODEL)
    assert (policy.canary_percent, policy.canary_version, policy.promote_after_reports, policy.min_labelled, policy.actor) == (30, 2, 4, 200, "ops")
    shown = runner.invoke(cli, ["models", "rollout", MODEL], env=env)
    assert shown.exit_code == 0, shown.output
    for text in ("canary v2 on 30% of devices", "promote after 4 healthy reports", "v1 production, v2 canary, v3 candidate", "0 of 4 healthy canary reports"):
        assert text in " ".join(shown.stdout.split()), shown.stdout
    ended = runner.invoke(cli, ["models", "rollout", MODEL, "--canary-version", "0"], env=env)
    assert ended.exit_code == 0 and "no canary" in ended.stdout, ended.output
    refused = runner.invoke(cli, ["models", "rollout", MODEL, "--canary-version", "1"], env=env)
    assert refused.exit_code == 2 and "only a candidate or canary version" in refused.stderr, refused.output


def _evidence(canary: tuple[int, int, int, int], production: tuple[int, int] | None, *, failure: str | None = None, elapsed_s: float = 10) -> Evidence:
    healthy, unhealthy, labelled, correct = canary
    return Evidence(
        canary=Tally(version=2, healthy_reports=healthy, unhealthy_reports=unhealthy, labelled=labelled, correct=correct),
        production=Tally(version=None) if production is None else Tally(version=1, healthy_reports=9, labelled=production[0], correct=production[1]),
        first_failure=failure, elapsed_s=elapsed_s,
    )


@pytest.mark.parametrize(
    ("evidence", "outcome", "said"),
    [
        (_evidence((10, 0, 1000, 850), (2000, 1700)), "promote", "canary v2 accuracy 0.850 on 1,000 labelled vs production v1 0.850 on 2,000 (within"),
        (_evidence((10, 0, 1000, 831), (2000, 1700)), "promote", "0.831"),
        (_evidence((10, 0, 1000, 829), (2000, 1700)), "reject", "(more than the max drop 0.02), 10 healthy reports"),
        (_evidence((10, 1, 1000, 990), (2000, 1700), failure="dev_1: runtime_error"), "reject", "the first from dev_1: runtime_error"),
        (_evidence((9, 0, 1000, 990), (2000, 1700)), "wait", "short of evidence: 9 of 10 healthy canary reports"),
        (_evidence((10, 0, 199, 199), (2000, 1700)), "wait", "short of evidence: 199 of 200 labelled canary inferences"),
        (_evidence((10, 0, 1000, 990), (199, 199)), "wait", "short of evidence: 199 of 200 labelled production inferences"),
        (_evidence((10, 0, 1000, 990), (199, 199), elapsed_s=900), "reject", "not enough evidence after 900 s: 199 of 200 labelled production inferences"),
        (_evidence((10, 0, 200, 100), None), "promote", "no production version to compare with"),
    ],
)
def test_the_gate_decides_from_pooled_numbers(evidence: Evidence, outcome: str, said: str) -> None:
    policy = registry.RolloutPolicy(canary_percent=10, canary_version=2, promote_after_reports=10, min_labelled=200, max_accuracy_drop=0.02)
    verdict = judge(policy, evidence)
    assert verdict.outcome == outcome
    assert said in verdict.reason, verdict
