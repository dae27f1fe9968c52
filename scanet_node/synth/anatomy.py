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


@dataclass(frozen=True, eq=False)
class AtlasTissue:
    """The shipped atlas as tissue components, from which a pseudo-CT is composed.

    Per-patient anatomy (``synth/subject.py``) changes these components (atrophy, ventricles,
    skull, early ischaemic change) before composing Hounsfield units, then warps the result.
    """

    labels: npt.NDArray[np.uint8]
    gm: npt.NDArray[np.float32]  # grey matter fraction inside the cavity, 0..1
    wm: npt.NDArray[np.float32]
    texture: npt.NDArray[np.float32]  # smooth unit-variance field
    affine: npt.NDArray[np.float64]

    @functools.cached_property
    def cavity(self) -> npt.NDArray[np.bool_]:
        """Intracranial cavity: brain, ventricles and the subarachnoid CSF."""
        return np.asarray(self.labels == CAVITY)

    @functools.cached_property
    def brain(self) -> npt.NDArray[np.bool_]:
        """Grey plus white matter fraction at least 0.5."""
        return np.asarray((self.gm + self.wm) >= 0.5)

    @functools.cached_property
    def depth_in_cavity(self) -> npt.NDArray[np.float32]:
        """Distance (mm) of each cavity voxel from the inner table; 0 outside the cavity."""
        return np.asarray(ndi.distance_transform_edt(self.cavity), dtype=np.float32)

    @functools.cached_property
    def distance_from_cavity(self) -> npt.NDArray[np.float32]:
        """Distance (mm) of each voxel outside the cavity from it; 0 inside."""
        return np.asarray(ndi.distance_transform_edt(~self.cavity), dtype=np.float32)

    @functools.cached_property
    def vault(self) -> npt.NDArray[np.float32]:
        """0 at and below the skull base (MNI z -10 mm), 1 over the vault (z 10 mm and up).

        A patient's skull differs in the thickness of the vault; the skull base, whose thin
        bony structures (clinoids, sella, petrous ridges) lie inside the skull's ring on axial
        slices, keeps the atlas's shape.
        """
        k = np.arange(self.labels.shape[2])
        z = k * self.affine[2, 2] + self.affine[2, 3]
        ramp = np.clip((z + 10.0) / 20.0, 0.0, 1.0).astype(np.float32)
        return np.broadcast_to(ramp[None, None, :], self.labels.shape)

    @functools.cached_property
    def ventricles(self) -> npt.NDArray[np.bool_]:
        """The lateral and third ventricles: the largest body of deep CSF in the central box."""
        csf = self.cavity & ~self.brain & (self.depth_in_cavity > 8.0)
        i, j, k = (np.arange(n) for n in csf.shape)
        x = i * self.affine[0, 0] + self.affine[0, 3]
        y = j * self.affine[1, 1] + self.affine[1, 3]
        z = k * self.affine[2, 2] + self.affine[2, 3]
        box = (
            (np.abs(x)[:, None, None] < 36.0)
            & ((y > -60.0) & (y < 32.0))[None, :, None]
            & ((z > -8.0) & (z < 32.0))[None, None, :]
        )
        components, count = ndi.label(csf & box)
        if count == 0:
            return np.zeros_like(csf)
        sizes = np.bincount(components.ravel())[1:]
        return np.asarray(components == 1 + int(np.argmax(sizes)))

    @functools.cached_property
    def distance_from_ventricles(self) -> npt.NDArray[np.float32]:
        """Distance (mm) from the ventricles."""
        return np.asarray(ndi.distance_transform_edt(~self.ventricles), dtype=np.float32)

    @functools.cached_property
    def distance_from_surface(self) -> npt.NDArray[np.float32]:
        """Distance (mm) of brain voxels from the CSF around the brain (not the ventricles)."""
        return np.asarray(
            ndi.distance_transform_edt(self.brain | self.ventricles),
            dtype=np.float32,
        )

    def world_to_voxel(self, points_mni: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Continuous voxel indices ``(..., 3)`` of MNI mm points ``(..., 3)``."""
        pts = np.asarray(points_mni, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return np.asarray(pts @ inv[:3, :3].T + inv[:3, 3], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class TissueChanges:
    """How one patient's tissue differs from the atlas, in atlas space (all default: none).

    Attributes
    ----------
    atrophy_mm
        Parenchyma turned into CSF from the brain's outer surface inwards, per voxel (a
        scalar, or an array on the atlas grid so that sulci widen unevenly).
    ventricle_mm
        Parenchyma around the ventricles turned into CSF (ventricles that enlarge with age).
    skull_mm
        Inner table moved inwards (> 0: thicker skull) or outwards (< 0: thinner).
    ischemia
        Early ischaemic change: fraction 0..1 per atlas voxel of the hypodensity below.
    ischemia_gm_hu, ischemia_wm_hu
        Attenuation lost by fully ischaemic grey and white matter.
    gm_hu, wm_hu
        Grey and white matter attenuation of this patient and scanner.
    texture_shift
        Voxel shift of the shared texture field, so patients differ in texture too.
    """

    atrophy_mm: float | npt.NDArray[np.float32] = 0.0
    ventricle_mm: float = 0.0
    skull_mm: float = 0.0
    ischemia: npt.NDArray[np.float32] | None = None
    ischemia_gm_hu: float = 0.0
    ischemia_wm_hu: float = 0.0
    gm_hu: float = HU_GM
    wm_hu: float = HU_WM
    texture_shift: tuple[int, int, int] = (0, 0, 0)


@functools.cache
def atlas_tissue() -> AtlasTissue:
    """Load the shipped atlas components (cached: once per process)."""
    raw = resources.files("scanet_node.synth").joinpath("data").joinpath(DATA_FILE).read_bytes()
    with np.load(io.BytesIO(raw)) as npz:
        gm_u8 = npz["gm"]
        wm_u8 = npz["wm"]
        labels = npz["labels"]
        affine = npz["affine"].astype(np.float64)
    # One smooth unit-variance field textures both parenchyma and bone (they never overlap).
    rng = np.random.default_rng(TEXTURE_SEED)
    texture = ndi.gaussian_filter(
        rng.standard_normal(labels.shape, dtype=np.float32), TEXTURE_SIGMA_MM, truncate=3.0
    )
    texture /= max(float(texture.std()), 1e-6)
    gm = gm_u8.astype(np.float32) / 255.0
    wm = wm_u8.astype(np.float32) / 255.0
    total = gm + wm
    scale = 1.0 / np.maximum(total, 1.0)  # the two maps may sum to slightly over 1
    tissue = AtlasTissue(labels, gm * scale, wm * scale, texture, affine)
    for array in (tissue.labels, tissue.gm, tissue.wm, tissue.texture, tissue.affine):
        array.setflags(write=False)
    return tissue


def compose_hu(
    tissue: AtlasTissue, changes: TissueChanges | None = None
) -> npt.NDArray[np.float32]:
    """Hounsfield units of the atlas changed by ``changes``, on the atlas grid (float32).

    Each label gets a typical attenuation, the intracranial cavity mixes CSF, grey and white
    matter by their fractions, the texture keeps parenchyma and bone from being perfectly flat,
    and a 0.5 mm Gaussian softens label edges as a CT point spread function would.
    """
    c = changes or TissueChanges()
    table = np.full(256, HU_AIR, dtype=np.float32)
    table[[SOFT, FAT, SKIN, CORTICAL, DIPLOE, CAVITY]] = [
        HU_SOFT,
        HU_FAT,
        HU_SKIN,
        HU_CORTICAL,
        HU_DIPLOE,
        HU_CSF,
    ]
    hu = table[tissue.labels].ravel()
    texture = tissue.texture
    if c.texture_shift != (0, 0, 0):
        texture = np.roll(texture, c.texture_shift, axis=(0, 1, 2))
    texture = texture.ravel()
    inside = np.flatnonzero(tissue.cavity)
    gm = tissue.gm.ravel()[inside]
    wm = tissue.wm.ravel()[inside]
    keep = _parenchyma_kept(tissue, c, inside)
    if keep is not None:
        gm = gm * keep
        wm = wm * keep
    hu[inside] += (
        gm * np.float32(c.gm_hu - HU_CSF)
        + wm * np.float32(c.wm_hu - HU_CSF)
        + PARENCHYMA_TEXTURE_HU * (gm + wm) * texture[inside]
    )
    if c.ischemia is not None:
        weight = c.ischemia.ravel()[inside]
        hu[inside] -= weight * (
            gm * np.float32(c.ischemia_gm_hu) + wm * np.float32(c.ischemia_wm_hu)
        )
    bone = np.flatnonzero((tissue.labels == CORTICAL) | (tissue.labels == DIPLOE))
    hu[bone] += BONE_TEXTURE_HU * texture[bone]
    if c.skull_mm > 0.0:
        # The inner table of the vault grows inwards over what lay beneath it.
        depth = tissue.depth_in_cavity.ravel()[inside]
        f = np.clip(np.float32(c.skull_mm) - depth + np.float32(0.5), 0.0, 1.0)
        f *= tissue.vault.ravel()[inside]
        hu[inside] += f * (HU_CORTICAL + BONE_TEXTURE_HU * texture[inside] - hu[inside])
    elif c.skull_mm < 0.0:
        distance = tissue.distance_from_cavity.ravel()[bone]
        f = np.clip(np.float32(-c.skull_mm) - distance + np.float32(0.5), 0.0, 1.0)
        f *= tissue.vault.ravel()[bone]
        hu[bone] += f * (HU_CSF - hu[bone])
    blurred = ndi.gaussian_filter(
        hu.reshape(tissue.labels.shape), PARTIAL_VOLUME_SIGMA_MM, mode="nearest", truncate=3.0
    )
    return np.asarray(blurred, dtype=np.float32)


def _parenchyma_kept(
    tissue: AtlasTissue, c: TissueChanges, inside: npt.NDArray[np.intp]
) -> npt.NDArray[np.float32] | None:
    """Share of each cavity voxel's parenchyma left after atrophy and ventricular enlargement."""
    keep = None
    atrophy = c.atrophy_mm
    if np.any(np.asarray(atrophy) > 0.0):
        a = atrophy if np.isscalar(atrophy) else np.asarray(atrophy).ravel()[inside]
        d = tissue.distance_from_surface.ravel()[inside]
        keep = np.clip(d - np.asarray(a, dtype=np.float32) + np.float32(0.5), 0.0, 1.0)
    if c.ventricle_mm > 0.0:
        d = tissue.distance_from_ventricles.ravel()[inside]
        v = np.clip(d - np.float32(c.ventricle_mm) + np.float32(0.5), 0.0, 1.0)
        keep = v if keep is None else keep * v
    return None if keep is None else keep.astype(np.float32)


@functools.cache
def load_anatomy() -> Anatomy:
    """The atlas head's pseudo-CT, unchanged (cached: once per process, under 1 s)."""
    tissue = atlas_tissue()
    volume = compose_hu(tissue)
    brain_mask = tissue.brain.copy()
    cavity = tissue.cavity.copy()
    logger.debug("anatomy loaded: grid %s", tissue.labels.shape)
    arrays = (volume, tissue.affine.copy(), brain_mask, cavity)
    for array in arrays:
        array.setflags(write=False)  # shared by every caller in the process
    return Anatomy(*arrays)
