"""A synthetic head for CT and CTA: a pseudo-CT anatomy plus an arterial tree with a clot.

:class:`Phantom` answers one question, fast: the noise-free Hounsfield units at arbitrary points
of the head (mm, RAS) for a non-contrast ('ncct') or arterial-phase ('cta') acquisition. Callers
sample every pixel of every slice (a 300-slice 512x512 CTA is 78 million points), so both
lookups are trilinear interpolations of precomputed rasters:

* the anatomy, 1 mm: the MNI152 atlas head (``anatomy.load_anatomy``, loaded once per process),
  or a patient's own head (``subject.Subject.build``: size, shape, skull, atrophy, ventricles,
  early ischaemic change and a smooth deformation; a few seconds per phantom);
* the vessels, 0.4 mm, stored block-sparse (8x8x8-cell blocks, only those the vessel tubes
  touch, each with a one-sample overlap so interpolation never leaves its block): the trunks
  from the neck to the circle of Willis and the M1-M3 branches, and the cortical (M4 and pial)
  arteries over each hemisphere. A patient's tree (its own lengths, branch points, calibres and
  cortical network, defined on the atlas) is mapped into the patient's head before it is
  rasterised; arc lengths along it stay those of the atlas, where the clot is defined.

Vessel HU replaces tissue HU by the vessel fraction, which ramps from 1 to 0 over 0.4 mm at the
wall, so thin arteries keep a realistic partial-volume edge. Downstream of a clot, the cortical
arteries fill retrogradely from the edge of the territory by the collateral grade (Tan score).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from scanet_node.synth.anatomy import Anatomy, load_anatomy
from scanet_node.synth.subject import DEFAULT_FILL_BY_GRADE, Subject, SubjectAnatomy
from scanet_node.synth.vessels import CORTICAL_KINDS, Occlusion, Segment, vessel_tree

logger = logging.getLogger(__name__)

PHASES = ("ncct", "cta")
BLOOD_HU = 42.0  # unenhanced flowing blood
HU_AIR = -1000.0

VOXEL_MM = 0.4  # vessel raster spacing
BLOCK = 8  # cells per block edge; a block stores (BLOCK + 1) ** 3 samples
WALL_MM = 0.4  # width of the partial-volume ramp across the vessel wall
CLOT_EDGE_MM = 1.0  # width of the clot's transition along the vessel
#: Collateral (retrograde, delayed) filling reaches this share of the arterial enhancement.
COLLATERAL_ENHANCEMENT = 0.9
FILL_EDGE_MM = 3.0  # width of the edge between filled and unfilled cortical arteries

_S = BLOCK + 1
_BLOCK_SAMPLES = _S**3
_CORNER_OFFSETS = np.array(
    [dx * _S * _S + dy * _S + dz for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)],
    dtype=np.int64,
)

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class _VesselGeometry:
    """Occlusion-independent vessel raster, block-sparse on a 0.4 mm grid.

    ``lut`` maps a block index to its slot (-1: no vessel there); per-sample arrays are flat,
    ``slot * 729 + ((i * 9) + j) * 9 + k`` for sample ``(i, j, k)`` of a block.
    """

    origin: FloatArray  # MNI mm of sample (0, 0, 0) of block (0, 0, 0)
    lut: npt.NDArray[np.int32]
    fraction: Float32Array  # vessel fraction 0..1 (union over segments)
    segment: npt.NDArray[np.int16]  # index into ``names`` of the nearest vessel surface, -1 none
    arc_mm: Float32Array  # arc length along that segment of the nearest centreline point
    names: tuple[str, ...]
    segments: tuple[Segment, ...]  # in atlas space (arc lengths are measured there)

    @property
    def upper(self) -> FloatArray:
        """MNI mm just past the last block along each axis."""
        return self.origin + np.asarray(self.lut.shape) * BLOCK * VOXEL_MM


@functools.cache
def _vessel_geometry() -> _VesselGeometry:
    """The atlas head's tree, rasterised once per process."""
    segments = tuple(vessel_tree())
    return _rasterise(segments, segments)


def _rasterise(segments: Sequence[Segment], atlas_segments: Sequence[Segment]) -> _VesselGeometry:
    """Rasterise a tree (in the head's space) whose arc lengths are those of ``atlas_segments``.

    Every centreline point (0.5 mm apart) splats the raster samples within its radius plus half
    the wall ramp; per sample the nearest splat wins, which approximates the distance to the
    centreline polyline within a few hundredths of a millimetre at the wall.
    """
    lo = np.min([s.points.min(axis=0) - s.radius_mm for s in segments], axis=0) - 2.0
    hi = np.max([s.points.max(axis=0) + s.radius_mm for s in segments], axis=0) + 2.0
    origin = lo
    shape = np.ceil((hi - lo) / (BLOCK * VOXEL_MM)).astype(np.int64)
    n_samples = shape * BLOCK + 1

    keys, signed, fractions, seg_ids, arcs = [], [], [], [], []
    for index, (seg, atlas_seg) in enumerate(zip(segments, atlas_segments, strict=True)):
        reach = seg.radius_mm + 0.5 * WALL_MM
        n = int(np.ceil(reach / VOXEL_MM)) + 1
        offsets = np.stack(
            np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), axis=-1
        ).reshape(-1, 3)
        offsets = offsets[np.linalg.norm(offsets, axis=1) * VOXEL_MM <= reach + VOXEL_MM]
        centre = np.rint((seg.points - origin) / VOXEL_MM).astype(np.int64)
        ijk = (centre[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
        point = np.repeat(np.arange(len(seg.points)), len(offsets))
        dist = np.linalg.norm(origin + ijk * VOXEL_MM - seg.points[point], axis=1)
        keep = dist < reach
        ijk, point, dist = ijk[keep], point[keep], dist[keep]
        keys.append(np.ravel_multi_index(ijk.T, tuple(n_samples)))
        signed.append(dist - seg.radius_mm)
        fractions.append(np.clip((seg.radius_mm - dist) / WALL_MM + 0.5, 0.0, 1.0))
        seg_ids.append(np.full(len(dist), index, dtype=np.int16))
        arcs.append(atlas_seg.arc_length()[point])

    key = np.concatenate(keys)
    sd = np.concatenate(signed)
    order = np.lexsort((sd, key))
    key = key[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    unique = key[first]
    frac_u = np.maximum.reduceat(np.concatenate(fractions)[order], first).astype(np.float32)
    seg_u = np.concatenate(seg_ids)[order][first]
    arc_u = np.concatenate(arcs)[order][first].astype(np.float32)

    # Store each sample in every block that holds it: a sample on a block face, edge or corner
    # is shared with the neighbouring blocks (one-sample overlap).
    gijk = np.stack(np.unravel_index(unique, tuple(n_samples)), axis=1)
    primary_block = np.minimum(gijk // BLOCK, shape - 1)
    primary_local = gijk - primary_block * BLOCK
    parts = []
    for combo in range(8):
        use = np.array([(combo >> 2) & 1, (combo >> 1) & 1, combo & 1], dtype=bool)
        valid = np.all(~use | ((primary_local == 0) & (primary_block > 0)), axis=1)
        block = primary_block[valid] - use
        local = np.where(use, BLOCK, primary_local[valid])
        parts.append((np.flatnonzero(valid), block, local))
    blocks = np.concatenate([b for _, b, _ in parts])
    lut = np.full(tuple(shape), -1, dtype=np.int32)
    occupied = np.unique(np.ravel_multi_index(blocks.T, tuple(shape)))
    lut.ravel()[occupied] = np.arange(len(occupied), dtype=np.int32)
    n_slots = len(occupied)

    fraction = np.zeros(n_slots * _BLOCK_SAMPLES, dtype=np.float32)
    segment = np.full(n_slots * _BLOCK_SAMPLES, -1, dtype=np.int16)
    arc_mm = np.zeros(n_slots * _BLOCK_SAMPLES, dtype=np.float32)
    for source, block, local in parts:
        slot = lut[block[:, 0], block[:, 1], block[:, 2]].astype(np.int64)
        flat = slot * _BLOCK_SAMPLES + (local[:, 0] * _S + local[:, 1]) * _S + local[:, 2]
        fraction[flat] = frac_u[source]
        segment[flat] = seg_u[source]
        arc_mm[flat] = arc_u[source]
    logger.debug("vessel raster: %d blocks, %d samples near a vessel", n_slots, len(unique))
    return _VesselGeometry(
        origin=origin,
        lut=lut,
        fraction=fraction,
        segment=segment,
        arc_mm=arc_mm,
        names=tuple(s.name for s in segments),
        segments=tuple(atlas_segments),
    )


class _AnatomyGrid:
    """The anatomy HU padded by one voxel of air, set up for fast linear interpolation.

    Indices into the padded volume are voxel indices + 1; clipping them to the padded extent
    makes every point farther out read air, and points within a voxel of the grid fade to air,
    like ``scipy.ndimage.map_coordinates(mode="grid-constant")`` but faster for this case.
    """

    def __init__(self, anatomy: Anatomy) -> None:
        padded = np.pad(anatomy.hu, 1, constant_values=HU_AIR).astype(np.float32)
        self.shape = padded.shape
        self.values: Float32Array = padded.ravel()
        self.volume: Float32Array = padded
        inv = np.linalg.inv(anatomy.affine)
        self.matrix: Float32Array = inv[:3, :3].astype(np.float32)
        self.offset: Float32Array = (inv[:3, 3] + 1.0).astype(np.float32)
        self.axis_aligned = bool(np.allclose(inv[:3, :3], np.diag(np.diag(inv[:3, :3]))))
        self.upper: Float32Array = np.asarray(self.shape, dtype=np.float32) - np.float32(1.0001)
        self.stride_x = self.shape[1] * self.shape[2]
        self.stride_y = self.shape[2]

    def _index(self, flat: npt.NDArray[np.floating]) -> Float32Array:
        f = np.asarray(flat @ self.matrix.T, dtype=np.float32)
        f += self.offset
        np.clip(f, 0.0, self.upper, out=f)
        return f

    def trilinear(self, flat: npt.NDArray[np.floating]) -> Float32Array:
        """HU at MNI points ``(N, 3)``."""
        f = self._index(flat)
        lower = np.floor(f)
        t = f - lower
        i = lower.astype(np.int64)
        sx, sy = self.stride_x, self.stride_y
        base = i[:, 0] * sx + i[:, 1] * sy + i[:, 2]
        v = self.values
        tx, ty, tz = t[:, 0], t[:, 1], t[:, 2]
        c00 = _lerp(v[base], v[base + 1], tz)
        c01 = _lerp(v[base + sy], v[base + sy + 1], tz)
        c10 = _lerp(v[base + sx], v[base + sx + 1], tz)
        c11 = _lerp(v[base + sx + sy], v[base + sx + sy + 1], tz)
        return _lerp(_lerp(c00, c01, ty), _lerp(c10, c11, ty), tx)

    def axial_plane(self, z_mm: float) -> Float32Array:
        """The padded (x, y) plane at MNI z, linearly interpolated between voxel planes."""
        k = float(z_mm * self.matrix[2, 2] + self.offset[2])
        k = min(max(k, 0.0), float(self.upper[2]))
        k0 = int(np.floor(k))
        w = np.float32(k - k0)
        lo = self.volume[:, :, k0]
        hi = self.volume[:, :, k0 + 1]
        return np.asarray(lo + (hi - lo) * w, dtype=np.float32)

    def bilinear(self, plane: Float32Array, flat: npt.NDArray[np.floating]) -> Float32Array:
        """HU at MNI points ``(N, 3)`` that all lie in the axial ``plane``."""
        f = self._index(flat)
        lower = np.floor(f[:, :2])
        t = f[:, :2] - lower
        i = lower.astype(np.int64)
        ny = plane.shape[1]
        base = i[:, 0] * ny + i[:, 1]
        v = plane.ravel()
        ty, tx = t[:, 1], t[:, 0]
        return _lerp(_lerp(v[base], v[base + 1], ty), _lerp(v[base + ny], v[base + ny + 1], ty), tx)

    def separable(
        self, plane: Float32Array, pts: npt.NDArray[np.floating], lattice: tuple[int, int]
    ) -> Float32Array:
        """HU on an untilted axial lattice ``(rows, cols, 3)`` in ``plane``, flattened."""
        x_axis, y_axis = lattice
        xs = pts[0, :, 0] if x_axis == 1 else pts[:, 0, 0]
        ys = pts[:, 0, 1] if y_axis == 0 else pts[0, :, 1]
        u = np.clip(self.matrix[0, 0] * xs + self.offset[0], 0.0, self.upper[0])
        v = np.clip(self.matrix[1, 1] * ys + self.offset[1], 0.0, self.upper[1])
        iu = np.floor(u).astype(np.int64)
        iv = np.floor(v).astype(np.int64)
        wu = (u - iu).astype(np.float32)[:, None]
        wv = (v - iv).astype(np.float32)[None, :]
        rows = _lerp(plane[iu], plane[iu + 1], wu)  # (len(u), padded ny)
        grid = _lerp(rows[:, iv], rows[:, iv + 1], wv)  # (len(u), len(v))
        out = grid.T if x_axis == 1 else grid  # lattice rows follow y when x runs along columns
        return np.ascontiguousarray(out, dtype=np.float32).ravel()


def _lerp(a: Float32Array, b: Float32Array, t: Float32Array) -> Float32Array:
    return np.asarray(a + (b - a) * t, dtype=np.float32)


@functools.cache
def _anatomy_grid() -> _AnatomyGrid:
    return _AnatomyGrid(load_anatomy())


class Phantom:
    """A head in MNI space with its arteries and at most one occlusion."""

    def __init__(
        self,
        occlusion: Occlusion | None,
        *,
        contrast_hu: float = 380.0,
        seed: int = 0,
        subject: Subject | None = None,
    ) -> None:
        """Build the phantom.

        Parameters
        ----------
        occlusion
            The clot, or None for a normal study. With a ``subject``, it lies on the subject's
            tree (``Occlusion(..., tree=subject.tree)``).
        contrast_hu
            Attenuation of arterial blood on CTA (callers pass 300-450).
        seed
            Kept for callers; the patient's variation comes from ``subject``.
        subject
            The patient (``synth/subject.py``): own head, brain, arteries and early ischaemic
            change. None gives the atlas head with the atlas tree.
        """
        if not 100.0 <= contrast_hu <= 1000.0:
            raise ValueError(f"contrast_hu must be within 100..1000, got {contrast_hu}")
        self._occlusion = occlusion
        self._contrast_hu = float(contrast_hu)
        self._seed = seed
        self._built: SubjectAnatomy | None = None
        if subject is None:
            self._anatomy: Anatomy = load_anatomy()
            self._grid = _anatomy_grid()
            self._geometry = _vessel_geometry()
            fill = None
        else:
            self._built = subject.build()
            self._anatomy = self._built.anatomy
            self._grid = _AnatomyGrid(self._anatomy)
            atlas_tree = subject.tree or tuple(vessel_tree())
            # One call for all centrelines: the inverse warp iterates, per call.
            moved = self._built.from_atlas(np.vstack([seg.points for seg in atlas_tree]))
            moved.setflags(write=False)  # and so each segment's view of it
            ends = np.cumsum([len(seg.points) for seg in atlas_tree])[:-1]
            head_tree = [
                replace(seg, points=points)
                for seg, points in zip(atlas_tree, np.split(moved, ends), strict=True)
            ]
            self._geometry = _rasterise(head_tree, atlas_tree)
            fill = subject.collateral_fill
        ncct, cta = _vessel_hu(self._geometry, occlusion, self._contrast_hu, fill)
        fraction = self._geometry.fraction
        # Interleaved (fraction, fraction * HU) so one gather per corner fetches both.
        self._tables = {
            "ncct": np.ascontiguousarray(np.stack([fraction, fraction * ncct], axis=1)),
            "cta": np.ascontiguousarray(np.stack([fraction, fraction * cta], axis=1)),
        }

    @property
    def head_affine(self) -> FloatArray:
        """4x4 atlas MNI mm -> this head's mm, its best affine (identity for the atlas head)."""
        if self._built is None:
            return np.eye(4)
        return np.asarray(self._built.affine_from_atlas, dtype=np.float64)

    def to_head(self, points_mni: npt.ArrayLike) -> FloatArray:
        """Where atlas MNI points ``(..., 3)`` lie in this head (the patient's anatomy)."""
        if self._built is None:
            return np.asarray(points_mni, dtype=np.float64)
        return self._built.from_atlas(points_mni)

    @property
    def occlusion(self) -> Occlusion | None:
        """The clot of this phantom, None for a normal study."""
        return self._occlusion

    @property
    def contrast_hu(self) -> float:
        """Arterial enhancement on CTA."""
        return self._contrast_hu

    @property
    def anatomy(self) -> Anatomy:
        """The underlying non-contrast anatomy (shared, read-only by convention)."""
        return self._anatomy

    def sample(self, points_mni: npt.ArrayLike, phase: str) -> Float32Array:
        """Noise-free HU at points (..., 3) in MNI mm (RAS); phase 'ncct' or 'cta'.

        Returns float32 of shape points.shape[:-1]. Points outside the anatomy grid are air.
        Points sharing one z (an untilted axial slice) are interpolated in the plane of that z,
        and separably when they form a ``(rows, cols, 3)`` lattice with x varying along one
        axis and y along the other; any other points are interpolated trilinearly.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        pts = np.asarray(points_mni)
        if pts.shape[-1:] != (3,):
            raise ValueError(f"points must have shape (..., 3), got {pts.shape}")
        if pts.dtype != np.float64 and pts.dtype != np.float32:
            pts = pts.astype(np.float64)
        out_shape = pts.shape[:-1]
        flat = pts.reshape(-1, 3)
        hu = self._sample_anatomy(pts, flat)
        if hu.size:
            self._add_vessels(flat, hu, self._tables[phase])
        return hu.reshape(out_shape)

    def _sample_anatomy(
        self, pts: npt.NDArray[np.floating], flat: npt.NDArray[np.floating]
    ) -> Float32Array:
        grid = self._grid
        if grid.axis_aligned and flat.shape[0] > 1:
            z = flat[:, 2]
            z0 = float(z[0])
            if float(z.min()) == z0 == float(z.max()):
                plane = grid.axial_plane(z0)
                lattice = _lattice_axes(pts) if pts.ndim == 3 else None
                if lattice is not None:
                    return grid.separable(plane, pts, lattice)
                return grid.bilinear(plane, flat)
        return grid.trilinear(flat)

    def _add_vessels(
        self, flat: npt.NDArray[np.floating], hu: Float32Array, table: Float32Array
    ) -> None:
        geo = self._geometry
        lo = geo.origin
        hi = geo.upper - 1e-6
        inside = np.ones(len(flat), dtype=bool)
        for axis in range(3):
            col = flat[:, axis]
            inside &= col >= lo[axis]
            inside &= col < hi[axis]
        idx = np.flatnonzero(inside)
        if idx.size == 0:
            return
        f = (flat[idx] - lo) * (1.0 / VOXEL_MM)
        cell = f.astype(np.int64)
        block = cell // BLOCK
        slot = geo.lut[block[:, 0], block[:, 1], block[:, 2]]
        hit = slot >= 0
        if not hit.any():
            return
        idx = idx[hit]
        cell = cell[hit]
        t = (f[hit] - cell).astype(np.float32)
        loc = cell - block[hit] * BLOCK
        base = (
            slot[hit].astype(np.int64) * _BLOCK_SAMPLES
            + (loc[:, 0] * _S + loc[:, 1]) * _S
            + loc[:, 2]
        )
        tx, ty, tz = t[:, 0:1], t[:, 1:2], t[:, 2:3]
        acc = np.zeros((len(idx), 2), dtype=np.float32)
        for corner, offset in enumerate(_CORNER_OFFSETS):
            wx = tx if corner & 4 else 1.0 - tx
            wy = ty if corner & 2 else 1.0 - ty
            wz = tz if corner & 1 else 1.0 - tz
            acc += (wx * wy * wz) * table[base + offset]
        tissue = hu[idx]
        hu[idx] = tissue * (1.0 - acc[:, 0]) + acc[:, 1]


def _lattice_axes(pts: npt.NDArray[np.floating]) -> tuple[int, int] | None:
    """For a (rows, cols, 3) grid: the array axes along which x and y vary, if each varies along
    one axis only (an untilted axial slice, either orientation); otherwise None."""
    x = pts[..., 0]
    y = pts[..., 1]
    if np.array_equal(x, np.broadcast_to(x[:1, :], x.shape)) and np.array_equal(
        y, np.broadcast_to(y[:, :1], y.shape)
    ):
        return 1, 0
    if np.array_equal(x, np.broadcast_to(x[:, :1], x.shape)) and np.array_equal(
        y, np.broadcast_to(y[:1, :], y.shape)
    ):
        return 0, 1
    return None


def _vessel_hu(
    geo: _VesselGeometry,
    occlusion: Occlusion | None,
    contrast_hu: float,
    collateral_fill: float | None = None,
) -> tuple[Float32Array, Float32Array]:
    """Lumen HU of every raster sample for both phases, given the clot (if any).

    Downstream of the clot, the trunks fill with the grade's share of the arterial contrast
    (``Occlusion.collateral_fraction``) and the cortical arteries retrogradely from the
    territory's edge: the outermost ``collateral_fill`` of them (by centreline length, counted
    from the M1 bifurcation outwards) fill with :data:`COLLATERAL_ENHANCEMENT` of the arterial
    contrast, the rest stay unopacified, as the Tan score reads it.
    """
    n = len(geo.segment)
    patent = np.ones(n, dtype=np.float32)
    clot = np.zeros(n, dtype=np.float32)
    distal = np.zeros(n, dtype=np.float32)
    cortical = np.zeros(n, dtype=np.float32)  # 1 where a distal cortical artery fills
    is_cortical = np.zeros(n, dtype=bool)
    collateral = 0.0
    clot_hu = BLOOD_HU
    if occlusion is not None:
        collateral = occlusion.collateral_fraction
        clot_hu = occlusion.clot_hu
        s0, s1 = occlusion.clot_span_mm
        offsets = occlusion.path_offsets_mm()
        distal_names = occlusion.distal_segments
        if collateral_fill is None:
            collateral_fill = DEFAULT_FILL_BY_GRADE[occlusion.collateral_grade]
        depths, threshold = _cortical_depths(geo, occlusion, distal_names, collateral_fill)
        # The samples of each segment, found once (a tree has thousands of segments).
        order = np.argsort(geo.segment, kind="stable")
        starts = np.searchsorted(geo.segment[order], np.arange(len(geo.names) + 1))
        for index, name in enumerate(geo.names):
            if name not in offsets and name not in distal_names:
                continue
            sel = order[starts[index] : starts[index + 1]]
            if name in offsets:
                s = geo.arc_mm[sel] + offsets[name]
                c = np.clip((s - s0) / CLOT_EDGE_MM + 0.5, 0, 1) * np.clip(
                    (s1 - s) / CLOT_EDGE_MM + 0.5, 0, 1
                )
                d = np.clip((s - s1) / CLOT_EDGE_MM + 0.5, 0, 1) * (1.0 - c)
                clot[sel] = c
                distal[sel] = d
                patent[sel] = 1.0 - c - d
            elif index in depths:
                arc, depth = depths[index]
                d = np.interp(geo.arc_mm[sel], arc, depth)
                patent[sel] = 0.0
                is_cortical[sel] = True
                cortical[sel] = np.clip((d - threshold) / FILL_EDGE_MM + 0.5, 0.0, 1.0)
            else:
                patent[sel] = 0.0
                distal[sel] = 1.0
    distal_cta = BLOOD_HU + collateral * (contrast_hu - BLOOD_HU)
    cortical_cta = BLOOD_HU + cortical * COLLATERAL_ENHANCEMENT * (contrast_hu - BLOOD_HU)
    ncct = BLOOD_HU * (1.0 - clot) + clot_hu * clot
    cta = contrast_hu * patent + clot_hu * clot + distal_cta * distal
    cta = np.where(is_cortical, cortical_cta, cta)
    return ncct.astype(np.float32), cta.astype(np.float32)


def _cortical_depths(
    geo: _VesselGeometry,
    occlusion: Occlusion,
    distal_names: frozenset[str],
    fill: float,
) -> tuple[dict[int, tuple[FloatArray, FloatArray]], float]:
    """Distal cortical segments' arc lengths and distances from the M1 bifurcation, by segment
    index, and the distance beyond which they fill: the outermost ``fill`` share of them."""
    by_name = {seg.name: seg for seg in geo.segments}
    origin = by_name[f"{occlusion.side}_M1"].points[-1]
    depths = {
        index: (seg.arc_length(), np.linalg.norm(seg.points - origin, axis=1))
        for index, seg in enumerate(geo.segments)
        if seg.kind in CORTICAL_KINDS and seg.name in distal_names
    }
    if fill >= 1.0 or not depths:
        return depths, -np.inf
    if fill <= 0.0:
        return depths, np.inf
    every = np.concatenate([depth for _, depth in depths.values()])
    return depths, float(np.quantile(every, 1.0 - fill))


__all__ = ["PHASES", "Occlusion", "Phantom", "Segment"]
