"""The de-identified audit trail of retention: purge_audit.

Revision ID: 0003
Revises: 0002

As ``catalog/models.py`` made it in f8ae55d ("Settings for running in a hospital").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create purge_audit."""
    op.create_table(
        "purge_audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("purged_at", sa.DateTime(), nullable=False),
        sa.Column("rule", sa.String(16), nullable=False),
        sa.Column("first_received_at", sa.DateTime(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(), nullable=False),
        sa.Column("num_series", sa.Integer(), nullable=False),
        sa.Column("num_instances", sa.Integer(), nullable=False),
        sa.Column("bytes_freed", sa.BigInteger(), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("deliveries_sent", sa.Integer(), nullable=False),
        sa.Column("deliveries_failed", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    """Drop purge_audit (and the audit rows in it)."""
    op.drop_table("purge_audit")
