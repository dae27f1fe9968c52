"""The catalog: studies, series and instances in SQLite (default) or PostgreSQL."""

from __future__ import annotations

from scanet_node.catalog.models import Instance, Series, SeriesState, Study
from scanet_node.catalog.store import (
    Catalog,
    InstanceRecord,
    RecordOutcome,
    SeriesSummary,
    SettledSeries,
    StudySummary,
    utcnow,
)

__all__ = [
    "Catalog",
    "Instance",
    "InstanceRecord",
    "RecordOutcome",
    "Series",
    "SeriesState",
    "SeriesSummary",
    "SettledSeries",
    "Study",
    "StudySummary",
    "utcnow",
]
