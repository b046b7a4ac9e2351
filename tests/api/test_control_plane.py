"""The control plane shared by API replicas: one schema on SQLite and PostgreSQL (owned by Alembic), enrollment tokens
spent once when replicas race, keys and revocations seen by every replica, the audit log of admin actions and refusals,
rate limits counted in Redis across replicas, the audit log's copy in the lake, and the registry's stage moves made
by replicas at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from pydantic import SecretStr

from edgelake.api.app import create_app
from edgelake.api.audit import AuditEvent, AuditLog
from edgelake.api.audit_export import AuditExporter
from edgelake.control_db import MIGRATIONS, ControlDb, audit_exports, metadata, model_versions, stage_transitions
from edgelake.api.keys import ROLES, KeyStore
from edgelake.api.ratelimit import RedisRateLimiter
from edgelake.broker import free_port
from edgelake.contracts import AuditRecord
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.lake.catalog import Lake
from edgelake.lake.sql import run_query
from edgelake.settings import Settings
from edgelake.training import registry
from edgelake.training.registry import RolloutRules, rollout
from edgelake.training.registry.rollout import Comparison, Measured
from tests.api.conftest import publish_model, serving
from tests.api.proxy import nginx
from tests.conftest import Postgres


def backend_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'control.sqlite'}"
    postgres: Postgres = request.getfixturevalue("postgres")
    return postgres.new_database()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migrations_build_exactly_the_tables_the_code_queries(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    db = ControlDb(backend_url(backend, request, tmp_path))
    db.migrate()
    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
        assert differences == []
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0004"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_versions_in_the_stage_book_before_migration_0004_count_as_published(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    db = ControlDb(backend_url(backend, request, tmp_path))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
        moves = [(1, None, "candidate", 10), (2, None, "candidate", 20), (2, "candidate", "production", 30), (1, "candidate", "canary", 40)]
        for version, before, after, second in moves:
            connection.execute(sa.insert(stage_transitions).values(
                model="fraud", version=version, from_stage=before, to_stage=after, time=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC),
            ))
    db.migrate()
    models = registry.Registry(tmp_path / "registry", db)
    assert registry.models(models) == ["fraud"]
    with db.transaction() as connection:
        rows = connection.execute(sa.select(model_versions).order_by(model_versions.c.version)).all()
    assert [(row.version, row.reserved.second, row.published.second) for row in rows] == [(1, 10, 10), (2, 20, 20)]


def test_replicas_starting_together_migrate_a_fresh_database_once(postgres: Postgres) -> None:
    url = postgres.new_database()
    replicas = [ControlDb(url) for _ in range(6)]
    start = threading.Barrier(len(replicas))

    def migrate(db: ControlDb) -> None:
        start.wait()
        db.migrate()

    with ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(migrate, replicas))  # re-raises any replica's failure
    with replicas[0].engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1


@dataclass(frozen=True)
class Promising:
    """Complete evidence that promotes the canary: what every replica's gate gathers about it."""

    version: int
    elapsed_s: float = 1.0

    def failure(self) -> str | None:
        return None

    def shortfall(self, rules: RolloutRules) -> list[str]:
        return []

    def comparison(self) -> Comparison:
        return Comparison(Measured(self.version, 0.95, 500), None, "the replicas' shared evidence")


def test_stage_moves_from_replicas_at_once_are_kept_whole_and_a_verdict_is_carried_out_once(postgres: Postgres, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", lake_root=str(tmp_path / "lake"), control_db_url=SecretStr(postgres.new_database()))
    count = 8
    for run in range(count):
        publish_model(settings, tmp_path / f"run{run}")
    lake = Lake.from_settings(settings)
    replicas = [registry.Registry.of(lake, ControlDb.from_settings(settings)) for _ in range(2)]  # connections of their own
    start = threading.Barrier(count)

    def promote(version: int) -> None:
        start.wait()
        registry.promote(replicas[version % 2], "fraud", version)

    with ThreadPoolExecutor(count) as pool:
        list(pool.map(promote, range(1, count + 1)))
    stages = registry.versions(replicas[0], "fraud")
    assert sorted(stages.values()) == ["archived"] * (count - 1) + ["canary"]
    assert len(registry.read_book(replicas[1], "fraud").history) == count + count + (count - 1)  # published, promoted, archived

    canary = next(version for version, stage in stages.items() if stage == "canary")
    registry.set_rollout(replicas[0], "fraud", RolloutRules(canary_percent=50, canary_version=canary))
    settling = threading.Barrier(6)

    def settle(replica: int) -> list[registry.Transition]:
        settling.wait()
        return rollout.settle(replicas[replica % 2], "fraud", lambda policy: Promising(canary), actor=f"replica-{replica % 2}")

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(settle, range(6)))
    assert sorted(len(transitions) for transitions in outcomes) == [0, 0, 0, 0, 0, 1]
    assert registry.current(replicas[1], "fraud") == canary and registry.rollout_policy(replicas[1], "fraud").canary_version is None
    assert [t.to for t in registry.read_book(replicas[0], "fraud").history].count("production") == 1


@dataclass(frozen=True)
class Replicas:
    """Two API servers, each with its own connections, sharing one PostgreSQL control plane and one lake."""

    settings: Settings
    urls: tuple[str, str]
    tokens: dict[str, str]

    def client(self, replica: int, token: str | None = None) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx2.Client(base_url=self.urls[replica], headers=headers, timeout=30)

    @property
    def ports(self) -> list[int]:
        return [port_of(url) for url in self.urls]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def enrollments_answered(url: str) -> float:
    """The enrollments a replica answered, from its /metrics."""
    text = httpx2.get(f"{url}/metrics", timeout=5).text
    return sum(float(m) for m in re.findall(r'^edgelake_http_request_duration_seconds_count\{.*route="/v1/devices/enroll".*\} (\S+)$', text, re.M))


@pytest.fixture(scope="module")
def replicas(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    base = tmp_path_factory.mktemp("replicas")
    settings = Settings(data_dir=base / "data", lake_root=str(base / "lake"), control_db_url=SecretStr(postgres.new_database()))
    publish_model(settings, base / "run")
    store = KeyStore(ControlDb.from_settings(settings))
    tokens = {role: store.create(f"replica test {role}", role)[1] for role in ROLES}
    with serving(create_app(settings)) as first, serving(create_app(settings)) as second:
        yield Replicas(settings, (first, second), tokens)


def test_an_enrollment_token_is_spent_once_when_replicas_race_for_it(replicas: Replicas, tmp_path: Path) -> None:
    uses, attempts = 3, 24
    with replicas.client(0, replicas.tokens["admin"]) as admin:
        token = admin.post("/v1/devices/enrollment-tokens", json={"name": "race", "uses": uses}).json()["token"]
    start = threading.Barrier(attempts)
    before = [enrollments_answered(url) for url in replicas.urls]

    with nginx(replicas.ports, tmp_path) as (proxy, _):

        def enroll(attempt: int) -> int:
            with httpx2.Client(base_url=proxy, timeout=30) as client:
                start.wait()
                return client.post("/v1/devices/enroll", json={"enrollment_token": token, "device_name": f"racer-{attempt}"}).status_code

        with ThreadPoolExecutor(attempts) as pool:
            statuses = list(pool.map(enroll, range(attempts)))
    assert sorted(statuses) == [201] * uses + [401] * (attempts - uses)
    answered = [enrollments_answered(url) - earlier for url, earlier in zip(replicas.urls, before, strict=True)]
    assert sum(answered) == attempts and min(answered) > 0, answered  # nginx spread the race over both replicas
    with replicas.client(1, replicas.tokens["analyst"]) as analyst:
        racers = [device for device in analyst.get("/v1/devices").json() if device["name"].startswith("racer-")]
    assert len(racers) == uses
    device_keys = [key for key in KeyStore(ControlDb.from_settings(replicas.settings)).keys() if key.name.startswith("device racer-")]
    assert sorted(key.device_id for key in device_keys) == sorted(device["id"] for device in racers)  # no key without its device


def test_a_key_made_on_one_replica_works_on_the_other_until_revoked_there(replicas: Replicas) -> None:
    with replicas.client(0, replicas.tokens["admin"]) as admin:
        issued = admin.post("/v1/devices/enrollment-tokens", json={"name": "one device"}).json()["token"]
    with replicas.client(0) as first:
        device = first.post("/v1/devices/enroll", json={"enrollment_token": issued, "device_name": "roamer"}).json()
    with replicas.client(1, device["device_token"]) as second:
        beat = second.post(f"/v1/devices/{device['device_id']}/heartbeat", json={"models": {}, "health": {}})
        assert beat.status_code == 200, beat.text
        store = KeyStore(ControlDb.from_settings(replicas.settings))
        store.revoke(next(key.id for key in store.keys() if key.device_id == device["device_id"]))
        revoked = time.monotonic()
        while second.post(f"/v1/devices/{device['device_id']}/heartbeat", json={"models": {}, "health": {}}).status_code == 200:
            assert time.monotonic() - revoked < replicas.settings.api_key_cache_s + 1, "the revoked key still works"
            time.sleep(0.05)


def test_admin_actions_and_refused_requests_land_in_the_audit_log_whichever_replica_answered(replicas: Replicas) -> None:
    with replicas.client(0, replicas.tokens["admin"]) as admin:
        before = admin.get("/v1/audit", params={"limit": 1000}).json()["next_after"]
        assert admin.post("/v1/devices/enrollment-tokens", json={"name": "audited"}).status_code == 201
    with replicas.client(1, replicas.tokens["producer"]) as producer, replicas.client(1, "elk_made-up") as stranger:
        assert producer.get("/v1/devices").status_code == 403
        assert stranger.get("/v1/tables").status_code == 401
    producer_key = KeyStore(ControlDb.from_settings(replicas.settings)).authenticate(replicas.tokens["producer"])
    assert producer_key is not None
    deadline = time.monotonic() + 10  # refusals are written in the background
    with replicas.client(1, replicas.tokens["admin"]) as admin:
        while len(events := admin.get("/v1/audit", params={"after": before}).json()["events"]) < 3:
            assert time.monotonic() < deadline, events
            time.sleep(0.1)
        only_refused = admin.get("/v1/audit", params={"after": before, "outcome": "refused"}).json()["events"]
    issued, unknown, forbidden = sorted(events, key=lambda event: event["status"])  # 201, 401, 403
    assert issued["action"] == "POST /v1/devices/enrollment-tokens" and issued["outcome"] == "done" and issued["role"] == "admin"
    assert forbidden["actor"] == producer_key.id and forbidden["outcome"] == "refused" and "needs the role" in forbidden["detail"]
    assert unknown["actor"] == "anonymous" and unknown["action"] == "GET /v1/tables" and "unknown or revoked" in unknown["detail"]
    assert {event["client"] for event in events} == {"127.0.0.1"}
    assert {event["id"] for event in only_refused} == {forbidden["id"], unknown["id"]}
    assert [event.id for event in AuditLog(ControlDb.from_settings(replicas.settings)).events(after=before)] == [e["id"] for e in events]


@pytest.mark.parametrize(("rate_limits", "granted"), [("process", 8), ("redis", 4)])
def test_a_key_s_rate_limit_holds_across_replicas_when_counted_in_redis(
    rate_limits: str, granted: int, replicas: Replicas, redis_server: str, tmp_path: Path
) -> None:
    """A burst of 4 per key: each of two replicas grants it on its own, or both together grant it once."""
    settings = replicas.settings.model_copy(update={"rate_limits": rate_limits, "redis_url": redis_server, "topic_prefix": f"{rate_limits}-"})
    with serving(create_app(settings, rate_per_s=0.01, burst=4)) as first, serving(create_app(settings, rate_per_s=0.01, burst=4)) as second:
        with nginx([port_of(first), port_of(second)], tmp_path) as (proxy, _):  # which takes turns between them
            with httpx2.Client(base_url=proxy, headers={"Authorization": f"Bearer {replicas.tokens['analyst']}"}) as client:
                statuses = [client.get("/v1/models").status_code for _ in range(10)]
    assert statuses.count(200) == granted and statuses.count(429) == 10 - granted
    assert statuses[:granted] == [200] * granted


def test_requests_are_let_through_and_counted_while_redis_does_not_answer() -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", rate_per_s=0.01, burst=1)  # nothing listens there
    waits = asyncio.run(_acquire_times(limiter, 3))
    assert waits == [0.0, 0.0, 0.0] and limiter.unlimited == 3


async def _acquire_times(limiter: RedisRateLimiter, times: int) -> list[float]:
    waits = [await limiter.acquire("key_x") for _ in range(times)]
    await limiter.aclose()
    return waits


def test_the_audit_log_reaches_the_lake_once_for_sql_even_when_sent_twice(settings: Settings, postgres: Postgres) -> None:
    settings = settings.model_copy(update={"control_db_url": SecretStr(postgres.new_database())})
    db = ControlDb.from_settings(settings)
    log = AuditLog(db)
    keys = KeyStore(db)
    for n in range(3):
        log.record(AuditEvent.now(actor="cli:ops", role="admin", action="keys create", target=f"key_{n}", outcome="done", status=None, client="host"))
    exporter = AuditExporter(settings, log)
    try:
        assert exporter.export() == 3
        assert exporter.export() == 0  # the mark moved past them
        key, _ = keys.create("late", "analyst")
        log.record(AuditEvent.now(actor=key.id, role="analyst", action="GET /v1/devices", target="", outcome="refused", status=403, client="10.0.0.7"))
        with db.transaction() as connection:  # as if the last export crashed after the broker took it, before the mark moved
            connection.execute(audit_exports.update().values(last_id=2))
        assert exporter.export() == 2  # entry 3 again, and entry 4
    finally:
        exporter.close()
    totals = ingest(settings, IngestOptions(topics=(AuditRecord.topic,)), once=True)
    assert totals.counts[AuditRecord.topic]["silver"] == 4 and totals.counts[AuditRecord.topic]["duplicates"] == 1, totals.counts
    result = run_query(Lake.from_settings(settings), "SELECT event_id, actor, action, outcome, status FROM silver_audit_log ORDER BY event_id")
    rows = result.table.to_pylist()
    assert [row["event_id"] for row in rows] == ["audit-1", "audit-2", "audit-3", "audit-4"]
    assert rows[3] == {"event_id": "audit-4", "actor": key.id, "action": "GET /v1/devices", "outcome": "refused", "status": 403}
