"""Every operation of the OpenAPI document, fuzzed with schemathesis against a real server: no 5xx, and every 4xx is a problem.

The schema is loaded over HTTP from the running server (``/openapi.json``), and each operation gets
hypothesis-generated cases (valid and invalid ones), sent with an admin key, which every route admits.
Generated path parameters rarely name anything that exists, so each case is also sent once more
aimed at what does: the enrolled device (with that device's own key), model ``fraud`` v1 and table
``silver_transactions``. The lake is a copy of the session's scoring lake (silver transactions,
labels and a trained fraud model in production), so /v1/score scores rather than answering 503.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb
from edgelake.api.keys import KeyStore
from edgelake.settings import Settings
from support import copy_stage_books, isolated_settings
from tests.api.conftest import serving

PROBLEM = "application/problem+json"
EXAMPLES = 25  # per operation
# The routes' own path parameters, pointed at what exists in the lake and the device store.
REAL: dict[str, dict[str, Any]] = {
    "/v1/tables/{name}": {"name": "silver_transactions"},
    "/v1/models/{name}": {"name": "fraud"},
    "/v1/models/{name}/rollout": {"name": "fraud"},
    "/v1/models/{name}/{version}/manifest": {"name": "fraud", "version": 1},
    "/v1/models/{name}/{version}/artifacts/{file}": {"name": "fraud", "version": 1},
}


@dataclass(frozen=True)
class Target:
    url: str
    admin: str
    device_id: str
    device_token: str


@pytest.fixture(scope="module")
def target(fraud_lake: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A server without a practical rate limit over a copy of the scoring lake, on topics of its own, with one enrolled device."""
    base = tmp_path_factory.mktemp("openapi")
    settings = isolated_settings(fraud_lake.kafka_bootstrap_servers, base / "data").model_copy(update={"score_model_check_s": 0.0})
    shutil.copytree(fraud_lake.lake_root, settings.lake_root)
    copy_stage_books(fraud_lake, settings)
    admin = KeyStore(ControlDb.from_settings(settings)).create("openapi admin", "admin")[1]
    with serving(create_app(settings, rate_per_s=1e6, burst=10**6)) as url:
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as http:
            token = http.post("/v1/devices/enrollment-tokens", json={"name": "openapi"}).json()["token"]
            device = http.post("/v1/devices/enroll", json={"enrollment_token": token, "device_name": "fuzz"}).json()
        yield Target(url, admin, device["device_id"], device["device_token"])


def _sent(case: schemathesis.Case, target: Target, token: str) -> None:
    response = case.call(base_url=target.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
    if 400 <= response.status_code < 500:
        assert response.headers.get("content-type") == [PROBLEM], (case.method, case.formatted_path, response.status_code, response.text)
        problem = response.json()
        assert problem["status"] == response.status_code and problem["type"], problem


def _fuzz(case: schemathesis.Case, target: Target) -> None:
    """``case`` with the admin key; then, for a route of a device, model or table, aimed at one that exists."""
    _sent(case, target, target.admin)
    path = case.operation.path
    if "{device_id}" in path:  # the enrolled device, speaking for itself with its own key
        case.path_parameters = {**(case.path_parameters or {}), "device_id": target.device_id}
        _sent(case, target, target.device_token)
    elif path in REAL:
        case.path_parameters = {**(case.path_parameters or {}), **REAL[path]}
        _sent(case, target, target.admin)


def test_no_operation_answers_a_server_error_or_a_4xx_that_is_not_a_problem(target: Target) -> None:
    # schemathesis' pytest plugin (from_fixture) does not work with this pytest, so each operation gets its own hypothesis run
    api = schemathesis.openapi.from_url(f"{target.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    failures: dict[str, str] = {}
    for operation in operations:
        run = settings(
            max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck), report_multiple_bugs=False
        )(given(case=operation.as_strategy())(lambda case: _fuzz(case, target)))
        try:
            run()
        except Exception as error:  # noqa: BLE001 - every operation is fuzzed; the failures are reported together
            failures[operation.label] = f"{type(error).__name__}: {error}"[:3000]
    assert failures == {}, "\n\n".join(f"{label}\n{failure}" for label, failure in failures.items())


def test_amounts_too_large_to_score_are_a_422_not_a_500(target: Target) -> None:
    """Found by the run above: two amounts near the float maximum on one card overflowed its window sums (a 500, then every
    later score of the card too). Amounts and model attributes beyond 1e15 are now refused before the card's history is touched."""
    base = {
        "event_time": "2025-06-01T12:00:00Z", "card_id": "card-huge", "merchant_id": "m1", "merchant_category": "grocery",
        "currency": "EUR", "channel": "pos",
    }
    with httpx2.Client(base_url=target.url, headers={"Authorization": f"Bearer {target.admin}"}, timeout=30) as http:
        huge = [http.post("/v1/score", json={**base, "event_id": f"huge-{i}", "amount": 7.9e307}) for i in range(2)]
        attribute = http.post("/v1/score", json={**base, "event_id": "huge-v1", "amount": 1.0, "attributes": {"V1": 1e300}})
        batch = http.post("/v1/score:batch", json=[{**base, "event_id": "ok", "amount": 1.0}, {**base, "event_id": "huge-b", "amount": 1e16}])
        fine = http.post("/v1/score", json={**base, "event_id": "fine", "amount": 1e15})
    expected = ((huge[0], ["body", "amount"]), (huge[1], ["body", "amount"]), (attribute, ["body", "attributes", "V1"]), (batch, ["body", 1, "amount"]))
    for response, loc in expected:
        assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, response.text
        assert [e["loc"] for e in response.json()["errors"]] == [loc]
    assert fine.status_code == 200 and fine.json()["features"]["tx_count_1h"] == 1, fine.text
