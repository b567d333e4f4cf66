"""racing: episodes played and planned per candidate, bounds of a child rejected early

Revision ID: 0015
Revises: 0002
Create Date: 2026-12-01 01:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("episodes_played", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("episodes_planned", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("bounds", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_column("bounds")
        batch_op.drop_column("episodes_planned")
        batch_op.drop_column("episodes_played")
