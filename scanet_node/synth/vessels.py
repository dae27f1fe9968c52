"""Arterial tree of the synthetic head in MNI space, and a large-vessel occlusion on it.

The tree is a set of named segments (smooth centrelines with a radius) running from the neck
through the skull base to the circle of Willis, the proximal cerebral arteries and the cortical
arteries on the brain's surface. Trunk control points were placed by overlaying the tree on the
MNI ICBM152 2009a template that ``anatomy.py`` uses: the supraclinoid carotids, basilar artery
and circle of Willis lie in the basal cisterns, the middle cerebral arteries run through the
Sylvian fissure over the insula and end on the lateral convexity, the anterior cerebral arteries
in the interhemispheric fissure around the corpus callosum. MNI x > 0 is the subject's right.

The cortical (M4 and pial) arteries are grown by persistent random walks on two surfaces,
where the sulci open and in their depth (:func:`cortical_network`): from the M2/M3 branches
over the lateral convexity up to the border of the middle cerebral artery territory
(:func:`territory`), from the A2 over the medial surface and the vertex, from the P2 over the
occipital lobe and the inferior temporal surface.

:func:`vessel_tree` is the fixed atlas tree: trunks built from the control points below with the
left side mirroring the right, and a cortical network drawn once with a fixed seed on the right
and mirrored, so the atlas tree is exactly symmetric. :func:`subject_tree` draws one patient's
tree: jittered branch points, M1 length, calibres, and a cortical network of each hemisphere.

An :class:`Occlusion` is a clot in the M1 segment or the superior M2 trunk of one side; it knows
where the clot lies on its tree and which segments (cortical branches included) are downstream
of it, which ``phantom.py`` uses to draw the hyperdense vessel on non-contrast CT and the filling
defect and collateral filling on CTA.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]
from scipy import spatial, special  # type: ignore[import-untyped,unused-ignore]

from scanet_node.synth.anatomy import load_anatomy

logger = logging.getLogger(__name__)

SIDES = ("L", "R")
SITES = ("M1", "M2")
SAMPLE_SPACING_MM = 0.5  # centreline sampling after smoothing
_SPAN_SAMPLES = 40  # dense samples per span between control points, before resampling
#: Segment kinds of the cortical arteries of the middle, anterior and posterior cerebral artery.
CORTICAL_KINDS = ("M4", "ACAcx", "PCAcx")
#: Labels of :func:`territory` ('' outside the cerebral hemispheres).
TERRITORIES = ("ACA", "MCA", "PCA")
#: Signed distance from the smoothed brain surface (grey plus white matter, positive outside) at
#: which the surface layer of cortical arteries runs: where the sulci open, on average.
CORTICAL_DEPTH_MM = -1.0
#: The second layer: arteries in the depth of the sulci, which the atlas (an average of many
#: brains) has smoothed away; they run this far beneath the smoothed brain surface.
SULCAL_DEPTH_MM = -3.0
#: Seed of the atlas tree's cortical network.
ATLAS_CORTICAL_SEED = 20090101

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Segment:
    """One arterial segment.

    Attributes
    ----------
    name
        Unique name, e.g. ``"R_M1"``, ``"BA"`` or ``"L_M4_017"``.
    side
        ``"L"``, ``"R"`` or None for midline vessels.
    points
        Centreline ``(K, 3)`` in MNI mm, sampled every ~0.5 mm, from proximal to distal.
    radius_mm
        Lumen radius.
    parent
        Name of the segment it branches from, None for roots (carotids, vertebrals, basilar).
    kind
        Vessel name without side, e.g. ``"M1"``, ``"ICA"``, ``"M4"``.
    intracranial
        False for the cervical, petrous and cavernous carotid and the extradural vertebral.
    """

    name: str
    side: str | None
    points: FloatArray
    radius_mm: float
    parent: str | None
    kind: str = ""
    intracranial: bool = True

    @property
    def length_mm(self) -> float:
        """Centreline length."""
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())

    def arc_length(self) -> FloatArray:
        """Cumulative centreline length at each point, starting at 0."""
        steps = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        return np.concatenate([[0.0], np.cumsum(steps)])


@dataclass(frozen=True)
class _Spec:
    """Control points of a right-sided (or midline) segment before smoothing."""

    kind: str
    control: tuple[tuple[float, float, float], ...]
    radius_mm: float
    parent_kind: str | None
    intracranial: bool = True
    bilateral: bool = True


# Right hemisphere (x > 0); "parent_kind" names a segment of the same side, or a midline one.
# The M3 branches end on the cortical surface, where the cortical (M4) arteries take over.
_SPECS: tuple[_Spec, ...] = (
    _Spec(
        "ICA_cervical",
        ((24.0, -15.0, -100.0), (24.5, -14.0, -85.0), (25.0, -13.0, -70.0), (25.0, -12.0, -62.0)),
        2.4,
        None,
        intracranial=False,
    ),
    _Spec(
        "ICA_petrous",
        ((25.0, -12.0, -62.0), (24.5, -10.0, -57.0), (21.0, -6.0, -53.0), (17.0, -5.0, -47.0)),
        2.3,
        "ICA_cervical",
        intracranial=False,
    ),
    _Spec(
        "ICA_cavernous",
        (
            (17.0, -5.0, -47.0),
            (16.5, -6.0, -40.0),
            (16.0, -4.0, -34.0),
            (15.0, 3.0, -32.0),
            (14.0, 9.0, -29.0),
        ),
        2.2,
        "ICA_petrous",
        intracranial=False,
    ),
    _Spec(
        "ICA",
        ((14.0, 9.0, -29.0), (14.0, 8.0, -25.0), (15.0, 4.5, -21.5), (16.0, 3.0, -19.0)),
        2.1,
        "ICA_cavernous",
    ),
    _Spec(
        "M1",
        (
            (16.0, 3.0, -19.0),
            (21.0, 4.0, -19.0),
            (26.0, 5.5, -19.0),
            (31.0, 7.5, -18.5),
            (36.0, 9.5, -17.0),
        ),
        1.5,
        "ICA",
    ),
    _Spec(
        "M2_sup",
        (
            (36.0, 9.5, -17.0),
            (39.0, 12.0, -12.0),
            (40.0, 11.0, -4.0),
            (40.0, 5.0, 4.0),
            (39.0, -3.0, 11.0),
            (38.0, -12.0, 17.0),
        ),
        1.0,
        "M1",
    ),
    _Spec(
        "M2_inf",
        (
            (36.0, 9.5, -17.0),
            (40.0, 6.0, -14.0),
            (42.0, -2.0, -10.0),
            (42.0, -12.0, -6.0),
            (42.0, -22.0, -1.0),
            (41.0, -31.0, 4.0),
        ),
        1.0,
        "M1",
    ),
    _Spec(
        "M3_frontal",
        ((40.0, 5.0, 4.0), (46.0, 10.0, 12.0), (52.0, 14.0, 24.0), (56.0, 16.0, 36.0)),
        0.75,
        "M2_sup",
    ),
    _Spec(
        "M3_parietal",
        (
            (38.0, -12.0, 17.0),
            (46.0, -18.0, 26.0),
            (52.0, -25.0, 36.0),
            (55.0, -32.0, 44.0),
            (52.0, -34.0, 57.5),
        ),
        0.75,
        "M2_sup",
    ),
    _Spec(
        "M3_temporal",
        (
            (42.0, -12.0, -6.0),
            (50.0, -14.0, -4.0),
            (58.0, -20.0, -6.0),
            (63.0, -30.0, -8.0),
            (71.0, -35.0, -10.5),
        ),
        0.75,
        "M2_inf",
    ),
    _Spec(
        "M3_angular",
        (
            (41.0, -31.0, 4.0),
            (48.0, -40.0, 12.0),
            (53.0, -50.0, 22.0),
            (54.0, -58.0, 30.0),
            (59.5, -65.5, 35.0),
        ),
        0.75,
        "M2_inf",
    ),
    _Spec(
        "A1",
        ((16.0, 3.0, -19.0), (12.0, 5.5, -18.5), (7.0, 8.5, -17.5), (2.0, 11.0, -16.0)),
        1.0,
        "ICA",
    ),
    _Spec(
        "A2",
        (
            (2.0, 11.0, -16.0),
            (2.0, 17.0, -11.0),
            (2.0, 25.0, -6.0),
            (2.0, 32.0, 0.0),
            (2.0, 35.0, 8.0),
            (2.0, 33.0, 16.0),
            (2.0, 26.0, 22.0),
            (2.0, 17.0, 26.0),
            (2.0, 5.0, 29.0),
            (2.0, -10.0, 30.0),
            (2.0, -25.0, 29.0),
            (2.0, -38.0, 27.0),
        ),
        0.9,
        "A1",
    ),
    _Spec(
        "PCoA",
        ((15.0, 4.5, -21.5), (13.0, -1.0, -20.5), (11.0, -6.0, -19.5), (8.0, -10.5, -18.5)),
        0.7,
        "ICA",
    ),
    _Spec(
        "VA_extracranial",
        ((24.0, -30.0, -100.0), (25.0, -32.0, -84.0), (23.0, -42.0, -72.0), (14.0, -46.0, -65.0)),
        1.7,
        None,
        intracranial=False,
    ),
    _Spec(
        "VA",
        (
            (14.0, -46.0, -65.0),
            (11.0, -40.0, -58.0),
            (8.0, -32.0, -52.0),
            (4.5, -23.0, -47.0),
            (0.0, -16.5, -43.0),
        ),
        1.6,
        "VA_extracranial",
    ),
    _Spec(
        "BA",
        (
            (0.0, -16.5, -43.0),
            (0.0, -13.0, -38.0),
            (0.0, -11.0, -31.0),
            (0.0, -10.0, -25.0),
            (0.0, -10.0, -19.5),
        ),
        1.5,
        None,
        bilateral=False,
    ),
    _Spec(
        "P1",
        ((0.0, -10.0, -19.5), (4.0, -10.5, -19.0), (8.0, -10.5, -18.5)),
        1.0,
        "BA",
    ),
    _Spec(
        "P2",
        (
            (8.0, -10.5, -18.5),
            (14.0, -15.0, -17.0),
            (19.0, -22.0, -15.0),
            (18.0, -30.0, -12.0),
            (15.0, -38.0, -8.0),
            (13.0, -50.0, -3.0),
            (11.0, -64.0, 3.0),
            (8.0, -78.0, 7.0),
        ),
        1.0,
        "P1",
    ),
    _Spec(
        "SCA",
        (
            (0.0, -10.2, -22.0),
            (6.0, -12.0, -22.5),
            (12.0, -19.0, -22.0),
            (14.0, -28.0, -21.0),
            (12.0, -40.0, -19.0),
        ),
        0.7,
        "BA",
    ),
)

_ACOA_RADIUS_MM = 0.6  # the anterior communicating artery, the one midline segment built apart
_M3_KINDS = ("M3_frontal", "M3_parietal", "M3_temporal", "M3_angular")
_MCA_DISTAL_KINDS = ("M2_sup", "M2_inf", *_M3_KINDS)


def _centripetal_catmull_rom(control: FloatArray, spacing: float) -> FloatArray:
    """Smooth curve through the control points, resampled every ``spacing`` mm of arc length.

    Centripetal parametrisation (alpha 0.5) does not overshoot or loop where control points are
    unevenly spaced, so a vessel stays inside the cistern it was placed in.
    """
    return _catmull_rom_many([np.asarray(control, dtype=np.float64)], spacing)[0]


def _catmull_rom_many(controls: Sequence[FloatArray], spacing: float) -> list[FloatArray]:
    """:func:`_centripetal_catmull_rom` of many curves at once (each needs 2+ distinct points)."""
    spans = np.array([len(c) - 1 for c in controls])
    ext = np.vstack([np.vstack([2 * c[0] - c[1], c, 2 * c[-1] - c[-2]]) for c in controls])
    # First extended point of each span: curve b's spans start at its offset in ``ext``.
    offset = np.repeat(np.cumsum(spans + 3) - (spans + 3), spans)
    first = offset + np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans)
    p0, p1, p2, p3 = (ext[first + i][:, None, :] for i in range(4))
    t0 = np.zeros((len(first), 1, 1))
    t1 = t0 + np.linalg.norm(p1 - p0, axis=-1, keepdims=True) ** 0.5
    t2 = t1 + np.linalg.norm(p2 - p1, axis=-1, keepdims=True) ** 0.5
    t3 = t2 + np.linalg.norm(p3 - p2, axis=-1, keepdims=True) ** 0.5
    t = t1 + (t2 - t1) * (np.arange(_SPAN_SAMPLES) / _SPAN_SAMPLES)[None, :, None]
    a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
    a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
    a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
    b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
    b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
    curve = ((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2).reshape(-1, 3)

    # Dense curves one after another (each closed by its last control point), then every curve
    # resampled by its own arc length in one interpolation over a common increasing key.
    size = spans * _SPAN_SAMPLES + 1
    start = np.cumsum(size) - size
    last = start + size - 1
    dense = np.empty((size.sum(), 3))
    is_last = np.zeros(len(dense), dtype=bool)
    is_last[last] = True
    dense[~is_last] = curve
    dense[last] = [c[-1] for c in controls]
    step = np.linalg.norm(np.diff(dense, axis=0), axis=1)
    step[start[1:] - 1] = 0.0
    cum = np.concatenate([[0.0], np.cumsum(step)])
    arc = cum - np.repeat(cum[start], size)
    length = arc[last]
    n = np.maximum(2, np.ceil(length / spacing).astype(np.int64) + 1)
    base = np.cumsum(length + 1.0) - (length + 1.0)
    key = arc + np.repeat(base, size)
    index = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    target = np.repeat(base, n) + index / np.repeat(n - 1, n) * np.repeat(length, n)
    out = np.stack([np.interp(target, key, dense[:, k]) for k in range(3)], axis=1)
    return np.split(out, np.cumsum(n)[:-1])


def _mirror(points: FloatArray) -> FloatArray:
    out = points.copy()
    out[:, 0] *= -1.0
    return out


def _frozen(points: FloatArray) -> FloatArray:
    points.setflags(write=False)
    return points


def _unit(vectors: FloatArray) -> FloatArray:
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norm, 1e-12), dtype=np.float64)


# --- Trunks: the control points above, the same for every tree, moved per subject.


def _trunk_parent(spec: _Spec, side: str | None) -> str | None:
    if spec.parent_kind is None or side is None:
        return None
    midline = {s.kind for s in _SPECS if not s.bilateral}
    return spec.parent_kind if spec.parent_kind in midline else f"{side}_{spec.parent_kind}"


def _trunk_names(spec: _Spec) -> tuple[tuple[str, str | None], ...]:
    if not spec.bilateral:
        return ((spec.kind, None),)
    return tuple((f"{side}_{spec.kind}", side) for side in SIDES)


def _trunk_controls() -> dict[str, FloatArray]:
    """Control points of every trunk segment by name; the left side mirrors the right."""
    out: dict[str, FloatArray] = {}
    for spec in _SPECS:
        right = np.asarray(spec.control, dtype=np.float64)
        for name, side in _trunk_names(spec):
            out[name] = _mirror(right) if side == "L" else right.copy()
    return out


def _build_trunks(
    controls: dict[str, FloatArray],
    radius_scale: Callable[[str, str | None], float] | None = None,
) -> tuple[Segment, ...]:
    """Smooth the trunk control points into segments, and join the A1 ends by the ACoA."""
    segments: list[Segment] = []
    for spec in _SPECS:
        for name, side in _trunk_names(spec):
            scale = 1.0 if radius_scale is None else radius_scale(spec.kind, side)
            segments.append(
                Segment(
                    name,
                    side,
                    _frozen(_centripetal_catmull_rom(controls[name], SAMPLE_SPACING_MM)),
                    spec.radius_mm * scale,
                    _trunk_parent(spec, side),
                    spec.kind,
                    spec.intracranial,
                )
            )
    by_name = {s.name: s for s in segments}
    # The anterior communicating artery joins the two A1 ends; its parent is nominally R_A1.
    acoa = np.stack([by_name["R_A1"].points[-1], by_name["L_A1"].points[-1]])
    scale = 1.0 if radius_scale is None else radius_scale("ACoA", None)
    segments.append(
        Segment(
            "ACoA",
            None,
            _frozen(_centripetal_catmull_rom(acoa, SAMPLE_SPACING_MM)),
            _ACOA_RADIUS_MM * scale,
            "R_A1",
            "ACoA",
            True,
        )
    )
    return tuple(segments)


@functools.cache
def _atlas_trunks() -> tuple[Segment, ...]:
    return _build_trunks(_trunk_controls())


# --- Vascular territories.

_OUTSIDE, _ACA, _MCA, _PCA = 0, 1, 2, 3
_TERRITORY_LABELS = np.array(["", *TERRITORIES])
_KIND_TERRITORY = {"M4": _MCA, "ACAcx": _ACA, "PCAcx": _PCA}


def _tentorium_z(ax: FloatArray, y: FloatArray) -> FloatArray:
    """MNI z of the tentorium: highest at the incisura, lower laterally and posteriorly."""
    return np.asarray(np.maximum(-4.0 - 0.5 * ax + 0.15 * np.minimum(y + 50.0, 0.0), -26.0))


def _territory_code(points: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Territory code (``_ACA``, ``_MCA``, ``_PCA``, ``_OUTSIDE``) by MNI position alone."""
    p = np.asarray(points, dtype=np.float64)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ax = np.abs(x)
    code = np.full(x.shape, _MCA, dtype=np.int8)
    occipital = y < -60.0 - 12.0 * np.clip((ax - 15.0) / 20.0, 0.0, 1.0)
    inferior_temporal = (y < -18.0) & (z < -4.0 - (2.0 / 3.0) * np.maximum(ax - 25.0, 0.0))
    thalamus_and_splenium = (ax < 22.0) & (y < -5.0) & (z > -6.0) & (z < 18.0)
    code[occipital | inferior_temporal | thalamus_and_splenium] = _PCA
    half_width = 16.0 + 10.0 * np.clip((z - 20.0) / 50.0, 0.0, 1.0)  # wider towards the vertex
    code[(ax < half_width) & (y > -60.0) & ((y > 5.0) | (z > 18.0))] = _ACA
    fossa = (y < -35.0) & (z < _tentorium_z(ax, y))
    brainstem = (ax < 14.0) & (y < -12.0) & (z < -14.0)
    code[fossa | brainstem] = _OUTSIDE
    return code


def territory(points_mni: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """Arterial territory at MNI points ``(..., 3)``: 'ACA', 'MCA', 'PCA' or ''.

    An approximate geometric map after Tatu et al. (1998, Neurology 50:1699), for drawing early
    ischaemic change and collateral filling, not for anatomy: the anterior cerebral artery has a
    parasagittal strip (|x| < 16 mm, widening to 26 mm at the vertex) in front of y = -60 mm,
    above the corpus callosum (z > 18 mm) or in front of y = 5 mm; the posterior cerebral artery
    the occipital lobe (behind y = -60 mm medially, -72 mm laterally), the inferomedial temporal
    lobe, the thalamus and the splenium; the middle cerebral artery the rest of each hemisphere.
    The posterior fossa (below the tentorium, roughly z < -20 mm behind y = -35 mm), the
    brainstem and everything outside the intracranial cavity are ''.
    """
    pts = np.asarray(points_mni, dtype=np.float64)
    anatomy = load_anatomy()
    inside = anatomy.mask_at(anatomy.cavity_mask, pts)
    code = np.where(inside, _territory_code(pts), _OUTSIDE)
    return np.asarray(_TERRITORY_LABELS[code])


# --- The surface the cortical arteries run on.

_FIELD_SIGMA_MM = 1.0  # smoothing of the brain mask; the distance is exact for a flat surface
_FIELD_MARGIN_VOXELS = 10
_FISSURE_HALF_WIDTH_MM = 2.5
_GRADIENT_STEP_MM = 0.5
_STENCIL = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    dtype=np.float64,
)


@dataclass(frozen=True, eq=False)
class _Surface:
    """Smooth signed distance from the brain's surface (mm, positive outside) on a 1 mm grid.

    ``shell`` holds the MNI mm of the grid points near :data:`CORTICAL_DEPTH_MM`, with their
    territory codes, to find where a cortical artery leaves its trunk.
    """

    mask: npt.NDArray[np.bool_]  # the brain mask with the fissure cut
    sd: npt.NDArray[np.float32]
    origin: FloatArray  # MNI mm of grid point (0, 0, 0)
    shell: FloatArray
    shell_code: npt.NDArray[np.int8]
    depth: float  # the signed distance the arteries keep
    _shell_trees: dict[tuple[int, float], spatial.cKDTree] = field(default_factory=dict)

    def nearest_shell(
        self, points: FloatArray, code: int, sign: float
    ) -> tuple[FloatArray, FloatArray]:
        """Distance to and position of the nearest shell point of a territory and side."""
        key = (code, sign)
        if key not in self._shell_trees:
            pick = (self.shell_code == code) & (self.shell[:, 0] * sign > 1.0)
            self._shell_trees[key] = spatial.cKDTree(self.shell[pick])
        tree = self._shell_trees[key]
        dist, index = tree.query(points)
        found = np.isfinite(dist)
        where = np.full(np.shape(points), np.nan)
        where[found] = tree.data[index[found]]
        return np.asarray(dist, dtype=np.float64), where

    def values(self, points: FloatArray) -> FloatArray:
        """Trilinear signed distance at MNI points ``(N, 3)``; clamped at the grid's edge."""
        f = points - self.origin
        np.clip(f, 0.0, np.asarray(self.sd.shape, dtype=np.float64) - 1.001, out=f)
        i = f.astype(np.int64)
        t = f - i
        sy = self.sd.shape[2]
        sx = self.sd.shape[1] * sy
        base = i[:, 0] * sx + i[:, 1] * sy + i[:, 2]
        v = self.sd.ravel()
        tx, ty, tz = t[:, 0], t[:, 1], t[:, 2]
        c00 = v[base] + (v[base + 1] - v[base]) * tz
        c01 = v[base + sy] + (v[base + sy + 1] - v[base + sy]) * tz
        c10 = v[base + sx] + (v[base + sx + 1] - v[base + sx]) * tz
        c11 = v[base + sx + sy] + (v[base + sx + sy + 1] - v[base + sx + sy]) * tz
        c0 = c00 + (c01 - c00) * ty
        c1 = c10 + (c11 - c10) * ty
        return np.asarray(c0 + (c1 - c0) * tx, dtype=np.float64)

    def sample(self, points: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Signed distance ``(N,)`` and its gradient ``(N, 3)`` (central differences)."""
        stencil = _STENCIL * _GRADIENT_STEP_MM
        v = self.values((points[None, :, :] + stencil[:, None, :]).reshape(-1, 3))
        v = v.reshape(len(stencil), -1)
        grad = np.stack([v[1] - v[2], v[3] - v[4], v[5] - v[6]], axis=1)
        return v[0], grad / (2.0 * _GRADIENT_STEP_MM)

    def project(self, points: FloatArray, iterations: int = 3) -> FloatArray:
        """Move points along the gradient onto the :data:`CORTICAL_DEPTH_MM` level."""
        out = np.array(points, dtype=np.float64)
        for _ in range(iterations):
            sd, grad = self.sample(out)
            out -= (sd - self.depth)[:, None] * _unit(grad)
        return out


@functools.cache
def _surface(depth: float = CORTICAL_DEPTH_MM) -> _Surface:
    """The cortical surface field (once per process, under half a second).

    The brain mask of the atlas fills the interhemispheric fissure, so a 5 mm wide fissure is cut
    between the hemispheres (above the corpus callosum, in front of it and behind it above the
    tentorium) for the medial surface to exist. The signed distance is that of a flat surface
    under the Gaussian-smoothed mask, within half a millimetre of the exact one near the surface
    and far cheaper than a Euclidean distance transform.
    """
    anatomy = load_anatomy()
    if not np.allclose(anatomy.affine[:3, :3], np.eye(3)):
        raise ValueError("the cortical surface needs the 1 mm RAS atlas grid")
    brain = anatomy.brain_mask
    index = np.argwhere(brain)
    lo = np.maximum(index.min(axis=0) - _FIELD_MARGIN_VOXELS, 0)
    hi = np.minimum(index.max(axis=0) + _FIELD_MARGIN_VOXELS + 1, brain.shape)
    mask = brain[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].copy()
    origin = np.asarray(anatomy.affine[:3, 3] + lo, dtype=np.float64)
    x, y, z = (origin[k] + np.arange(mask.shape[k], dtype=np.float64) for k in range(3))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    joined = (y > -42.0) & (y < 28.0) & (z < 18.0)  # corpus callosum, diencephalon, brainstem
    fossa = (y < -35.0) & (z < _tentorium_z(np.abs(x), y))
    mask &= ~((np.abs(x) <= _FISSURE_HALF_WIDTH_MM) & ~joined & ~fossa)
    phi = ndi.gaussian_filter(mask.astype(np.float32), _FIELD_SIGMA_MM, truncate=4.0)
    eps = np.float32(1e-6)
    scale = np.float32(-_FIELD_SIGMA_MM * np.sqrt(2.0))
    sd = (scale * special.erfinv(np.clip(2.0 * phi - 1.0, eps - 1.0, 1.0 - eps))).astype(np.float32)
    sd.setflags(write=False)
    shell = np.argwhere(np.abs(sd - depth) < 0.5).astype(np.float64) + origin
    mask.setflags(write=False)
    return _Surface(mask, sd, origin, shell, _territory_code(shell), depth)


# --- Cortical arteries: persistent random walks on the surface, branching as they go.


@dataclass(frozen=True)
class _Growth:
    """How the cortical arteries of one territory grow (per hemisphere)."""

    kind: str
    code: int
    length_mm: tuple[float, float]  # of each branch, unless it meets a border or a vessel first
    generations: int
    p_two_children: float
    budget_mm: tuple[float, float]  # walked length per hemisphere (smoothing takes ~2 %)


_GROWTH = (
    _Growth("M4", _MCA, (30.0, 80.0), 8, 0.7, (5500.0, 6500.0)),
    _Growth("ACAcx", _ACA, (30.0, 70.0), 5, 0.6, (1200.0, 1800.0)),
    _Growth("PCAcx", _PCA, (30.0, 70.0), 5, 0.6, (1200.0, 1800.0)),
)
_GROWTH_INDEX = {g.kind: i for i, g in enumerate(_GROWTH)}
_STEP_MM = 1.0
_TURN_NOISE_RAD = 0.15  # per step: persistence length of about 90 mm
_CELL_MM = 2.0  # a walker stops on entering a cell another one has crossed
_GRACE_STEPS = 3  # steps after birth before another vessel can stop a walker
_BRANCH_ANGLE_RAD = (np.deg2rad(30.0), np.deg2rad(70.0))
_SURFACE_TOLERANCE_MM = 1.2  # a walker stops where it cannot stay on the surface
_MAX_STUB_MM = 10.0  # the farthest a root may be from the surface
_ROOT_REACH_MM = 5.0  # the farthest from the surface an extra root may leave an M2 or M3
_CONTROL_EVERY = 3  # walk points between control points of the smoothed centreline
_TAPER = 0.95  # radius ratio between consecutive segments of one branch
_MIN_RADIUS_MM = 0.35
_MAX_RADIUS_MM = 0.75
_MAX_WALKERS = 6000  # capacity (a network has about 1500)
_MAX_CHILDREN = 2  # per branch
_MAX_STEPS = 40000  # capacity of the step record (a network takes about 16000)
_MAX_TURN_COS = np.cos(np.deg2rad(35.0))  # between consecutive steps
_MIN_GRADIENT = 0.15  # below it (the middle of a narrow sulcus) the surface is ill-defined
_MM_PER_WALKER = 200.0  # walkers kept growing at once: one per this much of the drawn total
_MM_PER_SPROUT_ATTEMPT = 1.5  # sprouts tried: one per this much of the drawn total
_SPROUT_GENERATION_WEIGHT = 0.7  # a branch's weight as a mother, per generation from its root
_SPROUT_ANGLE_RAD = (np.deg2rad(40.0), np.deg2rad(80.0))
_SPROUT_LOOKAHEAD_MM = (4.0, 8.0)  # where a sprout must find room


@dataclass(frozen=True)
class _Root:
    """Where a cortical artery leaves a trunk, and the way it sets off."""

    kind: str
    side: str
    parent: str
    anchor: FloatArray  # a centreline point of the parent
    heading: FloatArray  # projected onto the surface at the start
    radius_mm: float


def _pick_spaced(
    rng: np.random.Generator,
    candidates: FloatArray,
    count: int,
    spacing_mm: float,
    *,
    shuffle: bool = True,
) -> list[int]:
    """Indices of up to ``count`` candidates at least ``spacing_mm`` apart, taken in random
    order (or in the given order)."""
    chosen: list[int] = []
    order = rng.permutation(len(candidates)) if shuffle else np.arange(len(candidates))
    for i in order:
        if len(chosen) == count:
            break
        gaps = np.linalg.norm(candidates[chosen] - candidates[i], axis=1)
        if np.all(gaps >= spacing_mm):
            chosen.append(int(i))
    return chosen


def _anchor_candidates(
    seg: Segment, surface: _Surface, code: int, reach_mm: float, trim: tuple[float, float]
) -> npt.NDArray[np.int64]:
    """Centreline points of a trunk within ``reach_mm`` of its territory's surface, away from
    the trunk's ends."""
    arc = seg.arc_length()
    sign = 1.0 if seg.side == "R" else -1.0
    dist, _ = surface.nearest_shell(np.asarray(seg.points, dtype=np.float64), code, sign)
    ok = (dist <= reach_mm) & (_territory_code(seg.points) == code)
    ok &= (arc >= trim[0]) & (arc <= arc[-1] - trim[1])
    return np.flatnonzero(ok)


def _roots(
    rng: np.random.Generator, by_name: dict[str, Segment], side: str, surface: _Surface
) -> list[_Root]:
    """Origins of one hemisphere's cortical arteries on its M2/M3, A2 and P2 trunks."""
    sign = 1.0 if side == "R" else -1.0
    roots: list[_Root] = []

    # Middle cerebral artery: the four M3 ends, and a few more points along M2 and M3 (the
    # orbitofrontal, prefrontal, temporopolar and anterior temporal branches, among others).
    ends = []
    for kind in _M3_KINDS:
        seg = by_name[f"{side}_{kind}"]
        ends.append(seg.points[-1])
        radius = min(seg.radius_mm, rng.uniform(0.6, _MAX_RADIUS_MM))
        roots.append(
            _Root("M4", side, seg.name, seg.points[-1], seg.points[-1] - seg.points[-4], radius)
        )
    # Candidates of the branches in turn (each in random order), so that the extra roots spread
    # over the branches rather than crowd on the one nearest the surface.
    queues = []
    for kind in _MCA_DISTAL_KINDS:
        seg = by_name[f"{side}_{kind}"]
        index = _anchor_candidates(seg, surface, _MCA, _ROOT_REACH_MM, (5.0, 8.0))
        gaps = np.linalg.norm(seg.points[index][:, None, :] - np.asarray(ends)[None], axis=2)
        index = index[gaps.min(axis=1, initial=np.inf) >= 10.0]
        queues.append([(seg, int(i)) for i in rng.permutation(index)])
    pool = [item for turn in itertools.zip_longest(*queues) for item in turn if item is not None]
    points = np.array([seg.points[i] for seg, i in pool]).reshape(-1, 3)
    for i in _pick_spaced(rng, points, int(rng.integers(5, 8)), 10.0, shuffle=False):
        seg, j = pool[i]
        tangent = seg.points[min(j + 2, len(seg.points) - 1)] - seg.points[max(j - 2, 0)]
        # Perpendicular to the trunk, on either side: found once the surface normal is known.
        heading = np.cross(tangent, [sign, 0.0, 0.0]) * rng.choice([-1.0, 1.0])
        radius = min(seg.radius_mm, rng.uniform(0.5, 0.7))
        roots.append(_Root("M4", side, seg.name, seg.points[j], heading, radius))

    # Anterior cerebral artery: branches of the A2 fan out from the corpus callosum over the
    # medial surface and the vertex (frontopolar, callosomarginal, paracentral, precuneal).
    a2 = by_name[f"{side}_A2"]
    callosum = np.array([0.0, -5.0, 10.0])
    picks = _anchor_candidates(a2, surface, _ACA, 3.0, (10.0, 4.0))
    chosen = [
        int(picks[i]) for i in _pick_spaced(rng, a2.points[picks], int(rng.integers(4, 7)), 12.0)
    ]
    for j in [*chosen, len(a2.points) - 1]:
        heading = (a2.points[j] - callosum) * [0.0, 1.0, 1.0]
        radius = min(a2.radius_mm, rng.uniform(0.5, 0.7))
        roots.append(_Root("ACAcx", side, a2.name, a2.points[j], heading, radius))

    # Posterior cerebral artery: temporal branches from the P2 in the ambient cistern over the
    # inferior temporal surface; calcarine and parieto-occipital branches from its end.
    p2 = by_name[f"{side}_P2"]
    picks = _anchor_candidates(p2, surface, _PCA, 4.0, (12.0, 15.0))
    picks = picks[p2.points[picks, 1] < -22.0]
    for i in _pick_spaced(rng, p2.points[picks], int(rng.integers(2, 4)), 10.0):
        radius = min(p2.radius_mm, rng.uniform(0.5, 0.7))
        heading = np.array([0.7 * sign, -0.7, -0.3])
        roots.append(_Root("PCAcx", side, p2.name, p2.points[picks[i]], heading, radius))
    arc = p2.arc_length()
    before_end = int(np.searchsorted(arc, arc[-1] - 6.0))
    for j, heading in ((len(arc) - 1, [0.0, -1.0, 0.0]), (before_end, [0.0, -0.6, 0.8])):
        radius = min(p2.radius_mm, rng.uniform(0.55, 0.7))
        roots.append(_Root("PCAcx", side, p2.name, p2.points[j], np.array(heading), radius))
    return roots


def _surface_start(surface: _Surface, root: _Root) -> FloatArray | None:
    """The nearest point of the root's territory and side on the surface, if one is near."""
    sign = 1.0 if root.side == "R" else -1.0
    code = _KIND_TERRITORY[root.kind]
    dist, where = surface.nearest_shell(root.anchor[None, :], code, sign)
    if not dist[0] <= _MAX_STUB_MM:
        return None
    return np.asarray(surface.project(where)[0], dtype=np.float64)


def _rotate(vectors: FloatArray, axes: FloatArray, angles: FloatArray) -> FloatArray:
    """Rotate vectors perpendicular to unit ``axes`` by ``angles`` about them."""
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    return np.asarray(c * vectors + s * np.cross(axes, vectors), dtype=np.float64)


@dataclass
class _Walk:
    """Raw 1 mm paths of all walkers, and how each one hangs off its parent."""

    paths: list[FloatArray]
    parent: npt.NDArray[np.int64]  # walker index, -1 for a root
    root: list[_Root | None]
    radius_ratio: FloatArray  # of a child to its parent's segment where it branches


class _Walkers:
    """State of all walkers (grown in place up to fixed capacities)."""

    def __init__(self, capacity: int, record_capacity: int) -> None:
        self.count = 0
        self.pos = np.zeros((capacity, 3))
        self.head = np.zeros((capacity, 3))
        self.last = np.zeros((capacity, 3))  # direction of the last step taken
        self.normal = np.zeros((capacity, 3))
        self.steps = np.zeros(capacity, dtype=np.int64)
        self.limit = np.zeros(capacity, dtype=np.int64)
        self.alive = np.zeros(capacity, dtype=bool)
        self.code = np.zeros(capacity, dtype=np.int8)
        self.sign = np.zeros(capacity)
        self.parent = np.full(capacity, -1, dtype=np.int64)
        self.generation = np.zeros(capacity, dtype=np.int64)
        self.children = np.zeros(capacity, dtype=np.int64)
        self.growth = np.zeros(capacity, dtype=np.int64)
        self.group = np.zeros(capacity, dtype=np.int64)
        self.spawn_at = np.full((capacity, 2), -1, dtype=np.int64)
        self.spawn_turn = np.zeros((capacity, 2))
        self.radius_ratio = np.ones(capacity)
        self.root: list[_Root | None] = []
        # Every step taken (where a later branch may sprout), and every raw path point.
        self.n_steps = 0
        self.step_walker = np.zeros(record_capacity, dtype=np.int64)
        self.step_pos = np.zeros((record_capacity, 3))
        self.step_head = np.zeros((record_capacity, 3))
        self.step_normal = np.zeros((record_capacity, 3))
        self.path_walker: list[npt.NDArray[np.int64]] = []
        self.path_point: list[FloatArray] = []

    @property
    def capacity(self) -> int:
        return len(self.pos)

    def add_children(
        self, mother: npt.NDArray[np.int64], pos: FloatArray, head: FloatArray, normal: FloatArray
    ) -> npt.NDArray[np.int64]:
        """New walkers branching off ``mother`` at ``pos``; returns their indices."""
        new = np.arange(self.count, self.count + len(mother))
        self.count += len(mother)
        self.pos[new], self.head[new], self.normal[new] = pos, head, normal
        self.last[new] = head
        self.alive[new] = True
        self.steps[new] = 0
        self.code[new], self.sign[new] = self.code[mother], self.sign[mother]
        self.parent[new], self.generation[new] = mother, self.generation[mother] + 1
        np.add.at(self.children, mother, 1)
        self.growth[new], self.group[new] = self.growth[mother], self.group[mother]
        self.root.extend([None] * len(mother))
        self.path_walker.append(new)
        self.path_point.append(np.array(pos, dtype=np.float64))
        return new

    def record_steps(self, walker: npt.NDArray[np.int64]) -> None:
        k = min(len(walker), len(self.step_walker) - self.n_steps)
        sl = slice(self.n_steps, self.n_steps + k)
        w = walker[:k]
        self.step_walker[sl] = w
        self.step_pos[sl], self.step_head[sl], self.step_normal[sl] = (
            self.pos[w],
            self.head[w],
            self.normal[w],
        )
        self.n_steps += k
        self.path_walker.append(walker)
        self.path_point.append(self.pos[walker].copy())

    def paths(self) -> list[FloatArray]:
        walker = np.concatenate(self.path_walker)
        points = np.concatenate(self.path_point)
        order = np.argsort(walker, kind="stable")
        split = np.cumsum(np.bincount(walker, minlength=self.count))[:-1]
        return np.split(points[order], split)


def _walk(rng: np.random.Generator, surface: _Surface, roots: Sequence[_Root]) -> _Walk:
    """Grow all cortical arteries at once, one 1 mm step of every live walker per iteration.

    A walker keeps its heading up to a little noise, stays on the surface (its step lies in the
    tangent plane and it is then projected back to :data:`CORTICAL_DEPTH_MM`), and stops at its
    length, at its territory's border, where the surface is lost, or on meeting another vessel.
    Each branch schedules up to two children at 30-70 degrees on alternate sides; while a
    territory's network is short of its drawn total length, new branches also sprout from
    random points of the existing ones (more often from the larger, earlier branches) wherever
    there is room ahead, until the total is reached or the territory is full.
    """
    state = _Walkers(_MAX_WALKERS, _MAX_STEPS)
    length_lo = np.array([g.length_mm[0] for g in _GROWTH])
    length_hi = np.array([g.length_mm[1] for g in _GROWTH])
    max_generation = np.array([g.generations for g in _GROWTH])
    p_two = np.array([g.p_two_children for g in _GROWTH])
    n_groups = len(SIDES) * len(_GROWTH)
    budget = np.array([rng.uniform(*g.budget_mm) for _side in SIDES for g in _GROWTH])
    grown = np.zeros(n_groups)
    crowd = np.maximum(budget / _MM_PER_WALKER, 4.0).astype(np.int64)
    sprouts_left = (budget / _MM_PER_SPROUT_ATTEMPT).astype(np.int64)

    def schedule(new: npt.NDArray[np.int64]) -> None:
        k = len(new)
        g = state.growth[new]
        limit = np.rint(rng.uniform(length_lo[g], length_hi[g]) / _STEP_MM).astype(np.int64)
        state.limit[new] = limit
        children = np.where(state.generation[new] + 1 < max_generation[g], 1, 0)
        children += (children > 0) & (rng.random(k) < p_two[g])
        at = np.sort(rng.uniform(0.15, 0.75, (k, 2)), axis=1) * limit[:, None]
        at[:, 1] = np.maximum(at[:, 1], at[:, 0] + 5.0)
        at = np.rint(at).astype(np.int64)
        at[children < 1, 0] = -1
        at[children < 2, 1] = -1
        state.spawn_at[new] = at
        first = rng.choice([-1.0, 1.0], k) * rng.uniform(*_BRANCH_ANGLE_RAD, k)
        state.spawn_turn[new, 0] = first
        state.spawn_turn[new, 1] = -np.sign(first) * rng.uniform(*_BRANCH_ANGLE_RAD, k)
        state.radius_ratio[new] = rng.uniform(0.9, 0.97, k)

    for root in roots:
        start = _surface_start(surface, root)
        if start is None:
            logger.debug("no surface near the %s root on %s", root.kind, root.parent)
            continue
        _, grad = surface.sample(start[None, :])
        n = _unit(grad)[0]
        heading = root.heading - np.dot(root.heading, n) * n
        if np.linalg.norm(heading) < 1e-6:
            heading = np.cross(n, [0.0, 0.0, 1.0])
        i = state.count
        state.count += 1
        g = _GROWTH_INDEX[root.kind]
        state.pos[i], state.head[i], state.normal[i] = start, _unit(heading), n
        state.last[i] = state.head[i]
        state.alive[i] = True
        state.code[i] = _GROWTH[g].code
        state.sign[i] = 1.0 if root.side == "R" else -1.0
        state.growth[i] = g
        state.group[i] = SIDES.index(root.side) * len(_GROWTH) + g
        state.root.append(root)
        first = [root.anchor]
        if np.linalg.norm(start - root.anchor) > 0.5:
            first.append(start)
        state.path_walker.append(np.full(len(first), i, dtype=np.int64))
        state.path_point.append(np.array(first))
    schedule(np.arange(state.count))

    occ_shape = np.ceil(np.asarray(surface.sd.shape) / _CELL_MM).astype(np.int64)
    occupied = np.full(tuple(occ_shape), -1, dtype=np.int64)

    def cells(points: FloatArray) -> tuple[npt.NDArray[np.int64], ...]:
        c = np.clip(((points - surface.origin) / _CELL_MM).astype(np.int64), 0, occ_shape - 1)
        return c[:, 0], c[:, 1], c[:, 2]

    def sprout(act: npt.NDArray[np.int64]) -> None:
        """Branch new walkers off existing steps of groups short of walkers and of length."""
        live = np.bincount(state.group[act], minlength=n_groups)
        need = np.where(grown < budget, np.minimum(crowd - live, sprouts_left), 0)
        room = state.capacity - state.count
        for g in np.flatnonzero(need > 0):
            k = int(min(need[g], room))
            if grown[g] <= 0.0 or k <= 0:
                continue
            # Steps of this group, by rejection: larger (earlier) branches are likelier mothers.
            draws = int(min(40 * k * grown.sum() / grown[g], _MAX_STEPS))
            step = rng.integers(0, state.n_steps, draws)
            mother = state.step_walker[step]
            ok = (state.group[mother] == g) & (state.children[mother] < _MAX_CHILDREN)
            ok &= rng.random(draws) < _SPROUT_GENERATION_WEIGHT ** state.generation[mother]
            pick = step[ok][: 4 * k]
            if pick.size == 0:
                continue
            turn = rng.choice([-1.0, 1.0], len(pick)) * rng.uniform(*_SPROUT_ANGLE_RAD, len(pick))
            head = _unit(_rotate(state.step_head[pick], state.step_normal[pick], turn))
            start = state.step_pos[pick]
            free = np.ones(len(pick), dtype=bool)
            for reach in _SPROUT_LOOKAHEAD_MM:
                ahead = start + reach * head
                free &= occupied[cells(ahead)] < 0
                free &= _territory_code(ahead) == _GROWTH[g % len(_GROWTH)].code
            sprouts_left[g] -= len(pick)
            # One sprout per mother at a time keeps every branch to two children at most.
            _, once = np.unique(state.step_walker[pick], return_index=True)
            free[np.setdiff1d(np.arange(len(pick)), once)] = False
            chosen = np.flatnonzero(free)[:k]
            if chosen.size == 0:
                continue
            pick = pick[chosen]
            mother = state.step_walker[pick]
            new = state.add_children(
                mother, state.step_pos[pick], head[chosen], state.step_normal[pick]
            )
            room -= len(new)
            schedule(new)

    while True:
        act = np.flatnonzero(state.alive[: state.count])
        sprout(act)
        act = np.flatnonzero(state.alive[: state.count])
        if act.size == 0:
            break
        k = act.size
        d = state.head[act] + _TURN_NOISE_RAD * rng.standard_normal((k, 3))
        n = state.normal[act]
        d = _unit(d - np.sum(d * n, axis=1)[:, None] * n)
        p = state.pos[act] + _STEP_MM * d
        sd, grad = surface.sample(p)
        gnorm = np.linalg.norm(grad, axis=1)
        n = grad / np.maximum(gnorm, 1e-9)[:, None]
        p -= (sd - surface.depth)[:, None] * n
        state.steps[act] += 1

        ok = (gnorm > _MIN_GRADIENT) & (np.abs(sd - surface.depth) < _SURFACE_TOLERANCE_MM)
        ok &= _territory_code(p) == state.code[act]
        ok &= p[:, 0] * state.sign[act] > 1.0
        # A sharp turn means the surface folds (a sulcus) under the walker: stop before the kink.
        moved = _unit(p - state.pos[act])
        ok &= np.sum(moved * state.last[act], axis=1) > _MAX_TURN_COS
        where = cells(p)
        owner = occupied[where]
        owner_parent = np.where(owner >= 0, state.parent[np.maximum(owner, 0)], -2)
        family = (owner == act) | (owner == state.parent[act]) | (owner_parent == act)
        ok &= (owner < 0) | family | (state.steps[act] <= _GRACE_STEPS)
        ok &= grown[state.group[act]] < budget[state.group[act]]

        good = act[ok]
        state.pos[good], state.head[good], state.normal[good] = p[ok], d[ok], n[ok]
        state.last[good] = moved[ok]
        state.record_steps(good)
        occupied[tuple(w[ok] for w in where)] = good
        grown += np.bincount(state.group[good], minlength=n_groups) * _STEP_MM
        state.alive[act[~ok]] = False
        state.alive[good[state.steps[good] >= state.limit[good]]] = False

        for j in range(2):
            mother = good[state.spawn_at[good, j] == state.steps[good]]
            mother = mother[state.children[mother] < _MAX_CHILDREN]
            mother = mother[grown[state.group[mother]] < budget[state.group[mother]]]
            mother = mother[: max(0, state.capacity - state.count)]
            if mother.size == 0:
                continue
            turn = state.spawn_turn[mother, j]
            head = _unit(_rotate(state.head[mother], state.normal[mother], turn))
            schedule(state.add_children(mother, state.pos[mother], head, state.normal[mother]))

    logger.debug(
        "cortical walk: %d walkers, %s mm of %s mm drawn, %s sprout attempts left",
        state.count,
        np.round(grown).tolist(),
        np.round(budget).tolist(),
        sprouts_left.tolist(),
    )
    count = state.count
    return _Walk(
        state.paths(), state.parent[:count].copy(), state.root, state.radius_ratio[:count].copy()
    )


@dataclass
class _Built:
    """A grown branch as segments: its centreline, which segment each point belongs to."""

    points: FloatArray
    names: list[str]
    radii: list[float]
    piece: npt.NDArray[np.int64]
    kind: str
    side: str


def _branch_segments(walk: _Walk, rng: np.random.Generator) -> list[Segment]:
    """Smooth each walker's path and cut it into 1-3 segments of decreasing radius.

    A path's control points are its start, exactly on its parent's smoothed centreline (so all
    branches of one depth below the roots are smoothed together), and every third walk point;
    walkers that stopped on their first step are left out.
    """
    count = len(walk.paths)
    depth = np.zeros(count, dtype=np.int64)
    keep = np.array([len(raw) >= 2 for raw in walk.paths], dtype=bool)
    for w in range(count):
        mother = int(walk.parent[w])
        if mother >= 0:
            depth[w] = depth[mother] + 1
            keep[w] &= keep[mother]
    built: dict[int, _Built] = {}
    counters: dict[tuple[str, str], int] = {}
    out: list[Segment] = []
    for level in range(int(depth.max(initial=0)) + 1):
        todo = np.flatnonzero(keep & (depth == level))
        if todo.size == 0:
            continue
        controls: list[FloatArray] = []
        links: list[tuple[str, str, str, float]] = []
        for w in todo:
            raw = walk.paths[w]
            root = walk.root[w]
            if root is not None:
                first = np.asarray(root.anchor, dtype=np.float64)
                links.append((root.parent, root.kind, root.side, root.radius_mm))
            else:
                up = built[int(walk.parent[w])]
                nearest = int(np.argmin(np.linalg.norm(up.points - raw[0], axis=1)))
                first = up.points[nearest]
                ratio = float(walk.radius_ratio[w])
                q = int(up.piece[nearest])
                links.append((up.names[q], up.kind, up.side, up.radii[q] * ratio))
            skip = _CONTROL_EVERY
            if root is not None and float(np.linalg.norm(raw[1] - raw[0])) > 2.0:
                skip += 2  # round off the turn from a deep trunk's stub onto the surface
            tail = raw[skip::_CONTROL_EVERY]
            if len(tail) == 0:  # a stub of a branch: straight
                tail = raw[-1:]
            gap = float(np.linalg.norm(raw[-1] - tail[-1]))
            if gap > 0.0:
                tail = np.vstack([tail[:-1] if gap < 0.5 * _CONTROL_EVERY else tail, raw[-1:]])
            controls.append(np.vstack([first[None, :], tail]))
        for w, control, link, centre in zip(
            todo, controls, links, _catmull_rom_many(controls, SAMPLE_SPACING_MM), strict=True
        ):
            parent_name, kind, side, radius = link
            centre[0] = control[0]  # exactly on the parent
            steps = np.linalg.norm(np.diff(centre, axis=0), axis=1)
            arc = np.concatenate([[0.0], np.cumsum(steps)])
            pieces = 1 if arc[-1] < 10.0 else 2 if arc[-1] < 30.0 else int(rng.integers(2, 4))
            cuts = [int(np.searchsorted(arc, arc[-1] * q / pieces)) for q in range(pieces)]
            cuts.append(len(centre) - 1)
            names: list[str] = []
            radii: list[float] = []
            piece = np.zeros(len(centre), dtype=np.int64)
            r0 = float(np.clip(radius, _MIN_RADIUS_MM, _MAX_RADIUS_MM))
            for q in range(pieces):
                number = counters.get((side, kind), 0)
                counters[(side, kind)] = number + 1
                name = f"{side}_{kind}_{number:03d}"
                r = max(_MIN_RADIUS_MM, r0 * _TAPER**q)
                pts = centre[cuts[q] : cuts[q + 1] + 1].copy()
                out.append(Segment(name, side, _frozen(pts), r, parent_name, kind, True))
                piece[cuts[q] + 1 : cuts[q + 1] + 1] = q
                names.append(name)
                radii.append(r)
                parent_name = name
            built[int(w)] = _Built(centre, names, radii, piece, kind, side)
    return out


def cortical_network(
    rng: np.random.Generator,
    trunks: Iterable[Segment] | None = None,
    *,
    sides: Sequence[str] = SIDES,
) -> tuple[Segment, ...]:
    """Grow the cortical (M4 and pial) arteries of each hemisphere on a tree's trunks.

    Branches leave the M3 ends and points of M2/M3 (kind ``"M4"``), of the A2 (``"ACAcx"``) and
    of the P2 (``"PCAcx"``), sub-branch, and stop at their territory's border
    (:func:`territory`), at their length (30-80 mm) or on meeting another branch. They grow in
    two layers: on the cortical surface (:data:`CORTICAL_DEPTH_MM`) and in the depth of the
    sulci (:data:`SULCAL_DEPTH_MM`, names ``L_M4s_012``), which the averaged atlas has smoothed
    away. A tapering branch is a chain of segments of decreasing radius (0.35-0.75 mm: the
    arteries a CTA shows) linked by ``parent``; a child starts exactly on a point of its parent.
    About 11000-13000 mm of M4 and 3000 mm each of ACA and PCA arteries per hemisphere, both
    layers together; the hemispheres differ.

    Parameters
    ----------
    rng
        Source of all randomness: the same state gives the same network.
    trunks
        The trunk segments to grow from (by default the atlas trunks).
    sides
        Hemispheres to grow.
    """
    by_name = {s.name: s for s in (_atlas_trunks() if trunks is None else trunks)}
    out: list[Segment] = []
    for depth, tag in ((CORTICAL_DEPTH_MM, ""), (SULCAL_DEPTH_MM, "s")):
        surface = _surface(depth)
        roots = [root for side in sides for root in _roots(rng, by_name, side, surface)]
        walk = _walk(rng, surface, roots)
        layer = _branch_segments(walk, rng)
        if tag:
            names = {seg.name for seg in layer}

            def renamed(name: str | None, names: set[str] = names, tag: str = tag) -> str | None:
                if name is None or name not in names:
                    return name
                side, kind, number = name.split("_")
                return f"{side}_{kind}{tag}_{number}"

            layer = [
                replace(seg, name=renamed(seg.name) or seg.name, parent=renamed(seg.parent))
                for seg in layer
            ]
        out.extend(layer)
    return tuple(out)


# --- The atlas tree and per-subject trees.


def _mirror_segment(seg: Segment) -> Segment:
    """The left-hemisphere copy of a right-hemisphere segment."""

    def left(name: str | None) -> str | None:
        return None if name is None else "L" + name[1:] if name.startswith("R_") else name

    return Segment(
        str(left(seg.name)),
        "L",
        _frozen(_mirror(seg.points)),
        seg.radius_mm,
        left(seg.parent),
        seg.kind,
        seg.intracranial,
    )


@functools.cache
def _tree() -> tuple[Segment, ...]:
    trunks = _atlas_trunks()
    rng = np.random.default_rng(ATLAS_CORTICAL_SEED)
    right = cortical_network(rng, trunks, sides=("R",))
    return trunks + right + tuple(_mirror_segment(s) for s in right)


def vessel_tree() -> list[Segment]:
    """All arterial segments of the atlas tree, cortical arteries included (cached; read-only
    points), proximal to distal within each segment."""
    return list(_tree())


def segment_by_name() -> dict[str, Segment]:
    """The atlas tree keyed by segment name."""
    return {s.name: s for s in _tree()}


_JITTER_FEATURES = 48
_MIDLINE_DAMPING_MM = 10.0
_M1_LENGTH_FACTOR = (0.85, 1.2)
_M1_DISTAL_FALLOFF_MM = 25.0  # how far past the bifurcation an M1 length change is felt
_CALIBRE_SIGMA = 0.1
_CALIBRE_ASYMMETRY_SIGMA = 0.04


def _smooth_displacement(
    rng: np.random.Generator, amplitude_mm: float, length_mm: float
) -> Callable[[FloatArray], FloatArray]:
    """A smooth random displacement field (random Fourier features of a Gaussian kernel).

    Each component has standard deviation ``amplitude_mm / sqrt(3)`` (so the displacement's RMS
    length is ``amplitude_mm``) and correlation ``exp(-r**2 / (2 * length_mm**2))``; the
    sideways (x) component is damped within 10 mm of the midline.
    """
    n = _JITTER_FEATURES
    omega = rng.standard_normal((3, n, 3)) / length_mm
    phase = rng.uniform(0.0, 2.0 * np.pi, (3, n))
    weight = rng.standard_normal((3, n)) * (amplitude_mm / np.sqrt(3.0) * np.sqrt(2.0 / n))

    def displace(points: FloatArray) -> FloatArray:
        # Elementwise products and sums (no BLAS), so equal points move by equal amounts.
        angle = (points[:, None, None, :] * omega[None]).sum(axis=-1) + phase[None]
        out = (np.cos(angle) * weight[None]).sum(axis=-1)
        # Midline vessels (basilar artery, the A2 pair in the interhemispheric fissure) keep to
        # the midline: little sideways movement near x = 0.
        out[:, 0] *= np.clip(np.abs(points[:, 0]) / _MIDLINE_DAMPING_MM, 0.2, 1.0)
        return np.asarray(out, dtype=np.float64)

    return displace


def _set_m1_length(controls: dict[str, FloatArray], side: str, target_mm: float) -> None:
    """Move the MCA bifurcation along the M1 so that the M1 is ``target_mm`` long.

    M1 control points move by their share of the M1 (arc fraction); the M2 and M3 control points
    by an amount that falls off with distance from the bifurcation, so the branches stay joined
    and the M3 ends stay near the cortex.
    """
    m1 = controls[f"{side}_M1"]
    chord = m1[-1] - m1[0]
    direction = chord / np.linalg.norm(chord)
    polygon = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(m1, axis=0), axis=1))])
    share = polygon / polygon[-1]
    for _ in range(2):  # the second pass corrects the first for the M1's curvature
        length = float(
            np.linalg.norm(
                np.diff(_centripetal_catmull_rom(m1, SAMPLE_SPACING_MM), axis=0), axis=1
            ).sum()
        )
        delta = target_mm - length
        bifurcation = m1[-1].copy()
        m1 += delta * share[:, None] * direction
        for kind in _MCA_DISTAL_KINDS:
            c = controls[f"{side}_{kind}"]
            r = np.linalg.norm(c - bifurcation, axis=1) / _M1_DISTAL_FALLOFF_MM
            c += delta * np.exp(-0.5 * r**2)[:, None] * direction


def _calibre_family(kind: str) -> str:
    for family in ("ICA", "VA"):
        if kind.startswith(family):
            return family
    return kind


def _calibre_scales(rng: np.random.Generator) -> Callable[[str, str | None], float]:
    """Radius factors: lognormal per vessel (sigma 0.1) plus a small left-right asymmetry."""
    families = sorted({_calibre_family(s.kind) for s in _SPECS} | {"ACoA"})
    common = dict(zip(families, rng.normal(0.0, _CALIBRE_SIGMA, len(families)), strict=True))
    asym = rng.normal(0.0, _CALIBRE_ASYMMETRY_SIGMA, (len(families), len(SIDES)))
    by_side = {
        (f, side): float(asym[i, j]) for i, f in enumerate(families) for j, side in enumerate(SIDES)
    }

    def scale(kind: str, side: str | None) -> float:
        family = _calibre_family(kind)
        return float(np.exp(common[family] + (by_side[(family, side)] if side else 0.0)))

    return scale


def subject_tree(rng: np.random.Generator, *, cortical: bool = True) -> tuple[Segment, ...]:
    """One patient's arterial tree in atlas (MNI) space.

    The atlas trunks with (a) a smooth random displacement of all control points (RMS 1.5-2.5
    mm, correlation length 15-20 mm), which moves branch points but keeps children joined to
    their parents; (b) each M1 0.85-1.2 times its atlas length; (c) calibres scaled per vessel
    (lognormal, sigma 0.1, with a small left-right asymmetry); the M3 ends are put back on the
    cortical surface; then (d) a cortical network of each hemisphere, drawn after the trunks
    (``cortical=False`` leaves it out: the trunks are the same either way). The same generator
    state gives the same tree, bit for bit.
    """
    controls = _trunk_controls()
    displace = _smooth_displacement(rng, rng.uniform(1.5, 2.5), rng.uniform(15.0, 20.0))
    controls = {name: c + displace(c) for name, c in controls.items()}
    atlas = {s.name: s for s in _atlas_trunks()}
    for side in SIDES:
        factor = rng.uniform(*_M1_LENGTH_FACTOR)
        _set_m1_length(controls, side, factor * atlas[f"{side}_M1"].length_mm)
    surface = _surface()
    for side in SIDES:
        for kind in _M3_KINDS:
            c = controls[f"{side}_{kind}"]
            _, nearest = surface.nearest_shell(c[-1:], _MCA, 1.0 if side == "R" else -1.0)
            c[-1] = surface.project(nearest)[0]
    trunks = _build_trunks(controls, _calibre_scales(rng))
    return trunks + cortical_network(rng, trunks) if cortical else trunks


def tree_landmarks(segments: Iterable[Segment]) -> dict[str, FloatArray]:
    """Landmarks of a tree in MNI mm: origins of both M1 segments and the basilar tip."""
    by_name = {s.name: s for s in segments}
    return {
        "left_m1_origin": np.array(by_name["L_M1"].points[0], dtype=np.float64),
        "right_m1_origin": np.array(by_name["R_M1"].points[0], dtype=np.float64),
        "basilar_tip": np.array(by_name["BA"].points[-1], dtype=np.float64),
    }


def _children(segments: Iterable[Segment]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for s in segments:
        if s.parent is not None:
            children.setdefault(s.parent, []).append(s.name)
    return children


def _below(children: dict[str, list[str]], name: str) -> list[str]:
    out: list[str] = []
    stack = list(children.get(name, []))
    while stack:
        current = stack.pop(0)
        out.append(current)
        stack.extend(children.get(current, []))
    return out


def descendants(name: str, segments: Iterable[Segment] | None = None) -> list[str]:
    """Names of all segments downstream of ``name`` through parent links (excluding ``name``)."""
    return _below(_children(_tree() if segments is None else segments), name)


# The occluded path: the site segment and the segments that continue it from its end, so that a
# long clot in M1 runs on into the superior trunk, one in the superior trunk into its parietal
# branch.
_SITE_PATH = {"M1": ("M1", "M2_sup", "M3_parietal"), "M2": ("M2_sup", "M3_parietal")}
_COLLATERAL_FRACTION = (0.05, 0.3, 0.6, 0.9)


@dataclass(frozen=True)
class Occlusion:
    """A thrombus occluding the M1 segment or the superior M2 trunk of one middle cerebral artery.

    Parameters
    ----------
    side
        ``"L"`` or ``"R"`` (MNI x < 0 is the left hemisphere).
    site
        ``"M1"`` or ``"M2"`` (the superior M2 trunk).
    length_mm
        Clot length along the vessel; a clot longer than the rest of the site segment continues
        into the next segment of the path (M1 -> superior M2 -> its parietal M3 branch).
    start_fraction
        Where the clot starts, as a fraction 0..1 of the site segment's length from its origin.
    clot_hu
        Attenuation of the thrombus (50..80 HU: the hyperdense vessel sign).
    collateral_grade
        0..3; on CTA the segments distal to the clot fill retrogradely with 5, 30, 60 or 90 % of
        the arterial contrast.
    tree
        The patient's tree (:func:`subject_tree`) the clot lies on; None for the atlas tree.
    """

    side: str
    site: str
    length_mm: float = 10.0
    start_fraction: float = 0.3
    clot_hu: float = 65.0
    collateral_grade: int = 2
    tree: tuple[Segment, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"side must be 'L' or 'R', got {self.side!r}")
        if self.site not in SITES:
            raise ValueError(f"site must be 'M1' or 'M2', got {self.site!r}")
        if not 2.0 <= self.length_mm <= 60.0:
            raise ValueError(f"length_mm must be within 2..60, got {self.length_mm}")
        if not 0.0 <= self.start_fraction <= 1.0:
            raise ValueError(f"start_fraction must be within 0..1, got {self.start_fraction}")
        if not 40.0 <= self.clot_hu <= 100.0:
            raise ValueError(f"clot_hu must be within 40..100, got {self.clot_hu}")
        if self.collateral_grade not in (0, 1, 2, 3):
            raise ValueError(f"collateral_grade must be 0..3, got {self.collateral_grade}")

    @functools.cached_property
    def _by_name(self) -> dict[str, Segment]:
        return {s.name: s for s in self.tree or _tree()}

    @property
    def path_segments(self) -> tuple[str, ...]:
        """Names of the segments along which the clot lies, from the site segment on."""
        return tuple(f"{self.side}_{kind}" for kind in _SITE_PATH[self.site])

    @property
    def site_segment(self) -> str:
        """Name of the occluded segment, e.g. ``"R_M1"``."""
        return self.path_segments[0]

    def path_offsets_mm(self) -> dict[str, float]:
        """Arc length along the occluded path at which each path segment starts."""
        by_name = self._by_name
        offsets: dict[str, float] = {}
        total = 0.0
        for name in self.path_segments:
            offsets[name] = total
            total += by_name[name].length_mm
        return offsets

    @property
    def clot_span_mm(self) -> tuple[float, float]:
        """Start and end of the clot as arc length along the occluded path, in mm."""
        by_name = self._by_name
        total = sum(by_name[n].length_mm for n in self.path_segments)
        start = self.start_fraction * by_name[self.site_segment].length_mm
        start = min(start, total - self.length_mm)
        return start, start + self.length_mm

    def _path(self) -> tuple[FloatArray, FloatArray]:
        by_name = self._by_name
        pts = [by_name[self.path_segments[0]].points]
        pts += [by_name[n].points[1:] for n in self.path_segments[1:]]
        path = np.vstack(pts)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
        return path, arc

    def _at(self, s: Sequence[float] | FloatArray) -> FloatArray:
        path, arc = self._path()
        s_arr = np.asarray(s, dtype=np.float64)
        out = np.stack([np.interp(s_arr, arc, path[:, k]) for k in range(3)], axis=-1)
        return np.asarray(out, dtype=np.float64)

    @property
    def clot_path(self) -> FloatArray:
        """Clot centreline ``(K, 3)`` in MNI mm, proximal end first, sampled every ~0.5 mm."""
        s0, s1 = self.clot_span_mm
        n = max(2, int(np.ceil((s1 - s0) / SAMPLE_SPACING_MM)) + 1)
        return self._at(np.linspace(s0, s1, n))

    @property
    def clot_endpoints_mni(self) -> FloatArray:
        """Proximal and distal clot ends ``(2, 3)`` in MNI mm."""
        return self._at(self.clot_span_mm)

    @property
    def clot_center_mni(self) -> FloatArray:
        """Point ``(3,)`` on the centreline halfway along the clot, in MNI mm."""
        s0, s1 = self.clot_span_mm
        return np.asarray(self._at([(s0 + s1) / 2.0])[0], dtype=np.float64)

    @property
    def distal_segments(self) -> frozenset[str]:
        """Segments with any part downstream of the clot.

        These are the path segments reaching past the clot's distal end and every branch that
        leaves the path at or beyond the clot's proximal end (e.g. the inferior M2 trunk when an
        M1 clot covers the bifurcation), with all of their descendants.
        """
        offsets = self.path_offsets_mm()
        s0, s1 = self.clot_span_mm
        by_name = self._by_name
        children = _children(by_name.values())
        path = set(self.path_segments)
        out: set[str] = set()
        for name in self.path_segments:
            seg = by_name[name]
            if offsets[name] + seg.length_mm > s1 + 1e-6:
                out.add(name)
            arc = seg.arc_length()
            for child in (by_name[c] for c in children.get(name, []) if c not in path):
                nearest = int(np.argmin(np.linalg.norm(seg.points - child.points[0], axis=1)))
                if offsets[name] + arc[nearest] >= s0:
                    out.add(child.name)
                    out.update(_below(children, child.name))
        return frozenset(out)

    @property
    def collateral_fraction(self) -> float:
        """Fraction of the arterial contrast that reaches the distal segments on CTA."""
        return _COLLATERAL_FRACTION[self.collateral_grade]
