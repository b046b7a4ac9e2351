"""A 20-device fleet of real agent processes: the rollout gate promotes a better canary and rolls back a worse one by itself.

Three real vision models: a weak one in production (one epoch on 500 frames), a better one
(the session's model) and a deliberately worse one, trained on frames whose labels were all
shifted by one class. The worse one passes its own smoke test (its samples expect what it
predicts): only the gate's comparison of accuracy on labelled frames can catch it.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest


from edgelake.control_db import ControlDb
from edgelake.api.keys import KeyStore
from edgelake.edge.fleet import FleetOptions, run_fleet, statuses
from edgelake.broker import EmbeddedBroker
from edgelake.contracts import ImageFrame
from support import append_silver
from tests.edge.conftest import VISION, cloud_world
from edgelake.training import registry

DEVICES = 20
GATE = {"canary_percent": 30, "promote_after_reports": 5, "min_labelled": 150, "max_accuracy_drop": 0.05, "deadline_s": 240}
DECISION_BOUND_S = 120  # from setting the canary to the gate's decision


@pytest.fixture(scope="module")
def weak_and_worse(frames_lake, tmp_path_factory: pytest.TempPathFactory):
    """The weak production model and the deliberately worse one."""
    from edgelake.lake.catalog import Lake
    from edgelake.training.vision import load_frames, train_vision

    weak = train_vision(Lake(frames_lake.root), tmp_path_factory.mktemp("weak"), device="cpu", epochs=1, batch_size=64, seed=1, limit=500)
    frames = load_frames(Lake(frames_lake.root))
    mislabelled = tmp_path_factory.mktemp("mislabelled")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    events = [
        ImageFrame(
            event_id=f"{split}-{n}", event_time=start, device_id="camera-x", frame_id=f"{split}-{n}", width=28, height=28,
            image=pixels.tobytes(), label=(int(label) + 1) % 10, split=split,
        )
        for split, x, y in (("train", frames.x_train[:1000], frames.y_train[:1000]), ("test", frames.x_test[:200], frames.y_test[:200]))
        for n, (pixels, label) in enumerate(zip(x, y, strict=True))
    ]
    append_silver(str(mislabelled / "lake"), events)
    worse = train_vision(Lake(str(mislabelled / "lake")), tmp_path_factory.mktemp("worse"), device="cpu", epochs=2, batch_size=64, seed=1)
    return weak, worse


def test_the_gate_promotes_a_better_canary_and_rolls_back_a_worse_one(
    kafka: EmbeddedBroker, vision_run, weak_and_worse, tmp_path: Path
) -> None:
    weak, worse = weak_and_worse
    with cloud_world(tmp_path / "cloud", kafka.bootstrap_servers) as cloud:
        production = cloud.publish(weak.files, weak.extra)
        better = cloud.publish(vision_run.files, vision_run.extra, promote_to=None)
        worst = cloud.publish(worse.files, worse.extra, promote_to=None)
        _, admin_token = KeyStore(ControlDb.from_settings(cloud.settings)).create("fleet test", "admin")
        admin = httpx2.Client(base_url=cloud.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)
        options = FleetOptions(
            devices=DEVICES, state_root=tmp_path / "fleet", api_url=cloud.url, enrollment_token=cloud.enrollment_token(DEVICES),
            fps=5, heartbeat_s=1.0, duration_s=600,
        )
        stop = threading.Event()
        fleet = threading.Thread(target=lambda: run_fleet(options, stop=stop), daemon=True)
        fleet.start()
        try:
            _wait_all_on(options, production, timeout_s=180)

            started = time.monotonic()
            put = admin.put(f"/v1/models/{VISION}/rollout", json={**GATE, "canary_version": better})
            assert put.status_code == 200, put.text
            _wait(lambda: registry.current(cloud.models, VISION) == better, "the better canary promoted", started)
            promoted_after = time.monotonic() - started
            _wait_all_on(options, better, timeout_s=60)

            started = time.monotonic()
            put = admin.put(f"/v1/models/{VISION}/rollout", json={**GATE, "canary_version": worst})
            assert put.status_code == 200, put.text
            _wait(lambda: registry.versions(cloud.models, VISION)[worst] == "rolled_back", "the worse canary rolled back", started)
            rolled_back_after = time.monotonic() - started
            _wait_all_on(options, better, timeout_s=60)
        finally:
            stop.set()
            fleet.join(60)

        book = registry.read_book(cloud.models, VISION)
        history = {(t.version, t.to): t for t in book.history}
    assert promoted_after < DECISION_BOUND_S and rolled_back_after < DECISION_BOUND_S
    assert "accuracy" in (history[(better, "production")].reason or "")
    assert "accuracy" in (history[(worst, "rolled_back")].reason or "")
    assert history[(production, "archived")]


def _wait(condition, what: str, started: float) -> None:
    while time.monotonic() - started < DECISION_BOUND_S:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"no decision within {DECISION_BOUND_S} s: {what}")


def _wait_all_on(options: FleetOptions, version: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [status.get("models", {}).get(VISION) for status in statuses(options)]
        if running == [version] * DEVICES:
            return
        time.sleep(0.5)
    pytest.fail(f"not every device runs v{version}: {running}")
