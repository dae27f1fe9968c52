"""Logging set-up of a scanet-node process: the one place handlers and levels are configured.

Modules only call ``logging.getLogger(__name__)``; the process entry points (the CLI, the worker
process that ``serve`` starts) call :func:`configure_logging` once.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Libraries whose INFO lines are noise next to ours: pynetdicom's repeat what our association
#: lines say, highdicom logs each attribute it copies, Alembic lists its autogenerate plugins
#: on every migration.
QUIET_LOGGERS = ("pynetdicom", "highdicom", "alembic.runtime.plugins")


def configure_logging(level: str | int) -> None:
    """Log to stderr at ``level`` (e.g. ``"INFO"``), with the chatty libraries at WARNING."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
