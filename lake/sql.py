"""Guarded, read-only SQL over the lake's catalog tables, with time travel, a row limit and a timeout.

A statement runs only if it is one query (SELECT, WITH … SELECT, UNION/INTERSECT/EXCEPT) that
reads catalog tables by their plain names: no writes, DDL or session commands, no table
functions, no qualified names, paths or URLs, no function that reads files or the network, and
outside string literals nothing but ASCII (no look-alike letters, full-width punctuation or
invisible characters). The statement is parsed with sqlglot, and what the engine runs is SQL
written back from the checked tree without comments, so it never sees text the check did not.

The engine is DataFusion through deltalake's QueryBuilder. On 1M silver rows a GROUP BY
aggregate took 0.022 s against DuckDB's 0.032 s (read_parquet over the file list) and 0.078 s
(over an Arrow dataset), and DataFusion registers no file-reading table functions, so its
surface is the smaller of the two.

Results stream: reading stops after ``limit`` rows (the result is flagged ``truncated``) or at
the deadline. A query past its deadline is abandoned: QueryTimeout is raised at once and a
streaming query stops at its next batch, but one busy inside a single batch (a large sort, join
or aggregate) keeps its worker thread, and its CPU, until DataFusion finishes it.
"""

from __future__ import annotations

import base64
import math
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any, TypeVar

import pyarrow as pa
from deltalake import QueryBuilder
from sqlglot import ErrorLevel, exp
from sqlglot.dialects.dialect import rename_func
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, SqlglotError, UnsupportedError
from sqlglot.tokens import Token, TokenType

from edgelake.errors import UserError
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import CATALOG

T = TypeVar("T")


class RefusedStatement(UserError, ValueError):
    """Not a single read-only query over catalog tables; the message says why."""


class QueryFailed(UserError, ValueError):
    """DataFusion could not plan or run the query; the message is DataFusion's."""


class QueryTimeout(UserError, TimeoutError):
    """The query ran past its timeout and was abandoned."""


@dataclass(frozen=True)
class QueryResult:
    table: pa.Table  # at most `limit` rows
    truncated: bool  # more rows existed than the limit
    tables: dict[str, int]  # catalog tables read -> the version read
    elapsed_s: float


class DataFusion(Postgres):
    """Postgres as sqlglot reads and writes it, except where DataFusion differs: strftime-style time
    formats (to_char, to_timestamp), MEDIAN, TRY_CAST and UUID are kept as written."""

    TIME_MAPPING: dict[str, str] = {}
    TIME_FORMAT = "'%Y-%m-%d %H:%M:%S'"

    # sqlglot 30.1+ declares Postgres.Generator as an alias of its PostgresGenerator (30.0 nests the class), a base mypy refuses
    class Generator(Postgres.Generator):  # type: ignore[valid-type,misc]
        TRY_SUPPORTED = True
        SUPPORTS_MEDIAN = True
        TRANSFORMS = {
            **{node: write for node, write in Postgres.Generator.TRANSFORMS.items() if node is not exp.TryCast},
            exp.Uuid: rename_func("UUID"),
        }


# Functions that read files, the network or server state in some engine (DuckDB, Postgres, SQLite,
# ClickHouse, Spark): refused wherever they appear, should DataFusion ever gain one.
DENIED_FUNCTIONS = re.compile(
    r"read_\w*|\w*_scan|parquet_\w+|iceberg_\w+|delta_\w+|pg_\w+|lo_\w+|dblink\w*|http_\w+|load_extension"
    r"|glob|sniff_csv|getenv|query|query_table|current_setting|set_config|file|url|s3|hdfs|remote\w*|input|shell"
)
_STRINGS = {
    TokenType.STRING, TokenType.NATIONAL_STRING, TokenType.BYTE_STRING,
    TokenType.HEREDOC_STRING, TokenType.RAW_STRING, TokenType.UNICODE_STRING,
}
_QUERY_STARTS = {TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN}
_NOT_A_QUERY = "only a read-only query can run (SELECT, WITH … SELECT, UNION, INTERSECT, EXCEPT), not "
_INVISIBLE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}  # control, format (zero-width, bidi), private, unassigned
_PATHLIKE = re.compile(r"[/\\:.\s]")
# DataFusion plans an expression tree recursively and in quadratic time: a sum of 1,000 terms took 1.2 s to
# plan, 3,000 took 9 s and 15,000 overflowed the stack, killing the process. 200 levels plan in 0.06 s.
MAX_DEPTH = 200
MAX_NODES = 20_000


def check_statement(sql: str) -> list[str]:
    """The catalog tables ``sql`` reads, if it is a single read-only query; otherwise RefusedStatement."""
    return _checked(sql)[1]


def _checked(sql: str) -> tuple[str, list[str]]:
    """The SQL to run, written back from the checked tree, and the catalog tables it reads."""
    dialect = DataFusion()
    _check_invisible(sql)
    try:
        tokens = dialect.tokenize(sql)
        _check_ascii(sql, tokens)
        if tokens and tokens[0].token_type not in _QUERY_STARTS:
            raise RefusedStatement(_NOT_A_QUERY + tokens[0].text.upper())
        statements = [tree for tree in dialect.parser().parse(tokens, sql) if tree is not None]
    except ParseError as error:
        raise RefusedStatement(f"cannot parse the statement: {_parse_message(error)}") from None
    except (SqlglotError, RecursionError) as error:
        raise RefusedStatement(f"cannot parse the statement: {_readable(str(error))}") from None
    if not statements:
        raise RefusedStatement("empty statement: give one SELECT or WITH … SELECT")
    if len(statements) > 1:
        raise RefusedStatement(f"one statement at a time; this text holds {len(statements)}")
    query = statements[0]
    if not isinstance(query, exp.Query):
        raise RefusedStatement(_NOT_A_QUERY + query.key.upper())
    tables = _check_tree(query)
    try:
        return query.sql(dialect, comments=False, unsupported_level=ErrorLevel.RAISE), tables
    except UnsupportedError as error:
        raise RefusedStatement(f"the statement cannot be passed on to DataFusion as written: {_readable(str(error))}") from None


def run_query(
    lake: Lake,
    sql: str,
    *,
    as_of: dict[str, int] | int | None = None,
    limit: int = 10_000,
    max_bytes: int = 32 * 1024 * 1024,
    timeout_s: float = 30.0,
) -> QueryResult:
    """Run one checked read-only query over the lake; ``as_of`` is a version (one-table queries) or table -> version.

    At most ``limit`` rows and about ``max_bytes`` of Arrow data come back; rows past either are cut off (``truncated``).
    """
    started = time.monotonic()
    text, versions = prepared(sql, as_of, limit, max_bytes, timeout_s)
    deadline = started + timeout_s
    table, truncated, read = _in_worker(lambda: _read(lake, text, versions, limit, max_bytes, deadline), timeout_s)
    return QueryResult(table, truncated, read, time.monotonic() - started)


def prepared(
    sql: str, as_of: dict[str, int] | int | None, limit: int, max_bytes: int, timeout_s: float
) -> tuple[str, dict[str, int | None]]:
    """The SQL to run and the version of each table it reads, once the statement and the limits are checked."""
    if limit < 1 or max_bytes < 1 or timeout_s <= 0:
        raise ValueError(f"limit and max_bytes must be at least 1 and timeout_s positive, not {limit}, {max_bytes} and {timeout_s}")
    text, names = _checked(sql)
    return text, _versions(names, as_of)


def json_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows as JSON-ready objects in column order: times in ISO 8601, bytes in base64, decimals as
    strings, NaN and infinities as null, maps as objects; a repeated column name gets a suffix (_2, _3)."""
    seen: Counter[str] = Counter()
    names = []
    for name in table.column_names:
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    columns = [column.to_pylist(maps_as_pydicts="lossy") for column in table.columns]
    return [dict(zip(names, map(_json_value, values), strict=True)) for values in zip(*columns, strict=True)]


def _check_invisible(sql: str) -> None:
    for position, char in enumerate(sql):
        if unicodedata.category(char) in _INVISIBLE and char not in "\t\n\r":
            raise RefusedStatement(f"invisible or control character {_describe(char)} at position {position}")


def _check_ascii(sql: str, tokens: list[Token]) -> None:
    literals = [range(token.start, token.end + 1) for token in tokens if token.token_type in _STRINGS]
    for position, char in enumerate(sql):
        if not char.isascii() and not any(position in literal for literal in literals):
            raise RefusedStatement(
                f"{_describe(char)} at position {position}: outside string literals only ASCII is allowed "
                "(no look-alike letters, full-width punctuation or unusual spaces)"
            )


def _check_size(query: exp.Query) -> None:
    """Refuse a tree deeper than ``MAX_DEPTH`` or larger than ``MAX_NODES``."""
    nodes, stack = 0, [(query, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise RefusedStatement(f"the statement nests deeper than {MAX_DEPTH} levels (a sum of about {MAX_DEPTH} terms, say): split it up")
        if nodes > MAX_NODES:
            raise RefusedStatement(f"the statement has more than {MAX_NODES:,} parts: split it up")
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def _check_tree(query: exp.Query) -> list[str]:
    """Refuse anything but reads of catalog tables, CTEs and subqueries; the catalog tables read."""
    _check_size(query)
    ctes = {cte.alias_or_name for cte in query.find_all(exp.CTE)}
    tables: set[str] = set()
    for node in query.walk():
        if isinstance(node, (exp.DML, exp.DDL)):
            raise RefusedStatement(f"writes are not allowed: {node.key.upper()} inside the query")
        if isinstance(node, exp.Into):
            raise RefusedStatement("SELECT … INTO writes a table: not allowed")
        if isinstance(node, exp.CTE) and not isinstance(node.this, exp.Query):
            raise RefusedStatement(f"WITH {node.alias_or_name} holds a {node.this.key.upper()}: a WITH clause may only hold queries")
        if isinstance(node, (exp.From, exp.Join)) and not isinstance(node.this, (exp.Table, exp.Subquery)):
            raise RefusedStatement(f"only catalog tables, CTEs and subqueries can be read, not {_excerpt(node.this)}")
        if isinstance(node, exp.Table) and (table := _table_name(node, ctes)):
            tables.add(table)
        if isinstance(node, exp.Func) and DENIED_FUNCTIONS.fullmatch(function := _function_name(node)):
            raise RefusedStatement(f"function {function}() reads files, the network or server state: not allowed")
    return sorted(tables)


def _table_name(table: exp.Table, ctes: set[str]) -> str | None:
    """The catalog table a FROM or JOIN reads, None for a CTE; RefusedStatement for anything else."""
    if not isinstance(table.this, exp.Identifier):
        raise RefusedStatement(f"table functions cannot be used: {_excerpt(table)}")
    if table.args.get("db") or table.args.get("catalog"):
        raise RefusedStatement(f"qualified name {_excerpt(table)}: read tables by their plain catalog name")
    if table.name in ctes:
        return None
    if _PATHLIKE.search(table.name):
        raise RefusedStatement(f"'{table.name}' looks like a file path or URL: only catalog tables can be read")
    if table.name not in CATALOG:
        raise RefusedStatement(f"no table '{table.name}'; the catalog has {', '.join(sorted(CATALOG))}")
    return table.name


def _function_name(function: exp.Func) -> str:
    return (function.name if isinstance(function, exp.Anonymous) else function.sql_name()).lower()


def _versions(names: list[str], as_of: dict[str, int] | int | None) -> dict[str, int | None]:
    if isinstance(as_of, int):
        if len(names) != 1:
            reads = ", ".join(names) or "no table"
            raise RefusedStatement(f"a single as_of version needs a query over one table; this one reads {reads}: give table=version")
        return {names[0]: as_of}
    unread = sorted(set(as_of or {}) - set(names))
    if unread:
        raise RefusedStatement(f"as_of names {', '.join(unread)}, which the query does not read (it reads {', '.join(names) or 'no table'})")
    return {name: (as_of or {}).get(name) for name in names}


def _read(
    lake: Lake, sql: str, versions: dict[str, int | None], limit: int, max_bytes: int, deadline: float
) -> tuple[pa.Table, bool, dict[str, int]]:
    """Up to ``limit`` rows and about ``max_bytes`` of the query over the tables at their versions, and whether
    rows were cut off; the deadline is checked between batches."""
    builder = QueryBuilder()
    read: dict[str, int] = {}
    for name, version in versions.items():
        table = lake.open(name, version)
        builder.register(name, table)
        read[name] = table.version()
    batches: list[pa.RecordBatch] = []
    rows = size = 0
    cut = False
    try:
        with pa.RecordBatchReader.from_stream(builder.execute(sql)) as reader:
            schema = reader.schema
            for batch in reader:
                if time.monotonic() > deadline:
                    raise QueryTimeout("the query ran past its deadline")
                if size + batch.nbytes > max_bytes:  # keep the rows that fit, at the batch's mean row size
                    fitting = int((max_bytes - size) / max(batch.nbytes / max(batch.num_rows, 1), 1))
                    batches.append(batch.slice(0, fitting))
                    cut = True
                    break
                batches.append(batch)
                rows += batch.num_rows
                size += batch.nbytes
                if rows > limit:
                    break
    except QueryTimeout:
        raise
    except BaseException as error:  # DataFusion's errors, including a pyo3 PanicException (a BaseException)
        raise QueryFailed(str(error)) from None
    result = pa.Table.from_batches(batches, schema)
    return result.slice(0, limit), cut or result.num_rows > limit, read


def _in_worker(call: Callable[[], T], timeout_s: float) -> T:
    """``call()`` on a daemon thread, waited for at most ``timeout_s``; past that the thread is abandoned."""
    future: Future[T] = Future()

    def work() -> None:
        try:
            future.set_result(call())
        except BaseException as error:  # handed to the waiting caller
            future.set_exception(error)

    threading.Thread(target=work, name="edgelake-sql", daemon=True).start()
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError as error:
        if future.done() and not isinstance(error, QueryTimeout):
            raise
        raise QueryTimeout(f"the query ran longer than its timeout of {timeout_s:g} s") from None


def _parse_message(error: ParseError) -> str:
    if not error.errors:
        return _readable(str(error))
    first = error.errors[0]
    return f"{_readable(first['description'])} (line {first['line']}, column {first['col']})"


_PARSER_CLASS = re.compile(r"<class '(?:\w+\.)*(\w+)'>")
_MISSING_PART = re.compile(r"Required keyword: '\w+' missing for (\w+)")


def _readable(message: str) -> str:
    """sqlglot's message in the statement's terms: no parser class names (``<class 'sqlglot.expressions.core.Glob'>``)."""
    message = _PARSER_CLASS.sub(lambda found: found.group(1).upper(), message)
    return _MISSING_PART.sub(lambda found: f"{found.group(1)} is missing an argument", message)


def _describe(char: str) -> str:
    shown = f"'{char}' " if char.isprintable() else ""
    return f"{shown}(U+{ord(char):04X} {unicodedata.name(char, 'unnamed')})"


def _excerpt(node: exp.Expression) -> str:
    text = node.sql(DataFusion, comments=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date, time_of_day)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    return value
