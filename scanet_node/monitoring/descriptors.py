"""The few numbers kept of every analysed study's inputs, to watch for drift (``drift``).

The intensity percentiles are taken from the model's own input (the windowed NCCT and the
CTA's slab maxima, inside the brain, converted back to HU), so that the node at a site and
``train`` on its cohort describe the same thing the same way. "Inside the brain" is where the
input is not zero: the model input is zero outside the brain mask, and a brain voxel at or
below both windows' lower ends (0 HU) is rare enough not to move a percentile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

#: Percentiles kept of each channel, by descriptor name.
NCCT_PERCENTILES = {"ncct_p10_hu": 10, "ncct_p50_hu": 50, "ncct_p75_hu": 75}
CTA_PERCENTILES = {"cta_p50_hu": 50, "cta_p75_hu": 75, "cta_p90_hu": 90}


def intensity_descriptors(
    tensor: npt.NDArray[np.floating[Any]],
    *,
    ncct_window_hu: tuple[float, float],
    cta_window_hu: tuple[float, float],
) -> dict[str, float]:
    """HU percentiles of the NCCT and CTA channels of a ``(2, slabs, h, w)`` model input."""
    values = np.asarray(tensor, dtype=np.float32)
    inside = (values[0] > 0) | (values[1] > 0)
    out: dict[str, float] = {}
    for channel, window, wanted in (
        (0, ncct_window_hu, NCCT_PERCENTILES),
        (1, cta_window_hu, CTA_PERCENTILES),
    ):
        low, high = window
        voxels = values[channel][inside]
        if voxels.size == 0:
            continue
        found = np.percentile(voxels, list(wanted.values()))
        for name, value in zip(wanted, found, strict=True):
            out[name] = round(float(low + value * (high - low)), 2)
    return out


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def header_descriptors(ncct: Any | None, cta: Any | None) -> dict[str, Any]:
    """Slice thickness of each series and the scanner's model, from one header of each."""
    out: dict[str, Any] = {}
    for role, header in (("ncct", ncct), ("cta", cta)):
        if header is not None:
            out[f"{role}_slice_thickness_mm"] = _number(header.get("SliceThickness"))
    source = ncct if ncct is not None else cta
    if source is not None:
        parts = [
            str(source.get(k, "") or "").strip() for k in ("Manufacturer", "ManufacturerModelName")
        ]
        out["scanner_model"] = " ".join(p for p in parts if p) or None
    return out


def study_descriptors(
    tensor: npt.NDArray[np.floating[Any]],
    qc: Mapping[str, Any],
    *,
    ncct_header: Any | None,
    cta_header: Any | None,
    probability: float,
    ncct_window_hu: tuple[float, float],
    cta_window_hu: tuple[float, float],
) -> dict[str, Any]:
    """Every descriptor of one analysed study (``drift.DESCRIPTORS``), ``None`` where unknown."""
    out: dict[str, Any] = {
        "registration_similarity": _number(qc.get("registration_similarity")),
        "brain_volume_ml": _number(qc.get("brain_volume_ml")),
    }
    out |= intensity_descriptors(tensor, ncct_window_hu=ncct_window_hu, cta_window_hu=cta_window_hu)
    out |= header_descriptors(ncct_header, cta_header)
    out["probability"] = round(float(probability), 6)
    return out
