"""What the admin page may see of a running node: a narrow, read-only view.

``service.Node`` builds a :class:`NodeView` and hands it to the admin server, so the pages
read the catalog, the listener's counters, the worker processes and the spool's disk through
these few members only, and ``admin/`` never imports ``service.py``. Every member reads;
none starts, stops or writes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scanet_node.catalog.jobs import JobInfo
    from scanet_node.catalog.overview import Overview
    from scanet_node.config import Settings
    from scanet_node.ingest.handlers import AssociationRecord
    from scanet_node.monitoring.report import MonitoringReport


@dataclass(frozen=True)
class NodeView:
    """A running node as the admin page reads it."""

    #: The node's settings, as validated at start.
    settings: Settings
    #: The catalog's URL without its password.
    catalog_url: str
    #: The catalog's read queries for the pages and ``/metrics``.
    overview: Overview
    #: One job by id, or None (to find the PNGs the worker wrote for it).
    job: Callable[[int], JobInfo | None]
    #: The DICOM listener's bound host and port, or None when it is not running.
    listener_address: Callable[[], tuple[str, int] | None]
    #: Associations open now.
    open_associations: Callable[[], int]
    #: The last ended or rejected associations, newest first.
    recent_associations: Callable[[], list[AssociationRecord]]
    #: C-STOREs since the listener started, by (outcome, DICOM status).
    instance_counts: Callable[[], dict[tuple[str, str], int]]
    #: Associations since the listener started, by outcome.
    association_counts: Callable[[], dict[str, int]]
    #: Worker processes started by ``serve`` that are alive now.
    workers_running: Callable[[], int]
    #: Free bytes on the spool's file system (raises OSError when the folder is gone).
    disk_free_bytes: Callable[[], int]
    #: The low-disk guard: below this many free bytes new instances are refused.
    min_free_bytes: int
    #: Whether instances are accepted with this many bytes free (the low-disk guard).
    accepting_instances: Callable[[int], bool]
    #: The monitoring report: local performance against imported outcomes, input drift
    #: (cached by the node for a minute).
    monitoring: Callable[[], MonitoringReport]
