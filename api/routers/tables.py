"""``/v1/tables``: the lake's catalog, each table's columns, state and commit history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from edgelake.api.auth import require
from edgelake.api.problems import PROBLEM_RESPONSES, Problem, documented
from edgelake.lake import catalog
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import CATALOG, Layer, TableSpec

router = APIRouter(prefix="/v1/tables", tags=["tables"], dependencies=[Depends(require("analyst"))], responses=PROBLEM_RESPONSES)


class TableSummary(BaseModel):
    """A catalog table and, once something has written it, its current state."""

    name: str
    layer: Layer
    description: str
    partition_by: list[str]
    written: bool
    version: int | None = None
    rows: int | None = None
    last_commit: datetime | None = None


class Column(BaseModel):
    name: str
    type: str = Field(description="The Arrow type.")
    nullable: bool
    evolved: bool = Field(description="Added by schema evolution, not defined in the catalog.")


class Commit(BaseModel):
    version: int | None
    time: datetime | None
    operation: str | None
    parameters: dict[str, Any]
    metrics: dict[str, Any]
    metadata: dict[str, Any]


class TableDetail(TableSummary):
    """A table's columns (evolved ones included), size and commits, newest first."""

    columns: list[Column]
    files: int | None = None
    size_bytes: int | None = None
    history: list[Commit]


@router.get("", summary="Every catalog table")
def list_tables(request: Request) -> list[TableSummary]:
    lake: Lake = request.app.state.lake
    return [_summary(lake, spec) for spec in CATALOG.values()]


@router.get(
    "/{name}",
    summary="One table's columns, state and history",
    responses=documented(404, "No such catalog table."),
)
def get_table(request: Request, name: str, history: Annotated[int, Query(ge=0, le=1000, description="Newest commits to list.")] = 20) -> TableDetail:
    lake: Lake = request.app.state.lake
    try:
        spec = catalog.spec_of(name)
    except catalog.UnknownTable as error:
        raise Problem(404, str(error), kind="unknown-table", title="Unknown table") from None
    summary = _summary(lake, spec)
    if not summary.written:
        columns = [Column(name=f.name, type=str(f.type), nullable=f.nullable, evolved=False) for f in spec.schema]
        return TableDetail(**summary.model_dump(), columns=columns, history=[])
    info = catalog.describe(lake, name)
    defined = set(spec.schema.names)
    columns = [Column(name=f.name, type=str(f.type), nullable=f.nullable, evolved=f.name not in defined) for f in info.schema]
    commits = catalog.history(lake, name, history) if history else []
    return TableDetail(
        **summary.model_dump(), columns=columns, files=info.files, size_bytes=info.size_bytes,
        history=[Commit.model_validate(commit) for commit in commits],
    )


def _summary(lake: Lake, spec: TableSpec) -> TableSummary:
    described = {"name": spec.name, "layer": spec.layer, "description": spec.description, "partition_by": list(spec.partition_by)}
    table = lake.find(spec.name)
    if table is None:
        return TableSummary(**described, written=False)
    last = table.history(1)
    stamp = last[0].get("timestamp") if last else None
    return TableSummary(
        **described, written=True, version=table.version(), rows=table.count(),
        last_commit=datetime.fromtimestamp(stamp / 1000, UTC) if stamp else None,
    )
