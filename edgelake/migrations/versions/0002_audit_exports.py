"""How far the audit log has been copied to the lake (its ``audit-log`` topic).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_exports",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("last_id", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_exports")
