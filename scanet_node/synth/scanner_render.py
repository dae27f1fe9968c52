"""The images of a synthetic series, rendered from a phantom the way a CT scanner makes them.

Slices are rendered the way a scanner reconstructs them: the phantom is sampled at the pixel
centres of a series' planes (:mod:`scanet_node.synth.scanner_geometry`), averaged over the slice
thickness, given correlated noise, and cut to the circular reconstruction field of view. For
speed (a 300-slice CTA is 78 million pixels) the 1 mm anatomy is sampled on a grid twice as
coarse and interpolated, air found by a 4 mm probe is not sampled at all, and only the pixels
around contrast-filled vessels are sampled at full resolution. The localizer is a projection:
line integrals of attenuation across the head.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from scanet_node.synth.scanner_geometry import HEAD_SEMI_AXES_MM, Pose, SeriesGeometry
from scanet_node.timing import Stopwatch

logger = logging.getLogger(__name__)

HUArray = npt.NDArray[np.int16]

PHASES: Final = ("ncct", "cta")

AIR_HU: Final = -1000.0
#: Range a 12-bit CT image with RescaleIntercept -1024 can hold.
MIN_HU: Final = -1024
MAX_HU: Final = 3071
#: Value of pixels outside the reconstruction circle (written with PixelPaddingValue).
PADDING_HU: Final = -2048
#: Sub-planes averaged across a thick slice are about this far apart (the anatomy's resolution).
SUBPLANE_MM: Final = 1.0
#: CTA pixels whose 3x3 coarse neighbourhood varies by more than REFINE_RANGE_HU and peaks within
#: VESSEL_PEAK_HU (contrast-filled lumen, not bone) are sampled again at full resolution.
REFINE_RANGE_HU: Final = 40.0
VESSEL_PEAK_HU: Final = (120.0, 700.0)
#: Spacing of the probe that finds the air around the head (sampled once per slice).
PROBE_MM: Final = 4.0
LOCALIZER_RAY_STEP_MM: Final = 3.0
WATER_MU_PER_MM: Final = 0.019  # linear attenuation of water near 70 keV


class HUSampler(Protocol):
    """What the scanner needs of a phantom (``scanet_node.synth.phantom.Phantom``)."""

    def sample(self, points_mni: npt.NDArray[Any], phase: str) -> npt.NDArray[Any]:
        """Noise-free HU, shape ``points.shape[:-1]``, at MNI mm points ``(..., 3)``."""
        ...


# --------------------------------------------------------------------------------------------
# Slice sampling


def _upsample2(coarse: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Bilinear x2 upsampling: coarse pixel k sits between fine pixels 2k and 2k+1."""
    h, w = coarse.shape
    quarter, three = np.float32(0.25), np.float32(0.75)
    padded = np.pad(coarse, 1, mode="edge")
    rows = np.empty((2 * h, w + 2), dtype=np.float32)
    centre = padded[1:-1] * three
    np.multiply(padded[:-2], quarter, out=rows[0::2])
    rows[0::2] += centre
    np.multiply(padded[2:], quarter, out=rows[1::2])
    rows[1::2] += centre
    out = np.empty((2 * h, 2 * w), dtype=np.float32)
    centre = rows[:, 1:-1] * three
    np.multiply(rows[:, :-2], quarter, out=out[:, 0::2])
    out[:, 0::2] += centre
    np.multiply(rows[:, 2:], quarter, out=out[:, 1::2])
    out[:, 1::2] += centre
    return out


def _upsample2_at(
    coarse: npt.NDArray[np.float32], rows: npt.NDArray[np.intp], cols: npt.NDArray[np.intp]
) -> npt.NDArray[np.float32]:
    """:func:`_upsample2` evaluated at the fine pixels (rows, cols) only."""
    h, w = coarse.shape
    kr, kc = rows // 2, cols // 2
    nr = np.clip(np.where(rows % 2 == 0, kr - 1, kr + 1), 0, h - 1)
    nc = np.clip(np.where(cols % 2 == 0, kc - 1, kc + 1), 0, w - 1)
    return np.asarray(
        0.5625 * coarse[kr, kc]
        + 0.1875 * (coarse[nr, kc] + coarse[kr, nc])
        + 0.0625 * coarse[nr, nc],
        dtype=np.float32,
    )


def _vessel_edges(image: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Pixels near a contrast-filled lumen: their 3x3 neighbourhood varies by more than
    :data:`REFINE_RANGE_HU` and peaks within :data:`VESSEL_PEAK_HU` (bone peaks higher)."""
    padded = np.pad(image, 1, mode="edge")
    h, w = image.shape
    high = image.copy()
    low = image.copy()
    for dy in range(3):
        for dx in range(3):
            view = padded[dy : dy + h, dx : dx + w]
            np.maximum(high, view, out=high)
            np.minimum(low, view, out=low)
    low_peak, high_peak = VESSEL_PEAK_HU
    return np.asarray(
        (high - low > REFINE_RANGE_HU) & (high >= low_peak) & (high < high_peak), dtype=np.bool_
    )


def _binomial_blur(image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """[1, 2, 1] / 4 smoothing along both axes (edges repeated)."""
    out = image
    for axis in (0, 1):
        padded = np.concatenate(
            [np.take(out, [0], axis=axis), out, np.take(out, [-1], axis=axis)], axis=axis
        )
        n = out.shape[axis]
        lower = np.take(padded, range(0, n), axis=axis)
        upper = np.take(padded, range(2, n + 2), axis=axis)
        out = np.asarray((lower + upper + 2 * out) * np.float32(0.25), dtype=np.float32)
    return out


@dataclass
class RenderStats:
    """Where rendering time went, summed over the slices rendered so far."""

    slices: int = 0
    points: int = 0
    refined_points: int = 0
    sample_s: float = 0.0
    noise_s: float = 0.0

    def add(self, other: RenderStats) -> None:
        """Add another renderer's counts to these."""
        self.slices += other.slices
        self.points += other.points
        self.refined_points += other.refined_points
        self.sample_s += other.sample_s
        self.noise_s += other.noise_s


class SliceRenderer:
    """Renders the slices of one series from a phantom, as HU int16 images.

    Each slice is sampled at the pixel centres of ``max(1, round(thickness / 1 mm))`` planes
    across its thickness and averaged (the slab a reconstruction integrates). Correlated
    Gaussian noise of
    ``geometry.noise_hu`` is added, values are clipped to the 12-bit CT range and pixels outside
    the reconstruction circle get :data:`PADDING_HU`.

    Full-size images are sampled on a grid twice as coarse and bilinearly upsampled (the anatomy
    has 1 mm resolution); on CTA, pixels near contrast-filled vessels (0.4 mm raster) are then
    sampled again at full resolution (``refine``, default on for CTA only).
    """

    def __init__(
        self,
        phantom: HUSampler,
        geometry: SeriesGeometry,
        pose: Pose,
        phase: str,
        *,
        refine: bool | None = None,
    ) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
        self.phantom = phantom
        self.geometry = geometry
        self.pose = pose
        self.phase = phase
        self.stats = RenderStats()
        self._refine = phase == "cta" if refine is None else refine
        g = geometry
        dr, dc = g.pixel_spacing
        linear = pose.patient_to_mni[:3, :3]
        self._down = (linear @ (g.column_direction * dr)).astype(np.float32)  # one row down
        self._right = (linear @ (g.row_direction * dc)).astype(np.float32)  # one column right
        planes = max(1, round(g.slice_thickness / SUBPLANE_MM))
        offsets = [((k + 0.5) / planes - 0.5) * g.slice_thickness for k in range(planes)]
        self._offsets = [(linear @ g.normal * o).astype(np.float32) for o in offsets]
        self._factor = 2 if g.rows % 2 == 0 and g.columns % 2 == 0 and g.rows >= 256 else 1
        f = self._factor
        radius = g.reconstruction_diameter / 2
        y = (np.arange(g.rows) - (g.rows - 1) / 2) * dr
        x = (np.arange(g.columns) - (g.columns - 1) / 2) * dc
        self._outside = np.flatnonzero((y[:, None] ** 2 + x[None, :] ** 2) > radius**2)
        # Coarse pixel (k, l) is centred between fine pixels f*k .. f*k + f - 1.
        cr = np.arange(g.rows // f) * f + (f - 1) / 2
        cc = np.arange(g.columns // f) * f + (f - 1) / 2
        yc = (cr - (g.rows - 1) / 2) * dr
        xc = (cc - (g.columns - 1) / 2) * dc
        margin = radius + 2 * f * max(dr, dc)
        self._coarse_shape = (cr.size, cc.size)
        self._coarse_inside = (yc[:, None] ** 2 + xc[None, :] ** 2) <= margin**2
        ci, cj = np.nonzero(self._coarse_inside)
        self._coarse_flat = np.ravel_multi_index((ci, cj), self._coarse_shape)
        self._coarse_points = (
            cr[ci, None].astype(np.float32) * self._down
            + cc[cj, None].astype(np.float32) * self._right
        ).astype(np.float32)
        # Probe grid for the air test: every ``step``-th coarse pixel, about 4 mm apart.
        step = max(1, round(PROBE_MM / (f * min(dr, dc))))
        self._probe_shape = (-(-cr.size // step), -(-cc.size // step))
        self._probe_of_point = np.ravel_multi_index((ci // step, cj // step), self._probe_shape)
        probe = (ci % step == 0) & (cj % step == 0)
        self._probe_flat = self._probe_of_point[probe]
        self._probe_points = self._coarse_points[probe]

    def _near_tissue(self, origin: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        """Which coarse points may hold anything but air.

        The middle of the slab is probed every ~4 mm; points within two probe cells (~8 mm,
        more than half a 5 mm slab's change in outline) of a probe that is not air are kept.
        """
        middle = self._offsets[len(self._offsets) // 2]
        hu = np.asarray(self.phantom.sample(self._probe_points + (origin + middle), self.phase))
        self.stats.points += hu.size
        tissue = np.zeros(self._probe_shape, dtype=bool)
        tissue.flat[self._probe_flat[hu > AIR_HU + 100.0]] = True
        padded = np.pad(tissue, 2)
        h, w = tissue.shape
        near = np.zeros_like(tissue)
        for dy in range(5):
            for dx in range(5):
                near |= padded[dy : dy + h, dx : dx + w]
        return np.asarray(near.flat[self._probe_of_point], dtype=np.bool_)

    def _origin(self, index: int) -> npt.NDArray[np.float32]:
        return self.pose.to_mni(self.geometry.positions[index]).astype(np.float32)

    def _sample_slab(
        self, relative: npt.NDArray[np.float32], origin: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Mean HU over the slab's sub-planes at points given relative to the slice origin."""
        total = np.zeros(relative.shape[0], dtype=np.float32)
        for offset in self._offsets:
            total += np.asarray(
                self.phantom.sample(relative + (origin + offset), self.phase), dtype=np.float32
            )
        self.stats.points += relative.shape[0] * len(self._offsets)
        return total / np.float32(len(self._offsets))

    def _refine_vessels(
        self,
        image: npt.NDArray[np.float32],
        coarse: npt.NDArray[np.float32],
        noise: npt.NDArray[np.float32],
        origin: npt.NDArray[np.float32],
    ) -> None:
        """Resample at full resolution the four fine pixels of each coarse pixel near a vessel."""
        fk, fl = np.nonzero(_vessel_edges(coarse) & self._coarse_inside)
        if not fk.size:
            return
        rows = (2 * fk[:, None] + np.array([0, 0, 1, 1])).ravel()
        cols = (2 * fl[:, None] + np.array([0, 1, 0, 1])).ravel()
        relative = (
            rows[:, None].astype(np.float32) * self._down
            + cols[:, None].astype(np.float32) * self._right
        )
        image[rows, cols] = self._sample_slab(relative, origin) + _upsample2_at(noise, rows, cols)
        self.stats.refined_points += rows.size

    def render(self, index: int, rng: np.random.Generator) -> HUArray:
        """Slice ``index`` in HU (int16), with noise drawn from ``rng``."""
        g = self.geometry
        watch = Stopwatch()
        origin = self._origin(index)
        coarse = np.full(self._coarse_shape, AIR_HU, dtype=np.float32)
        keep = self._near_tissue(origin)
        coarse.flat[self._coarse_flat[keep]] = self._sample_slab(self._coarse_points[keep], origin)
        sample_s = watch.lap()
        if self._factor == 1:
            noise = _binomial_blur(rng.standard_normal(coarse.shape, dtype=np.float32))
            image = coarse + noise * np.float32(g.noise_hu / 0.375)
            noise_s = watch.lap()
        else:
            # Coarse white noise, upsampled with the image, is correlated over ~2 pixels.
            noise = rng.standard_normal(coarse.shape, dtype=np.float32)
            noise *= np.float32(g.noise_hu / 0.625)
            image = _upsample2(coarse + noise)
            noise_s = watch.lap()
            if self._refine:
                self._refine_vessels(image, coarse, noise, origin)
            refine_s = watch.lap()
            sample_s += refine_s
        np.clip(image, MIN_HU, MAX_HU, out=image)
        np.rint(image, out=image)
        out = image.astype(np.int16)
        out.flat[self._outside] = PADDING_HU
        finish_s = watch.lap()
        self.stats.slices += 1
        self.stats.sample_s += sample_s
        self.stats.noise_s += noise_s + finish_s
        return out

    def render_many(
        self, indices: Iterable[int], rngs: Sequence[np.random.Generator]
    ) -> Iterator[tuple[int, HUArray]]:
        """Slices ``indices`` in the order given, slice ``i`` drawing its noise from ``rngs[i]``."""
        for index in indices:
            yield index, self.render(index, rngs[index])


def render_slice(
    phantom: HUSampler,
    geometry: SeriesGeometry,
    index: int,
    pose: Pose,
    phase: str,
    rng: np.random.Generator,
) -> HUArray:
    """One slice of a series in HU (int16); see :class:`SliceRenderer` for how."""
    return SliceRenderer(phantom, geometry, pose, phase).render(index, rng)


def render_series(
    phantom: HUSampler,
    geometry: SeriesGeometry,
    pose: Pose,
    phase: str,
    rng: np.random.Generator,
    order: Sequence[int] | None = None,
) -> Iterator[tuple[int, HUArray]]:
    """All slices of a series as ``(index, HU image)``, bottom up unless ``order`` says otherwise.

    Each slice draws its noise from its own generator spawned from ``rng``, so a slice's pixels
    do not depend on the order the slices are rendered in.
    """
    renderer = SliceRenderer(phantom, geometry, pose, phase)
    rngs = rng.spawn(geometry.number_of_slices)
    indices = range(geometry.number_of_slices) if order is None else order
    yield from renderer.render_many(indices, rngs)


def render_localizer(
    phantom: HUSampler, geometry: SeriesGeometry, pose: Pose, rng: np.random.Generator
) -> npt.NDArray[np.uint16]:
    """The lateral projection: line integrals of attenuation across the head, 12-bit.

    Rays run along patient x through the whole head every 3 mm; full-size images are
    integrated on a 4x coarser grid and upsampled. Pixel value ~ 700 per attenuation length.
    """
    g = geometry
    factor = 4 if g.rows % 4 == 0 and g.columns % 4 == 0 and g.rows >= 256 else 1
    dr, dc = g.pixel_spacing
    h, w = g.rows // factor, g.columns // factor
    rr = np.arange(h) * factor + (factor - 1) / 2
    cc = np.arange(w) * factor + (factor - 1) / 2
    plane = (
        np.asarray(g.positions[0])
        + rr[:, None, None] * dr * g.column_direction
        + cc[None, :, None] * dc * g.row_direction
    )
    half = HEAD_SEMI_AXES_MM[0] + 25.0
    steps = np.arange(-half, half + 1e-6, LOCALIZER_RAY_STEP_MM)
    # A random start per ray turns the aliasing of curved bone into noise.
    jitter = rng.uniform(0.0, LOCALIZER_RAY_STEP_MM, (h, w, 1))
    along = (steps[None, None, :] + jitter)[..., None] * np.array([1.0, 0.0, 0.0])
    rays = plane[:, :, None, :] + along
    hu = np.asarray(phantom.sample(pose.to_mni(rays).astype(np.float32), "ncct"), dtype=np.float32)
    mu = np.maximum(1.0 + hu / 1000.0, 0.0) * WATER_MU_PER_MM
    attenuation = (mu.sum(axis=-1) * LOCALIZER_RAY_STEP_MM).astype(np.float32)
    while attenuation.shape[0] < g.rows:
        attenuation = _upsample2(attenuation)
    image = attenuation * 700.0 + rng.standard_normal(attenuation.shape, dtype=np.float32) * 6.0
    return np.asarray(np.clip(np.rint(image), 0, 4095), dtype=np.uint16)
