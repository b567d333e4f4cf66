"""run_sessions: a run's stretches of work (its start, each resume), so that its time leaves out the idle hours
between an interruption and its resume; a run stored before this revision becomes one session, from its creation
to its end, as its time was counted then

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_sessions",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "number"),
    )
    op.execute(
        "INSERT INTO run_sessions (run_id, number, started_at, ended_at) SELECT id, 1, created_at, "
        "CASE WHEN status = 'running' THEN NULL ELSE COALESCE(finished_at, created_at) END FROM runs"
    )


def downgrade() -> None:
    op.drop_table("run_sessions")
