"""Patients who differ: each synthetic study's own head, brain, arteries and early ischaemia.

The atlas (``anatomy.py``) is one head. A :class:`Subject` describes how one patient differs
from it, drawn from the study's own random stream, and :meth:`Subject.build` makes that
patient's pseudo-CT on a 1 mm grid:

1. in atlas space, the tissue changes: brain atrophy (parenchyma lost from the brain's outer
   surface, unevenly so that sulci widen) and ventricles that enlarge with age, a thicker or
   thinner skull, grey and white matter attenuation of this patient, and early ischaemic change
   in the ASPECTS regions of the occluded middle cerebral artery (:func:`ischemia_regions`);
2. then a warp to the patient's own space: head size and shape (a scaling about the head's
   centre) and a smooth random deformation of a few millimetres.

Points map both ways: :meth:`SubjectAnatomy.to_atlas` (patient head -> atlas, the warp as it
is applied to images) and :meth:`SubjectAnatomy.from_atlas` (atlas -> patient head, by fixed-point
iteration), so that a landmark or a clot defined on the atlas has its true position in the
patient. :meth:`SubjectAnatomy.affine_from_atlas` is the best affine approximation of the latter:
what an ideal affine registration would find, the rest being the residual that registration of
real patients leaves.

The age effects and sizes are ours, chosen to be of the order reported for adults: ventricles
and sulci widen with age (lateral ventricle volume about doubles between 40 and 80), heads are
smaller than the atlas's (:data:`HEAD_SCALE_MEN`) and vary by about 4 % (standard deviation,
linear), and men's heads are about 3.5 % larger than women's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]

from scanet_node.synth.anatomy import (
    CORTICAL,
    DIPLOE,
    HU_AIR,
    HU_GM,
    HU_WM,
    Anatomy,
    AtlasTissue,
    TissueChanges,
    atlas_tissue,
    compose_hu,
)

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Centre of the head's scaling (MNI mm, near the centre of the brain).
HEAD_CENTRE_MNI = (0.0, -18.0, 10.0)
#: The patient's grid is the atlas grid grown by this much on each side (a larger head fits).
GRID_PAD_MM = 12
#: Control-point spacing and smoothing of the random deformation.
DEFORMATION_SPACING_MM = 10.0
DEFORMATION_SMOOTHING_CELLS = 1.5

#: Mean linear size of men's heads relative to the atlas, whose intracranial volume (about
#: 2050 mL by the node's brain extraction) exceeds that of adults (about 1550 mL for men, 1350
#: for women): the MNI152 average was scaled up towards the Talairach brain. Women's heads are
#: 3.5 % smaller; the range keeps every head within what the node's brain extraction accepts.
HEAD_SCALE_MEN = 0.92
HEAD_SCALE_RANGE = (0.8, 1.0)

#: ASPECTS regions (Barber 2000, Lancet 355:1670), in the order they are numbered here.
ASPECTS_REGIONS = ("C", "L", "IC", "I", "M1", "M2", "M3", "M4", "M5", "M6")
#: Order in which early ischaemic change spreads, by occlusion site: the deep territory of the
#: lenticulostriate arteries and the insular ribbon first (the earliest CT signs: obscured
#: lentiform nucleus, insular ribbon sign), then the lateral cortex, then the rest. A clot in
#: the superior M2 trunk spares the deep territory and the inferior division's cortex.
_SPREAD = {
    "M1": ("L", "I", "M2", "M5", "C", "IC", "M1", "M4", "M3", "M6"),
    "M2": ("I", "M1", "M4", "M5", "M2", "M6"),
}
#: Number of ASPECTS regions with early ischaemic change, by Tan collateral grade (inclusive
#: bounds). Poor collaterals go with larger early infarcts and lower ASPECTS: Tan 2009 (AJNR
#: 30:525), Menon 2011 (AJNR 32:1640), Souza 2012 (AJNR 33:1331).
_REGIONS_BY_GRADE = ((4, 7), (2, 4), (0, 2), (0, 1))
#: Attenuation lost by fully ischaemic grey and white matter (HU) before the severity factor:
#: grey matter falls towards white (loss of grey-white differentiation), white matter less.
#: A net water uptake of a few per cent lowers attenuation by about 2 HU per per cent.
ISCHEMIA_GM_HU = 7.0
#: Share of the cortical arteries distal to the clot that fill retrogradely on CTA, by Tan
#: grade (Tan 2009): 0 absent, 1 up to 50 %, 2 over 50 % and under 100 %, 3 all of them.
_FILL_BY_GRADE = ((0.0, 0.0), (0.15, 0.5), (0.5, 0.95), (1.0, 1.0))
DEFAULT_FILL_BY_GRADE = (0.0, 0.33, 0.75, 1.0)
ISCHEMIA_WM_HU = 3.0


@dataclass(frozen=True)
class Subject:
    """One patient's anatomy, as parameters (cheap); :meth:`build` makes the images."""

    age: int
    sex: str
    scale: tuple[float, float, float]
    deformation_mm: float
    skull_mm: float
    atrophy_mm: float
    ventricle_mm: float
    gm_hu: float
    wm_hu: float
    texture_shift: tuple[int, int, int]
    field_seed: tuple[int, ...]
    ischemia_side: str | None = None
    ischemia_regions: tuple[str, ...] = ()
    ischemia_severity: float = 0.0
    collateral_fill: float | None = None
    tree: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The parameters for a manifest."""
        return {
            "age": self.age,
            "sex": self.sex,
            "scale": [round(s, 4) for s in self.scale],
            "deformation_mm": round(self.deformation_mm, 2),
            "skull_mm": round(self.skull_mm, 2),
            "atrophy_mm": round(self.atrophy_mm, 2),
            "ventricle_mm": round(self.ventricle_mm, 2),
            "gm_hu": round(self.gm_hu, 1),
            "wm_hu": round(self.wm_hu, 1),
            "early_ischemia": {
                "side": self.ischemia_side,
                "aspects_regions": list(self.ischemia_regions),
                "aspects": 10 - len(self.ischemia_regions),
                "severity": round(self.ischemia_severity, 3),
            },
            "collateral_fill": None
            if self.collateral_fill is None
            else round(self.collateral_fill, 3),
        }

    def build(self) -> SubjectAnatomy:
        """The patient's pseudo-CT and warp (a few seconds)."""
        return _build(self)


def draw_subject(
    rng: np.random.Generator,
    *,
    age: int,
    sex: str,
    side: str | None = None,
    site: str | None = None,
    collateral_grade: int | None = None,
    with_tree: bool = True,
) -> Subject:
    """Draw a patient of this age and sex; with an occlusion, its early ischaemic change too.

    ``with_tree=False`` leaves the arterial tree out (empty: the atlas tree is used), which
    saves the second or so a cortical network takes; the other draws are the same.
    """
    from scanet_node.synth.vessels import subject_tree

    years = max(0.0, age - 40.0)
    size = rng.normal(HEAD_SCALE_MEN if sex == "M" else HEAD_SCALE_MEN * 0.965, 0.035)
    shape = rng.normal(0.0, 0.025, 3)
    scale = tuple(float(np.clip(size * (1.0 + s), *HEAD_SCALE_RANGE)) for s in shape)
    gm_hu = float(np.clip(rng.normal(HU_GM, 1.2), 34.0, 42.0))
    wm_hu = float(gm_hu - np.clip(rng.normal(HU_GM - HU_WM, 1.0), 8.0, 14.0))
    subject = Subject(
        age=age,
        sex=sex,
        scale=(scale[0], scale[1], scale[2]),
        deformation_mm=float(rng.uniform(1.5, 2.5)),
        skull_mm=float(np.clip(rng.normal(0.5, 0.7), -0.5, 2.0)),
        atrophy_mm=float((0.4 + 0.035 * years) * rng.uniform(0.6, 1.4)),
        ventricle_mm=float(0.045 * years * rng.uniform(0.5, 1.4)),
        gm_hu=gm_hu,
        wm_hu=wm_hu,
        texture_shift=(
            int(rng.integers(-40, 41)),
            int(rng.integers(-40, 41)),
            int(rng.integers(-40, 41)),
        ),
        field_seed=tuple(int(v) for v in rng.integers(0, 2**31, 2)),
    )
    tree = tuple(subject_tree(np.random.default_rng(subject.field_seed[1]))) if with_tree else ()
    regions: tuple[str, ...] = ()
    severity = 0.0
    fill = None
    if side is not None and site is not None and collateral_grade is not None:
        low, high = _REGIONS_BY_GRADE[collateral_grade]
        order = _SPREAD[site]
        count = min(int(rng.integers(low, high + 1)), len(order))
        # Mostly in the order of spread, with some patients departing from it.
        weights = 0.7 ** np.arange(len(order))
        picked = rng.choice(len(order), size=count, replace=False, p=weights / weights.sum())
        regions = tuple(order[i] for i in sorted(int(p) for p in picked))
        severity = float(rng.uniform(0.6, 1.3)) if regions else 0.0
        fill = float(rng.uniform(*_FILL_BY_GRADE[collateral_grade]))
    return dataclasses.replace(
        subject,
        ischemia_side=side if regions else None,
        ischemia_regions=regions,
        ischemia_severity=severity,
        collateral_fill=fill,
        tree=tree,
    )


@dataclass(frozen=True, eq=False)
class SubjectAnatomy:
    """A patient's pseudo-CT on a 1 mm grid in the patient's head space, and its warp."""

    anatomy: Anatomy
    subject: Subject
    _coarse: npt.NDArray[np.float32] = field(repr=False)  # (3, nx, ny, nz) deformation, mm
    _coarse_origin: FloatArray = field(repr=False)

    def _displacement(self, points: FloatArray) -> FloatArray:
        idx = (points - self._coarse_origin) / DEFORMATION_SPACING_MM
        coords = [idx[..., a].ravel() for a in range(3)]
        out = np.stack(
            [ndi.map_coordinates(c, coords, order=1, mode="nearest") for c in self._coarse],
            axis=-1,
        )
        return np.asarray(out.reshape(points.shape), dtype=np.float64)

    def to_atlas(self, points: npt.ArrayLike) -> FloatArray:
        """Atlas mm of points ``(..., 3)`` in the patient's head (mm)."""
        p = np.asarray(points, dtype=np.float64)
        centre = np.asarray(HEAD_CENTRE_MNI)
        out = centre + (p - centre) / np.asarray(self.subject.scale) + self._displacement(p)
        return np.asarray(out, dtype=np.float64)

    def from_atlas(self, points: npt.ArrayLike) -> FloatArray:
        """Patient head mm of atlas points ``(..., 3)`` (inverts :meth:`to_atlas`)."""
        m = np.asarray(points, dtype=np.float64)
        centre = np.asarray(HEAD_CENTRE_MNI)
        scale = np.asarray(self.subject.scale)
        p = centre + scale * (m - centre)
        for _ in range(12):
            p = centre + scale * (m - centre - self._displacement(p))
        return np.asarray(p, dtype=np.float64)

    @functools.cached_property
    def affine_from_atlas(self) -> FloatArray:
        """4x4 affine closest (least squares over the brain) to :meth:`from_atlas`."""
        tissue = atlas_tissue()
        ijk = np.argwhere(tissue.brain[::4, ::4, ::4]) * 4
        atlas = ijk @ tissue.affine[:3, :3].T + tissue.affine[:3, 3]
        patient = self.from_atlas(atlas)
        design = np.hstack([atlas, np.ones((len(atlas), 1))])
        solution, *_ = np.linalg.lstsq(design, patient, rcond=None)
        matrix = np.eye(4)
        matrix[:3, :] = solution.T
        return matrix


def _build(subject: Subject) -> SubjectAnatomy:
    tissue = atlas_tissue()
    rng = np.random.default_rng(subject.field_seed[0])
    changes = TissueChanges(
        atrophy_mm=_atrophy_field(tissue, subject, rng),
        ventricle_mm=subject.ventricle_mm,
        skull_mm=subject.skull_mm,
        ischemia=_ischemia_weight(subject),
        ischemia_gm_hu=ISCHEMIA_GM_HU * subject.ischemia_severity,
        ischemia_wm_hu=ISCHEMIA_WM_HU * subject.ischemia_severity,
        gm_hu=subject.gm_hu,
        wm_hu=subject.wm_hu,
        texture_shift=subject.texture_shift,
    )
    atlas_hu = compose_hu(tissue, changes)

    pad = GRID_PAD_MM
    shape = tuple(int(n) + 2 * pad for n in tissue.labels.shape)
    affine = tissue.affine.copy()
    affine[:3, 3] -= pad * np.diag(tissue.affine)[:3]
    lower = affine[:3, 3]
    upper = lower + (np.asarray(shape) - 1) * np.diag(affine)[:3]
    coarse_origin = lower - DEFORMATION_SPACING_MM
    n_coarse = np.ceil((upper - coarse_origin) / DEFORMATION_SPACING_MM).astype(int) + 2
    noise = rng.standard_normal((3, *n_coarse))
    coarse = np.stack(
        [ndi.gaussian_filter(c, DEFORMATION_SMOOTHING_CELLS, mode="wrap") for c in noise]
    )
    coarse *= (
        subject.deformation_mm / np.sqrt(np.mean(coarse**2, axis=(1, 2, 3)))[:, None, None, None]
    )
    coarse = coarse.astype(np.float32)

    # Atlas voxel index of every patient voxel, separably: the scaling is diagonal and the
    # deformation is trilinear on its control grid (a tensor product of 1-D interpolations).
    centre = np.asarray(HEAD_CENTRE_MNI)
    axes_mm = [lower[a] + np.arange(shape[a]) * affine[a, a] for a in range(3)]
    interp = [_linear_matrix(axes_mm[a], coarse_origin[a], coarse.shape[1 + a]) for a in range(3)]
    inv = np.linalg.inv(tissue.affine)
    index = []
    for a in range(3):
        d = np.tensordot(interp[0], coarse[a], axes=(1, 0))
        d = np.tensordot(interp[1], d, axes=(1, 1)).transpose(1, 0, 2)
        d = np.tensordot(d, interp[2], axes=(2, 1)).astype(np.float32)
        base = centre[a] + (axes_mm[a] - centre[a]) / subject.scale[a]
        shape_a = [1, 1, 1]
        shape_a[a] = shape[a]
        d += base.reshape(shape_a).astype(np.float32)
        d *= np.float32(inv[a, a])
        d += np.float32(inv[a, 3])
        index.append(d)
    hu = ndi.map_coordinates(atlas_hu, index, order=1, mode="constant", cval=HU_AIR)
    cavity = tissue.cavity
    vault = tissue.vault > 0.5
    if subject.skull_mm > 0.0:
        cavity = cavity & ~(vault & (tissue.depth_in_cavity < subject.skull_mm))
    elif subject.skull_mm < 0.0:
        bone = (tissue.labels == CORTICAL) | (tissue.labels == DIPLOE)
        cavity = cavity | (vault & bone & (tissue.distance_from_cavity <= -subject.skull_mm))
    masks = (tissue.brain.astype(np.uint8) * 2 + cavity).astype(np.uint8)
    warped_masks = ndi.map_coordinates(masks, index, order=0, mode="constant", cval=0)
    del index
    arrays = (
        hu.astype(np.float32, copy=False),
        affine,
        np.asarray(warped_masks >= 2),
        np.asarray(warped_masks % 2 == 1),
    )
    for array in arrays:
        array.setflags(write=False)
    return SubjectAnatomy(Anatomy(*arrays), subject, coarse, coarse_origin)


def _linear_matrix(points_mm: FloatArray, origin: float, n: int) -> npt.NDArray[np.float32]:
    """Rows of 1-D linear interpolation weights onto ``n`` control points from ``origin``."""
    u = np.clip((points_mm - origin) / DEFORMATION_SPACING_MM, 0.0, n - 1.000001)
    i = np.floor(u).astype(int)
    t = u - i
    m = np.zeros((len(points_mm), n), dtype=np.float32)
    rows = np.arange(len(points_mm))
    m[rows, i] = 1.0 - t
    m[rows, i + 1] = t
    return m


def _atrophy_field(
    tissue: AtlasTissue, subject: Subject, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Atrophy in mm per atlas voxel: the subject's mean, uneven over ~6 mm so sulci differ."""
    coarse = ndi.gaussian_filter(rng.standard_normal((46, 54, 50)), 1.0, mode="wrap")
    coarse /= max(float(coarse.std()), 1e-6)
    zoom = np.asarray(tissue.labels.shape) / np.asarray(coarse.shape)
    field_ = ndi.zoom(coarse.astype(np.float32), zoom, order=1, grid_mode=True, mode="grid-wrap")
    field_ = field_[: tissue.labels.shape[0], : tissue.labels.shape[1], : tissue.labels.shape[2]]
    return np.asarray(np.clip(subject.atrophy_mm * (1.0 + 0.7 * field_), 0.0, None), np.float32)


def _ischemia_weight(subject: Subject) -> npt.NDArray[np.float32] | None:
    if not subject.ischemia_regions or subject.ischemia_side is None:
        return None
    regions = ischemia_regions()
    offset = 0 if subject.ischemia_side == "R" else len(ASPECTS_REGIONS)
    ids = [offset + 1 + ASPECTS_REGIONS.index(r) for r in subject.ischemia_regions]
    hit = np.isin(regions, ids)
    weight = np.zeros(regions.shape, dtype=np.float32)
    found = np.argwhere(hit)
    lo = np.maximum(found.min(axis=0) - 6, 0)
    hi = found.max(axis=0) + 7
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    weight[box] = ndi.gaussian_filter(hit[box].astype(np.float32), 1.5, mode="constant")
    return weight


@functools.cache
def ventricle_tops() -> dict[str, FloatArray]:
    """MNI mm of the top of each lateral ventricle of the atlas (centroid of its top 2 mm)."""
    tissue = atlas_tissue()
    ijk = np.argwhere(tissue.ventricles)
    mni = ijk @ tissue.affine[:3, :3].T + tissue.affine[:3, 3]
    out = {}
    for name, sel in (("left", mni[:, 0] < -2.0), ("right", mni[:, 0] > 2.0)):
        side = mni[sel]
        top = side[side[:, 2] >= side[:, 2].max() - 2.0]
        out[f"{name}_ventricle_top"] = top.mean(axis=0)
    return out


@functools.cache
def ischemia_regions() -> npt.NDArray[np.int8]:
    """ASPECTS regions on the atlas grid: 1..10 right (order of :data:`ASPECTS_REGIONS`), 11..20
    left, 0 elsewhere.

    Approximate, in MNI space: the deep regions are ellipsoids around the caudate head,
    lentiform nucleus, internal capsule and insular ribbon; the cortical regions are the middle
    cerebral artery territory within 12 mm of the brain's surface, at the ganglionic level
    (M1-M3: MNI z -12..14 mm) and above it (M4-M6: z 14..50 mm), split front to back.
    """
    from scanet_node.synth.vessels import territory

    tissue = atlas_tissue()
    brain = np.argwhere(tissue.brain)
    mni = brain @ tissue.affine[:3, :3].T + tissue.affine[:3, 3]
    x, y, z = np.abs(mni[:, 0]), mni[:, 1], mni[:, 2]
    label = np.zeros(len(mni), dtype=np.int8)
    mca = np.asarray(territory(mni)) == "MCA"
    cortex = tissue.distance_from_surface[tuple(brain.T)] <= 12.0
    cortical = mca & cortex
    ganglionic = (z > -12.0) & (z <= 14.0)
    upper = (z > 14.0) & (z <= 50.0)
    rules = {
        "M1": cortical & ganglionic & (y > 12.0),
        "M2": cortical & ganglionic & (y <= 12.0) & (y > -22.0) & (x > 40.0),
        "M3": cortical & ganglionic & (y <= -22.0),
        "M4": cortical & upper & (y > 5.0),
        "M5": cortical & upper & (y <= 5.0) & (y > -25.0),
        "M6": cortical & upper & (y <= -25.0),
    }
    ellipsoids = {  # centre (x > 0), semi-axes, mm
        "C": ((12.0, 12.0, 8.0), (5.0, 9.0, 8.0)),
        "L": ((22.0, 2.0, 0.0), (7.0, 12.0, 7.0)),
        "IC": ((17.0, -2.0, 4.0), (3.0, 12.0, 8.0)),
        "I": ((38.0, 0.0, 2.0), (4.0, 18.0, 12.0)),
    }
    for name, (centre, axes) in ellipsoids.items():
        r = ((np.stack([x, y, z], axis=1) - centre) / axes) ** 2
        rules[name] = r.sum(axis=1) <= 1.0
    for number, name in enumerate(ASPECTS_REGIONS, start=1):
        sel = rules[name] & (label == 0)
        label[sel & (mni[:, 0] > 0)] = number
        label[sel & (mni[:, 0] < 0)] = number + len(ASPECTS_REGIONS)
    out = np.zeros(tissue.labels.shape, dtype=np.int8)
    out[tuple(brain.T)] = label
    out.setflags(write=False)
    return out


__all__ = [
    "ASPECTS_REGIONS",
    "Subject",
    "SubjectAnatomy",
    "draw_subject",
    "ischemia_regions",
    "ventricle_tops",
]
