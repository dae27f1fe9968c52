"""The catalog: studies, series and instances in SQLite (default) or PostgreSQL.

Its vocabularies are enums (models.py, and :class:`SettleReason` in store.py): compare a
row's role, status, outcome or rule against them, never against their strings.
"""

from __future__ import annotations

from scanet_node.catalog.models import (
    DeliveryStatus,
    Instance,
    JobOutcome,
    JobStatus,
    MissingSeries,
    PurgeRule,
    Role,
    Series,
    SeriesState,
    Study,
)
from scanet_node.catalog.store import (
    Catalog,
    InstanceRecord,
    RecordOutcome,
    SeriesSummary,
    SettledSeries,
    SettleReason,
    StudySummary,
    utcnow,
)

__all__ = [
    "Catalog",
    "DeliveryStatus",
    "Instance",
    "InstanceRecord",
    "JobOutcome",
    "JobStatus",
    "MissingSeries",
    "PurgeRule",
    "RecordOutcome",
    "Role",
    "Series",
    "SeriesState",
    "SeriesSummary",
    "SettleReason",
    "SettledSeries",
    "Study",
    "StudySummary",
    "utcnow",
]
