"""``edgelake demo``: the whole pipeline end to end on the embedded defaults."""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgelake.console import console, reported_errors
from edgelake.cli.audit import admin_command
from edgelake.cli.produce import print_deliveries, run_producer
from edgelake.contracts import EVENT_BY_TOPIC, FraudScore, InvalidEvent
from edgelake.errors import UserError
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.edge.fleet import FleetOptions
    from edgelake.ingest.sources import Kind

# The example analysts' query the demo answers over the gold tables it built.
EXAMPLE_QUERY = """
SELECT merchant_category,
       sum(transactions) AS transactions,
       sum(frauds) AS frauds,
       round(100.0 * sum(frauds) / nullif(sum(labelled), 0), 3) AS fraud_pct,
       round(sum(fraud_amount), 2) AS fraud_amount
FROM gold_fraud_rates
GROUP BY merchant_category
ORDER BY fraud_pct DESC NULLS LAST, merchant_category
"""

FLEET_DEVICES = 5
FLEET_FRAMES = 200  # results per device
ROTATION_FRAMES = 150  # results per device while the fleet follows a key rotation
# How the fleet's devices did on their labelled frames, from the lake.
FLEET_QUERY = """
SELECT device_id, model_version, count(*) AS results,
       round(avg(CASE WHEN prediction = label THEN 1.0 ELSE 0.0 END), 3) AS accuracy,
       round(avg(latency_ms), 3) AS mean_latency_ms
FROM silver_edge_inferences
GROUP BY device_id, model_version
ORDER BY device_id
"""

SCORED = 5_000  # the latest ULB transactions, scored through the API
# Production's decisions against the shadow (canary) model's on the same transactions, from the lake.
AUDIT_QUERY = """
SELECT actor, action, outcome, count(*) AS entries
FROM silver_audit_log
GROUP BY actor, action, outcome
ORDER BY entries DESC, action
"""
SHADOW_QUERY = """
SELECT p.decision AS production, s.decision AS shadow, count(*) AS transactions
FROM silver_fraud_scores p
JOIN silver_fraud_scores s ON s.transaction_id = p.transaction_id AND s.shadow
WHERE NOT p.shadow
GROUP BY p.decision, s.decision
ORDER BY p.decision, s.decision
"""
SCORE_BATCH = 500

# (kind, source, events when no --limit is given; None = the whole data set)
DEMO_FEEDS: tuple[tuple[Kind, str, int | None], ...] = (
    ("transactions", "ulb", None),
    ("labels", "ulb", None),
    ("transactions", "synthetic", 20_000),
    ("labels", "synthetic", 20_000),
    ("iot", "shuttle", None),
    ("images", "fashion-mnist", None),
)


def demo(
    ctx: typer.Context,
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many events per feed."),
) -> None:
    """Start the embedded broker, produce every real data set, read each topic back, land it in the lake,
    build the gold tables with Spark, answer an example SQL query over them, train and publish both models, score transactions through the API,
    and run a small edge fleet that takes the vision model over the air and streams its results into the lake."""
    from edgelake.broker import bootstrap_servers
    from edgelake.cli.ingest import print_table_counts
    from edgelake.cli.lake import run_build_gold
    from edgelake.cli.sql import print_result
    from edgelake.lake.catalog import Lake
    from edgelake.lake.sql import run_query
    from edgelake.ingest.loop import IngestOptions, ingest
    from edgelake.ingest.sources import SourceOptions

    settings: Settings = ctx.obj
    story = Story()
    with reported_errors():
        story.step("start the embedded Kafka broker (unless one is configured) and create the topics")
        servers = bootstrap_servers(settings)
        story.done(f"Kafka answers at {servers}; its {len(EVENT_BY_TOPIC)} event topics exist")
        story.step("produce real data into Kafka")
        deliveries = [
            run_producer(settings, kind, source, SourceOptions(count=_capped(default, limit)))
            for kind, source, default in DEMO_FEEDS
        ]
        print_deliveries(deliveries)
        failed = sum(d.failed for d in deliveries)
        story.done(f"{sum(d.acknowledged for d in deliveries):,} events from {len(deliveries)} feeds acknowledged by Kafka, {failed:,} failed")
        story.step("read every topic back from the broker")
        valid, invalid = print_topic_summary(settings, servers)
        story.done(f"{valid:,} records read back valid against their contracts, {invalid:,} invalid")
        story.step("ingest into the lake: bronze, silver, quarantine (exactly once)")
        options = IngestOptions()
        totals = ingest(settings, options, once=True)
        print_table_counts(settings, options.topics, totals.counts)
        landed: Counter[str] = Counter()
        for counts in totals.counts.values():
            landed.update(counts)
        story.done(
            f"{landed['silver']:,} events landed in silver, {landed['quarantined']:,} quarantined, {landed['duplicates']:,} duplicates dropped"
        )
        story.step("build the gold tables with Spark and delta-spark (incremental, written by the executors)")
        built = run_build_gold(settings, settings.spark_master)
        story.done(f"{len(built)} gold tables up to date, {sum(result.rows_out for result in built):,} rows written")
        story.step("ask the lake: fraud by merchant category (edgelake sql)")
        console.print(EXAMPLE_QUERY.strip(), style="dim", highlight=False)
        print_result(run_query(Lake.from_settings(settings), EXAMPLE_QUERY, limit=settings.sql_row_limit, timeout_s=settings.sql_timeout_s))
        story.done("answered over the gold tables by the guarded SQL engine")
        story.step("train the fraud and vision models, and a second fraud model to run in shadow; publish them, signed")
        if limit is None:
            story.done(train_models(settings))
        else:
            story.skipped("the models are trained on the full data sets")
        story.step("serve the API, score a stream of transactions, land the scores in the lake")
        if limit is None:
            story.done(serve_and_score(settings))
        else:
            story.skipped("scoring needs the trained fraud model")
        story.step("an edge fleet takes the vision model over the air and streams its results into the lake")
        if limit is None:
            story.done(run_edge_fleet(settings))
        else:
            story.skipped("the fleet needs the trained vision model")
        story.step("rotate the signing key: production re-signed, the fleet follows it, the old key revoked")
        if limit is None:
            story.done(rotate_signing_key(settings))
        else:
            story.skipped("there is no model to re-sign")
        story.step("who did what: the audit log, copied to the lake and asked with SQL")
        if limit is None:
            story.done(audit_in_the_lake(settings))
        else:
            story.skipped("the audit log fills as the API serves")
        story.end()
    if not all(d.complete for d in deliveries):
        raise typer.Exit(1)


class Story:
    """The demo's output as a story: each step a numbered heading, its tables, then one line saying what it did and in how long."""

    def __init__(self) -> None:
        self.steps = 0
        self.began = self.step_began = time.monotonic()

    def step(self, title: str) -> None:
        """Begin the next step."""
        self.steps += 1
        self.step_began = time.monotonic()
        console.print()
        console.rule(f"[bold]{self.steps}. {title}", align="left")

    def done(self, outcome: str) -> None:
        """The step's one-line result."""
        console.print(f"[green]✓[/] {outcome} [dim]({time.monotonic() - self.step_began:,.1f} s)[/]", highlight=False)

    def skipped(self, why: str) -> None:
        """The step did not run under ``--limit``, and why."""
        console.print(f"[yellow]skipped under --limit:[/] {why}", highlight=False)

    def end(self) -> None:
        """The whole story's line."""
        console.print()
        console.print(f"[bold]demo done:[/] {self.steps} steps in {time.monotonic() - self.began:,.1f} s", highlight=False)


def train_models(settings: Settings) -> str:
    """Train both models on the full data sets in the lake and put them into production, and a second fraud model (another
    seed) into canary, where it scores in shadow; what is where."""
    from edgelake.cli.train import Stage, print_published, train_and_publish_fraud, train_and_publish_vision
    from edgelake.training.fraud import FraudConfig

    fraud = train_and_publish_fraud(settings, FraudConfig(source="ulb"), settings.spark_master, Stage.production)
    print_published(fraud)
    shadow = train_and_publish_fraud(settings, FraudConfig(source="ulb", seed=2), settings.spark_master, Stage.canary)
    print_published(shadow)
    vision = train_and_publish_vision(settings, None, None, "auto", 1, Stage.production)
    print_published(vision)
    return f"fraud v{fraud.version} and vision v{vision.version} signed and in production, fraud v{shadow.version} in canary (shadow)"


def serve_and_score(settings: Settings) -> str:
    """Start the API in the background, score the ULB set's latest transactions through it, ingest the
    scores it produced, and print the decisions and the dashboard's address; what was scored and landed."""
    from urllib.parse import urlparse

    import httpx2

    from edgelake.control_db import ControlDb
    from edgelake.api.keys import KeyStore
    from edgelake.cli.serve import start_background
    from edgelake.cli.sql import print_result
    from edgelake.ingest.loop import IngestOptions, ingest
    from edgelake.lake.catalog import Lake
    from edgelake.lake.sql import run_query

    address = urlparse(settings.api_url)
    url = start_background(settings, address.hostname or "127.0.0.1", address.port or 8000)
    keys = KeyStore(ControlDb.from_settings(settings))
    with admin_command(settings, "keys create", "demo-scoring") as entry:
        key, producer_key = keys.create("demo-scoring", "producer")
        entry["target"] = key.id
    with admin_command(settings, "keys create", "demo-dashboard") as entry:
        key, analyst_key = keys.create("demo-dashboard", "analyst")
        entry["target"] = key.id
    decisions, latencies = _score_stream(url, producer_key, _latest_ulb_transactions(settings, SCORED))
    scored = sum(decisions.values())
    listing = Table("decision", "transactions", title=f"{scored:,} transactions scored through {url}/v1/score:batch")
    for decision in ("approve", "review", "decline"):
        listing.add_row(decision, f"{decisions[decision]:,}")
    console.print(listing)
    console.print(f"batches of {SCORE_BATCH}: median {statistics.median(latencies) * 1000:.1f} ms a batch", highlight=False)
    _print_drift(httpx2.get(f"{url}/metrics", timeout=10).text)
    shadow = httpx2.get(f"{url}/readyz", timeout=10).json()["fraud_model"]["shadow_version"]
    _wait_for_scores(settings, scored * (2 if shadow else 1))
    totals = ingest(settings, IngestOptions(topics=(FraudScore.topic,)), once=True)
    landed = totals.counts.get(FraudScore.topic, {}).get("silver", 0)
    if shadow:
        console.print(f"fraud v{shadow} scored every transaction in shadow; production's decisions against its:", highlight=False)
        console.print(SHADOW_QUERY.strip(), style="dim", highlight=False)
        print_result(run_query(Lake.from_settings(settings), SHADOW_QUERY, limit=settings.sql_row_limit, timeout_s=settings.sql_timeout_s))
        console.print("the rollout gate judges the shadow on the transactions whose labels matured:", highlight=False)
        _settle_shadow(settings)
    console.print(f"[bold]dashboard:[/] {url}/?key={analyst_key}   (stop the API with `edgelake serve --stop`)", highlight=False)
    return f"{scored:,} transactions scored through the API, {landed:,} fraud scores (production and shadow) landed in silver"


def _print_drift(metrics: str) -> None:
    """The PSI of the traffic just scored against the production version's test part, from the server's metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    from edgelake.training.drift import PSI_MAJOR, TIME_OF_DAY_INPUTS

    psi = {
        (family.name, *sample.labels.values()): sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name in ("edgelake_fraud_input_psi", "edgelake_fraud_score_psi", "edgelake_fraud_field_psi")
        for sample in family.samples
    }
    if not psi:
        return
    inputs = sorted(((value, key[1]) for key, value in psi.items() if key[0] == "edgelake_fraud_input_psi"), reverse=True)
    watched = [(value, name) for value, name in inputs if name not in TIME_OF_DAY_INPUTS]
    fields = ", ".join(f"{key[1]} {value:.3f}" for key, value in psi.items() if key[0] == "edgelake_fraud_field_psi")
    hours = ", ".join(f"{name} {value:.2f}" for value, name in inputs if name in TIME_OF_DAY_INPUTS)
    console.print(
        f"drift against the model's test part (PSI, alert above {PSI_MAJOR:g}): score {psi.get(('edgelake_fraud_score_psi',), float('nan')):.3f}; "
        f"largest inputs {', '.join(f'{name} {value:.3f}' for value, name in watched[:3])}; fields {fields} "
        f"(time of day, not alerted on: {hours})",
        highlight=False,
    )


def _settle_shadow(settings: Settings) -> None:
    """Judge the fraud shadow and carry the verdict out (if the API's own gate settled it first, say how); then the fraud
    model's latest stage moves, from the control plane's stage book."""
    from edgelake.cli.models import evaluate_shadow, print_moves
    from edgelake.training import registry

    models = registry.Registry.from_settings(settings)
    if registry.rollout_policy(models, "fraud").canary_version is not None:
        evaluate_shadow(settings, settle=True)
    else:
        last = registry.read_book(models, "fraud").history[-1]
        console.print(f"the API's gate settled it: fraud v{last.version} {last.from_} -> {last.to}: {last.reason}", highlight=False)
    print_moves(registry.read_book(models, "fraud").history[-4:], title="fraud's latest stage moves (edgelake models history fraud)")


def run_edge_fleet(settings: Settings) -> str:
    """Run a small fleet of edge agents against the API started before; land their results and ask the lake how they
    did; what the fleet sent."""
    from edgelake.cli.edge import issue_local_enrollment_token
    from edgelake.cli.sql import print_result
    from edgelake.contracts import EdgeInference
    from edgelake.ingest.loop import IngestOptions, ingest
    from edgelake.lake.catalog import Lake
    from edgelake.lake.sql import run_query

    _run_fleet(settings, issue_local_enrollment_token(settings, FLEET_DEVICES, "demo-edge"), FLEET_FRAMES)
    totals = ingest(settings, IngestOptions(topics=(EdgeInference.topic,)), once=True)
    console.print(FLEET_QUERY.strip(), style="dim", highlight=False)
    print_result(run_query(Lake.from_settings(settings), FLEET_QUERY, limit=settings.sql_row_limit, timeout_s=settings.sql_timeout_s))
    landed = totals.counts.get(EdgeInference.topic, {}).get("silver", 0)
    return f"{FLEET_DEVICES} devices run the int8 vision model; {landed:,} of their results landed in silver"


def _run_fleet(settings: Settings, enrollment_token: str, max_frames: int) -> FleetOptions:
    """Run the demo's fleet of agents until each made ``max_frames`` results, print their statuses; fail if an agent failed."""
    from edgelake.edge.fleet import FleetOptions, run_fleet, statuses
    from edgelake.cli.edge import fleet_table

    options = FleetOptions(
        devices=FLEET_DEVICES, state_root=settings.data_dir / "fleet", api_url=settings.api_url, name_prefix="demo-edge",
        enrollment_token=enrollment_token, fps=10.0, heartbeat_s=1.0, max_frames=max_frames,
    )
    runs = run_fleet(options)
    console.print(fleet_table(statuses(options)))
    failed = [run.name for run in runs if run.returncode != 0]
    if failed:
        raise UserError(f"edge agents {', '.join(failed)} failed; see their agent.log under {options.state_root}")
    return options


def rotate_signing_key(settings: Settings) -> str:
    """Rotate the registry's key, re-sign and promote every production and canary version with the new one, run the fleet
    again (its agents adopt the new key set and install the re-signed vision model), then revoke the old key; how
    many devices follow the new key set."""
    from edgelake.edge.fleet import device_names
    from edgelake.edge.state import adopted_key_set
    from edgelake.lake.catalog import Lake
    from edgelake.training import registry

    lake = Lake.from_settings(settings)
    key_dir, models = settings.data_dir / registry.KEYS_DIR, registry.Registry.from_settings(settings)
    old = registry.current_fingerprint(key_dir)
    with admin_command(settings, "models keys rotate", "registry signing key"):
        released = registry.rotate(key_dir, lake, models.db)
    signer = registry.ensure_signing_key(key_dir, lake)
    console.print(f"key set release {released.sequence}: signing key {released.keys[-1].fingerprint[:16]} replaces {str(old)[:16]}", highlight=False)
    for name in registry.models(models):
        for stage in ("production", "canary"):
            version = registry.current(models, name, stage)
            if version is not None:
                resigned = registry.resign(models, name, version, signer)
                registry.promote(models, name, resigned.version, stage, actor="demo", reason="re-signed by the new key")
                console.print(f"{name}: v{version} re-signed as v{resigned.version}, now in {stage}", highlight=False)
    options = _run_fleet(settings, "", ROTATION_FRAMES)  # enrolled already: no token
    adopted = [adopted_key_set(options.state_root / name) for name in device_names(options)]
    trusting = sum(1 for key_set in adopted if key_set is not None and key_set.sequence == released.sequence)
    with admin_command(settings, "models keys revoke", str(old)):
        revoked = registry.revoke(key_dir, lake, models.db, str(old))
    console.print(
        f"key set release {revoked.sequence}: key {str(old)[:16]} revoked; the versions it signed are refused from the devices' next heartbeat",
        highlight=False,
    )
    return f"{trusting} of {FLEET_DEVICES} devices adopted key set release {released.sequence} and run the re-signed models; the old key is revoked"


def audit_in_the_lake(settings: Settings) -> str:
    """Copy the audit log's new entries to the lake now (the API does it every audit_export_s), land them and ask the lake
    who did what; how many entries the lake holds."""
    from edgelake.api.audit import AuditLog
    from edgelake.api.audit_export import AuditExporter
    from edgelake.control_db import ControlDb
    from edgelake.cli.sql import print_result
    from edgelake.contracts import AuditRecord
    from edgelake.ingest.loop import IngestOptions, ingest
    from edgelake.lake.catalog import Lake
    from edgelake.lake.sql import run_query

    exporter = AuditExporter(settings, AuditLog(ControlDb.from_settings(settings)))
    try:
        exporter.export()
    finally:
        exporter.close()
    ingest(settings, IngestOptions(topics=(AuditRecord.topic,)), once=True)
    console.print(AUDIT_QUERY.strip(), style="dim", highlight=False)
    result = run_query(Lake.from_settings(settings), AUDIT_QUERY, limit=settings.sql_row_limit, timeout_s=settings.sql_timeout_s)
    print_result(result)
    entries = sum(int(n) for n in result.table.column("entries").to_pylist())
    return f"{entries:,} audit {'entry' if entries == 1 else 'entries'} in silver_audit_log: admin commands, the gates' promotions and refused requests"


def _latest_ulb_transactions(settings: Settings, count: int) -> list[dict[str, object]]:
    """The last ``count`` ULB transactions (the part the fraud model was tested on), as JSON objects."""
    from collections import deque

    from edgelake.ingest.sources import ulb

    latest = deque(ulb.transactions(ulb.fetch_csv(settings.cache_path), settings.dataset_base_time), maxlen=count)
    return [json.loads(transaction.to_bytes()) for transaction in latest]


def _score_stream(url: str, key: str, transactions: list[dict[str, object]]) -> tuple[Counter[str], list[float]]:
    """Score the transactions in batches; the decisions and each batch's seconds."""
    import httpx2

    decisions: Counter[str] = Counter()
    latencies = []
    with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0) as client:
        for start in range(0, len(transactions), SCORE_BATCH):
            began = time.perf_counter()
            response = client.post("/v1/score:batch", json=transactions[start : start + SCORE_BATCH])
            latencies.append(time.perf_counter() - began)
            response.raise_for_status()
            decisions.update(score["decision"] for score in response.json()["scores"])
    return decisions, latencies


def _wait_for_scores(settings: Settings, count: int, timeout_s: float = 60.0) -> None:
    """Wait until the API's background publisher has put ``count`` score events on their topic."""
    from edgelake.broker import bootstrap_servers
    from edgelake.kafka import read_topic

    deadline = time.monotonic() + timeout_s
    servers = bootstrap_servers(settings)
    while sum(1 for _ in read_topic(servers, settings.topic(FraudScore.topic))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count:,} score events reached {settings.topic(FraudScore.topic)} in {timeout_s:g} s")
        time.sleep(1.0)


def _capped(count: int | None, limit: int | None) -> int | None:
    if count is None or limit is None:
        return limit if count is None else count
    return min(count, limit)


def print_topic_summary(settings: Settings, servers: str) -> tuple[int, int]:
    """Count and validate every record in each event topic; the valid and invalid records in all of them."""
    from edgelake.kafka import read_topic

    table = Table("topic", "events in topic", "valid", "invalid", "partitions with data", title=f"topics at {servers}")
    everything: Counter[str] = Counter()
    for logical, event_type in EVENT_BY_TOPIC.items():
        counts: Counter[str] = Counter()
        partitions: set[int] = set()
        for record in read_topic(servers, settings.topic(logical)):
            partitions.add(record.partition)
            try:
                event_type.parse(record.value)
                counts["valid"] += 1
            except InvalidEvent:
                counts["invalid"] += 1
        total = counts["valid"] + counts["invalid"]
        table.add_row(settings.topic(logical), f"{total:,}", f"{counts['valid']:,}", f"{counts['invalid']:,}", str(len(partitions)))
        everything.update(counts)
    console.print(table)
    return everything["valid"], everything["invalid"]
