"""``scanet-node demo``: the main job in one command, on a small synthetic study."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from model_samples import untrained_checkpoint
from node_config import node_config

SIZE = 64


def test_demo_prints_the_probability_the_overlay_and_the_stage_times(tmp_path: Path) -> None:
    checkpoint = untrained_checkpoint(
        tmp_path / "untrained-64.pt", SIZE, "for the demo command's test"
    )
    data = tmp_path / "demo"
    config = node_config(tmp_path / "config.toml", data_dir=data, checkpoint=checkpoint)
    argv = [sys.executable, "-m", "scanet_node", "--config", str(config), "demo"]
    done = subprocess.run(
        [*argv, "--small", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"P\(mTICI >= 2c\) = \d+\.\d %", out), out
    overlay = Path(re.search(r"overlay\.png\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    assert overlay.is_file() and overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"stages \(s\)\s+load [\d.]+\s+register [\d.]+\s+infer [\d.]+", out), out
    assert "delivery     demo-pacs: sent" in out
    assert "SYNTHETIC" in out
    # The local PACS holds the SR and the images.
    received = [pydicom.dcmread(p) for p in (data / "pacs").glob("*.dcm")]
    assert len(received) >= 3
    # The SR names where the model looked: a point in the NCCT's frame of reference (the
    # synthetic NCCT and CTA share one frame; the untrained weights may look anywhere inside).
    (sr,) = [ds for ds in received if ds.Modality == "SR"]
    content = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    (group,) = content.get_planar_roi_measurement_groups()
    assert group.roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
    assert group.roi.frame_of_reference_uid.startswith(("1.", "2."))
    assert np.all(np.isfinite(group.roi.value)) and group.roi.value.shape == (1, 3)
    # A second run replaces the demo's own folder, and refuses a folder it did not write.
    other = tmp_path / "not-a-demo"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    refused = subprocess.run(
        [*argv, "--small", "--data-dir", str(other)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "did not write" in refused.stderr
    assert (other / "precious.txt").read_text() == "keep"
