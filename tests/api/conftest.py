"""A real API server on loopback over a small lake of its own: silver transactions, a published model and a key per role."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import uvicorn
from fastapi import FastAPI

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb
from edgelake.api.keys import ROLES, KeyStore
from edgelake.broker import EmbeddedBroker, free_port
from edgelake.settings import Settings
from edgelake.ingest.sources import synthetic
from edgelake.lake.catalog import Lake
from support import append_silver, isolated_settings
from edgelake.training import registry

SYNTHETIC = synthetic.SyntheticConfig(seed=5, cards=20, merchants=30)
TRAINING = synthetic.SyntheticConfig(seed=3, cards=80, merchants=60, fraud_rate=0.06)
FIRST_BATCH, SECOND_BATCH = 120, 80


@contextmanager
def serving(app: FastAPI, port: int | None = None) -> Iterator[str]:
    """``app`` under a real uvicorn server on loopback (a free port unless given); its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server did not start")
        threading.Event().wait(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass(frozen=True)
class Deployment:
    """The server's settings and URL, a token per role and the model version published."""

    settings: Settings
    url: str
    tokens: dict[str, str]
    model: registry.ModelVersion
    silver_versions: tuple[int, int]

    def client(self, role: str | None = None) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30)


def publish_model(settings: Settings, work: Path) -> registry.ModelVersion:
    """A tiny signed model in the registry of ``settings``' lake: a .tflite, metrics and a nested file."""
    work.mkdir(parents=True)
    (work / "model.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 8)
    (work / "metrics.json").write_text('{"auprc": 0.8}')
    (work / "plots").mkdir()
    (work / "plots" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 100)
    signer = registry.ensure_signing_key(settings.data_dir / registry.KEYS_DIR, Lake.from_settings(settings))
    files = {"model.tflite": work / "model.tflite", "metrics.json": work / "metrics.json", "plots": work / "plots"}
    models = registry.Registry.from_settings(settings)
    return registry.publish(models, "fraud", files, metrics={"auprc": 0.8}, lineage={"silver_transactions": 1}, signer=signer)


Serve = Callable[[FastAPI], AbstractContextManager[str]]


@pytest.fixture(scope="session")
def serve() -> Serve:
    """Start another app under a real server: ``with serve(app) as url``."""
    return serving


@pytest.fixture(scope="session")
def deployment(kafka: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("api")
    settings = isolated_settings(kafka.bootstrap_servers, base / "data").model_copy(  # its audit log goes to topics of its own
        update={"lake_root": str(base / "lake"), "sql_row_limit": 100, "sql_byte_limit": 1_000_000, "sql_timeout_s": 20}
    )
    events = list(synthetic.transactions(SYNTHETIC, FIRST_BATCH + SECOND_BATCH))
    first = append_silver(settings.lake_root, events[:FIRST_BATCH])
    second = append_silver(settings.lake_root, events[FIRST_BATCH:], first_offset=FIRST_BATCH)
    model = publish_model(settings, base / "run")
    store = KeyStore(ControlDb.from_settings(settings))
    tokens = {role: store.create(f"test {role}", role)[1] for role in ROLES}
    with serving(create_app(settings)) as url:
        yield Deployment(settings, url, tokens, model, (first, second))


@pytest.fixture(scope="session")
def fraud_lake(spark, tmp_path_factory: pytest.TempPathFactory, kafka: EmbeddedBroker) -> Settings:
    """Settings over a lake whose registry holds a trained fraud model in production, on fresh topics.

    Trained once per session (Spark and a small network): /v1/score's tests and the OpenAPI property run share it.
    Treat the lake as read-only; copy it to change it.
    """
    from edgelake.lake.gold import build_card_features
    from edgelake.training.fraud import FraudConfig, train_fraud

    base = tmp_path_factory.mktemp("score")
    settings = isolated_settings(kafka.bootstrap_servers, base / "data").model_copy(update={"score_model_check_s": 0.0})
    append_silver(settings.lake_root, list(synthetic.transactions(TRAINING, 3000)))
    append_silver(settings.lake_root, list(synthetic.labels(TRAINING, 3000)))
    lake = Lake.from_settings(settings)
    build_card_features(spark, lake)
    result = train_fraud(spark, lake, base / "run", FraudConfig(source="synthetic", epochs=2, device="cpu"))
    registry.publish_run(
        lake, ControlDb.from_settings(settings), settings.data_dir / registry.KEYS_DIR, "fraud", result.files, metrics={"auprc": result.metrics["auprc"]},
        lineage=result.lineage, feature_version=result.feature_version, promote_to="production",
    )
    return settings
