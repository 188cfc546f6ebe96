"""One trace per edit (#24): an edit row keeps the id of the trace its `POST /v1/edits` started
(common/tracing.py), so the edit resource leads a support request to the trace. Null when tracing is off and
for rows from before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        batch.drop_column("trace_id")
