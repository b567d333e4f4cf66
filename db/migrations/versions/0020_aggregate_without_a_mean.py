"""aggregates: an environment with no scored episode has no mean score (NULL), where 0.0 was stored

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("aggregates") as batch:
        batch.alter_column("score", existing_type=sa.Float(), nullable=True)
    # Before this revision such a row held 0.0, which read as a model that failed every task.
    op.execute("UPDATE aggregates SET score = NULL WHERE errors >= episodes")


def downgrade() -> None:
    op.execute("UPDATE aggregates SET score = 0.0 WHERE score IS NULL")
    with op.batch_alter_table("aggregates") as batch:
        batch.alter_column("score", existing_type=sa.Float(), nullable=False)
