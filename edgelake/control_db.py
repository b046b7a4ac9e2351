"""The control plane's database: API keys, enrollment tokens, devices and their reports, forwarded result ids, the audit log
and how far it was copied to the lake, and the model registry's published versions, stage book and rollout policies.

One schema (the tables below, migrated by Alembic from :mod:`edgelake.migrations`) on two
backends: SQLite under the data dir, the embedded default for one node, and PostgreSQL
(``EDGELAKE_CONTROL_DB_URL=postgresql+psycopg://…``), which every API replica on any node shares.
Each change runs in one transaction; the first use of a database migrates it to the newest schema.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine

from edgelake.settings import Settings

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed number: the PostgreSQL advisory lock that lets one replica at a time migrate the schema.
_MIGRATION_LOCK = 0x656467656C616B65


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """An aware datetime stored in UTC; SQLite keeps no offset, so it is put back on reading."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a naive datetime cannot be stored: {value}")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite numbers rows only in an INTEGER primary key

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False),
    sa.Column("device_id", sa.String(32)),
)
enrollment_tokens = sa.Table(
    "enrollment_tokens", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("uses_left", sa.Integer, nullable=False),
    sa.Column("expires", UtcDateTime, nullable=False),
    sa.Column("created", UtcDateTime, nullable=False),
)
devices = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("hardware", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("enrolled", UtcDateTime, nullable=False),
    sa.Column("token_id", sa.String(32), nullable=False),
    sa.Column("heartbeat", sa.Text),
)
forwarded_results = sa.Table(
    "forwarded_results", metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("device_id", sa.String(32), nullable=False),
    sa.Column("forwarded", UtcDateTime, nullable=False),
)
model_reports = sa.Table(
    "model_reports", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(32), nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("track", sa.String(16), nullable=False),
    sa.Column("time", UtcDateTime, nullable=False),
    sa.Column("inferences", sa.BigInteger, nullable=False),
    sa.Column("labelled", sa.BigInteger, nullable=False),
    sa.Column("correct", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("model_reports_by_time", "model", "time"),
)
audit_events = sa.Table(
    "audit_events", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("time", UtcDateTime, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("role", sa.String(16)),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("status", sa.Integer),
    sa.Column("client", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("audit_events_by_time", "time"),
)

audit_exports = sa.Table(
    "audit_exports", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("last_id", sa.BigInteger, nullable=False),
)


model_versions = sa.Table(  # a row reserves a version number; the version is visible once ``published`` is set
    "model_versions", metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("reserved", UtcDateTime, nullable=False),
    sa.Column("published", UtcDateTime),
)

model_stages = sa.Table(
    "model_stages", metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("stage", sa.String(16), nullable=False),
)

stage_transitions = sa.Table(
    "stage_transitions", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("from_stage", sa.String(16)),
    sa.Column("to_stage", sa.String(16), nullable=False),
    sa.Column("time", UtcDateTime, nullable=False),
    sa.Column("actor", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Index("stage_transitions_by_model", "model", "id"),
)

rollout_policies = sa.Table(
    "rollout_policies", metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("rules", sa.JSON, nullable=False),
    sa.Column("updated", UtcDateTime, nullable=False),
    sa.Column("actor", sa.Text),
)


def insert_unless_present(connection: Connection, table: sa.Table) -> sa.Insert:
    """An insert into ``table`` that skips rows whose primary key is there already, on either backend."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=[column.name for column in table.primary_key])


def embedded_control_db(settings: Settings) -> Path | None:
    """The SQLite file of the embedded default, or None where the settings name a shared database."""
    return None if settings.control_db_url is not None else (settings.data_dir / "api" / "control.sqlite").resolve()


def control_db_url(settings: Settings) -> str:
    """The database the settings name: ``control_db_url``, or SQLite under the data dir."""
    embedded = embedded_control_db(settings)
    if embedded is not None:
        return f"sqlite:///{embedded}"
    assert settings.control_db_url is not None
    return settings.control_db_url.get_secret_value()


class ControlDb:
    """One control-plane database: transactions on it, migrated to the newest schema before the first."""

    def __init__(self, url: str) -> None:
        self.engine = _engine(url)
        self._migrated = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ControlDb:
        return cls(control_db_url(settings))

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in one transaction, committed when the block ends cleanly, else rolled back."""
        if not self._migrated:
            self.migrate()
        with self.engine.begin() as connection:
            yield connection

    def migrate(self) -> None:
        """Bring the schema to the newest migration; one process at a time, the others wait and find it done."""
        with self.engine.begin() as connection:  # on SQLite, BEGIN IMMEDIATE: the write lock before the version is read
            if self.backend == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        self._migrated = True

    def lock(self, connection: Connection, name: str) -> None:
        """Hold ``name`` until ``connection``'s transaction ends, against every other transaction that locks it (on SQLite,
        where a writing transaction holds the whole database, there is nothing more to hold)."""
        if self.backend == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def dispose(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    path = sa.engine.make_url(url).database
    if path and path != ":memory:" and not Path(path).exists():
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create_private(Path(path))
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, says when transactions begin
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # readers and one writer at a time, across processes
        dbapi_connection.execute("PRAGMA busy_timeout=30000")

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock up front: read-then-write must not interleave

    return engine


def copy_embedded(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite database at ``source`` (its write-ahead log included) at ``target``, mode 0600.

    Copy it this way, never as files: closing a descriptor of an open database drops this process's locks on it.
    """
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _create_private(target)
    with closing(sqlite3.connect(source)) as original, closing(sqlite3.connect(target)) as copy:
        original.backup(copy)


def _create_private(path: Path) -> None:
    """Create the database file with mode 0600 (SQLite gives its journals the same mode).

    Only a file that is not there yet is opened here: closing any descriptor of an open database would drop the locks
    this process's connections hold on it (POSIX), and another process could then checkpoint under them.
    """
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass  # another process made it first
