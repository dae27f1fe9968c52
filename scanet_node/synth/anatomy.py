"""Pseudo-CT head anatomy on the 1 mm MNI ICBM152 2009a grid.

The shipped file ``data/mni152_2009a_head.npz`` (built offline by ``build_anatomy.py``; provenance
and licence in ``data/LICENSE-MNI152.txt``) holds grey and white matter probability maps and a
tissue label map. Here they become a non-contrast CT in Hounsfield units: each label gets a
typical attenuation, the intracranial cavity mixes CSF, grey and white matter by probability, and
a fixed-seed low-amplitude smooth texture keeps parenchyma and bone from being perfectly flat.
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]

logger = logging.getLogger(__name__)

DATA_FILE = "mni152_2009a_head.npz"

# Tissue labels of the shipped file (kept in step with build_anatomy.py).
AIR, SOFT, FAT, SKIN, CORTICAL, DIPLOE, CAVITY = 0, 1, 2, 3, 4, 5, 6

HU_AIR = -1000.0
HU_SOFT = 40.0  # galea, temporalis and neck muscle
HU_FAT = -90.0
HU_SKIN = 45.0
HU_CORTICAL = 1400.0  # inner and outer tables
HU_DIPLOE = 800.0
HU_CSF = 5.0
HU_GM = 38.0
HU_WM = 27.0

TEXTURE_SEED = 20090101
PARENCHYMA_TEXTURE_HU = 1.2  # standard deviation of the smooth parenchymal texture
TEXTURE_SIGMA_MM = 1.5
BONE_TEXTURE_HU = 40.0
PARTIAL_VOLUME_SIGMA_MM = 0.5  # softens label edges the way a CT point spread function would


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Non-contrast pseudo-CT of the MNI152 2009a head, without vessels.

    Attributes
    ----------
    hu
        Hounsfield units, float32, indexed ``[i, j, k]`` on the 1 mm grid.
    affine
        4x4 voxel index -> MNI mm (RAS: +x is the subject's right, +y anterior, +z superior).
    brain_mask
        Voxels with grey plus white matter probability of at least 0.5.
    cavity_mask
        Intracranial cavity: brain, ventricles and the subarachnoid CSF around it.
    """

    hu: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    brain_mask: npt.NDArray[np.bool_]
    cavity_mask: npt.NDArray[np.bool_]

    def world_to_voxel(self, points_mni: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Continuous voxel indices ``(..., 3)`` of MNI mm points ``(..., 3)``."""
        pts = np.asarray(points_mni, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return np.asarray(pts @ inv[:3, :3].T + inv[:3, 3], dtype=np.float64)

    def voxel_to_world(self, index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """MNI mm ``(..., 3)`` of voxel indices ``(..., 3)``."""
        ijk = np.asarray(index, dtype=np.float64)
        return np.asarray(ijk @ self.affine[:3, :3].T + self.affine[:3, 3], dtype=np.float64)

    def mask_at(
        self, mask: npt.NDArray[np.bool_], points_mni: npt.ArrayLike
    ) -> npt.NDArray[np.bool_]:
        """Nearest-voxel value of ``mask`` at MNI points; False outside the grid."""
        ijk = np.rint(self.world_to_voxel(points_mni)).astype(np.int64)
        shape = np.asarray(mask.shape)
        inside = np.all((ijk >= 0) & (ijk < shape), axis=-1)
        out = np.zeros(ijk.shape[:-1], dtype=bool)
        sel = ijk[inside]
        out[inside] = mask[sel[:, 0], sel[:, 1], sel[:, 2]]
        return out


@functools.cache
def load_anatomy() -> Anatomy:
    """Load the shipped anatomy and build its pseudo-CT (cached: once per process, under 1 s)."""
    raw = resources.files("scanet_node.synth").joinpath("data").joinpath(DATA_FILE).read_bytes()
    with np.load(io.BytesIO(raw)) as npz:
        gm_u8 = npz["gm"]
        wm_u8 = npz["wm"]
        labels = npz["labels"]
        affine = npz["affine"].astype(np.float64)

    table = np.full(256, HU_AIR, dtype=np.float32)
    table[[SOFT, FAT, SKIN, CORTICAL, DIPLOE, CAVITY]] = [
        HU_SOFT,
        HU_FAT,
        HU_SKIN,
        HU_CORTICAL,
        HU_DIPLOE,
        HU_CSF,
    ]
    hu = table[labels].ravel()
    cavity = labels == CAVITY
    brain_mask = (gm_u8.astype(np.uint16) + wm_u8) >= 128

    # One smooth unit-variance field textures both parenchyma and bone (they never overlap).
    rng = np.random.default_rng(TEXTURE_SEED)
    texture = ndi.gaussian_filter(
        rng.standard_normal(labels.shape, dtype=np.float32), TEXTURE_SIGMA_MM, truncate=3.0
    ).ravel()
    texture /= max(float(texture.std()), 1e-6)

    inside = np.flatnonzero(cavity)
    gm = gm_u8.ravel()[inside].astype(np.float32) / 255.0
    wm = wm_u8.ravel()[inside].astype(np.float32) / 255.0
    total = gm + wm
    scale = 1.0 / np.maximum(total, 1.0)  # the two maps may sum to slightly over 1
    gm *= scale
    wm *= scale
    hu[inside] += (
        gm * (HU_GM - HU_CSF)
        + wm * (HU_WM - HU_CSF)
        + PARENCHYMA_TEXTURE_HU * (gm + wm) * texture[inside]
    )
    bone = np.flatnonzero((labels == CORTICAL) | (labels == DIPLOE))
    hu[bone] += BONE_TEXTURE_HU * texture[bone]

    volume = ndi.gaussian_filter(
        hu.reshape(labels.shape), PARTIAL_VOLUME_SIGMA_MM, mode="nearest", truncate=3.0
    )
    logger.debug("anatomy loaded: grid %s", labels.shape)
    arrays = (volume.astype(np.float32, copy=False), affine, brain_mask, cavity)
    for array in arrays:
        array.setflags(write=False)  # shared by every caller in the process
    return Anatomy(*arrays)
