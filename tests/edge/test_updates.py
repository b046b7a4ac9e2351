"""Over-the-air updates end to end: a real agent process, a real API, a real registry and real TFLite models.

The same scenario runs with the project's venv and with the slim venvs that hold only the
``edge`` extra (LiteRT) or tflite-runtime 2.14 with NumPy 1: the agent enrolls, takes
version 1, refuses a tampered artifact and a wrong signature, never activates a model that
fails its smoke test, and rolls back a model that fails at run time, serving on throughout.
"""

from __future__ import annotations

import base64
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


from edgelake.control_db import ControlDb
from edgelake.api.devices import DeviceStore
from edgelake.edge.runner import EdgeFiles
from edgelake.edge.updates import ModelSlot
from edgelake.contracts import EdgeInference
from edgelake.device_api import AgentEvent
from edgelake.kafka import read_topic
from edgelake.lake.catalog import Lake
from edgelake.signing import SIGNATURE
from tests.edge.conftest import VISION, Cloud, color_model, edge_python, main_python, shifted_expectations, start_agent, wait_for
from edgelake.training import registry

RUNTIMES = {"project venv": None, "edge extra (LiteRT)": "litert", "tflite-runtime 2.14, numpy<2": "tflite_runtime"}


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("runtime", list(RUNTIMES.values()), ids=list(RUNTIMES))
def test_the_agent_takes_good_versions_and_refuses_or_rolls_back_bad_ones(cloud: Cloud, vision_run, runtime: str | None, tmp_path: Path) -> None:
    python = main_python() if runtime is None else edge_python(runtime)
    files, extra = vision_run.files, vision_run.extra
    good = cloud.publish(files, extra)
    agent = start_agent(python, cloud, "ota-1", tmp_path / "device", "--fps", "20", "--heartbeat-s", "0.3", "--max-frames", "150")
    try:
        wait_for(lambda: agent.active() == good, f"v{good} active", agent=agent)

        tampered = cloud.publish(files, extra)
        flip_one_byte(cloud.version_dir(tampered) / extra["edge_model"])
        wait_for(lambda: str(tampered) in agent.installed().get("refused", {}), f"v{tampered} refused", agent=agent)
        assert "sha256 differs" in agent.installed()["refused"][str(tampered)]

        forged = cloud.publish(files, extra)
        manifest = (cloud.version_dir(forged) / "manifest.json").read_bytes()
        (cloud.version_dir(forged) / SIGNATURE).write_bytes(base64.b64encode(Ed25519PrivateKey.generate().sign(manifest)))
        wait_for(lambda: str(forged) in agent.installed().get("refused", {}), f"v{forged} refused", agent=agent)
        assert "not a valid signature" in agent.installed()["refused"][str(forged)]

        failing_smoke = cloud.publish(files, shifted_expectations(extra))
        wait_for(lambda: str(failing_smoke) in agent.installed().get("refused", {}), f"v{failing_smoke} refused", agent=agent)
        assert "the manifest expects" in agent.installed()["refused"][str(failing_smoke)]

        color_files, color_extra = color_model(tmp_path / "color")
        failing_at_run_time = cloud.publish(color_files, color_extra)
        wait_for(lambda: str(failing_at_run_time) in agent.installed().get("refused", {}), f"v{failing_at_run_time} rolled back", agent=agent)
        assert "runtime error" in agent.installed()["refused"][str(failing_at_run_time)]
        assert agent.active() == good

        summary = agent.finish()
    finally:
        agent.kill()

    assert summary["frames"] == 150 and summary["delivered"] == 150 and summary["queued"] == 0
    assert summary["model_version"] == good
    assert summary["events"]["update_refused"] == 2 and summary["events"]["smoke_test_failed"] == 1
    assert summary["events"]["rolled_back"] == 1 and summary["events"]["runtime_error"] >= 1
    # Every refusal and the rollback reached the cloud in a heartbeat, as a failed report of its version.
    failed = DeviceStore(ControlDb.from_settings(cloud.settings)).reports(VISION, datetime(2000, 1, 1, tzinfo=UTC), unhealthy_only=True)
    assert {report.version for report in failed} == {tampered, forged, failing_smoke, failing_at_run_time}
    results = [EdgeInference.parse(record.value) for record in read_topic(cloud.settings.kafka_bootstrap_servers, cloud.settings.topic(EdgeInference.topic))]
    mine = [result for result in results if result.device_id == summary["device_id"]]
    assert len(mine) == 150 and len({result.event_id for result in mine}) == 150
    assert {result.model_version for result in mine} == {str(good)}  # the failing version never made a result
    correct = sum(result.prediction == result.label for result in mine)
    assert correct / len(mine) > 0.5  # a real model on real labelled frames


def test_a_device_without_credentials_or_token_is_told_so(cloud: Cloud, tmp_path: Path) -> None:
    agent = start_agent(main_python(), cloud, "no-token", tmp_path / "device", "--max-frames", "1", token="enr_bogus")
    returncode = agent.process.wait(60)
    assert returncode == 2
    assert "refused the enrollment" in (tmp_path / "device" / "agent.log").read_text()


def test_a_version_changed_at_rest_is_refused_at_start_and_the_previous_one_serves(vision_run, tmp_path: Path) -> None:
    lake, keys = Lake(str(tmp_path / "lake")), tmp_path / "keys"
    models = registry.Registry.of(lake, ControlDb(f"sqlite:///{tmp_path / 'control.sqlite'}"))
    for _ in range(2):
        registry.publish_run(lake, models.db, keys, VISION, vision_run.files, metrics={}, lineage={}, extra=vision_run.extra)
    root = models.root
    slot_dir = tmp_path / "device" / "models" / VISION
    for version in (1, 2):  # what a device keeps of each version: the signed manifest and the files it runs
        (slot_dir / str(version)).mkdir(parents=True)
        for file in ("manifest.json", SIGNATURE, *EdgeFiles.of(registry.get(models, VISION, version).manifest).names()):
            shutil.copy(root / VISION / str(version) / file, slot_dir / str(version) / file)
    (slot_dir / "installed.json").write_text('{"active": 2, "previous": 1}')
    flip_one_byte(slot_dir / "2" / vision_run.extra["edge_model"])
    events: list[AgentEvent] = []

    model = ModelSlot(slot_dir.parent, VISION, registry.registry_public_key(models), events.append).load_active()

    assert model is not None and model.version == 1 and not model.smoke_test()
    kept = ModelSlot(slot_dir.parent, VISION, registry.registry_public_key(models), events.append).installed  # as stored
    assert kept.active == 1 and kept.previous is None and "sha256 differs" in kept.refused[2]
    assert [(event.kind, event.version) for event in events] == [("update_refused", 2), ("rolled_back", 2)]
