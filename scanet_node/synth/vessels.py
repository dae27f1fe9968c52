"""Arterial tree of the synthetic head in MNI space, and a large-vessel occlusion on it.

The tree is a set of named segments (smooth centrelines with a radius) running from the neck
through the skull base to the circle of Willis and the proximal cerebral arteries. Control points
were placed by overlaying the tree on the MNI ICBM152 2009a template that ``anatomy.py`` uses:
the supraclinoid carotids, basilar artery and circle of Willis lie in the basal cisterns, the
middle cerebral arteries run through the Sylvian fissure over the insula, the anterior cerebral
arteries in the interhemispheric fissure around the corpus callosum. MNI x > 0 is the subject's
right: right-sided segments are built from the control points below and the left side mirrors
them, so the tree is exactly symmetric.

An :class:`Occlusion` is a clot in the M1 segment or the superior M2 trunk of one side; it knows
where the clot lies and which segments are downstream of it, which ``phantom.py`` uses to draw
the hyperdense vessel on non-contrast CT and the filling defect and collateral filling on CTA.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

SIDES = ("L", "R")
SITES = ("M1", "M2")
SAMPLE_SPACING_MM = 0.5  # centreline sampling after smoothing

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Segment:
    """One arterial segment.

    Attributes
    ----------
    name
        Unique name, e.g. ``"R_M1"`` or ``"BA"``.
    side
        ``"L"``, ``"R"`` or None for midline vessels.
    points
        Centreline ``(K, 3)`` in MNI mm, sampled every ~0.5 mm, from proximal to distal.
    radius_mm
        Lumen radius.
    parent
        Name of the segment it branches from, None for roots (carotids, vertebrals, basilar).
    kind
        Vessel name without side, e.g. ``"M1"``, ``"ICA"``.
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
        ((38.0, -12.0, 17.0), (46.0, -18.0, 26.0), (52.0, -25.0, 36.0), (55.0, -32.0, 44.0)),
        0.75,
        "M2_sup",
    ),
    _Spec(
        "M3_temporal",
        ((42.0, -12.0, -6.0), (50.0, -14.0, -4.0), (58.0, -20.0, -6.0), (63.0, -30.0, -8.0)),
        0.75,
        "M2_inf",
    ),
    _Spec(
        "M3_angular",
        ((41.0, -31.0, 4.0), (48.0, -40.0, 12.0), (53.0, -50.0, 22.0), (54.0, -58.0, 30.0)),
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

# Midline segments that are not mirrored, besides the basilar artery.
_ACOA_RADIUS_MM = 0.6


def _centripetal_catmull_rom(control: FloatArray, spacing: float) -> FloatArray:
    """Smooth curve through the control points, resampled every ``spacing`` mm of arc length.

    Centripetal parametrisation (alpha 0.5) does not overshoot or loop where control points are
    unevenly spaced, so a vessel stays inside the cistern it was placed in.
    """
    pts = np.asarray(control, dtype=np.float64)
    if len(pts) == 2:
        dense = pts
    else:
        ext = np.vstack([2 * pts[0] - pts[1], pts, 2 * pts[-1] - pts[-2]])
        pieces = []
        for i in range(1, len(ext) - 2):
            p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
            t0 = 0.0
            t1 = t0 + np.linalg.norm(p1 - p0) ** 0.5
            t2 = t1 + np.linalg.norm(p2 - p1) ** 0.5
            t3 = t2 + np.linalg.norm(p3 - p2) ** 0.5
            t = np.linspace(t1, t2, 40, endpoint=False)[:, None]
            a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
            a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
            a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
            b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
            b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
            pieces.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
        pieces.append(pts[-1:])
        dense = np.vstack(pieces)
    steps = np.linalg.norm(np.diff(dense, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    n = max(2, int(np.ceil(arc[-1] / spacing)) + 1)
    target = np.linspace(0.0, arc[-1], n)
    return np.stack([np.interp(target, arc, dense[:, k]) for k in range(3)], axis=1)


def _mirror(points: FloatArray) -> FloatArray:
    out = points.copy()
    out[:, 0] *= -1.0
    return out


def _frozen(points: FloatArray) -> FloatArray:
    points.setflags(write=False)
    return points


@functools.cache
def _tree() -> tuple[Segment, ...]:
    segments: list[Segment] = []
    for spec in _SPECS:
        right = _centripetal_catmull_rom(np.asarray(spec.control), SAMPLE_SPACING_MM)
        if not spec.bilateral:
            segments.append(
                Segment(
                    spec.kind,
                    None,
                    _frozen(right),
                    spec.radius_mm,
                    None,
                    spec.kind,
                    spec.intracranial,
                )
            )
            continue
        parent_is_midline = spec.parent_kind in {s.kind for s in _SPECS if not s.bilateral}
        for side in SIDES:
            pts = right if side == "R" else _mirror(right)
            parent = None
            if spec.parent_kind is not None:
                parent = spec.parent_kind if parent_is_midline else f"{side}_{spec.parent_kind}"
            segments.append(
                Segment(
                    f"{side}_{spec.kind}",
                    side,
                    _frozen(pts.copy()),
                    spec.radius_mm,
                    parent,
                    spec.kind,
                    spec.intracranial,
                )
            )
    by_name = {s.name: s for s in segments}
    # The anterior communicating artery joins the two A1 ends; its parent is nominally R_A1.
    acoa = np.stack([by_name["R_A1"].points[-1], by_name["L_A1"].points[-1]])
    segments.append(
        Segment(
            "ACoA",
            None,
            _frozen(_centripetal_catmull_rom(acoa, SAMPLE_SPACING_MM)),
            _ACOA_RADIUS_MM,
            "R_A1",
            "ACoA",
            True,
        )
    )
    return tuple(segments)


def vessel_tree() -> list[Segment]:
    """All arterial segments, proximal to distal within each segment (cached; read-only points)."""
    return list(_tree())


def segment_by_name() -> dict[str, Segment]:
    """The tree keyed by segment name."""
    return {s.name: s for s in _tree()}


def descendants(name: str, segments: Iterable[Segment] | None = None) -> list[str]:
    """Names of all segments downstream of ``name`` through parent links (excluding ``name``)."""
    segs = list(_tree() if segments is None else segments)
    children: dict[str, list[str]] = {}
    for s in segs:
        if s.parent is not None:
            children.setdefault(s.parent, []).append(s.name)
    out: list[str] = []
    stack = list(children.get(name, []))
    while stack:
        current = stack.pop(0)
        out.append(current)
        stack.extend(children.get(current, []))
    return out


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
        into the next segment of the path (M1 -> superior M2 -> its frontal M3 branch).
    start_fraction
        Where the clot starts, as a fraction 0..1 of the site segment's length from its origin.
    clot_hu
        Attenuation of the thrombus (50..80 HU: the hyperdense vessel sign).
    collateral_grade
        0..3; on CTA the segments distal to the clot fill retrogradely with 5, 30, 60 or 90 % of
        the arterial contrast.
    """

    side: str
    site: str
    length_mm: float = 10.0
    start_fraction: float = 0.3
    clot_hu: float = 65.0
    collateral_grade: int = 2

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
        by_name = segment_by_name()
        offsets: dict[str, float] = {}
        total = 0.0
        for name in self.path_segments:
            offsets[name] = total
            total += by_name[name].length_mm
        return offsets

    @property
    def clot_span_mm(self) -> tuple[float, float]:
        """Start and end of the clot as arc length along the occluded path, in mm."""
        by_name = segment_by_name()
        total = sum(by_name[n].length_mm for n in self.path_segments)
        start = self.start_fraction * by_name[self.site_segment].length_mm
        start = min(start, total - self.length_mm)
        return start, start + self.length_mm

    def _path(self) -> tuple[FloatArray, FloatArray]:
        by_name = segment_by_name()
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
        by_name = segment_by_name()
        path = set(self.path_segments)
        out: set[str] = set()
        for name in self.path_segments:
            seg = by_name[name]
            if offsets[name] + seg.length_mm > s1 + 1e-6:
                out.add(name)
            arc = seg.arc_length()
            for child in (s for s in by_name.values() if s.parent == name and s.name not in path):
                nearest = int(np.argmin(np.linalg.norm(seg.points - child.points[0], axis=1)))
                if offsets[name] + arc[nearest] >= s0:
                    out.add(child.name)
                    out.update(descendants(child.name))
        return frozenset(out)

    @property
    def collateral_fraction(self) -> float:
        """Fraction of the arterial contrast that reaches the distal segments on CTA."""
        return _COLLATERAL_FRACTION[self.collateral_grade]
