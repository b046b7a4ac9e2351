"""Drift monitoring: the drift window on its own, then a real server with the session's trained fraud model.

The server replays the 3,000 transactions the model was trained on, in order: its window then holds the last
1,000, scored with the card features training saw, mostly the test part the version's distributions describe.
Then it scores the next 1,000 of the same world with every amount ×5 and their countries swapped for three that
were rare in training. /metrics' PSI stays under the major threshold for the first and passes it for the amounts
and the country mix in the second; promtool, fed the scraped values as two stretches of time, fires the alerts
for the second only; the dashboard plots it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edgelake.api.app import create_app
from edgelake.api.drift import DriftWindow
from edgelake.control_db import ControlDb
from edgelake.api.keys import KeyStore
from edgelake.contracts import Transaction
from edgelake.ingest.sources import synthetic
from edgelake.lake.catalog import Lake
from edgelake.lake.features.model_inputs import INPUTS_FILE, WATCHED_FIELDS, InputSpec
from edgelake.settings import Settings
from edgelake.training import registry
from edgelake.training.drift import DISTRIBUTIONS_FILE, PSI_MAJOR, PSI_MODERATE, TrainingDistributions
from support import copy_world, isolated_settings
from tests.api.conftest import TRAINING
from tests.api.test_dashboard import Dom, rendered
from tests.infra.test_prometheus_rules import RULES, run_promtool

TRAINED, SHIFTED = 3_000, 1_000
WINDOW, MIN_TRANSACTIONS, BATCH = 1_000, 500, 500
NEW_COUNTRIES = ("NG", "ZA", "AE")  # 2 % of the simulated world's merchants each
RNG = np.random.default_rng(3)
NAMES = InputSpec().names  # the window's own tests: a model reading the built-in inputs only


def input_names(settings: Settings) -> tuple[str, ...]:
    """The inputs of the session's fraud model (its production version)."""
    models = registry.Registry.from_settings(settings)
    return InputSpec.read(models.root / "fraud" / str(registry.current(models, "fraud")) / INPUTS_FILE).names


def body(t: Transaction) -> dict[str, Any]:
    return json.loads(t.to_bytes())


def shifted(t: Transaction, country: str) -> Transaction:
    return t.model_copy(update={"amount": round(5 * t.amount, 2), "country": country})


@dataclass(frozen=True)
class Psi:
    """One scrape's drift gauges."""

    inputs: dict[str, float]
    score: float | None
    fields: dict[str, float]
    transactions: float


def scraped(metrics: str) -> Psi:
    samples = [s for family in text_string_to_metric_families(metrics) for s in family.samples if "psi" in s.name or "drift" in s.name]
    by_name = {s.name: s for s in samples}
    return Psi(
        inputs={s.labels["input"]: s.value for s in samples if s.name == "edgelake_fraud_input_psi"},
        score=by_name["edgelake_fraud_score_psi"].value if "edgelake_fraud_score_psi" in by_name else None,
        fields={s.labels["field"]: s.value for s in samples if s.name == "edgelake_fraud_field_psi"},
        transactions=by_name["edgelake_fraud_drift_window_transactions"].value,
    )


# --- the window on its own -----------------------------------------------------------------


def distributions() -> TrainingDistributions:
    inputs = RNG.normal(size=(2_000, len(NAMES))).astype(np.float32)
    return TrainingDistributions.of(NAMES, inputs, RNG.uniform(size=2_000), {"merchant_category": ["grocery", "fuel"] * 1_000, "country": ["BE"] * 2_000})


def traffic(n: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, list[Transaction]]:
    """``n`` transactions like the training ones, their inputs moved by ``offset``."""
    transactions = [
        Transaction(
            event_id=f"tx-{i}", event_time=TRAINING.start, card_id="c", merchant_id="m", merchant_category=("grocery", "fuel")[i % 2],
            amount=1.0, currency="EUR", country="BE",
        )
        for i in range(n)
    ]
    return (RNG.normal(size=(n, len(NAMES))) + offset).astype(np.float32), RNG.uniform(size=n), transactions


def test_the_window_holds_the_latest_transactions_only() -> None:
    reference = distributions()
    window = DriftWindow(1, reference, size=300, min_transactions=100, snapshot_s=3600)
    early, late = traffic(250, offset=3.0), traffic(400)
    window.add(*early)
    shifted_reading = window.reading()
    for start in range(0, 400, 70):  # batches that wrap around the ring
        window.add(late[0][start : start + 70], late[1][start : start + 70], late[2][start : start + 70])
    fresh = DriftWindow(1, reference, size=300, min_transactions=100, snapshot_s=3600)
    fresh.add(late[0][-300:], late[1][-300:], late[2][-300:])
    now, expected = window.reading(), fresh.reading()
    assert window.transactions == fresh.transactions == 300 and now is not None and expected is not None
    assert (now.inputs, now.score, now.fields) == (expected.inputs, expected.score, expected.fields)
    assert shifted_reading is not None and min(shifted_reading.inputs.values()) > PSI_MAJOR
    assert max(now.inputs.values()) < PSI_MAJOR


def test_psi_waits_for_the_minimum_and_snapshots_keep_time() -> None:
    window = DriftWindow(1, distributions(), size=1_000, min_transactions=200, snapshot_s=0)
    window.add(*traffic(150))
    assert window.reading() is None and window.history() == []
    window.add(*traffic(100))
    window.add(*traffic(400, offset=2.0))
    history = window.history()
    assert [r.transactions for r in history] == [250, 650]
    assert history[0].time <= history[1].time and history[1].inputs[NAMES[0]] > history[0].inputs[NAMES[0]]
    assert history[0].fields == {"merchant_category": pytest.approx(0.0, abs=0.01), "country": 0.0}


def test_a_new_category_counts_as_any_other_value() -> None:
    window = DriftWindow(1, distributions(), size=100, min_transactions=10, snapshot_s=3600)
    inputs, scores, transactions = traffic(100)
    window.add(inputs, scores, [t.model_copy(update={"country": "NG" if i % 2 else None}) for i, t in enumerate(transactions)])
    reading = window.reading()
    assert reading is not None and reading.fields["country"] > PSI_MAJOR and reading.fields["merchant_category"] < 0.01


# --- a real server -------------------------------------------------------------------------


@dataclass(frozen=True)
class Drifted:
    trained: Psi  # after the trained transactions
    shifted: Psi  # after the shifted ones
    dashboard: dict[str, Any]
    page: Dom


@pytest.fixture(scope="module")
def keys(fraud_lake: Settings) -> dict[str, str]:
    store = KeyStore(ControlDb.from_settings(fraud_lake))
    return {role: store.create(f"drift {role}", role)[1] for role in ("producer", "analyst")}


def drift_settings(lake: Settings, **change: Any) -> Settings:
    fresh = isolated_settings(lake.kafka_bootstrap_servers, lake.data_dir)
    return fresh.model_copy(
        update={
            "lake_root": lake.lake_root, "score_model_check_s": 0.0, "drift_window": WINDOW, "drift_min_transactions": MIN_TRANSACTIONS,
            "drift_snapshot_s": 0.0, **change,
        }
    )


@pytest.fixture(scope="module")
def drifted(fraud_lake: Settings, keys: dict[str, str], serve, tmp_path_factory: pytest.TempPathFactory) -> Drifted:
    feed = list(synthetic.transactions(TRAINING, TRAINED + SHIFTED))
    countries = cycle(NEW_COUNTRIES)
    later = [shifted(t, next(countries)) for t in feed[TRAINED:]]
    with serve(create_app(drift_settings(fraud_lake), rate_per_s=10_000, burst=10_000)) as url:
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {keys['producer']}"}, timeout=60) as http:

            def score(transactions: list[Transaction]) -> Psi:
                for start in range(0, len(transactions), BATCH):
                    response = http.post("/v1/score:batch", json=[body(t) for t in transactions[start : start + BATCH]])
                    assert response.status_code == 200, response.text
                return scraped(http.get("/metrics").text)

            trained, moved = score(feed[:TRAINED]), score(later)
            dashboard = http.get("/v1/dashboard", headers={"Authorization": f"Bearer {keys['analyst']}"}).json()
        page = Dom(rendered(f"{url}/?key={keys['analyst']}", tmp_path_factory.mktemp("chromium")))
    return Drifted(trained, moved, dashboard, page)


def test_the_traffic_the_model_was_trained_on_stays_under_the_moderate_psi(drifted: Drifted, fraud_lake: Settings) -> None:
    trained = drifted.trained
    assert trained.transactions == WINDOW
    assert set(trained.inputs) == set(input_names(fraud_lake)) and set(trained.fields) == set(WATCHED_FIELDS)
    assert max(trained.inputs.values()) < PSI_MODERATE, trained.inputs
    assert trained.score is not None and trained.score < PSI_MODERATE
    assert max(trained.fields.values()) < PSI_MODERATE, trained.fields


def test_larger_amounts_and_a_new_country_mix_pass_it(drifted: Drifted) -> None:
    moved = drifted.shifted
    assert moved.transactions == WINDOW
    assert moved.inputs["log_amount"] > PSI_MAJOR and moved.fields["country"] > PSI_MAJOR
    assert moved.score is not None and moved.score > PSI_MODERATE  # the model sees it too
    assert moved.fields["merchant_category"] < PSI_MAJOR  # not shifted
    assert moved.inputs["hour_sin"] < PSI_MAJOR and moved.inputs["hour_cos"] < PSI_MAJOR  # nor the times of day


def expanded(template: str, labels: dict[str, str]) -> str:
    """An alert annotation with its ``{{ $labels.x }}`` filled in, as Prometheus renders it."""
    for name, value in labels.items():
        template = template.replace(f"{{{{ $labels.{name} }}}}", value)
    return template


def test_the_alerts_fire_on_the_shifted_traffic_only(drifted: Drifted, fraud_lake: Settings, tmp_path: Path) -> None:
    """promtool gets the scraped PSI as 15 minutes of the trained traffic, then 30 of the shifted one."""
    rules = {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule}
    before, after = drifted.trained, drifted.shifted
    series = [("edgelake_fraud_input_psi", {"input": n}, before.inputs[n], after.inputs[n]) for n in input_names(fraud_lake)]
    series += [("edgelake_fraud_field_psi", {"field": n}, before.fields[n], after.fields[n]) for n in WATCHED_FIELDS]
    series += [("edgelake_fraud_score_psi", {}, before.score, after.score)]
    alerts = {"edgelake_fraud_input_psi": "EdgelakeFraudInputDrift", "edgelake_fraud_field_psi": "EdgelakeFraudTrafficMixDrift",
              "edgelake_fraud_score_psi": "EdgelakeFraudScoreDrift"}
    firing: dict[str, list[dict[str, Any]]] = {alert: [] for alert in alerts.values()}
    for metric, labels, _, value in series:
        assert value is not None
        if value > PSI_MAJOR:
            rule = rules[alerts[metric]]
            firing[alerts[metric]].append({
                "exp_labels": {**rule["labels"], **labels},
                "exp_annotations": {key: expanded(text, labels) for key, text in rule["annotations"].items()},
            })
    assert {"input": "log_amount"} in [{k: v for k, v in a["exp_labels"].items() if k == "input"} for a in firing["EdgelakeFraudInputDrift"]]
    assert [a["exp_labels"]["field"] for a in firing["EdgelakeFraudTrafficMixDrift"]] == ["country"]
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": metric + ("{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""),
                 "values": f"{before_value!r}+0x14 {after_value!r}+0x30"}
                for metric, labels, before_value, after_value in series
            ],
            "alert_rule_test": [
                *({"eval_time": "14m", "alertname": alert, "exp_alerts": []} for alert in alerts.values()),
                *({"eval_time": "44m", "alertname": alert, "exp_alerts": firing[alert]} for alert in alerts.values()),
            ],
        }],
    }
    (tmp_path / "drift.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    tested = run_promtool("test", "rules", str(tmp_path / "drift.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_plots_the_psi_over_time(drifted: Drifted, fraud_lake: Settings) -> None:
    drift = drifted.dashboard["drift"]
    points = TRAINED // BATCH + SHIFTED // BATCH + 1  # a snapshot per batch (drift_snapshot_s 0), then now
    assert (drift["version"], drift["window"], drift["transactions"], len(drift["times"])) == (1, WINDOW, WINDOW, points)
    series = {s["name"]: s for s in drift["series"]}
    assert [s["kind"] for s in drift["series"][:3]] == ["score", "field", "field"] and set(series) == {"score", *WATCHED_FIELDS, *input_names(fraud_lake)}
    amount = series["log_amount"]["psi"]
    assert max(amount[: TRAINED // BATCH]) < PSI_MAJOR < amount[-1]

    page = drifted.page
    (body,) = page.find("body")
    assert body.attrs.get("data-state") == "ready", page.texts("span")
    rows = {row.attrs["data-name"]: row for row in page.find("tr", "drift-row")}
    assert set(rows) == set(series)
    assert "major" in rows["log_amount"].attrs["class"] and "major" in rows["country"].attrs["class"]
    assert "major" not in rows["merchant_category"].attrs["class"]
    assert {int(svg.attrs["data-points"]) for svg in page.find("svg", "sparkline")} == {points}
    assert len(page.find("polyline", "psi")) == len(series)


def test_a_new_version_restarts_the_window_and_one_without_distributions_is_served_unwatched(
    fraud_lake: Settings, keys: dict[str, str], serve, tmp_path: Path
) -> None:
    settings = copy_world(drift_settings(fraud_lake, drift_min_transactions=10), tmp_path / "versions")
    lake = Lake.from_settings(settings)
    models = registry.Registry.from_settings(settings)
    first = registry.get(models, "fraud", registry.current(models, "fraud"))
    assert DISTRIBUTIONS_FILE in first.manifest.files

    def publish(files: list[str]) -> int:
        return registry.publish_run(
            lake, models.db, settings.data_dir / registry.KEYS_DIR, "fraud", {name: first.path / name for name in files}, metrics=first.manifest.metrics,
            lineage=first.manifest.lineage, feature_version=first.manifest.feature_version, promote_to="production",
        ).version

    feed = [body(t) for t in synthetic.transactions(synthetic.SyntheticConfig(seed=21, cards=10), 60)]
    with serve(create_app(settings, rate_per_s=10_000, burst=10_000)) as url, httpx2.Client(
        base_url=url, headers={"Authorization": f"Bearer {keys['producer']}"}, timeout=60
    ) as http:
        assert http.post("/v1/score:batch", json=feed[:40]).status_code == 200
        served = scraped(http.get("/metrics").text)
        second = publish(list(first.manifest.files))
        assert http.post("/v1/score:batch", json=feed[40:50]).json()["scores"][0]["model"]["version"] == second
        restarted = scraped(http.get("/metrics").text)
        unwatched = publish([name for name in first.manifest.files if name != DISTRIBUTIONS_FILE])
        answered = http.post("/v1/score:batch", json=feed[50:])
        without = scraped(http.get("/metrics").text)
    assert served.transactions == 40 and len(served.inputs) == len(input_names(fraud_lake))
    assert restarted.transactions == 10 and len(restarted.inputs) == len(input_names(fraud_lake))
    assert answered.status_code == 200 and answered.json()["scores"][0]["model"]["version"] == unwatched
    assert without == Psi(inputs={}, score=None, fields={}, transactions=0.0)
