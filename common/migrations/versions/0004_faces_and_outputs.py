"""Group photos, several changes, outputs as they come (#17, #16.1): the faces found on each image, an edit's
chosen faces, changes and likeness, and one `output` webhook delivery per output index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("faces", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("faces_status", sa.String(10), nullable=False, server_default="pending"))
    with op.batch_alter_table("edits") as batch:
        batch.add_column(sa.Column("changes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("faces", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("likeness", sa.JSON(), nullable=True))
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("output_index", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_constraint("uq_webhook_deliveries_edit_event", type_="unique")
        batch.create_unique_constraint(
            "uq_webhook_deliveries_edit_event_index", ["edit_id", "event", "output_index"]
        )


def downgrade() -> None:
    op.execute("DELETE FROM webhook_deliveries WHERE output_index <> 0")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_constraint("uq_webhook_deliveries_edit_event_index", type_="unique")
        batch.create_unique_constraint("uq_webhook_deliveries_edit_event", ["edit_id", "event"])
        batch.drop_column("output_index")
    with op.batch_alter_table("edits") as batch:
        batch.drop_column("likeness")
        batch.drop_column("faces")
        batch.drop_column("changes")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("faces_status")
        batch.drop_column("faces")
