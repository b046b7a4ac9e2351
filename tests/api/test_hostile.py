"""A hostile hand against a running ``edgelake serve``: what an outsider or a careless client can send, and
what the server must answer (a 4xx problem, never a 500), while it stays small and keeps answering others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import pytest


from edgelake.control_db import ControlDb
from edgelake.api.keys import KeyStore
from edgelake.broker import EmbeddedBroker, free_port
from tests.api.test_errors_and_auth import assert_problem

if TYPE_CHECKING:
    from tests.api.conftest import Deployment

OPEN_ROUTES = {"/v1/devices/enroll"}  # takes an enrollment token, not a key


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path

    def rss_mb(self) -> float:
        """The server process's resident memory."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(deployment: Deployment, kafka: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``edgelake serve`` as a user runs it, over the deployment's lake and keys."""
    port, log = free_port(), tmp_path_factory.mktemp("hostile") / "server.log"
    env = {
        **os.environ, "EDGELAKE_DATA_DIR": str(deployment.settings.data_dir), "EDGELAKE_LAKE_ROOT": deployment.settings.lake_root,
        "EDGELAKE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "EDGELAKE_TOPIC_PREFIX": "hostile-", "EDGELAKE_SQL_TIMEOUT_S": "5",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgelake", "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
        yield Server(url, process.pid, log)
    finally:
        process.terminate()
        process.wait(20)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]  # nothing the hostile hand sent was a 500


def test_every_v1_route_refuses_no_key_a_forged_one_and_a_revoked_one(server: Server, deployment: Deployment) -> None:
    store = KeyStore(ControlDb.from_settings(deployment.settings))
    revoked, token = store.create("revoked admin", "admin")
    store.revoke(revoked.id)
    spec = httpx2.get(f"{server.url}/openapi.json", timeout=10).json()
    routes = [(method.upper(), path) for path, methods in spec["paths"].items() for method in methods if path.startswith("/v1/")]
    assert len(routes) >= 15
    with httpx2.Client(base_url=server.url, timeout=30) as http:
        for method, template in routes:
            if template in OPEN_ROUTES:
                continue
            path = template.replace("{name}", "fraud").replace("{version}", "1").replace("{device_id}", "dev_x").replace("{file}", "model.tflite")
            path = path.replace("{table}", "silver_transactions")
            for credential in (None, "Bearer elk_forged-key-000000000000000000000000", f"Bearer {token}", "Basic YWRtaW46YWRtaW4="):
                headers = {"Authorization": credential} if credential else {}
                response = http.request(method, path, headers=headers, json={} if method in ("POST", "PUT") else None)
                assert_problem(response, 401)


@pytest.mark.parametrize(
    "name",
    [
        "..%2f..%2fregistry.pub", "%2e%2e%2f%2e%2e%2fregistry.pub", "%2Fetc%2Fpasswd", "metrics.json%00.png", "%00", "a" * 4096,
        "plots%2f..%2f..%2f..%2fregistry.pub",
    ],
)
def test_artifact_names_reach_nothing_outside_the_manifest(server: Server, deployment: Deployment, name: str) -> None:
    headers = {"Authorization": f"Bearer {deployment.tokens['device']}"}
    response = httpx2.get(f"{server.url}/v1/models/fraud/1/artifacts/{name}", headers=headers, timeout=10)
    assert response.status_code in (404, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_huge_bodies_are_413_and_the_server_stays_small(server: Server, deployment: Deployment) -> None:
    headers = {"Authorization": f"Bearer {deployment.tokens['producer']}", "content-type": "application/json"}
    body = b"[" + b'{"event_id": "x"},' * 2_900_000 + b"{}]"  # ~50 MB

    def streamed() -> Iterator[bytes]:  # without a Content-Length
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    before = server.rss_mb()
    with httpx2.Client(base_url=server.url, timeout=60) as http, ThreadPoolExecutor(8) as pool:
        declared = list(pool.map(lambda _: http.post("/v1/score:batch", content=body, headers=headers), range(8)))
        chunked = http.post("/v1/score:batch", content=streamed(), headers=headers)
    for response in (*declared, chunked):
        assert_problem(response, 413)
    assert server.rss_mb() - before < 100, f"RSS {before:.0f} → {server.rss_mb():.0f} MB"  # 8 × 50 MB echoed took it to 1 GB


def test_deeply_nested_json_is_a_4xx(server: Server, deployment: Deployment) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    with httpx2.Client(base_url=server.url, timeout=30) as http:
        as_json = {"content-type": "application/json"}
        sql = http.post("/v1/sql", content=f'{{"sql": {nested}}}', headers={"Authorization": f"Bearer {deployment.tokens['analyst']}", **as_json})
        score = http.post("/v1/score:batch", content=nested, headers={"Authorization": f"Bearer {deployment.tokens['producer']}", **as_json})
        attributes = http.post(
            "/v1/score", content=json.dumps({"attributes": "<x>"}).replace('"<x>"', "{" + '"a": {' * 5_000 + "}" * 5_001),
            headers={"Authorization": f"Bearer {deployment.tokens['producer']}", "content-type": "application/json"},
        )
    for response in (sql, score, attributes):
        assert 400 <= response.status_code < 500, response.text[:500]
        assert response.headers["content-type"] == "application/problem+json"


def test_a_heavy_query_does_not_stall_other_requests(server: Server, deployment: Deployment) -> None:
    cross = "SELECT count(*) AS n FROM silver_transactions a, silver_transactions b, silver_transactions c, silver_transactions d"
    analyst = {"Authorization": f"Bearer {deployment.tokens['analyst']}"}
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        heavy: list[httpx2.Response] = []
        running = threading.Thread(target=lambda: heavy.append(http.post("/v1/sql", json={"sql": cross}, headers=analyst)))
        running.start()
        time.sleep(0.5)
        seconds = []
        for _ in range(20):
            started = time.monotonic()
            assert http.get("/v1/tables", headers=analyst).status_code == 200
            seconds.append(time.monotonic() - started)
            time.sleep(0.05)
        running.join()
    assert heavy[0].status_code in (200, 504), heavy[0].text
    assert max(seconds) < 1.0, f"slowest /v1/tables beside the heavy query: {max(seconds):.2f} s"


def test_a_burst_on_one_key_is_rate_limited_with_retry_after(server: Server, deployment: Deployment) -> None:
    analyst = {"Authorization": f"Bearer {deployment.tokens['analyst']}"}
    with httpx2.Client(base_url=server.url, timeout=30) as http, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: http.get("/v1/tables", headers=analyst), range(300)))
    limited = [a for a in answers if a.status_code == 429]
    assert limited and all(a.status_code in (200, 429) for a in answers)
    assert all(int(a.headers["retry-after"]) >= 1 and a.headers["content-type"] == "application/problem+json" for a in limited)
