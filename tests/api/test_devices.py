"""Devices against a real server and a real broker: enrollment, bound keys, heartbeats, rollout and results forwarded once per id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb
from edgelake.api.devices import DeviceStore, ResultForwarder
from edgelake.api.keys import ROLES, KeyStore
from edgelake.broker import EmbeddedBroker
from edgelake.cli import app as cli
from edgelake.contracts import EdgeInference
from edgelake.kafka import read_topic
from edgelake.lake.catalog import Lake
from support import embedded_kafka, isolated_settings
from tests.api.conftest import publish_model, serving
from tests.api.test_errors_and_auth import assert_problem
from edgelake.training import registry

if TYPE_CHECKING:
    from edgelake.settings import Settings

FAKE_DEVICE = "dev_0000000000000000"


@dataclass(frozen=True)
class Fleet:
    """A server over a lake with model ``fraud`` v1 in production and v2 published, a key per role, and one enrolled device."""

    settings: Settings
    url: str
    tokens: dict[str, str]
    device_id: str
    device_token: str

    def client(self, token: str | None = None) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30)

    def admin(self) -> httpx2.Client:
        return self.client(self.tokens["admin"])


def enroll(client: httpx2.Client, admin: httpx2.Client, name: str, **token_options: Any) -> dict[str, Any]:
    issued = admin.post("/v1/devices/enrollment-tokens", json=token_options)
    assert issued.status_code == 201, issued.text
    enrolled = client.post("/v1/devices/enroll", json={"enrollment_token": issued.json()["token"], "device_name": name, "hardware": {"cpu": "a53"}})
    assert enrolled.status_code == 201, enrolled.text
    return enrolled.json()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet(kafka: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """The fleet with its control plane in the embedded SQLite file, then in a PostgreSQL database as replicas share it."""
    base = tmp_path_factory.mktemp("devices")
    settings = isolated_settings(kafka.bootstrap_servers, base / "data")
    if request.param == "postgresql":
        settings = settings.model_copy(update={"control_db_url": SecretStr(request.getfixturevalue("postgres").new_database())})
    for run in ("run1", "run2"):
        publish_model(settings, base / run)
    registry.promote(registry.Registry.from_settings(settings), "fraud", 1, "production")
    store = KeyStore(ControlDb.from_settings(settings))
    tokens = {role: store.create(f"test {role}", role)[1] for role in ROLES}
    with serving(create_app(settings)) as url, httpx2.Client(base_url=url, timeout=30) as client:
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=30) as admin:
            device = enroll(client, admin, "gate-1")
        yield Fleet(settings, url, tokens, device["device_id"], device["device_token"])


def inference(device: str, event_id: str, **changes: Any) -> dict[str, Any]:
    event = EdgeInference(
        event_id=event_id, event_time=datetime(2026, 3, 1, tzinfo=UTC), device_id=device, model_name="vision", model_version="1",
        input_ref=f"frame-{event_id}", prediction="sneaker", confidence=0.9, latency_ms=3.5,
    )
    return {**json.loads(event.to_bytes()), **changes}


def ids_on_topic(settings: Settings) -> list[str]:
    topic = settings.topic(EdgeInference.topic)
    return [json.loads(record.value)["event_id"] for record in read_topic(settings.kafka_bootstrap_servers, topic)]


def test_enrollment_binds_a_device_key_and_hands_out_the_registry_key(fleet: Fleet) -> None:
    assert fleet.device_token.startswith("elk_")
    key = KeyStore(ControlDb.from_settings(fleet.settings)).authenticate(fleet.device_token)
    assert key is not None and key.role == "device" and key.device_id == fleet.device_id
    with fleet.client() as client, fleet.admin() as admin:
        body = enroll(client, admin, "gate-2")
    published = (registry.registry_root(Lake.from_settings(fleet.settings)) / registry.PUBLIC_KEY).read_text()
    assert body["registry_public_key"] == published and published.startswith("-----BEGIN PUBLIC KEY-----")
    assert body["device_id"] != fleet.device_id


def test_a_used_up_expired_or_bogus_enrollment_token_is_refused(fleet: Fleet) -> None:
    store = DeviceStore(ControlDb.from_settings(fleet.settings))
    _, expired = store.issue_token("old", 1, 1)
    with fleet.client() as client, fleet.admin() as admin:
        token = admin.post("/v1/devices/enrollment-tokens", json={"name": "once"}).json()["token"]
        twice = admin.post("/v1/devices/enrollment-tokens", json={"uses": 2}).json()["token"]
        attempts = [client.post("/v1/devices/enroll", json={"enrollment_token": t, "device_name": "d"}) for t in (token, token, twice, twice, twice)]
        assert [r.status_code for r in attempts] == [201, 401, 201, 201, 401]
        assert "used up" in assert_problem(attempts[1], 401)["detail"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("edgelake.api.devices.datetime", _Later)
            late = client.post("/v1/devices/enroll", json={"enrollment_token": expired, "device_name": "d"})
        assert "expired" in assert_problem(late, 401)["detail"]
        bogus = client.post("/v1/devices/enroll", json={"enrollment_token": "enr_bogus", "device_name": "d"})
        assert assert_problem(bogus, 401)["type"] == "urn:edgelake:problem:enrollment-refused"


class _Later(datetime):
    """``datetime`` an hour ahead, to expire tokens without waiting."""

    @classmethod
    def now(cls, tz: Any = None) -> _Later:
        moment = datetime.now(tz).timestamp() + 3600
        return cls.fromtimestamp(moment, tz)


def test_the_cli_issues_enrollment_tokens_the_api_accepts(fleet: Fleet) -> None:
    env = {"EDGELAKE_DATA_DIR": str(fleet.settings.data_dir)}
    if fleet.settings.control_db_url is not None:
        env["EDGELAKE_CONTROL_DB_URL"] = fleet.settings.control_db_url.get_secret_value()
    issued = CliRunner().invoke(cli, ["keys", "enrollment-token", "--name", "site-a", "--uses", "1"], env=env)
    assert issued.exit_code == 0, issued.output
    with fleet.client() as client:
        enrolled = client.post("/v1/devices/enroll", json={"enrollment_token": issued.stdout.strip(), "device_name": "cli-device"})
    assert enrolled.status_code == 201, enrolled.text


def test_a_heartbeat_is_stored_listed_and_answered_with_the_assignment(fleet: Fleet) -> None:
    with fleet.client(fleet.device_token) as device, fleet.client(fleet.tokens["analyst"]) as analyst:
        answer = device.post(
            f"/v1/devices/{fleet.device_id}/heartbeat", json={"models": {"fraud": 1}, "health": {"temp_c": 51.5}, "events": [{"kind": "boot"}]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"device_id": fleet.device_id, "models": {"fraud": {"version": 1, "track": "production"}}}
        assert device.get(f"/v1/devices/{fleet.device_id}/assignment").json() == answer.json()
        listing = analyst.get("/v1/devices")
    assert listing.status_code == 200
    mine = next(d for d in listing.json() if d["id"] == fleet.device_id)
    assert mine["name"] == "gate-1" and mine["hardware"] == {"cpu": "a53"} and mine["enrolled"]
    beat = mine["last_heartbeat"]
    assert beat["models"] == {"fraud": 1} and beat["health"] == {"temp_c": 51.5} and beat["time"]
    assert [event["kind"] for event in beat["events"]] == ["boot"]


def test_a_device_key_speaks_only_for_its_own_device(fleet: Fleet) -> None:
    with fleet.client() as client, fleet.admin() as admin:
        other = enroll(client, admin, "gate-3")["device_id"]
    with fleet.client(fleet.device_token) as device:
        responses = [
            device.post(f"/v1/devices/{other}/heartbeat", json={}),
            device.get(f"/v1/devices/{other}/assignment"),
            device.post(f"/v1/devices/{other}/results", json={"events": [inference(other, "x1")]}),
        ]
    for response in responses:
        assert "speaks for device" in assert_problem(response, 403)["detail"]
    with fleet.admin() as admin:
        assert_problem(admin.get(f"/v1/devices/{FAKE_DEVICE}/assignment"), 404)


def test_rollout_puts_a_stable_share_of_devices_on_the_canary(fleet: Fleet) -> None:
    with fleet.admin() as admin, fleet.client(fleet.device_token) as device:
        before = device.get("/v1/models/fraud/rollout").json()
        assert before["production"] == 1 and before["policy"]["canary_percent"] == 0 and before["policy"]["canary_version"] is None
        put = admin.put("/v1/models/fraud/rollout", json={"canary_percent": 50, "canary_version": 2})
        assert put.status_code == 200, put.text
        assert put.json()["policy"]["canary_version"] == 2 and put.json()["policy"]["actor"]
        assert_problem(admin.put("/v1/models/fraud/rollout", json={"canary_percent": 10, "canary_version": 9}), 404)
        assert_problem(admin.put("/v1/models/nope/rollout", json={"canary_percent": 10, "canary_version": None}), 404)
        assigned = device.get(f"/v1/devices/{fleet.device_id}/assignment").json()["models"]["fraud"]
    models = registry.Registry.from_settings(fleet.settings)
    expected_track = "canary" if registry.rollout_bucket("fraud", fleet.device_id) < 50 else "production"
    assert assigned == {"version": 2 if expected_track == "canary" else 1, "track": expected_track}
    fleet_ids = [f"dev_{n:016x}" for n in range(200)]
    first = {d: registry.assigned_version(models, "fraud", d) for d in fleet_ids}
    assert first == {d: registry.assigned_version(models, "fraud", d) for d in fleet_ids}  # stable
    canary = sum(1 for version in first.values() if version == (2, "canary"))
    assert 80 <= canary <= 120 and all(v in ((2, "canary"), (1, "production")) for v in first.values())
    with fleet.admin() as admin:
        admin.put("/v1/models/fraud/rollout", json={"canary_percent": 0, "canary_version": None}).raise_for_status()


def test_results_reach_the_topic_once_per_id_however_often_a_batch_is_sent(fleet: Fleet) -> None:
    batch = {"events": [inference(fleet.device_id, f"r{n}") for n in range(5)]}
    with fleet.client(fleet.device_token) as device:
        first = device.post(f"/v1/devices/{fleet.device_id}/results", json=batch)
        assert first.status_code == 200, first.text
        assert first.json() == {"accepted": [f"r{n}" for n in range(5)], "duplicates": []}
        again = device.post(f"/v1/devices/{fleet.device_id}/results", json=batch).json()
        assert again == {"accepted": [], "duplicates": [f"r{n}" for n in range(5)]}
        more = {"events": [inference(fleet.device_id, "r4"), inference(fleet.device_id, "r5"), inference(fleet.device_id, "r5")]}
        assert device.post(f"/v1/devices/{fleet.device_id}/results", json=more).json() == {"accepted": ["r5"], "duplicates": ["r4", "r5"]}
    assert sorted(ids_on_topic(fleet.settings)) == [f"r{n}" for n in range(6)]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (None, "events"),  # an empty batch
        ({"device_id": None}, "device_id"),
        ({"confidence": 1.5}, "confidence"),
        ({"event_time": "2026-03-01T00:00:00"}, "event_time"),  # no time zone
        ({"extra": 1}, "extra"),
        ({"device_id": "dev_ffffffffffffffff"}, "device_id"),  # another device's result
    ],
)
def test_invalid_results_are_a_422_problem(fleet: Fleet, changes: dict[str, Any] | None, field: str) -> None:
    events = [] if changes is None else [inference(fleet.device_id, "bad", **changes)]
    with fleet.client(fleet.device_token) as device:
        problem = assert_problem(device.post(f"/v1/devices/{fleet.device_id}/results", json={"events": events}), 422)
    assert any(field in error["loc"] for error in problem["errors"]), problem


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/devices/enroll", {"enrollment_token": "x"}, "device_name"),
        ("/v1/devices/enrollment-tokens", {"uses": 0}, "uses"),
        ("/v1/devices/{id}/heartbeat", {"models": {"fraud": 0}}, "fraud"),
        ("/v1/devices/{id}/heartbeat", {"health": [1]}, "health"),
        # 5 MB of either was stored and served back to operators
        ("/v1/devices/enroll", {"enrollment_token": "x", "device_name": "d", "hardware": {"cpu": "x" * 1_000_000}}, "hardware"),
        ("/v1/devices/{id}/heartbeat", {"health": {"note": "x" * 1_000_000}}, "health"),
    ],
)
def test_invalid_bodies_are_a_422_problem(fleet: Fleet, path: str, body: dict[str, Any], field: str) -> None:
    with fleet.admin() as admin:
        problem = assert_problem(admin.post(path.format(id=fleet.device_id), json=body), 422)
    assert any(field in error["loc"] for error in problem["errors"]), problem


# (method, path, body, a role refused); {id} is the fleet's device
ROUTES = [
    ("POST", "/v1/devices/enrollment-tokens", {}, "analyst"),
    ("GET", "/v1/devices", None, "device"),
    ("POST", "/v1/devices/{id}/heartbeat", {}, "analyst"),
    ("GET", "/v1/devices/{id}/assignment", None, "producer"),
    ("POST", "/v1/devices/{id}/results", {"events": []}, "analyst"),
    ("GET", "/v1/models/fraud/rollout", None, "producer"),
    ("PUT", "/v1/models/fraud/rollout", {"canary_percent": 0, "canary_version": None}, "device"),
]


@pytest.mark.parametrize(("method", "path", "body", "refused"), ROUTES, ids=[f"{m} {p}" for m, p, *_ in ROUTES])
def test_every_device_route_wants_a_key_of_its_role(fleet: Fleet, method: str, path: str, body: Any, refused: str) -> None:
    path = path.format(id=fleet.device_id)
    with fleet.client() as anonymous, fleet.client(fleet.tokens[refused]) as wrong:
        missing = anonymous.request(method, path, json=body)
        forbidden = wrong.request(method, path, json=body)
    assert assert_problem(missing, 401)["type"] == "urn:edgelake:problem:unauthenticated"
    assert assert_problem(forbidden, 403)["type"] == "urn:edgelake:problem:forbidden"


def test_results_wait_out_a_broker_outage(tmp_path: Path) -> None:
    broker = embedded_kafka(tmp_path / "broker")
    try:
        settings = isolated_settings(broker.bootstrap_servers, tmp_path / "data")
        store = KeyStore(ControlDb.from_settings(settings))
        app = create_app(settings)
        app.state.forwarder = ResultForwarder(settings, timeout_s=2)
        with serving(app) as url, httpx2.Client(base_url=url, timeout=30) as client:
            admin_token = store.create("admin", "admin")[1]
            token = client.post("/v1/devices/enrollment-tokens", json={}, headers={"Authorization": f"Bearer {admin_token}"}).json()["token"]
            device = client.post("/v1/devices/enroll", json={"enrollment_token": token, "device_name": "d"}).json()
            path, auth = f"/v1/devices/{device['device_id']}/results", {"Authorization": f"Bearer {device['device_token']}"}
            batch = {"events": [inference(device["device_id"], f"o{n}") for n in range(3)]}
            assert client.post(path, json=batch, headers=auth).json()["accepted"] == ["o0", "o1", "o2"]
            broker.stop()
            down = client.post(path, json={"events": [inference(device["device_id"], "o3")]}, headers=auth)
            assert assert_problem(down, 503)["type"] == "urn:edgelake:problem:broker-unavailable"
            assert down.headers["retry-after"] == "5"
            broker.start()
            back = client.post(path, json={"events": [inference(device["device_id"], "o3"), *batch["events"]]}, headers=auth)
            assert back.status_code == 200, back.text
            assert back.json() == {"accepted": ["o3"], "duplicates": ["o0", "o1", "o2"]}
        assert set(ids_on_topic(settings)) == {"o0", "o1", "o2", "o3"}
    finally:
        broker.stop()
