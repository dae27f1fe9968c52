"""A job's result objects on disk: the DICOM files that are sent, and PNGs for the admin page.

The results of a job lie in one folder (``DATA_DIR/results/job-N/``): the SR as
:data:`SR_FILE`, then the Secondary Captures as ``NN-sc.dcm`` in sending order, and the
summary and the first overlay as :data:`SUMMARY_PNG` and :data:`OVERLAY_PNG`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.dataset import Dataset

from scanet_node.results.build import ResultObjects
from scanet_node.results.sc import write_png

SR_FILE = "00-sr.dcm"
OVERLAY_PNG = "overlay.png"
SUMMARY_PNG = "summary.png"


def write_results(objects: ResultObjects, folder: Path) -> list[Path]:
    """Write the result objects under ``folder`` (each atomically, SR first) and their PNGs;
    return the DICOM files' paths in sending order."""
    paths = _write_dicom(list(objects), folder)
    write_png(objects.summary, folder / SUMMARY_PNG)
    write_png(next(iter(objects.overlays), objects.summary), folder / OVERLAY_PNG)
    return paths


def _write_dicom(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Write ``datasets`` atomically each, the first SR as :data:`SR_FILE`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets):
        kind = "sr" if ds.Modality == "SR" else "sc"
        path = folder / (SR_FILE if n == 0 and kind == "sr" else f"{n:02d}-{kind}.dcm")
        tmp = path.with_suffix(".part")
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def result_files(results_dir: Path) -> list[Path]:
    """The DICOM files of a job's results, SR first."""
    return sorted(results_dir.glob("*.dcm"))


def previous_sr(results_dir: Path) -> Path | None:
    """The SR file of a job's results, or None when it is not there."""
    path = results_dir / SR_FILE
    return path if path.is_file() else None
