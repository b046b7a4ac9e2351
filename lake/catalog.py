"""The lake and its tables as they are in storage: where the lake lies, and open, describe, history and maintenance by name."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from edgelake.errors import UserError
from edgelake.lake.tables import CATALOG, TableSpec, table_uri
from edgelake.settings import Settings


# What ingest writes into its commits' metadata (gold builds write theirs as the commit's userMetadata JSON: commit_info).
COMMIT_METADATA = ("pipeline", "topic", "batch", "duplicates", "bytes")


def ingest_app_id(pipeline: str, topic: str, partition: int) -> str:
    """The app transaction under which ``pipeline`` records, in a table's Delta log, the last offset of a topic-partition it committed."""
    return f"{pipeline}/{topic}/{partition}"


class UnknownTable(UserError, LookupError):
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


@dataclass(frozen=True)
class Lake:
    """Where the lake lies and how to reach it: every Delta table is opened, created and written through one.

    ``storage_options`` (credentials, endpoint, region of an object store) go to every deltalake read and write;
    ``registry_dir`` is the model registry's folder, when it is not ``models`` in the lake; ``registry_mirror`` is the
    local copy of a registry kept on object storage.
    """

    root: str  # a path or any URI deltalake accepts (s3://, file://)
    storage_options: dict[str, str] = field(default_factory=dict, repr=False)  # credentials: kept out of logs and errors
    registry_dir: Path | None = None
    registry_mirror: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The lake the settings name."""
        options = {name: value.get_secret_value() for name, value in settings.lake_storage_options.items()}
        return cls(settings.lake_root, options, settings.registry_dir, settings.data_dir / "registry")

    def uri(self, spec: TableSpec) -> str:
        """The table's URI in this lake."""
        return table_uri(self.root, spec)

    def exists(self, name: str) -> bool:
        """Whether something has written the catalog table ``name``."""
        return DeltaTable.is_deltatable(self.uri(spec_of(name)), self.storage_options)

    def open(self, name: str, version: int | None = None) -> DeltaTable:
        """The catalog table ``name`` at its latest version, or at ``version``."""
        uri = self.uri(spec_of(name))
        try:
            table = DeltaTable(uri, storage_options=self.storage_options)
        except TableNotFoundError:
            raise UnknownTable(f"table '{name}' has no data yet (nothing was written to {uri})") from None
        if version is not None:
            if not 0 <= version <= table.version():
                raise UnknownTable(f"table '{name}' has versions 0 to {table.version()}, not {version}")
            table.load_as_version(version)
        return table

    def find(self, name: str) -> DeltaTable | None:
        """The catalog table ``name`` at its latest version; None if nothing has written it yet."""
        try:
            return self.open(name)
        except UnknownTable:
            return None

    def create(self, spec: TableSpec) -> DeltaTable:
        """The table, created empty with its defined schema and partitions unless it exists."""
        return DeltaTable.create(
            self.uri(spec), spec.schema, mode="ignore", partition_by=list(spec.partition_by), name=spec.name,
            description=spec.description, storage_options=self.storage_options,
        )


def existing(lake: Lake) -> list[str]:
    """The names of the catalog tables that have been written."""
    return [name for name in CATALOG if lake.exists(name)]


def row_count(lake: Lake, name: str) -> int:
    """Rows in the table's current version; 0 if it does not exist yet."""
    table = lake.find(name)
    return 0 if table is None else table.count()


def describe(lake: Lake, name: str) -> TableInfo:
    table = lake.open(name)
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


def history(lake: Lake, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's commits, newest first: version, time, operation, its parameters and metadata."""
    commits = lake.open(name).history(limit)
    return [
        {
            "version": commit.get("version"),
            "time": datetime.fromtimestamp(commit["timestamp"] / 1000, UTC) if "timestamp" in commit else None,
            "operation": commit.get("operation"),
            "parameters": commit.get("operationParameters", {}),
            "metrics": commit.get("operationMetrics", {}),
            "metadata": {k: v for k, v in commit.items() if k in COMMIT_METADATA} | commit_info(commit),
        }
        for commit in commits
    ]


def commit_info(commit: dict[str, Any]) -> dict[str, str]:
    """The JSON object a commit carries as ``userMetadata`` (a ``DeltaTable.history`` entry); empty if none."""
    text = commit.get("userMetadata")
    if not isinstance(text, str):
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in info.items()} if isinstance(info, dict) else {}


def optimize(lake: Lake, name: str) -> dict[str, Any]:
    """Compact the table's small files and write a checkpoint; the compaction's metrics."""
    table = lake.open(name)
    metrics = table.optimize.compact()
    table.create_checkpoint()
    return metrics
