"""The registry's published versions: a version's files are read only once its row here says it was published, so a
publication is visible whole or not at all on any storage. Versions already in the stage book were published.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from edgelake.control_db import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("reserved", UtcDateTime, nullable=False),
        sa.Column("published", UtcDateTime),
    )
    op.execute(
        "INSERT INTO model_versions (model, version, reserved, published) "
        "SELECT model, version, MIN(time), MIN(time) FROM stage_transitions GROUP BY model, version"
    )


def downgrade() -> None:
    op.drop_table("model_versions")
