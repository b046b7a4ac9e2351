"""Spark over the lake: one session factory, and consistent reads of catalog tables by name."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse
from typing import TYPE_CHECKING

from edgelake.jars import classpath
from edgelake.lake.catalog import Lake
from edgelake.logs import spark_log4j2_config

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

# The jar sets (infra/jars/<name>/pom.xml) a session takes from the install step's cache: Delta's format, SQL
# extension and catalog; Hadoop's s3a filesystem with the AWS SDK, for a lake on object storage.
JAR_SETS = ("delta-spark", "hadoop-aws")
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
DELTA_SNAPSHOT_PARTITIONS = 4
# The lake's storage options (deltalake's names, as in EDGELAKE_LAKE_STORAGE_OPTIONS or the AWS_* environment)
# that s3a takes under its own names.
_S3A_OPTIONS = {
    "AWS_ACCESS_KEY_ID": "fs.s3a.access.key",
    "AWS_SECRET_ACCESS_KEY": "fs.s3a.secret.key",
    "AWS_SESSION_TOKEN": "fs.s3a.session.token",
    "AWS_ENDPOINT_URL": "fs.s3a.endpoint",
    "AWS_ENDPOINT": "fs.s3a.endpoint",
    "AWS_REGION": "fs.s3a.endpoint.region",
    "AWS_DEFAULT_REGION": "fs.s3a.endpoint.region",
}


# The throughput collector for the driver and executors: G1's concurrent threads compete with the tasks for the cores. On
# 2 vCPUs the card-feature job ran at 149,769 rows/s on local[2] against 129,102 with G1, 86,368 against 82,340 on one
# core, and 133,485 against 108,755 on a two-worker standalone cluster (bench/RESULTS.md).
JVM_OPTIONS = "-XX:+UseParallelGC"


def spark_session(
    master: str = "local[*]",
    app_name: str = "edgelake",
    shuffle_partitions: int | None = None,
    jars_dir: Path | None = None,
    driver_memory: str | None = None,
) -> SparkSession:
    """A Spark session on ``master`` (any cluster URL works), in UTC, with this venv's Python on the workers; the
    driver's log4j logs go to the native log where the command diverted its native output (see ``edgelake.logs``).

    With ``jars_dir`` (``Settings.jars_path``), the session reads and writes the lake through delta-spark, from
    the executors, and reaches an ``s3://`` lake through s3a: the jars the install step fetched are put on the
    driver's and executors' class paths by their local paths (a cluster's workers find them at the same path).
    ``JarsMissing`` if they were not fetched. Without it, plain Spark: tables are read from their active file
    lists and gold results are committed by deltalake on the driver (see :func:`has_delta`).
    ``driver_memory`` (``Settings.spark_driver_memory``) sizes the driver's heap, Spark's 1g by default. The driver
    and executors collect garbage with ``JVM_OPTIONS``.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if master.startswith("local") or urlparse(master).hostname in ("127.0.0.1", "localhost"):  # everything on loopback
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark warns that the hostname is loopback, then picks eth0
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    if master.startswith("local"):
        builder = builder.config("spark.ui.enabled", "false")
    if jars_dir is not None:
        jars = os.pathsep.join(classpath(jars_dir, name) for name in JAR_SETS)
        builder = (
            builder.config("spark.driver.extraClassPath", jars)
            .config("spark.executor.extraClassPath", jars)
            .config("spark.sql.extensions", DELTA_EXTENSION)
            .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
            .config("spark.hadoop.fs.s3.impl", "org.apache.hadoop.fs.s3a.S3AFileSystem")  # the lake's s3:// URIs, as they are
            # Delta rebuilds a table's state from its log with a Spark job of this many tasks (50 by default): with
            # checkpoints every 10 commits, 50 tiny tasks cost more than the work (3.6 s against 0.7 s on 200,000 rows)
            .config("spark.databricks.delta.snapshotPartitions", str(DELTA_SNAPSHOT_PARTITIONS))
        )
    driver_options = JVM_OPTIONS
    log4j2 = spark_log4j2_config()
    if log4j2 is not None:  # the command sends native output to its log file: so do the JVM's loggers, from the start
        driver_options += f" -Dlog4j2.configurationFile={log4j2.resolve().as_uri()}"
    builder = builder.config("spark.driver.extraJavaOptions", driver_options).config("spark.executor.extraJavaOptions", JVM_OPTIONS)
    if shuffle_partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    if driver_memory is not None:
        builder = builder.config("spark.driver.memory", driver_memory)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def use_lake_storage(spark: SparkSession, lake: Lake) -> None:
    """Give this session's reads and writes the lake's object-storage options (s3a's names for deltalake's)."""
    if urlparse(lake.root).scheme not in ("s3", "s3a"):
        return
    given = {key: value for key, value in os.environ.items() if key in _S3A_OPTIONS or key == "AWS_ALLOW_HTTP"}
    given |= {key.upper(): value for key, value in lake.storage_options.items()}
    for key, value in given.items():
        if key in _S3A_OPTIONS:
            spark.conf.set(_S3A_OPTIONS[key], value)
    if "AWS_ENDPOINT_URL" in given or "AWS_ENDPOINT" in given:  # an S3-compatible server: buckets in the path
        spark.conf.set("fs.s3a.path.style.access", "true")
    if given.get("AWS_ALLOW_HTTP", "").lower() == "true":
        spark.conf.set("fs.s3a.connection.ssl.enabled", "false")


def has_delta(spark: SparkSession) -> bool:
    """Whether delta-spark's classes are on this session's classpath."""
    jvm = spark._jvm
    if jvm is None:  # no JVM on this side (Spark Connect), so no delta-spark classes
        return False
    try:
        jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
    except Exception:  # noqa: BLE001 - py4j raises its own error type for a missing class
        return False
    return True


def has_filesystem(spark: SparkSession, uri: str) -> bool:
    """Whether this session's Hadoop configuration has a filesystem for ``uri``'s scheme."""
    scheme = urlparse(uri).scheme or "file"
    jvm, jsc = spark._jvm, spark._jsc
    if jvm is None or jsc is None:  # no JVM on this side (Spark Connect)
        return False
    try:
        jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(scheme, jsc.hadoopConfiguration())
    except Exception:  # noqa: BLE001 - py4j raises its own error type for an unknown scheme
        return False
    return True


def read_table(spark: SparkSession, lake: Lake, name: str, version: int | None = None) -> DataFrame:
    """A consistent snapshot of a catalog table (at ``version``, or the latest), partition columns included.

    With delta-spark, ``format("delta")`` at the version deltalake finds (so a commit landing meanwhile is not
    half seen). Without it, the active file list, never the table's bare folder: it also holds files that
    later versions removed; and where Spark has no filesystem for the lake's storage (an ``s3://`` lake
    without hadoop-aws, as in a plain ``pip install pyspark``), the snapshot is read by deltalake on the
    driver and handed to Spark as Arrow: right for a laptop's data, while a cluster brings hadoop-aws.
    """
    table = lake.open(name, version)
    if has_delta(spark):
        use_lake_storage(spark, lake)
        return spark.read.format("delta").option("versionAsOf", table.version()).load(table.table_uri)
    files = table.file_uris()
    schema = _spark_schema(spark, table)
    if not files:
        return spark.createDataFrame([], schema)
    if not has_filesystem(spark, table.table_uri):
        return spark.createDataFrame(table.to_pyarrow_table(), schema)
    frame = (
        spark.read.option("basePath", table.table_uri.rstrip("/"))
        .option("mergeSchema", "true")
        .schema(schema)
        .parquet(*files)
    )
    return frame.select(*schema.fieldNames())


def _spark_schema(spark: SparkSession, table: DeltaTable) -> StructType:
    """The Delta table's schema, partition columns included, as a Spark schema."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema

    arrow = pa.schema(table.schema().to_arrow())
    return from_arrow_schema(arrow)
