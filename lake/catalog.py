"""The catalog's tables as they are on disk: open, describe, history and maintenance by name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from edgelake.lake.tables import CATALOG, TableSpec, table_uri


# What ingest and gold builds write into their commits' metadata.
COMMIT_METADATA = ("pipeline", "topic", "duplicates", "job", "silver_version", "feature_version")


class UnknownTable(LookupError):
    """A name that is not a catalog table, or a catalog table nothing has written yet."""


@dataclass(frozen=True)
class TableInfo:
    """A table's definition together with its current state."""

    spec: TableSpec
    uri: str
    version: int
    schema: pa.Schema  # the table's own, evolved columns included
    files: int
    rows: int
    size_bytes: int


def spec_of(name: str) -> TableSpec:
    """The catalog entry named ``name``."""
    if name not in CATALOG:
        raise UnknownTable(f"no table '{name}'; the catalog has {', '.join(sorted(CATALOG))}")
    return CATALOG[name]


def open_table(lake_root: str, name: str, version: int | None = None) -> DeltaTable:
    """The table at its latest version, or at ``version``."""
    uri = table_uri(lake_root, spec_of(name))
    try:
        table = DeltaTable(uri)
    except TableNotFoundError:
        raise UnknownTable(f"table '{name}' has no data yet (nothing was written to {uri})") from None
    if version is not None:
        if not 0 <= version <= table.version():
            raise UnknownTable(f"table '{name}' has versions 0 to {table.version()}, not {version}")
        table.load_as_version(version)
    return table


def existing(lake_root: str) -> list[str]:
    """The names of the catalog tables that have been written."""
    return [name for name, spec in CATALOG.items() if DeltaTable.is_deltatable(table_uri(lake_root, spec))]


def describe(lake_root: str, name: str) -> TableInfo:
    table = open_table(lake_root, name)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    return TableInfo(
        spec=spec_of(name),
        uri=table.table_uri,
        version=table.version(),
        schema=pa.schema(table.schema().to_arrow()),
        files=len(actions["path"]),
        rows=table.count(),
        size_bytes=sum(actions["size_bytes"]),
    )


def history(lake_root: str, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's commits, newest first: version, time, operation, its parameters and metadata."""
    commits = open_table(lake_root, name).history(limit)
    return [
        {
            "version": commit.get("version"),
            "time": datetime.fromtimestamp(commit["timestamp"] / 1000, UTC) if "timestamp" in commit else None,
            "operation": commit.get("operation"),
            "parameters": commit.get("operationParameters", {}),
            "metrics": commit.get("operationMetrics", {}),
            "metadata": {k: v for k, v in commit.items() if k in COMMIT_METADATA},
        }
        for commit in commits
    ]


def optimize(lake_root: str, name: str) -> dict[str, Any]:
    """Compact the table's small files and write a checkpoint; the compaction's metrics."""
    table = open_table(lake_root, name)
    metrics = table.optimize.compact()
    table.create_checkpoint()
    return metrics
