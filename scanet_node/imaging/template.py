"""The CT template in MNI space that every study is registered to.

The file ``models/template/mni152_2009a_ct.npz`` (built offline by ``build_template.py``;
provenance and licence in ``models/template/README.md``) holds a skull-stripped pseudo-CT of the
intracranial contents of the MNI ICBM152 2009a head on a 1.5 mm grid, its intracranial mask, and
the same mask on the 1 mm grid. Arrays are ``[k, j, i]`` (slice, row, col), like our CT volumes;
each affine maps the index ``(i, j, k)`` to MNI mm in RAS (+x right, +y anterior, +z superior).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanet_node.config import MODELS_DIR

TEMPLATE_FILE = MODELS_DIR / "template" / "mni152_2009a_ct.npz"
HU_BACKGROUND = -1024.0


@dataclass(frozen=True)
class Grid:
    """A regular grid in template (MNI RAS) space.

    Attributes
    ----------
    shape
        Array shape ``(nk, nj, ni)``: arrays on the grid are indexed ``[k, j, i]``.
    affine
        4x4 index ``(i, j, k)`` -> MNI mm (RAS).
    """

    shape: tuple[int, int, int]
    affine: npt.NDArray[np.float64]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(i, j, k)``."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    def index_to_mni(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """MNI mm ``(..., 3)`` of continuous indices ``(i, j, k)`` ``(..., 3)``."""
        p = np.asarray(ijk, dtype=np.float64)
        return np.asarray(p @ self.affine[:3, :3].T + self.affine[:3, 3])

    def mni_to_index(self, points_mni: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Continuous indices ``(i, j, k)`` of MNI mm points ``(..., 3)``."""
        inv = np.linalg.inv(self.affine)
        p = np.asarray(points_mni, dtype=np.float64)
        return np.asarray(p @ inv[:3, :3].T + inv[:3, 3])

    @classmethod
    def around(
        cls,
        lo_mni: npt.ArrayLike,
        hi_mni: npt.ArrayLike,
        spacing_mm: float,
    ) -> Grid:
        """An axis-aligned RAS grid of ``spacing_mm`` covering the box ``[lo_mni, hi_mni]``."""
        lo = np.asarray(lo_mni, dtype=np.float64)
        hi = np.asarray(hi_mni, dtype=np.float64)
        if spacing_mm <= 0 or np.any(hi <= lo):
            raise ValueError("a grid needs a positive spacing and hi > lo on every axis")
        n = np.floor((hi - lo) / spacing_mm + 1e-9).astype(int) + 1
        affine = np.eye(4)
        affine[:3, :3] *= spacing_mm
        affine[:3, 3] = lo
        return cls((int(n[2]), int(n[1]), int(n[0])), affine)


@dataclass(frozen=True, eq=False)
class CtTemplate:
    """The shipped CT template (read-only arrays, shared by every caller in the process).

    Attributes
    ----------
    hu
        Hounsfield units, float32, ``[k, j, i]`` on :attr:`grid`; -1024 outside the mask.
    brain_mask
        Intracranial contents (parenchyma and CSF) on :attr:`grid`: what ``brain.py`` calls the
        brain on a CT.
    grid
        The 1.5 mm template grid.
    brain_mask_1mm
        The same mask on a 1 mm grid (:attr:`grid_1mm`), for the model input's bounding box.
    provenance
        How the file was built (source hashes, HU values, smoothing).
    """

    hu: npt.NDArray[np.float32]
    brain_mask: npt.NDArray[np.bool_]
    grid: Grid
    brain_mask_1mm: npt.NDArray[np.bool_]
    grid_1mm: Grid
    provenance: dict[str, Any]

    def brain_box_mni(self, margin_mm: float = 0.0) -> tuple[npt.NDArray[np.float64], ...]:
        """``(lo, hi)`` MNI mm corners of the 1 mm brain mask's bounding box, grown by a margin."""
        idx = np.argwhere(self.brain_mask_1mm)[:, ::-1]  # (k, j, i) -> (i, j, k)
        lo = self.grid_1mm.index_to_mni(idx.min(axis=0)) - margin_mm
        hi = self.grid_1mm.index_to_mni(idx.max(axis=0)) + margin_mm
        return lo, hi


@functools.cache
def load_template(path: Path = TEMPLATE_FILE) -> CtTemplate:
    """Load the CT template (cached: once per process, well under a second)."""
    with np.load(path) as npz:
        hu = npz["hu"].astype(np.float32)
        mask = npz["brain_mask"].astype(bool)
        affine = npz["affine"].astype(np.float64)
        mask_1mm = npz["brain_mask_1mm"].astype(bool)
        affine_1mm = npz["affine_1mm"].astype(np.float64)
        provenance = json.loads(str(npz["provenance"]))
    for array in (hu, mask, affine, mask_1mm, affine_1mm):
        array.setflags(write=False)
    return CtTemplate(
        hu=hu,
        brain_mask=mask,
        grid=Grid((hu.shape[0], hu.shape[1], hu.shape[2]), affine),
        brain_mask_1mm=mask_1mm,
        grid_1mm=Grid((mask_1mm.shape[0], mask_1mm.shape[1], mask_1mm.shape[2]), affine_1mm),
        provenance=provenance,
    )
