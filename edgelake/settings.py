"""Runtime settings, read from the environment (prefix ``EDGELAKE_``) or a ``.env`` file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

class Settings(BaseSettings):
    """Every knob of edgelake in one place; each embedded default has a distributed twin."""

    model_config = SettingsConfigDict(env_prefix="EDGELAKE_", env_file=".env", extra="ignore")

    kafka_bootstrap_servers: str = Field(
        "", description="Comma-separated Kafka brokers; empty starts the embedded broker."
    )
    broker_port: int = Field(19092, description="Loopback client port of the embedded broker's first node.")
    broker_count: int = Field(
        1, ge=1, le=9, description="Nodes of the embedded Apache Kafka cluster; 3 gives replicated topics (min.insync.replicas=2)."
    )
    topic_prefix: str = Field("", description="Prefix added to every topic name.")

    data_dir: Path = Field(Path(".edgelake"), description="Local state: broker data, keys.")
    cache_dir: Path | None = Field(None, description="Downloaded data sets and JVM jars; default <data_dir>/cache.")
    jars_dir: Path | None = Field(None, description="JVM jars fetched with Maven by the install step; default <cache_dir>/jars.")
    lake_root: str = Field(
        "./.edgelake/lake", description="Lake root: a path or any URI deltalake accepts (s3://, file://)."
    )
    lake_storage_options: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Options for the lake's storage, given to every Delta read and write (JSON): "
        'credentials, endpoint, region of an object store, e.g. {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ALLOW_HTTP": "true"}; '
        "never shown.",
    )
    registry_dir: Path | None = Field(
        None,
        description="Model registry folder, a filesystem every service mounts; default <lake_root>/models, on object storage "
        "too (then each service keeps a local mirror under <data_dir>/registry).",
    )
    spark_master: str = Field("local[*]", description="Spark master for lake and training jobs: local[*] or a cluster URL.")
    spark_driver_memory: str = Field(
        "4g", description="Heap of the Spark driver (JVM size syntax); on a local master it also runs every task."
    )
    spark_cluster_port: int = Field(
        7077, gt=0, lt=65536, description="Master port of the Spark standalone cluster `edgelake cluster spark up` runs on loopback."
    )
    spark_cluster_workers: int = Field(2, gt=0, description="Workers of that cluster.")
    dask_scheduler_port: int = Field(
        8786, gt=0, lt=65536, description="Scheduler port of the Dask cluster `edgelake cluster dask up` runs on loopback (Beam's DaskRunner)."
    )
    dask_workers: int = Field(2, gt=0, description="Workers of that cluster.")
    sql_row_limit: int = Field(10_000, gt=0, description="Most rows a SQL query returns; more are cut off and flagged.")
    device_max_inferences_per_s: float = Field(
        10_000.0, gt=0, description="Most inferences a second a device may claim; a heartbeat reporting more since its previous one is a 422."
    )
    api_max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Largest request body the API reads; a larger one is a 413 (1,000 ULB transactions take ~1 MB)."
    )
    sql_byte_limit: int = Field(
        32 * 1024 * 1024, gt=0, description="About the most bytes of data a SQL query returns; rows past them are cut off and flagged."
    )
    sql_timeout_s: float = Field(30.0, gt=0, description="Seconds a SQL query may run before it is stopped.")
    sql_workers: int = Field(2, gt=0, description="SQL queries the API runs at once, each in a worker process; more wait briefly, then get a 503.")
    api_url: str = Field("http://127.0.0.1:8000", description="Base URL of the edgelake API.")
    score_review_threshold: float | None = Field(
        None, ge=0, le=1, description="Fraud score from which a transaction is sent to review; default the model's own, from its validation."
    )
    score_decline_threshold: float | None = Field(
        None, ge=0, le=1, description="Fraud score from which a transaction is declined; default the model's own, from its validation."
    )
    score_model_check_s: float = Field(
        5.0, ge=0, description="Seconds between checks of the registry for a new production fraud model; 0 checks on every request."
    )
    drift_window: int = Field(
        10_000, gt=0,
        description="Last scored transactions whose inputs, scores and fields are compared (PSI) with the production fraud version's "
        "test part (its training_distributions.json), per server process.",
    )
    drift_min_transactions: int = Field(
        500, gt=0, description="Transactions the drift window must hold before PSI is reported: on fewer it is noise."
    )
    drift_snapshot_s: float = Field(60.0, ge=0, description="Seconds of scoring between the PSI snapshots the dashboard plots over time.")
    fraud_label_maturity_days: float = Field(
        7.0, ge=0, allow_inf_nan=False,
        description="Days of event time after a transaction by which its fraud label is known (chargebacks); the shadow gate judges matured ones only.",
    )
    fraud_gate_check_s: float = Field(
        60.0, gt=0, description="Seconds between the API's checks of a fraud canary in shadow against matured labels (the rollout gate)."
    )

    online_features: Literal["memory", "redis"] = Field(
        "memory",
        description="Where the scorer keeps each card's recent transactions: in-process memory (one replica) or Redis (shared by several replicas).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis holding the card histories and the rate limits when either is redis."
    )
    score_events: Literal["memory", "redis"] = Field(
        "memory",
        description="Where answered score events wait for the fraud-scores topic: a queue in the server process (a killed "
        "process loses what it held) or a Redis stream every replica relays (nothing answered is lost while Redis keeps it).",
    )
    api_rate_per_s: float = Field(50.0, gt=0, description="Requests a second each API key may make, on average.")
    api_burst: int = Field(100, ge=1, description="Requests each API key may make at once, above its rate.")
    rate_limits: Literal["process", "redis"] = Field(
        "process",
        description="Where each API key's request budget is counted: per server process, or in Redis (one limit across every replica).",
    )
    control_db_url: SecretStr | None = Field(
        None,
        description="The control plane's database (keys, devices, enrollment tokens, audit log), an SQLAlchemy URL such as "
        "postgresql+psycopg://edgelake:…@db:5432/edgelake, shared by every API replica; default SQLite under <data_dir>/api. Never shown.",
    )
    audit_export_s: float = Field(
        10.0, gt=0, description="How often an API server copies new audit-log entries to the lake's audit-log topic."
    )
    api_key_cache_s: float = Field(
        1.0, ge=0, description="How long a server trusts what it read about a key; a revocation reaches every replica within this time."
    )

    edge_state_dir: Path | None = Field(
        None, description="An edge agent's state (credentials, models, result queue); default <data_dir>/edge/<device name>."
    )
    edge_enrollment_token: str = Field("", description="Enrollment token an edge agent spends on its first run.")
    edge_heartbeat_s: float = Field(5.0, gt=0, description="Seconds between an edge agent's heartbeats (each also checks for updates).")
    edge_frames_per_s: float = Field(10.0, gt=0, description="Frames an edge agent's camera delivers a second.")
    edge_outbox_max: int = Field(
        100_000, gt=0, description="Results an edge agent keeps while the cloud is unreachable; beyond it the oldest are dropped, counted."
    )
    edge_forward_batch: int = Field(500, gt=0, le=1000, description="Results an edge agent sends per request.")
    edge_kafka_bootstrap_servers: str = Field(
        "", description="Kafka brokers an edge agent publishes its results to directly; empty posts them to the API."
    )

    fashion_mnist_dir: Path = Field(
        Path("/usr/share/datasets/fashion-mnist"), description="Debian dataset-fashion-mnist files."
    )
    dataset_base_time: datetime = Field(
        datetime(2013, 9, 1, tzinfo=UTC),
        description="Event time of offset 0 for data sets that only carry relative time (ULB, Shuttle).",
    )

    log_level: str = Field("INFO", description="Python log level.")
    log_format: Literal["json", "console"] = Field("console", description="Log line format.")

    @property
    def fraud_label_maturity(self) -> timedelta:
        """``fraud_label_maturity_days`` as a time span."""
        return timedelta(days=self.fraud_label_maturity_days)

    @property
    def embedded_broker(self) -> bool:
        """True when no Kafka cluster is configured and the embedded broker is used."""
        return not self.kafka_bootstrap_servers.strip()

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> Settings:
        review, decline = self.score_review_threshold, self.score_decline_threshold
        if review is not None and decline is not None and review > decline:
            raise ValueError(
                f"score_review_threshold ({self.score_review_threshold}) must not exceed score_decline_threshold ({self.score_decline_threshold})"
            )
        return self

    @model_validator(mode="after")
    def _drift_minimum_fits_the_window(self) -> Settings:
        if self.drift_min_transactions > self.drift_window:
            raise ValueError(f"drift_min_transactions ({self.drift_min_transactions}) must not exceed drift_window ({self.drift_window})")
        return self

    @model_validator(mode="after")
    def _default_cache_dir(self) -> Settings:
        if self.cache_dir is None:
            self.cache_dir = self.data_dir / "cache"
        return self

    @property
    def cache_path(self) -> Path:
        """Where downloaded data sets are cached: ``cache_dir``, which reading the settings always sets."""
        assert self.cache_dir is not None
        return self.cache_dir

    @property
    def jars_path(self) -> Path:
        """Where the install step put the JVM jars (``edgelake jars fetch``)."""
        assert self.cache_dir is not None
        return self.jars_dir or self.cache_dir / "jars"

    def topic(self, name: str) -> str:
        """The broker-side name of a logical topic."""
        return f"{self.topic_prefix}{name}"
