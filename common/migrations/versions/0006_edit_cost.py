"""Cost-aware admission (#23): an edit row keeps its cost, the edit-worker seconds it was admitted for
(common/edit_cost.py), so an account's unfinished work is one sum at submit. Rows from before have none and
count as 0.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        batch.add_column(sa.Column("cost_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        batch.drop_column("cost_seconds")
