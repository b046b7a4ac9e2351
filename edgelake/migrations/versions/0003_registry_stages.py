"""The model registry's stage book (each version's stage and the history of its moves) and rollout policies.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from edgelake.control_db import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_stages",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("stage", sa.String(16), nullable=False),
    )
    op.create_table(
        "stage_transitions",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("from_stage", sa.String(16)),
        sa.Column("to_stage", sa.String(16), nullable=False),
        sa.Column("time", UtcDateTime, nullable=False),
        sa.Column("actor", sa.Text),
        sa.Column("reason", sa.Text),
    )
    op.create_index("stage_transitions_by_model", "stage_transitions", ["model", "id"])
    op.create_table(
        "rollout_policies",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("updated", UtcDateTime, nullable=False),
        sa.Column("actor", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("rollout_policies")
    op.drop_index("stage_transitions_by_model", "stage_transitions")
    op.drop_table("stage_transitions")
    op.drop_table("model_stages")
