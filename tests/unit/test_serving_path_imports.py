"""The serving path never imports the synthetic-data generator (ARCHITECTURE: synth/)."""

from __future__ import annotations

import subprocess
import sys


def test_predictor_and_prepare_do_not_import_synth() -> None:
    code = (
        "import sys\n"
        "import scanet_node.model.predictor, scanet_node.imaging.prepare, scanet_node.service\n"
        "print(sorted(m for m in sys.modules if m.startswith('scanet_node.synth')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
