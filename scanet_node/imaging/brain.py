"""Brain extraction for head CT without FSL: HU windows, morphology, largest component.

The recipe (SCANET_REFERENCE 4.1, "pure-Python equivalent"): the skull is the bone above a HU
threshold, closed; the intracranial cavity is, slice by slice, what the skull encloses minus the
skull; the brain is the cavity within a soft-tissue window (0-100 HU on the NCCT), eroded to cut
the links through the foramina and orbits, reduced to its largest 3-D component, grown back and
hole-filled. On a CT "brain" therefore means the intracranial contents, parenchyma and CSF.

The work is done on a grid of about ``working_mm`` (whole-voxel block averages of the input, so
the mask maps back onto the input exactly) and the mask is returned on the input grid.
Arrays are ``[k, j, i]`` (slice, row, col); the affine maps the index ``(i, j, k)`` to patient
mm (LPS), though only its voxel sizes matter here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]

from scanet_node.errors import ImagingError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

#: The soft-tissue windows the intracranial cavity is found in (not the model input's windows).
BRAIN_NCCT_WINDOW_HU = (0.0, 100.0)
BRAIN_CTA_WINDOW_HU = (-20.0, 600.0)
NCCT_SKULL_HU = 300.0
# Contrast-filled arteries at the skull base reach 300-600 HU; only bone is above this on a CTA.
CTA_SKULL_HU = 700.0
SKULL_CLOSE_MM = 2.5
ERODE_MM = 3.0
# Adult intracranial contents are about 1100-1800 mL; the MNI152 head the synthetic studies are
# made of (and the template) is larger, about 2050 mL by this mask, hence the upper bound.
VOLUME_RANGE_ML = (800.0, 2200.0)
WORKING_MM = 1.2


class BrainExtractionError(ImagingError):
    """No plausible brain was found; ``reason`` is a stable code for the QC result."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True, eq=False)
class BrainMask:
    """The result of a brain extraction, on the input grid.

    Attributes
    ----------
    brain
        Intracranial contents within the HU window, ``[k, j, i]``.
    cavity
        The whole intracranial cavity (any HU) enclosed by the skull.
    skull
        Bone above the skull threshold, closed.
    volume_ml
        Volume of ``brain`` in mL.
    """

    brain: BoolArray
    cavity: BoolArray
    skull: BoolArray
    volume_ml: float


def voxel_sizes(affine: npt.ArrayLike) -> tuple[float, float, float]:
    """Voxel size in mm along the array axes ``(k, j, i)`` of an ``(i, j, k)`` affine."""
    a = np.asarray(affine, dtype=np.float64)
    s = np.linalg.norm(a[:3, :3], axis=0)
    return (float(s[2]), float(s[1]), float(s[0]))


def block_factors(spacing_kji: tuple[float, float, float], target_mm: float) -> tuple[int, ...]:
    """Whole-voxel reduction factors that bring each axis up to at most ``target_mm``."""
    return tuple(max(1, int(np.floor(target_mm / s + 1e-6))) for s in spacing_kji)


def block_reduce(
    array: npt.NDArray[np.generic], factors: tuple[int, ...], how: str = "mean"
) -> npt.NDArray[np.generic]:
    """Block mean (or ``any``) over whole blocks; a partial block at the far end is dropped."""
    if all(f == 1 for f in factors):
        return array
    shape = [s // f for s, f in zip(array.shape, factors, strict=True)]
    view = array[tuple(slice(0, n * f) for n, f in zip(shape, factors, strict=True))]
    blocks = view.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    if how == "any":
        return np.asarray(blocks.any(axis=(1, 3, 5)))
    # Sums of strided views, the largest factor first: 3-6x faster than a mean over the
    # reshaped axes (for a 300-slice CTA, ~0.1 s instead of ~0.5 s).
    out: npt.NDArray[Any] = view
    for axis in sorted(range(3), key=lambda a: -factors[a]):
        if factors[axis] == 1:
            continue
        index: list[slice] = [slice(None)] * 3
        index[axis] = slice(0, None, factors[axis])
        acc = np.array(out[tuple(index)], dtype=np.float32)
        for offset in range(1, factors[axis]):
            index[axis] = slice(offset, None, factors[axis])
            acc += out[tuple(index)]
        out = acc
    out *= np.float32(1.0 / float(np.prod(factors)))
    return out


def block_expand(array: BoolArray, factors: tuple[int, ...], shape: tuple[int, ...]) -> BoolArray:
    """Inverse of :func:`block_reduce` for masks: repeat each voxel, pad to ``shape`` with False."""
    out = array
    for axis, f in enumerate(factors):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    pad = [(0, s - n) for s, n in zip(shape, out.shape, strict=True)]
    return np.pad(out, pad) if any(p[1] for p in pad) else out


def _ellipsoid(radius_mm: float, spacing: tuple[float, ...]) -> BoolArray:
    r = [int(np.floor(radius_mm / s + 1e-6)) for s in spacing]
    grids = np.ogrid[tuple(slice(-n, n + 1) for n in r)]
    d2 = sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing, strict=True))
    return np.asarray(d2 <= 1.0 + 1e-9)


def _closing(mask: BoolArray, radius_mm: float, spacing: tuple[float, ...]) -> BoolArray:
    structure = _ellipsoid(radius_mm, spacing)
    pad = [(n // 2, n // 2) for n in structure.shape]
    padded = np.pad(mask, pad)
    closed = ndi.binary_closing(padded, structure=structure)
    return np.asarray(
        closed[tuple(slice(p, p + n) for (p, _), n in zip(pad, mask.shape, strict=True))]
    )


def _fill_slices(mask: BoolArray) -> BoolArray:
    """Fill holes in every axial plane (``mask[k]``)."""
    return np.stack([ndi.binary_fill_holes(plane) for plane in mask])


def _largest_component(mask: BoolArray) -> BoolArray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return np.asarray(labels == 1 + int(np.argmax(sizes)))


def extract_brain(
    hu: npt.NDArray[np.floating],
    affine: npt.ArrayLike,
    *,
    window_hu: tuple[float, float] = BRAIN_NCCT_WINDOW_HU,
    skull_hu: float = NCCT_SKULL_HU,
    volume_range_ml: tuple[float, float] | None = VOLUME_RANGE_ML,
    working_mm: float = WORKING_MM,
) -> BrainMask:
    """Brain mask of a head CT (the NCCT defaults; see :func:`extract_cta_brain`).

    Parameters
    ----------
    hu
        Hounsfield units ``[k, j, i]``, axial slices along ``k``.
    affine
        4x4 index ``(i, j, k)`` -> patient mm; its voxel sizes are used.
    window_hu
        Attenuation range of the brain inside the cavity.
    skull_hu
        Bone threshold for the skull.
    volume_range_ml
        Plausible brain volumes; outside, :class:`BrainExtractionError` with reason
        ``brain_volume_implausible``. ``None`` skips the check.
    working_mm
        Approximate voxel size the morphology runs at.

    Raises
    ------
    BrainExtractionError
        ``no_skull`` when no enclosing skull is found, ``brain_volume_implausible`` when the
        volume is outside ``volume_range_ml``.
    """
    spacing = voxel_sizes(affine)
    factors = block_factors(spacing, working_mm)
    small = np.asarray(block_reduce(np.asarray(hu, dtype=np.float32), factors), dtype=np.float32)
    sp = tuple(s * f for s, f in zip(spacing, factors, strict=True))
    voxel_ml = float(np.prod(sp)) / 1000.0

    skull = _closing(small >= skull_hu, SKULL_CLOSE_MM, sp)
    enclosed = _fill_slices(skull)
    cavity = enclosed & ~skull
    if not cavity.any():
        raise BrainExtractionError("no_skull", "no region enclosed by bone was found")

    candidate = cavity & (small >= window_hu[0]) & (small <= window_hu[1])
    eroded = ndi.distance_transform_edt(candidate, sampling=sp) > ERODE_MM
    if not eroded.any():
        raise BrainExtractionError("brain_volume_implausible", "nothing left after erosion")
    core = _largest_component(np.asarray(eroded))
    grown = (ndi.distance_transform_edt(~core, sampling=sp) <= ERODE_MM + 1e-6) & candidate
    brain = _fill_slices(np.asarray(ndi.binary_fill_holes(grown))) & cavity

    volume_ml = float(brain.sum()) * voxel_ml
    logger.debug("brain extraction: %.0f mL on a %s grid", volume_ml, brain.shape)
    if volume_range_ml is not None and not volume_range_ml[0] <= volume_ml <= volume_range_ml[1]:
        raise BrainExtractionError(
            "brain_volume_implausible",
            f"{volume_ml:.0f} mL is outside {volume_range_ml[0]:.0f}-{volume_range_ml[1]:.0f} mL",
        )
    shape = tuple(hu.shape)
    return BrainMask(
        brain=block_expand(brain, factors, shape),
        cavity=block_expand(cavity, factors, shape),
        skull=block_expand(skull, factors, shape),
        volume_ml=volume_ml,
    )


def extract_cta_brain(
    hu: npt.NDArray[np.floating],
    affine: npt.ArrayLike,
    *,
    volume_range_ml: tuple[float, float] | None = VOLUME_RANGE_ML,
    working_mm: float = WORKING_MM,
) -> BrainMask:
    """Brain mask of a CTA on its own: the cavity within -20..600 HU, bone above 700 HU.

    Prefer the NCCT's mask carried over by the CTA->NCCT registration: in template space it is
    ``Registration.brain_mask``; on the CTA's own grid ``Registration.to_patient_grid(
    registration.brain_mask, shape, affine, target="cta", order=0)``. This is the fallback when
    there is no usable NCCT.
    """
    return extract_brain(
        hu,
        affine,
        window_hu=BRAIN_CTA_WINDOW_HU,
        skull_hu=CTA_SKULL_HU,
        volume_range_ml=volume_range_ml,
        working_mm=working_mm,
    )
