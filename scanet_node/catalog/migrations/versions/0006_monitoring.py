"""monitoring: predictions, input descriptors and outcomes; study.accession_number.

Revision ID: 0006
Revises: 0005

One ``monitoring`` row per analysed study (issue 18), de-identified when the study is purged;
``study.accession_number`` lets the stroke registry's rows name a study by its accession.
Studies received before this revision have no accession number: their outcomes are matched
by Study Instance UID or by patient and CT date.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the monitoring table and study.accession_number (NULL for existing studies)."""
    op.add_column("study", sa.Column("accession_number", sa.String(16), nullable=True))
    op.create_index("ix_study_accession_number", "study", ["accession_number"])
    op.create_table(
        "monitoring",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True, unique=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("analysed_at", sa.DateTime(), nullable=False),
        sa.Column("month_only", sa.Boolean(), nullable=False),
        sa.Column("model", sa.String(120), nullable=True),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("positive", sa.Boolean(), nullable=True),
        sa.Column("descriptors", sa.Text(), nullable=False),
        sa.Column("grade", sa.String(2), nullable=True),
        sa.Column("procedure_key", sa.String(200), nullable=True),
        sa.Column("procedure_date", sa.DateTime(), nullable=True),
        sa.Column("outcome_imported_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    """Drop the monitoring table and study.accession_number (in place on SQLite, as 0005)."""
    op.drop_table("monitoring")
    op.drop_index("ix_study_accession_number", table_name="study")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE study DROP COLUMN accession_number")
    else:
        op.drop_column("study", "accession_number")
