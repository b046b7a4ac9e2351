"""Online scoring latency: ``POST /v1/score`` on a real uvicorn server against a naive baseline, in the same run.

A scratch world (a small synthetic lake, a fraud model trained on it, published signed and
promoted, a producer key) is served by ``uvicorn`` in a subprocess on loopback, one worker.
The baseline is the same server and route with the same validation, card features and
response, but scoring with the Keras model's ``model.predict`` on every request instead of
the TFLite interpreter. Score events go to a broker address where nothing listens: the
publisher drops them from its background thread and never delays a score.

Shadow scoring's cost is measured on two score servers at once: one over the scratch world,
and one over a copy of it whose registry also has a canary (a copy of the production version),
so that it scores every request twice. They take the same requests at each fixed rate in
turn, ``SHADOW_ROUNDS`` times; each figure is the median over the rounds (the errors summed),
since on a small machine one run's p99 varies severalfold from one run to the next.

The load generator runs in another process, open loop: request ``i`` is due at
``start + i / rate`` whether or not earlier ones were answered, and its latency counts from
then, so a slow server cannot slow the load down (no coordinated omission). It keeps
``CONNECTIONS`` keep-alive connections; a request that finds none free before its timeout,
is not answered 2xx, or is answered after ``TIMEOUT_S``, is an error. Each request is a
distinct synthetic transaction of thousands of cards, in event-time order.

The sustainable throughput of each variant is the highest rate whose ``STEP_S`` run has no
errors, so every request answered within ``TIMEOUT_S`` (a server that cannot keep up
builds a backlog that soon exceeds it): rates double from a start until one fails, then
``REFINE`` bisections narrow it. The same criterion holds for both variants, whose service
times differ a hundredfold, so no latency bound suits both.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from edgelake.api.app import create_app
from edgelake.api.metrics import ScoreMetrics
from edgelake.api.scoring import KERAS_FILE, MODEL_NAME, Scorer, ServedModel, _keras
from edgelake.broker import free_port
from edgelake.control_db import copy_embedded, embedded_control_db
from edgelake.settings import Settings
from edgelake.training import registry

RATES = (200, 500)
SECONDS = 10.0
WARM_UP_S = 3.0  # at half the search start rate, before the measured runs: model load, Keras tracing, caches
STEP_S = 5.0
TIMEOUT_S = 1.0
CONNECTIONS = 64
SEARCH_START = {"score": 100, "baseline": 10}
MAX_RATE = 3200
REFINE = 2
SHADOW_ROUNDS = 3
PAUSE_S = 0.5  # between runs, so that one run's stragglers do not land in the next
TRAINING_ROWS = 5000
CARDS = 5000
UNLIMITED = 1_000_000_000  # the per-key rate limit and burst of the benchmark servers
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Measured:
    """One fixed-rate run: latency percentiles from each request's due time, and the requests that failed."""

    rate: int
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int

    def figures(self) -> dict[str, float | int]:
        return {"p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "errors": self.errors}


def run(settings: Settings, rates: tuple[int, ...] = RATES, seconds: float = SECONDS, search: bool = True) -> dict[str, Any]:
    """Serve a fresh scratch world with each variant in turn and measure both at ``rates`` for ``seconds`` each.

    ``load_average`` is the machine's 1-minute load before the run: other work competing for its cores.
    """
    load_average = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="edgelake-bench-api-") as scratch:
        world, token = scratch_world(settings, Path(scratch))
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as loader:
            results = {
                variant: measure(variant, world, token, Path(scratch), loader, rates, seconds, search) for variant in ("score", "baseline")
            }
            shadow = shadow_cost(world, token, Path(scratch), loader, rates, seconds)
    output: dict[str, Any] = {variant: {str(m.rate): m.figures() for m in fixed} for variant, (fixed, _) in results.items()}
    output["shadow"] = shadow
    if search:
        sustainable = {variant: results[variant][1] for variant in ("score", "baseline")}
        output["sustainable_rps"] = sustainable
        output["throughput_ratio"] = round(sustainable["score"] / max(sustainable["baseline"], 1), 1)
    return {**output, "load_average": load_average}


def scratch_world(settings: Settings, scratch: Path) -> tuple[Settings, str]:
    """Settings over a new lake whose registry serves a fraud model trained on it, and a producer key's token."""

    from edgelake.control_db import ControlDb
    from edgelake.api.keys import KeyStore
    from edgelake.bench.silver import write_silver
    from edgelake.ingest.sources.synthetic import SyntheticConfig, labels, transactions
    from edgelake.lake.catalog import Lake
    from edgelake.lake.gold import build_card_features
    from edgelake.lake.spark import spark_session
    from edgelake.training.fraud import FraudConfig, train_fraud

    world = settings.model_copy(
        update={
            "data_dir": scratch / "data", "lake_root": str(scratch / "lake"), "topic_prefix": f"bench-{uuid.uuid4().hex[:8]}-",
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}", "log_level": "WARNING",
            "control_db_url": None, "registry_dir": None,  # keys and the registry's stages of its own, in the scratch data dir
        }
    )
    config = SyntheticConfig(seed=3, cards=200, merchants=100, fraud_rate=0.05)
    lake = Lake.from_settings(world)
    write_silver(lake, transactions(config, TRAINING_ROWS))
    write_silver(lake, labels(config, TRAINING_ROWS))
    spark = spark_session(settings.spark_master, "edgelake-bench-api", jars_dir=settings.jars_path, driver_memory=settings.spark_driver_memory)
    try:
        build_card_features(spark, lake)
        trained = train_fraud(spark, lake, scratch / "run", FraudConfig(source="synthetic", epochs=2, device="cpu"))
    finally:
        spark.stop()
    registry.publish_run(
        lake, ControlDb.from_settings(world), world.data_dir / registry.KEYS_DIR, "fraud", trained.files, metrics={"auprc": trained.metrics["auprc"]},
        lineage=trained.lineage, feature_version=trained.feature_version, promote_to="production",
    )
    return world, KeyStore(ControlDb.from_settings(world)).create("bench api", "producer")[1]


def shadow_cost(
    world: Settings, token: str, scratch: Path, loader: ProcessPoolExecutor, rates: tuple[int, ...], seconds: float
) -> dict[str, Any]:
    """Latency without and with a shadow model, from paired runs at each rate; the p99 shadow scoring adds."""
    shadowed = shadow_world(world, scratch / "shadow")
    runs: dict[str, dict[int, list[Measured]]] = {"without": {rate: [] for rate in rates}, "with": {rate: [] for rate in rates}}
    with Server("score", world, scratch / "shadow") as alone, Server("shadow", shadowed, scratch / "shadow") as twice:
        servers = {"without": (alone, Feed(alone.port, token)), "with": (twice, Feed(twice.port, token))}
        for served, feed in servers.values():
            run_at(served, feed, loader, SEARCH_START["score"] // 2, WARM_UP_S)
        if _readiness(twice.port)["fraud_model"]["shadow_version"] is None:
            raise RuntimeError(f"the shadow server scores without a shadow model: see {twice.log}")
        for _ in range(SHADOW_ROUNDS):
            for rate in rates:
                for kind, (served, feed) in servers.items():
                    runs[kind][rate].append(run_at(served, feed, loader, rate, seconds))
    figures = {kind: {str(rate): _median(measured) for rate, measured in by_rate.items()} for kind, by_rate in runs.items()}
    added = {rate: round(figures["with"][rate]["p99_ms"] - figures["without"][rate]["p99_ms"], 2) for rate in figures["with"]}
    return {"rounds": SHADOW_ROUNDS, **figures, "added_p99_ms": added}


def _median(runs: list[Measured]) -> dict[str, float | int]:
    """p50 and p99 as the median over ``runs``, their errors summed."""
    return {
        "p50_ms": round(float(np.median([r.p50_ms for r in runs])), 2),
        "p99_ms": round(float(np.median([r.p99_ms for r in runs])), 2),
        "errors": sum(r.errors for r in runs),
    }


def _embedded(world: Settings) -> Path:
    """The SQLite control-plane database of a bench world (each keeps its own in its scratch data dir)."""
    path = embedded_control_db(world)
    if path is None:
        raise ValueError("a bench world keeps its control plane in its scratch data dir")
    return path


def shadow_world(world: Settings, directory: Path) -> Settings:
    """A copy of ``world`` (its keys, lake and registry) in ``directory`` whose registry has a canary fraud version: a copy of
    the production version's files, published again."""
    from edgelake.lake.catalog import Lake

    shutil.copytree(world.data_dir, directory / "data", ignore=shutil.ignore_patterns("control.sqlite*"))
    shutil.copytree(world.lake_root, directory / "lake")
    shadowed = world.model_copy(update={"data_dir": directory / "data", "lake_root": str(directory / "lake")})
    copy_embedded(_embedded(world), _embedded(shadowed))
    lake = Lake.from_settings(shadowed)
    models = registry.Registry.from_settings(shadowed)
    production = registry.get(models, MODEL_NAME, registry.current(models, MODEL_NAME))
    manifest = production.manifest
    registry.publish_run(
        lake, models.db, shadowed.data_dir / registry.KEYS_DIR, MODEL_NAME, {name: production.path / name for name in manifest.files},
        metrics=manifest.metrics, lineage=manifest.lineage, feature_version=manifest.feature_version, promote_to="canary",
    )
    return shadowed


def measure(
    variant: str, world: Settings, token: str, scratch: Path, loader: ProcessPoolExecutor, rates: tuple[int, ...], seconds: float, search: bool
) -> tuple[list[Measured], int]:
    """Start ``variant``'s server, warm it up, run each fixed rate, then search its sustainable rate (0 without ``search``)."""
    with Server(variant, world, scratch) as served:
        feed = Feed(served.port, token)

        def at(rate: int, duration: float) -> Measured:
            return run_at(served, feed, loader, rate, duration)

        at(SEARCH_START[variant] // 2, WARM_UP_S)
        fixed = [at(rate, seconds) for rate in rates]
        sustainable = sustainable_rate(lambda rate: at(rate, STEP_S).errors == 0, SEARCH_START[variant]) if search else 0
    return fixed, sustainable


def run_at(served: Server, feed: Feed, loader: ProcessPoolExecutor, rate: int, duration: float) -> Measured:
    """``feed``'s next ``rate * duration`` requests sent to ``served`` at ``rate`` from the load generator's process, measured;
    raises if the server stopped."""
    measured: Measured = loader.submit(load, served.port, feed.take(int(rate * duration)), rate).result()
    served.check()
    time.sleep(PAUSE_S)
    return measured


def sustainable_rate(sustains: Callable[[int], bool], start: int) -> int:
    """The highest rate ``sustains``: doubling from ``start`` (halving if it fails) up to ``MAX_RATE``, then bisecting."""
    good, bad = 0, start
    while sustains(bad):
        good, bad = bad, bad * 2
        if bad > MAX_RATE:
            return good
    if good == 0:
        while bad > 1 and not sustains(bad // 2):
            bad //= 2
        good = bad // 2
    for _ in range(REFINE):
        middle = (good + bad) // 2
        if middle in (good, bad):
            break
        good, bad = (middle, bad) if sustains(middle) else (good, middle)
    return good


class Server:
    """``with Server(variant, settings, scratch) as served``: uvicorn serving ``variant``'s app on ``served.port`` (loopback)."""

    def __init__(self, variant: str, settings: Settings, scratch: Path, start_timeout_s: float = 120.0) -> None:
        self.variant, self.settings, self.timeout_s = variant, settings, start_timeout_s
        self.port = free_port()
        self.log = scratch / f"{variant}-server.log"

    def __enter__(self) -> Server:
        command = [
            sys.executable, "-m", "uvicorn", f"edgelake.bench.api:{self.variant}_app", "--factory", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--log-level", "warning", "--no-access-log",
        ]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=server_env(self.settings), stdout=log, stderr=subprocess.STDOUT)
        until = time.monotonic() + self.timeout_s
        while not _healthy(self.port):
            if self.process.poll() is not None or time.monotonic() > until:
                self.__exit__()
                raise RuntimeError(f"the {self.variant} server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def check(self) -> None:
        """Raise if the server has exited, with the end of its log."""
        if self.process.poll() is not None:
            raise RuntimeError(f"the {self.variant} server stopped: {self.log.read_text()[-2000:]}")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def server_env(settings: Settings) -> dict[str, str]:
    """This environment with ``settings``' scratch world in ``EDGELAKE_*`` variables, TensorFlow's chatter off."""
    names = ("data_dir", "lake_root", "topic_prefix", "kafka_bootstrap_servers", "log_level")
    world = {f"EDGELAKE_{name.upper()}": str(getattr(settings, name)) for name in names}
    return {**os.environ, **world, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def _get(port: int, path: str, timeout_s: float) -> tuple[int, bytes]:
    """The status and body of ``GET path`` on the loopback server at ``port``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _healthy(port: int) -> bool:
    try:
        return _get(port, "/healthz", 1)[0] == 200
    except OSError:
        return False


def _readiness(port: int) -> dict[str, Any]:
    return json.loads(_get(port, "/readyz", 10)[1])


def score_app() -> FastAPI:
    """The API over settings from the environment, with no practical per-key rate limit: what ``/v1/score`` is measured on."""
    return create_app(Settings(), rate_per_s=UNLIMITED, burst=UNLIMITED)


def shadow_app() -> FastAPI:
    """``score_app``, over a registry with a canary fraud version (``shadow_world``): every request is scored in shadow too."""
    return score_app()


def baseline_app() -> FastAPI:
    """``score_app`` whose scorer runs the production model's Keras file with ``model.predict`` on every request."""
    app = score_app()
    app.state.scorer = KerasScorer(app.state.settings, app.state.model_registry, ScoreMetrics.create(CollectorRegistry()))  # its metrics are not read
    return app


class KerasScorer(Scorer):
    """The production ``Scorer``, verifying each version as it does, but serving its Keras file."""

    def _load(self, version: int) -> ServedModel:
        super()._load(version)
        return _keras(version, registry.get(self._models, MODEL_NAME, version).path / KERAS_FILE)


class Feed:
    """Ready HTTP/1.1 requests for ``/v1/score``, each a new transaction of the synthetic feed, in event-time order."""

    def __init__(self, port: int, token: str) -> None:
        from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions

        self._head = (
            f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._transactions: Iterator[Any] = transactions(SyntheticConfig(seed=17, cards=CARDS, merchants=500), 10**9)

    def take(self, count: int) -> list[bytes]:
        """The next ``count`` requests."""
        bodies = [t.to_bytes() for t in islice(self._transactions, count)]
        return [self._head + str(len(body)).encode() + b"\r\n\r\n" + body for body in bodies]


def load(port: int, requests: list[bytes], rate: int) -> Measured:
    """Send ``requests`` to ``port`` at ``rate`` a second, open loop, and measure them (in the load generator's process)."""
    latencies, ok = asyncio.run(_drive(port, requests, rate))
    failed = ~ok | (latencies > TIMEOUT_S)
    p50, p99 = (round(float(v) * 1000, 2) for v in np.percentile(latencies, [50, 99]))
    return Measured(rate, len(requests), p50, p99, int(failed.sum()))


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _drive(port: int, requests: list[bytes], rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Each request's seconds from its due time to its answer (or failure), and whether it was answered 2xx."""
    loop = asyncio.get_running_loop()
    pool: asyncio.LifoQueue[Connection] = asyncio.LifoQueue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    start = loop.time() + 0.05
    tasks = []
    for i, request in enumerate(requests):
        due = start + i / rate
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(_send(pool, port, request, due)))
    results = await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return np.array([r[0] for r in results]), np.array([r[1] for r in results])


async def _send(pool: asyncio.LifoQueue[Connection], port: int, request: bytes, due: float) -> tuple[float, bool]:
    """Send ``request`` on a free connection once one is free (failing if none is before the timeout)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(due + TIMEOUT_S):
            connection = await pool.get()
    except TimeoutError:
        return loop.time() - due, False
    try:
        async with asyncio.timeout(30):  # the connection stays busy until answered, so the server's backlog stays bounded
            status = await _exchange(connection, request)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        connection[1].close()
        connection = await asyncio.open_connection("127.0.0.1", port)
        status = 0
    pool.put_nowait(connection)
    return loop.time() - due, 200 <= status < 300


async def _exchange(connection: Connection, request: bytes) -> int:
    """Write one request and read its response (which must have a Content-Length); its status code."""
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(":", 1) for line in lines[1:] if line)
    length = next(int(value) for name, value in headers.items() if name.strip().lower() == "content-length")
    await reader.readexactly(length)
    return int(lines[0].split()[1])
