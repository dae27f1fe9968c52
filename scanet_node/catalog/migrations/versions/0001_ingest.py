"""The ingest schema as first released: study, series, instance.

Revision ID: 0001
Revises: (none)

As ``catalog/models.py`` made it in 46aca38 ("Package skeleton"), unchanged in 921eb26. Enums
are stored as VARCHAR(16) without a CHECK constraint (``native_enum=False``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create study, series and instance with their indexes."""
    op.create_table(
        "study",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_key", sa.String(64), nullable=True),
        sa.Column("study_date", sa.String(8), nullable=True),
        sa.Column("study_description", sa.String(64), nullable=True),
        sa.Column("num_instances", sa.Integer(), nullable=False),
        sa.Column("first_received_at", sa.DateTime(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_study_patient_key", "study", ["patient_key"])
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("study.id"), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(64), nullable=True),
        sa.Column("image_type", sa.String(128), nullable=True),
        sa.Column("contrast_agent", sa.String(64), nullable=True),
        sa.Column("slice_thickness", sa.Float(), nullable=True),
        sa.Column("body_part_examined", sa.String(16), nullable=True),
        sa.Column("calling_aet", sa.String(16), nullable=True),
        sa.Column("num_instances", sa.Integer(), nullable=False),
        # SeriesState, a non-native enum.
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("first_received_at", sa.DateTime(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(), nullable=False),
        sa.Column("settled_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_series_study_id", "series", ["study_id"])
    op.create_index("ix_series_state_last", "series", ["state", "last_received_at"])
    op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("series_id", sa.Integer(), sa.ForeignKey("series.id"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(260), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("calling_aet", sa.String(16), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_instance_series_id", "instance", ["series_id"])


def downgrade() -> None:
    """Drop the three tables (and everything filed in them)."""
    op.drop_index("ix_instance_series_id", table_name="instance")
    op.drop_table("instance")
    op.drop_index("ix_series_state_last", table_name="series")
    op.drop_index("ix_series_study_id", table_name="series")
    op.drop_table("series")
    op.drop_index("ix_study_patient_key", table_name="study")
    op.drop_table("study")
