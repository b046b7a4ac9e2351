"""The control plane: API keys, enrollment tokens, devices, their model reports, forwarded result ids and the audit log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from edgelake.control_db import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created", UtcDateTime, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("device_id", sa.String(32)),
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("uses_left", sa.Integer, nullable=False),
        sa.Column("expires", UtcDateTime, nullable=False),
        sa.Column("created", UtcDateTime, nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("hardware", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("enrolled", UtcDateTime, nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("heartbeat", sa.Text),
    )
    op.create_table(
        "forwarded_results",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("forwarded", UtcDateTime, nullable=False),
    )
    op.create_table(
        "model_reports",
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
    )
    op.create_index("model_reports_by_time", "model_reports", ["model", "time"])
    op.create_table(
        "audit_events",
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
    )
    op.create_index("audit_events_by_time", "audit_events", ["time"])


def downgrade() -> None:
    for index, table in (("audit_events_by_time", "audit_events"), ("model_reports_by_time", "model_reports")):
        op.drop_index(index, table)
    for table in ("audit_events", "model_reports", "forwarded_results", "devices", "enrollment_tokens", "api_keys"):
        op.drop_table(table)
