"""job.worker_stops: attempts that ended with the worker gone.

Revision ID: 0004
Revises: 0003

A job whose worker dies (killed, out of memory) is claimed again when its lease expires; the
count lets the node give up after ``job_max_attempts`` and say why.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add job.worker_stops (0 for every existing job)."""
    with op.batch_alter_table("job") as batch:
        batch.add_column(
            sa.Column("worker_stops", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Drop job.worker_stops."""
    with op.batch_alter_table("job") as batch:
        batch.drop_column("worker_stops")
