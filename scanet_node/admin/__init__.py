"""The admin web page, ``/healthz`` and Prometheus ``/metrics`` that ``serve`` runs."""

from __future__ import annotations

from scanet_node.admin.web import AdminServer

__all__ = ["AdminServer"]
