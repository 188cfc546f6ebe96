"""The edit contract (#21): an edit row stores the normalized edit. The one-change form's `neutral`/`target`
become one change of weight 1 in `changes` (always set now), a missing `faces` becomes `"largest"`, and the
contract's fields without a column of their own go to `options`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The columns as this migration sees them (not common.models: a later model must not change what it does).
_edits = sa.table(
    "edits", sa.column("id", sa.String), sa.column("neutral", sa.Text), sa.column("target", sa.Text),
    sa.column("changes", sa.JSON), sa.column("faces", sa.JSON),
)


def upgrade() -> None:
    connection = op.get_bind()
    # In Python, not SQL: a None the ORM wrote is JSON `null`, not SQL NULL, and both read back as None here.
    # Rows live a day (retention): a few thousand at most.
    for row in connection.execute(sa.select(_edits)).all():
        values = {}
        if row.changes is None:
            values["changes"] = [{"neutral": row.neutral, "target": row.target, "weight": 1.0}]
        if row.faces is None:
            values["faces"] = "largest"
        if values:
            connection.execute(_edits.update().where(_edits.c.id == row.id).values(**values))
    with op.batch_alter_table("edits") as batch:
        batch.alter_column("changes", existing_type=sa.JSON(), nullable=False)
        batch.alter_column("faces", existing_type=sa.JSON(), nullable=False)
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))
        batch.drop_column("neutral")
        batch.drop_column("target")
    # Every edit stored before this revision was inverted by e4e: say so, as the worker records a resolved
    # choice (an edit with no `inversion` would otherwise read as "the deployment's default").
    connection.execute(sa.table("edits", sa.column("options", sa.JSON)).update().values(options={"inversion": "e4e"}))


def downgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        batch.add_column(sa.Column("neutral", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("target", sa.Text(), nullable=False, server_default=""))
        batch.drop_column("options")
        batch.alter_column("faces", existing_type=sa.JSON(), nullable=True)
        batch.alter_column("changes", existing_type=sa.JSON(), nullable=True)
    connection = op.get_bind()
    for row in connection.execute(sa.select(_edits.c.id, _edits.c.changes)).all():
        first = row.changes[0]  # the first change's texts, as 0004 wrote them for an edit given `changes`
        connection.execute(_edits.update().where(_edits.c.id == row.id).values(
            neutral=first["neutral"], target=first["target"]))
    with op.batch_alter_table("edits") as batch:
        batch.alter_column("neutral", existing_type=sa.Text(), server_default=None)
        batch.alter_column("target", existing_type=sa.Text(), server_default=None)
