"""Every error is problem+json; every /v1 route wants a live key of its role, within its rate limit."""

from __future__ import annotations

import subprocess

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb, embedded_control_db
from edgelake.api.keys import KeyStore
from edgelake.settings import Settings

if TYPE_CHECKING:
    from tests.api.conftest import Deployment, Serve

# (method, path, JSON body, a role admitted, a role refused)
ROUTES = [
    ("POST", "/v1/sql", {"sql": "SELECT 1 AS one"}, "analyst", "device"),
    ("GET", "/v1/tables", None, "analyst", "device"),
    ("GET", "/v1/tables/silver_transactions", None, "analyst", "producer"),
    ("GET", "/v1/models", None, "device", "producer"),
    ("GET", "/v1/models/fraud", None, "analyst", "producer"),
    ("GET", "/v1/models/fraud/1/manifest", None, "device", "producer"),
    ("GET", "/v1/models/fraud/1/artifacts/model.tflite", None, "device", "producer"),
    ("GET", "/v1/audit", None, "admin", "analyst"),
]
ROUTE_IDS = [f"{method} {path}" for method, path, *_ in ROUTES]


def assert_problem(response: httpx2.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with ``status``; its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= body.keys(), body
    assert body["status"] == status and body["instance"] == response.request.url.path
    return body


def test_an_unknown_route_is_a_404_problem(deployment: Deployment) -> None:
    with deployment.client("admin") as client:
        body = assert_problem(client.get("/v1/nothing-here"), 404)
    assert body["type"] == "about:blank" and body["title"] == "Not Found"


def test_a_wrong_method_is_a_405_problem(deployment: Deployment) -> None:
    with deployment.client("analyst") as client:
        response = client.delete("/v1/tables")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"sql": ""}, "sql"), ({"sql": "SELECT 1", "limit": 0}, "limit"), ({"sql": "SELECT 1", "as_of": -1}, "as_of"), ({"query": "x"}, "sql")],
)
def test_an_invalid_body_is_a_422_problem_listing_the_errors(deployment: Deployment, body: dict[str, Any], field: str) -> None:
    with deployment.client("analyst") as client:
        problem = assert_problem(client.post("/v1/sql", json=body), 422)
    assert problem["errors"] and any(field in error["loc"] for error in problem["errors"]), problem


def test_malformed_json_is_a_422_problem(deployment: Deployment) -> None:
    with deployment.client("analyst") as client:
        response = client.post("/v1/sql", content=b"{not json", headers={"content-type": "application/json"})
    assert assert_problem(response, 422)["errors"]


@pytest.mark.parametrize(("method", "path", "body", "allowed", "refused"), ROUTES, ids=ROUTE_IDS)
def test_every_v1_route_wants_a_key(deployment: Deployment, method: str, path: str, body: Any, allowed: str, refused: str) -> None:
    with deployment.client() as client:
        missing = client.request(method, path, json=body)
        wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer elk_not-a-key"})
    for response in (missing, wrong):
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "body", "allowed", "refused"), ROUTES, ids=ROUTE_IDS)
def test_every_v1_route_admits_its_roles_and_admin_and_refuses_others(
    deployment: Deployment, method: str, path: str, body: Any, allowed: str, refused: str
) -> None:
    for role in (allowed, "admin"):
        with deployment.client(role) as client:
            response = client.request(method, path, json=body)
        assert response.status_code == 200, (role, response.text)
    with deployment.client(refused) as client:
        problem = assert_problem(client.request(method, path, json=body), 403)
    assert refused in problem["detail"]


def test_the_key_may_come_in_an_x_api_key_header(deployment: Deployment) -> None:
    with deployment.client() as client:
        assert client.get("/v1/tables", headers={"X-API-Key": deployment.tokens["analyst"]}).status_code == 200


def test_keys_are_stored_only_as_hashes_in_a_private_file(deployment: Deployment) -> None:
    path = embedded_control_db(deployment.settings)
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    # The database and its write-ahead log, read by another process: closing a descriptor of the file here would drop the
    # locks of the server's connections in this process.
    stored = subprocess.run(["cat", *map(str, path.parent.glob(f"{path.name}*"))], capture_output=True, check=True).stdout
    assert all(token.encode() not in stored and token.startswith("elk_") for token in deployment.tokens.values())
    hashes = {key.sha256.encode() for key in KeyStore(ControlDb.from_settings(deployment.settings)).keys()}
    assert len(hashes) >= len(deployment.tokens) and all(digest in stored for digest in hashes)


def test_a_key_revoked_elsewhere_is_refused_within_the_key_cache_time(deployment: Deployment) -> None:
    store = KeyStore(ControlDb.from_settings(deployment.settings))  # as `edgelake keys revoke` or another replica would
    key, token = store.create("short-lived", "analyst")
    with httpx2.Client(base_url=deployment.url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/v1/tables").status_code == 200
        store.revoke(key.id)
        revoked = time.monotonic()
        while client.get("/v1/tables").status_code == 200:
            assert time.monotonic() - revoked < deployment.settings.api_key_cache_s + 1, "the revoked key still works"
            time.sleep(0.05)
        assert_problem(client.get("/v1/tables"), 401)


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(deployment: Deployment, serve: Serve) -> None:
    with serve(create_app(deployment.settings, rate_per_s=0.5, burst=2)) as url:
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {deployment.tokens['analyst']}"}) as client:
            assert [client.get("/v1/models").status_code for _ in range(2)] == [200, 200]
            response = client.get("/v1/models")
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {deployment.tokens['device']}"}) as other:
            assert other.get("/v1/models").status_code == 200  # buckets are per key
    assert "rate limit" in assert_problem(response, 429)["detail"]
    assert response.headers["retry-after"] == "2"


def test_health_readiness_and_metrics_need_no_key(deployment: Deployment) -> None:
    with deployment.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        readiness = client.get("/readyz")
        required = client.get("/readyz", params={"require": "fraud_model"})
        client.get("/v1/tables/{name}")  # a 401 on a templated route
        client.get("/no/such/route")
        metrics = client.get("/metrics")
    # the lake is reachable, but the published model is not in production: degraded, and not ready for scoring
    assert readiness.status_code == 200
    body = readiness.json()
    assert body["status"] == "degraded" and body["lake"] == {"reachable": True}
    assert body["fraud_model"]["loaded"] is False and body["fraud_model"]["version"] is None
    assert "production" in body["fraud_model"]["detail"]
    assert "no fraud model is loaded" in assert_problem(required, 503)["detail"]
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "# TYPE edgelake_http_request_duration_seconds histogram" in text
    assert 'edgelake_http_request_duration_seconds_count{method="GET",route="/healthz",status="200"}' in text
    assert 'route="/v1/tables/{name}",status="401"' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "/no/such/route" not in text


def test_readiness_fails_with_503_when_the_lake_root_is_missing(serve: Serve, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, lake_root=str(tmp_path / "no-lake"))
    with serve(create_app(settings)) as url, httpx2.Client(base_url=url) as client:
        problem = assert_problem(client.get("/readyz"), 503)
        assert client.get("/healthz").status_code == 200
    assert "no-lake" in problem["detail"]


def test_the_openapi_document_names_the_contract(deployment: Deployment) -> None:
    with deployment.client() as client:
        spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "edgelake API" and spec["info"]["version"]
    assert {tag["name"] for tag in spec["tags"]} == {"health", "sql", "tables", "models", "score", "devices", "dashboard", "audit"}
    assert set(spec["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    sql = spec["paths"]["/v1/sql"]["post"]
    assert {"400", "401", "403", "422", "429", "504"} <= set(sql["responses"])
    assert "application/problem+json" in sql["responses"]["400"]["content"]
    score = spec["paths"]["/v1/score:batch"]["post"]
    assert {"401", "403", "422", "503"} <= set(score["responses"])
    assert score["requestBody"]["content"]["application/json"]["schema"]["maxItems"] == 1000


def test_an_unexpected_error_is_a_500_problem_without_internals(serve: Serve, tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, lake_root=str(tmp_path)))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with serve(app) as url, httpx2.Client(base_url=url) as client:
        problem = assert_problem(client.get("/boom"), 500)
    assert "secret" not in problem["detail"]
