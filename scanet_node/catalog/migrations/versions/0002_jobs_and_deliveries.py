"""Analysis jobs and result deliveries (issue 6): job, delivery, delivery_attempt; series.role.

Revision ID: 0002
Revises: 0001

As ``catalog/models.py`` made it in 7145804 ("End to end"). Also fixes the data of catalogs
made by 46aca38: its SeriesState column stored the enum's names (``RECEIVING``), every later
version stores its values (``receiving``). Downgrading keeps the values: the code of 921eb26,
the last at 0001, reads those.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

#: At most one queued or running job per study (Job's docstring).
ACTIVE_JOB = "status IN ('queued', 'running')"


def upgrade() -> None:
    """Add the series' role, the job and delivery tables and their indexes."""
    op.add_column("series", sa.Column("role", sa.String(8), nullable=True))
    op.add_column("series", sa.Column("role_reason", sa.Text(), nullable=True))
    op.execute("UPDATE series SET state = lower(state) WHERE state IN ('RECEIVING', 'SETTLED')")
    op.create_table(
        "job",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("patient_key", sa.String(64), nullable=True),
        sa.Column("ncct_series_uid", sa.String(64), nullable=True),
        sa.Column("cta_series_uid", sa.String(64), nullable=True),
        sa.Column("missing", sa.String(16), nullable=True),
        sa.Column("signature", sa.String(400), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), sa.ForeignKey("job.id"), nullable=True),
        # JobStatus, a non-native enum.
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.DateTime(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("positive", sa.Boolean(), nullable=True),
        sa.Column("model", sa.String(120), nullable=True),
        sa.Column("sr_sop_instance_uid", sa.String(64), nullable=True),
        sa.Column("results_dir", sa.String(260), nullable=True),
        sa.Column("timings", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("inputs_received_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_job_study_instance_uid", "job", ["study_instance_uid"])
    op.create_index("ix_job_status_run_after", "job", ["status", "run_after"])
    op.create_index(
        "uq_job_active_study",
        "job",
        ["study_instance_uid"],
        unique=True,
        sqlite_where=sa.text(ACTIVE_JOB),
        postgresql_where=sa.text(ACTIVE_JOB),
    )
    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id"), nullable=False),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        # DeliveryStatus, a non-native enum.
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("last_status", sa.String(32), nullable=True),
        sa.Column("last_detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_delivery_job_id", "delivery", ["job_id"])
    op.create_index("ix_delivery_status_next", "delivery", ["status", "next_attempt_at"])
    op.create_table(
        "delivery_attempt",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("delivery_id", sa.Integer(), sa.ForeignKey("delivery.id"), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("permanent", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
    )
    op.create_index("ix_delivery_attempt_delivery_id", "delivery_attempt", ["delivery_id"])


def downgrade() -> None:
    """Drop the job and delivery tables (with their rows) and the series' role.

    SQLite drops the columns with its own ``ALTER TABLE ... DROP COLUMN`` (3.35+): Alembic's
    batch mode would copy ``series`` and drop the original, which the instances' foreign keys
    (``PRAGMA foreign_keys=ON``) forbid while the series hold instances.
    """
    op.drop_index("ix_delivery_attempt_delivery_id", table_name="delivery_attempt")
    op.drop_table("delivery_attempt")
    op.drop_index("ix_delivery_status_next", table_name="delivery")
    op.drop_index("ix_delivery_job_id", table_name="delivery")
    op.drop_table("delivery")
    op.drop_index("uq_job_active_study", table_name="job")
    op.drop_index("ix_job_status_run_after", table_name="job")
    op.drop_index("ix_job_study_instance_uid", table_name="job")
    op.drop_table("job")
    op.drop_column("series", "role_reason")
    op.drop_column("series", "role")
