"""PNG renderings of a written synthetic study, for people to look at.

Reads the DICOM files back (so it shows what a viewer would show) and writes
8-bit PNGs (:func:`scanet_node.png.save_png`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmread

from scanet_node.png import save_png


def display_window(
    hu: npt.NDArray[np.floating], center: float, width: float
) -> npt.NDArray[np.uint8]:
    """Map HU to 0..255 through a display window (DICOM's Window Center and Width)."""
    low = center - width / 2
    scaled: npt.NDArray[np.float32] = (np.asarray(hu, dtype=np.float32) - low) / width * 255.0
    return np.clip(scaled, 0, 255).astype(np.uint8)


def load_series_hu(folder: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """A series as a (slices, rows, cols) HU volume sorted along the slice normal, and positions."""
    datasets = [dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    if not datasets:
        raise FileNotFoundError(f"no DICOM files in {folder}")
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    datasets.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    volume = np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in datasets
        ]
    )
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=float)
    return volume, positions


def render_study(study_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the NCCT slice through the clot (brain window) and a CTA MIP around it as PNGs."""
    manifest = json.loads((study_dir / "manifest.json").read_text())
    out_dir = out_dir or study_dir
    clot_z = float(manifest["occlusion"]["clot_center_patient"][2])
    written: list[Path] = []
    for series in manifest["series"]:
        folder = study_dir / series["folder"]
        if series["role"] == "ncct":
            volume, positions = load_series_hu(folder)
            index = int(np.argmin(np.abs(positions[:, 2] - clot_z)))
            written.append(
                save_png(display_window(volume[index], 40, 80), out_dir / "ncct_clot_slice.png")
            )
        elif series["role"] == "cta":
            volume, positions = load_series_hu(folder)
            near = np.abs(positions[:, 2] - clot_z) <= 12.0
            mip = volume[near].max(axis=0) if near.any() else volume.max(axis=0)
            written.append(save_png(display_window(mip, 200, 700), out_dir / "cta_mip_clot.png"))
    return written
