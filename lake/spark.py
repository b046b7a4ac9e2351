"""Spark over the lake: one session factory, and consistent reads of catalog tables by name."""

from __future__ import annotations

import os
import sys
from urllib.parse import urlparse
from typing import TYPE_CHECKING

from edgelake.lake.catalog import Lake
from edgelake.logs import spark_log4j2_config

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


def spark_session(master: str = "local[*]", app_name: str = "edgelake", shuffle_partitions: int | None = None) -> SparkSession:
    """A Spark session on ``master`` (any cluster URL works), in UTC, with this venv's Python on the workers; the
    driver's log4j logs go to the native log where the command diverted its native output (see ``edgelake.logs``).

    Delta Lake's Spark extension is enabled where delta-spark's jars are on the classpath
    (a cluster set up for it); elsewhere tables are read from their active file lists, or
    through deltalake where Spark has no filesystem for the lake's storage (see :func:`read_table`).
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
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark warns that the hostname is loopback, then picks eth0
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        builder = builder.config("spark.ui.enabled", "false")
    log4j2 = spark_log4j2_config()
    if log4j2 is not None:  # the command sends native output to its log file: so do the JVM's loggers, from the start
        builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={log4j2.resolve().as_uri()}")
    if shuffle_partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


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

    Never the table's bare folder: it also holds files that later versions removed. Where Spark
    has no filesystem for the lake's storage (an ``s3://`` lake without hadoop-aws on the classpath,
    as in a plain ``pip install pyspark``), the snapshot is read by deltalake on the driver and
    handed to Spark as Arrow: right for a laptop's data, while a cluster brings hadoop-aws.
    """
    table = lake.open(name, version)
    if has_delta(spark):
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(table.table_uri)
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
