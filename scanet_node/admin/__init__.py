"""The admin web page, ``/healthz`` and Prometheus ``/metrics`` that ``serve`` runs.

``server.py`` serves HTTP and checks the token, ``pages.py`` builds the pages (``render.py``:
templates and escaping), all from the read-only ``view.NodeView`` that ``service.py`` hands in.
"""

from __future__ import annotations

from scanet_node.admin.server import AdminServer
from scanet_node.admin.view import NodeView

__all__ = ["AdminServer", "NodeView"]
