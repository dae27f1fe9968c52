"""series.released_at: when the sender was last done with a series.

Revision ID: 0005
Revises: 0004

Set when an association that delivered instances of the series is released, or moves on to
another series, while no other open association is delivering it; cleared by the next instance
of the series. The settle sweep settles such a series after ``[pipeline]
settle_after_release_seconds`` instead of waiting for ``series_settle_seconds`` of quiet.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add series.released_at (NULL for every existing series)."""
    op.add_column("series", sa.Column("released_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    """Drop series.released_at.

    In place on SQLite too (3.35 and later drop a plain column): a batch operation would copy
    the table and drop the old one, which the instance rows that reference series forbid.
    """
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE series DROP COLUMN released_at")
    else:
        op.drop_column("series", "released_at")
