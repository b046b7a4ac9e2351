"""``POST /v1/sql``: one guarded, read-only query over the lake's tables."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from edgelake.api.auth import require
from edgelake.api.problems import PROBLEM_RESPONSES, Problem, documented
from edgelake.settings import Settings
from edgelake.lake.catalog import UnknownTable
from edgelake.lake.sql import QueryFailed, QueryTimeout, RefusedStatement, json_rows
from edgelake.lake.sql_pool import QueryBusy, QueryPool

router = APIRouter(prefix="/v1", tags=["sql"], dependencies=[Depends(require("analyst"))], responses=PROBLEM_RESPONSES)


class SqlRequest(BaseModel):
    """A query and how to read it."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=100_000, description="One SELECT (or WITH … SELECT) over catalog tables.")
    as_of: NonNegativeInt | dict[str, NonNegativeInt] | None = Field(
        None, description="A table version for a one-table query, or table name -> version; default the latest."
    )
    limit: PositiveInt | None = Field(None, description="Most rows to return; default and cap the server's sql_row_limit.")


class SqlResult(BaseModel):
    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="One object per row; times in ISO 8601, bytes in base64, decimals as strings.")
    truncated: bool = Field(description="More rows existed than the row or byte limit; the rest were cut off.")
    tables: dict[str, int] = Field(description="Each catalog table read -> the version read.")
    elapsed_s: float


@router.post(
    "/sql",
    summary="Run one read-only query",
    responses={
        **documented(400, "The statement was refused, or the engine could not run it."),
        **documented(404, "A table read at as_of has no such version, or has no data yet."),
        **documented(503, "Every SQL worker is busy; try again after Retry-After."),
        **documented(504, "The query ran past the server's sql_timeout_s and was stopped."),
    },
)
def run_sql(body: SqlRequest, request: Request) -> SqlResult:
    """Only single read-only queries over catalog tables run. A query past the server's timeout answers
    504 (the engine, not the client, was too slow, so not 408)."""
    settings: Settings = request.app.state.settings
    limit = min(body.limit or settings.sql_row_limit, settings.sql_row_limit)
    try:
        result = sql_pool(request).run_query(
            request.app.state.lake, body.sql, as_of=body.as_of, limit=limit, max_bytes=settings.sql_byte_limit, timeout_s=settings.sql_timeout_s
        )
    except RefusedStatement as error:
        raise Problem(400, str(error), kind="refused-statement", title="Statement refused") from None
    except QueryFailed as error:
        raise Problem(400, str(error), kind="query-failed", title="Query failed") from None
    except QueryTimeout as error:
        raise Problem(504, str(error), kind="query-timeout", title="Query timed out") from None
    except QueryBusy as error:
        raise Problem(503, str(error), kind="sql-busy", title="SQL workers busy", headers={"Retry-After": "2"}) from None
    except UnknownTable as error:
        raise Problem(404, str(error), kind="unknown-table", title="Unknown table or version") from None
    rows = json_rows(result.table)
    return SqlResult(
        columns=list(rows[0]) if rows else result.table.column_names, rows=rows, truncated=result.truncated,
        tables=result.tables, elapsed_s=result.elapsed_s,
    )


def sql_pool(request: Request) -> QueryPool:
    """The app's SQL worker pool."""
    pool: QueryPool = request.app.state.sql_pool
    return pool
