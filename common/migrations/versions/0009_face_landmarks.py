"""A photo's detection keeps each face's 68 landmarks beside the boxes it serves (#25), so that an edit on
any worker aligns the face without searching the photo again. Not served; null for rows from before (their
edits detect again).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("landmarks", sa.JSON(), nullable=True))


def downgrade() -> None:
    # DROP COLUMN itself (SQLite has it since 3.35): batch mode would rebuild `images` on SQLite, and dropping
    # the old table deletes every edit of every photo (ON DELETE CASCADE)
    op.drop_column("images", "landmarks")
