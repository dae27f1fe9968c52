"""The serving path imports neither the synthetic-data generator (ARCHITECTURE: synth/) nor
training code (STYLE: shape)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_predictor_and_prepare_do_not_import_synth() -> None:
    code = (
        "import sys\n"
        "import scanet_node.model.predictor, scanet_node.imaging.prepare, scanet_node.service\n"
        "import scanet_node.pipeline.worker, scanet_node.pipeline.analysis\n"
        "import scanet_node.results.build, scanet_node.results.deliver\n"
        "banned = ('scanet_node.synth', 'scanet_node.model.train',\n"
        "          'scanet_node.model.experiment')\n"
        "print(sorted(m for m in sys.modules if m.startswith(banned)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_serve_does_not_import_synth(tmp_path: Path) -> None:
    """`scanet-node serve` up to the point where it starts the node: parsing, the settings,
    the logging set-up and the service module (its ``serve`` replaced by a stand-in)."""
    code = (
        "import sys\n"
        "import scanet_node.service\n"
        "banned = ('scanet_node.synth', 'scanet_node.model.train',\n"
        "          'scanet_node.model.experiment')\n"
        "def serve(settings):\n"
        "    print(sorted(m for m in sys.modules if m.startswith(banned)))\n"
        "scanet_node.service.serve = serve\n"
        "from scanet_node.cli import main\n"
        f"sys.exit(main(['serve', '--data-dir', {str(tmp_path / 'data')!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "[]"
