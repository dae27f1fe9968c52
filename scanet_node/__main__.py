"""``python -m scanet_node``."""

from __future__ import annotations

import sys

from scanet_node.cli import main

sys.exit(main())
