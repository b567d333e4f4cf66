"""episodes: how many transcript messages are context, and the verdict (answer, expected, detail); runs: the stage
a run is in (e.g. an evolution building its SVD cache before its first generation)

Revision ID: 0019
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0015"
branch_labels = None
depends_on = None

# What each environment's begin() wrote before the model's first reply when this revision was made: OS =
# AgentBench's prompt + the 5 one-shot turns + the problem, DB = the prompt, "Ok." and the problem, coding = the
# prompt. Frozen here on purpose: a migration must not change when the environments do.
CONTEXT_AT_0019 = {"os": 7, "db": 3, "coding": 1}


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("stage", sa.String(length=64), nullable=True))
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("context_messages", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("verdict", sa.JSON(), nullable=False, server_default="{}"))
    for env, count in CONTEXT_AT_0019.items():
        op.execute(
            sa.text(
                "UPDATE episodes SET context_messages = :count "
                "WHERE task_id IN (SELECT id FROM tasks WHERE env = :env)"
            ).bindparams(count=count, env=env)
        )


def downgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("verdict")
        batch.drop_column("context_messages")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("stage")
