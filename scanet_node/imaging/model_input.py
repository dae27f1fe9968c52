"""The SCANet input: 2 x 26 x 224 x 224 (NCCT, CTA) in template space, and its geometry.

The tensor grid is fixed in MNI space, so every study's slab ``s`` covers the same
anatomy. Each of the 26 axial slabs is 5 mm thick and is made of five 1 mm
planes: registration resamples once onto the fine planes, and the slabs only
combine them. In-plane the grid covers 180 x 180 mm at 0.80 mm, oriented as a
radiologist reads an axial CT: row 0 anterior, column 0 the patient's right.

The NCCT slab is the mean of its planes; the CTA slab is their maximum (a 5 mm MIP, so
thin arteries keep their enhancement). Windows (``MODEL_INPUT_*_WINDOW_HU``, recorded in the
model card): NCCT 0..100 HU and CTA 0..600 HU, each mapped to 0..1; zero outside the
intracranial mask carried from the NCCT.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanet_node.imaging.template import Grid
from scanet_node.png import save_png

SLABS = 26
SIZE = 224
PLANES_PER_SLAB = 5
SLAB_MM = 5.0
FOV_MM = 180.0
#: MNI (RAS) mm of the grid's first plane centre (inferior) and of its anterior right corner.
Z_BOTTOM_MNI = -47.5
X_RIGHT_MNI = 89.6
Y_ANTERIOR_MNI = 73.6
#: Bumped whenever the input a study gets changes (grid, slab rule, windows, mask), so that
#: caches of prepared inputs and checkpoints' cards can tell. 2: CTA slabs became 5 mm MIPs.
INPUT_VERSION = 2
#: The HU windows of the two channels (not registration's or brain extraction's windows).
MODEL_INPUT_NCCT_WINDOW_HU = (0.0, 100.0)
MODEL_INPUT_CTA_WINDOW_HU = (0.0, 600.0)


def fine_grid(size: int = SIZE) -> Grid:
    """The 1 mm-plane grid registration resamples onto (``SLABS * 5`` planes of size^2)."""
    pixel = FOV_MM / size
    plane = SLAB_MM / PLANES_PER_SLAB
    affine = np.array(
        [
            [-pixel, 0.0, 0.0, X_RIGHT_MNI - pixel / 2],  # column: right -> left
            [0.0, -pixel, 0.0, Y_ANTERIOR_MNI - pixel / 2],  # row: anterior -> posterior
            [0.0, 0.0, plane, Z_BOTTOM_MNI - SLAB_MM / 2 + plane / 2],  # plane: up
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return Grid((SLABS * PLANES_PER_SLAB, size, size), affine)


def slab_grid(size: int = SIZE) -> Grid:
    """The grid of the tensor itself: 26 slabs of 5 mm, centred on the slabs' fine planes."""
    fine = fine_grid(size)
    affine = fine.affine.copy()
    affine[2, 2] = SLAB_MM
    affine[2, 3] = Z_BOTTOM_MNI
    return Grid((SLABS, size, size), affine)


def to_slabs(fine: npt.NDArray[np.floating], how: str = "mean") -> npt.NDArray[np.float32]:
    """Combine each run of five 1 mm planes into one 5 mm slab: their mean, or their maximum.

    The CTA uses the maximum (a 5 mm maximum intensity projection, how CTA is read for
    occlusions and collaterals): averaging would dilute a 1-2 mm artery to a fifth of its
    enhancement. The NCCT uses the mean, as a reconstructed 5 mm slice does.
    """
    planes, rows, cols = fine.shape
    if planes != SLABS * PLANES_PER_SLAB:
        raise ValueError(f"expected {SLABS * PLANES_PER_SLAB} planes, got {planes}")
    runs = fine.reshape(SLABS, PLANES_PER_SLAB, rows, cols)
    if how == "mean":
        return np.asarray(runs.mean(axis=1), dtype=np.float32)
    if how == "max":
        return np.asarray(runs.max(axis=1), dtype=np.float32)
    raise ValueError(f"how must be 'mean' or 'max', not {how!r}")


def slab_mask(
    fine_mask: npt.NDArray[np.bool_], grid: Grid, margin_mm: float
) -> npt.NDArray[np.bool_]:
    """A mask on the fine planes, grown by ``margin_mm`` (at least a voxel), then on the slabs:
    a slab voxel is inside when any of its planes is."""
    from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]

    spacing = np.array(grid.spacing)[::-1]  # (k, j, i) order
    radius = np.maximum(1, np.round(margin_mm / spacing)).astype(int)
    structure = np.ones(tuple(2 * r + 1 for r in radius), dtype=bool)
    grown = ndi.binary_dilation(np.asarray(fine_mask, bool), structure=structure)
    return np.asarray(to_slabs(grown.astype(np.float32)) > 0.0)


def window_to_unit(
    hu: npt.NDArray[np.floating], low: float, high: float
) -> npt.NDArray[np.float32]:
    """HU clipped to ``[low, high]`` and mapped to 0..1 (the model input's scaling)."""
    return np.asarray((np.clip(hu, low, high) - low) / (high - low), dtype=np.float32)


def attention_peak_mni(
    tensor: npt.NDArray[np.floating], attention: npt.NDArray[np.floating]
) -> tuple[npt.NDArray[np.float64], int]:
    """MNI mm of the voxel where a ``(26, S, S)`` attention volume peaks inside the head, and
    its slab. Inside the head is where the input ``tensor`` (``2 x 26 x S x S``) is not zero."""
    if attention.shape != tensor.shape[1:]:
        raise ValueError(f"expected a {tensor.shape[1:]} map, got {attention.shape}")
    inside = (np.asarray(tensor) > 0).any(axis=0)
    masked = np.where(inside, attention, -np.inf) if inside.any() else attention
    slab, row, col = np.unravel_index(int(np.argmax(masked)), masked.shape)
    grid = slab_grid(int(tensor.shape[-1]))
    mni = grid.index_to_mni(np.array([[col, row, slab]], dtype=np.float64))[0]
    return np.asarray(mni, dtype=np.float64), int(slab)


@dataclass(eq=False)
class ModelInput:
    """One study, ready for SCANet, with everything needed to explain and map back.

    Attributes
    ----------
    tensor
        ``(2, 26, 224, 224)`` float32 in 0..1: channel 0 NCCT, channel 1 CTA.
    grid
        :func:`slab_grid`: index ``(col, row, slab)`` -> MNI mm of each voxel centre.
    study_instance_uid, ncct_series_uid, cta_series_uid
        What was used.
    reasons
        Why those series were chosen, and every correction made while loading them.
    qc
        Named checks and their values (all passed: a failing one raises ``NotAnalysable``).
    registration
        The :class:`~scanet_node.imaging.register.Registration`, whose ``to_patient_grid``
        draws a template-space map (an attention map) back onto the native NCCT.
    ncct_shape, ncct_affine
        The native NCCT grid (``[k, j, i]``, index -> LPS mm) to draw back onto.
    timings
        Seconds per stage.
    """

    tensor: npt.NDArray[np.float32]
    grid: Grid
    study_instance_uid: str
    ncct_series_uid: str
    cta_series_uid: str
    reasons: list[str]
    qc: dict[str, Any]
    registration: Any
    ncct_shape: tuple[int, int, int]
    ncct_affine: npt.NDArray[np.float64]
    timings: dict[str, float] = field(default_factory=dict)

    def slab_to_ncct(self, slab_map: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """A ``(26, 224, 224)`` map (e.g. attention) resampled onto the native NCCT slices."""
        if slab_map.shape != self.tensor.shape[1:]:
            raise ValueError(f"expected a {self.tensor.shape[1:]} map, got {slab_map.shape}")
        # Back through the fine planes (the registration's output grid) so that each NCCT
        # voxel takes the value of the slab it lies in.
        fine = np.repeat(np.asarray(slab_map, dtype=np.float32), PLANES_PER_SLAB, axis=0)
        if self.registration.grid.shape != fine.shape:
            raise ValueError("the registration was not made on the model input's fine grid")
        return np.asarray(
            self.registration.to_patient_grid(
                fine, self.ncct_shape, self.ncct_affine, order=1, fill=0.0
            ),
            dtype=np.float32,
        )

    def attention_point(
        self, attention: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], int]:
        """Where a ``(26, S, S)`` attention volume peaks inside the head: NCCT patient LPS mm.

        The peak is taken only where the model saw the head (the input is zero outside the
        intracranial mask), at the voxel's centre in template space, and mapped through the
        inverse registration into the NCCT's frame of reference. Returns the point and its slab
        (0..25, inferior to superior).
        """
        mni, slab = attention_peak_mni(self.tensor, attention)
        lps = np.asarray(self.registration.mni_to_patient(mni[None], "ncct"), dtype=np.float64)
        return lps[0], slab

    def metadata(self) -> dict[str, Any]:
        """JSON-able description of the input (no arrays)."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "ncct_series_uid": self.ncct_series_uid,
            "cta_series_uid": self.cta_series_uid,
            "shape": list(self.tensor.shape),
            "grid_affine_index_to_mni": self.grid.affine.round(4).tolist(),
            "windows_hu": {
                "ncct": list(MODEL_INPUT_NCCT_WINDOW_HU),
                "cta": list(MODEL_INPUT_CTA_WINDOW_HU),
            },
            "reasons": self.reasons,
            "qc": self.qc,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


def montage(
    tensor: npt.NDArray[np.floating], slabs: Sequence[int] | None = None
) -> npt.NDArray[np.uint8]:
    """A greyscale picture of the input: NCCT slabs on the top row, the CTA below."""
    chosen = list(slabs) if slabs is not None else list(range(2, tensor.shape[1] - 2, 3))
    rows = [np.concatenate([tensor[channel, s] for s in chosen], axis=1) for channel in (0, 1)]
    picture: npt.NDArray[np.floating] = np.concatenate(rows, axis=0) * 255.0
    return np.clip(picture, 0, 255).astype(np.uint8)


def save(model_input: ModelInput, out_dir: Path) -> dict[str, Path]:
    """Write ``model_input.npz`` (tensor and grid), ``model_input.json`` and a PNG montage."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "tensor": out_dir / "model_input.npz",
        "metadata": out_dir / "model_input.json",
        "png": out_dir / "model_input.png",
    }
    np.savez_compressed(
        paths["tensor"], tensor=model_input.tensor, grid_affine=model_input.grid.affine
    )
    paths["metadata"].write_text(json.dumps(model_input.metadata(), indent=2))
    save_png(montage(model_input.tensor), paths["png"])
    return paths
