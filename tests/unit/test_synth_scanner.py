"""Scanner geometry of the synthetic studies: poses, series grids and slice rendering.

Rendering is checked against in-memory fake phantoms whose HU are known in closed form.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from scanet_node.synth.scanner_geometry import (
    CTA_SLICE_CHOICES_MM,
    HEAD_CENTER_MNI,
    HEAD_SEMI_AXES_MM,
    SKULL_BASE_MNI,
    UPPER_NECK_MNI,
    Pose,
    SeriesGeometry,
    cta_geometry,
    localizer_geometry,
    mip_geometry,
    ncct_geometry,
)
from scanet_node.synth.scanner_render import (
    MAX_HU,
    MIN_HU,
    PADDING_HU,
    SliceRenderer,
    render_localizer,
    render_series,
    render_slice,
)


class BallPhantom:
    """A water-like ball of radius 80 mm at the MNI origin in air, optionally with a bone plate
    and a thin contrast-filled tube along MNI x (a 'vessel' of radius 1 mm)."""

    def __init__(self, *, tube_hu: float = 0.0, plate: tuple[float, float] | None = None) -> None:
        self.tube_hu = tube_hu
        self.plate = plate
        self.calls = 0

    def sample(self, points_mni: npt.NDArray[np.floating], phase: str) -> npt.NDArray[np.float32]:
        assert phase in ("ncct", "cta")
        self.calls += 1
        p = np.asarray(points_mni, dtype=np.float64)
        r = np.linalg.norm(p, axis=-1)
        hu = np.where(r < 80.0, 40.0, -1000.0)
        if self.plate is not None:
            low, high = self.plate
            hu = np.where((p[..., 2] > low) & (p[..., 2] < high) & (r < 80.0), 1000.0, hu)
        if self.tube_hu and phase == "cta":
            radial = np.hypot(p[..., 1] - 10.0, p[..., 2] - 5.0)
            hu = np.where((radial < 1.0) & (np.abs(p[..., 0]) < 60.0), self.tube_hu, hu)
        return hu.astype(np.float32)


def head_surface_mni() -> npt.NDArray[np.float64]:
    """Points on the scalp ellipsoid the scanner module plans with (equator and upper half)."""
    polar = np.linspace(0.0, math.pi / 2, 10)
    azimuth = np.linspace(0.0, 2 * math.pi, 36, endpoint=False)
    p, a = np.meshgrid(polar, azimuth, indexing="ij")
    unit = np.stack([np.sin(p) * np.cos(a), np.sin(p) * np.sin(a), np.cos(p)], axis=-1)
    points = unit.reshape(-1, 3) * np.asarray(HEAD_SEMI_AXES_MM) + np.asarray(HEAD_CENTER_MNI)
    return np.asarray(points, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Pose


def test_identity_pose_flips_ras_to_lps() -> None:
    pose = Pose.identity()
    assert pose.to_patient([10.0, 20.0, 30.0]) == pytest.approx([-10.0, -20.0, 30.0])


def test_pose_round_trip_and_matrices() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(-100, 100, (50, 3))
    for _ in range(20):
        pose = Pose.random(rng)
        assert np.allclose(pose.to_mni(pose.to_patient(points)), points, atol=1e-9)
        assert np.allclose(pose.mni_to_patient @ pose.patient_to_mni, np.eye(4), atol=1e-12)
        homogeneous = np.c_[points, np.ones(len(points))] @ pose.mni_to_patient.T
        assert np.allclose(homogeneous[:, :3], pose.to_patient(points))
    assert pose.to_patient(points.reshape(5, 10, 3)).shape == (5, 10, 3)


def test_random_poses_stay_within_bounds_and_vary() -> None:
    rng = np.random.default_rng(2)
    poses = [Pose.random(rng) for _ in range(500)]
    angles = np.array([p.angle_deg for p in poses])
    shifts = np.array([np.linalg.norm(p.translation) for p in poses])
    assert angles.max() <= 15.0 + 1e-9
    assert shifts.max() <= 20.0 + 1e-9
    assert angles.max() > 10.0 and shifts.max() > 15.0
    assert all(np.isclose(np.linalg.det(p.rotation), 1.0) for p in poses)
    pitch = np.array([p.euler_deg()[0] for p in poses])
    yaw = np.array([p.euler_deg()[2] for p in poses])
    assert np.abs(pitch).std() > np.abs(yaw).std()  # heads nod more than they turn
    narrow = [Pose.random(rng, max_angle_deg=3.0, max_shift_mm=1.0) for _ in range(100)]
    assert max(p.angle_deg for p in narrow) <= 3.0 + 1e-9


def test_euler_angles_round_trip_and_manifest() -> None:
    pose = Pose.from_euler(10.0, -5.0, 7.0, (1.0, 2.0, 3.0))
    assert pose.euler_deg() == pytest.approx((10.0, -5.0, 7.0))
    record = json.loads(json.dumps(pose.as_dict()))
    assert record["pitch_deg"] == pytest.approx(10.0)
    assert record["translation_mm"] == [1.0, 2.0, 3.0]
    assert np.allclose(record["mni_to_patient"], pose.mni_to_patient, atol=1e-7)
    assert 0 < record["angle_deg"] < 13.5


def test_pose_rejects_a_mirror() -> None:
    with pytest.raises(ValueError, match="mirror"):
        Pose(np.diag([1.0, 1.0, -1.0]), np.zeros(3))
    with pytest.raises(ValueError):
        Pose(np.ones((3, 3)), np.zeros(3))


# --------------------------------------------------------------------------------------------
# Series geometry


def _slab_range(geometry: SeriesGeometry) -> tuple[float, float]:
    centres = [float(geometry.center(i)[2]) for i in range(geometry.number_of_slices)]
    return min(centres) - geometry.slice_thickness / 2, max(centres) + geometry.slice_thickness / 2


def test_ncct_covers_the_head_in_32_to_37_slices() -> None:
    rng = np.random.default_rng(3)
    counts = []
    for _ in range(100):
        pose = Pose.random(rng)
        g = ncct_geometry(pose, rng)
        counts.append(g.number_of_slices)
        assert (g.rows, g.columns) == (512, 512)
        assert g.slice_thickness == g.spacing_between_slices == 5.0
        assert 0.445 <= g.pixel_spacing[0] == g.pixel_spacing[1] <= 0.489
        assert g.image_orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        assert 4.0 <= g.noise_hu <= 6.0
        low, high = _slab_range(g)
        vertex = pose.to_patient(head_surface_mni())
        base = pose.to_patient(SKULL_BASE_MNI)
        assert low <= base[:, 2].min() and vertex[:, 2].max() <= high
        # Every point of the head outline lies inside the reconstruction circle.
        offset = vertex[:, :2] - g.center(0)[:2]
        assert np.hypot(offset[:, 0], offset[:, 1]).max() < g.reconstruction_diameter / 2
    assert min(counts) >= 32 and max(counts) <= 37
    assert 33 <= np.median(counts) <= 36


def test_cta_at_0625_mm_has_about_300_slices_from_the_neck() -> None:
    rng = np.random.default_rng(4)
    for _ in range(30):
        pose = Pose.random(rng)
        g = cta_geometry(pose, rng, slice_mm=0.625)
        assert 250 <= g.number_of_slices <= 320
        assert g.slice_thickness == g.spacing_between_slices == 0.625
        assert 0.445 <= g.pixel_spacing[0] <= 0.50
        assert 10.0 <= g.noise_hu <= 13.0
        low, high = _slab_range(g)
        assert low <= pose.to_patient(UPPER_NECK_MNI)[:, 2].min()
        assert pose.to_patient(head_surface_mni())[:, 2].max() <= high
        step = np.diff(np.asarray(g.positions), axis=0)
        assert np.allclose(step, [0.0, 0.0, 0.625], atol=1e-3)


def test_cta_draws_its_slice_thickness_and_may_overlap() -> None:
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(60):
        g = cta_geometry(Pose.random(rng), rng)
        seen.add((g.slice_thickness, g.spacing_between_slices))
        assert g.slice_thickness in CTA_SLICE_CHOICES_MM
        assert g.spacing_between_slices in (g.slice_thickness, round(0.8 * g.slice_thickness, 4))
    assert {t for t, _ in seen} == set(CTA_SLICE_CHOICES_MM)
    assert any(t != s for t, s in seen)


def test_small_series_keep_the_field_of_view() -> None:
    rng = np.random.default_rng(6)
    pose = Pose.random(rng)
    ncct = ncct_geometry(pose, np.random.default_rng(7), small=True)
    full = ncct_geometry(pose, np.random.default_rng(7))
    assert (ncct.rows, ncct.columns) == (128, 128)
    assert ncct.pixel_spacing[0] == pytest.approx(4 * full.pixel_spacing[0])
    assert ncct.reconstruction_diameter == pytest.approx(full.reconstruction_diameter)
    assert ncct.slice_thickness == 5.0
    assert ncct.number_of_slices == full.number_of_slices
    cta = cta_geometry(pose, rng, small=True)
    assert (cta.rows, cta.slice_thickness, cta.spacing_between_slices) == (128, 2.5, 2.5)
    assert 65 <= cta.number_of_slices <= 85


def test_gantry_tilt_shears_the_stack() -> None:
    rng = np.random.default_rng(8)
    g = ncct_geometry(Pose.identity(), rng, gantry_tilt_deg=-15.0)
    a = math.radians(-15.0)
    assert g.image_orientation == pytest.approx((1, 0, 0, 0, math.cos(a), math.sin(a)))
    assert g.gantry_tilt_deg == -15.0
    step = np.diff(np.asarray(g.positions), axis=0)
    assert np.allclose(step, [0.0, 0.0, 5.0], atol=1e-3)  # the table moves along z
    assert float(g.normal @ step[0]) == pytest.approx(5.0 * math.cos(a), abs=1e-3)
    # The tilted planes still cover the head: 32-37 slices.
    assert 32 <= g.number_of_slices <= 37
    with pytest.raises(ValueError):
        ncct_geometry(Pose.identity(), rng, gantry_tilt_deg=45.0)


@pytest.mark.parametrize("tilt", [0.0, 12.0])
def test_patient_to_index_inverts_index_to_patient(tilt: float) -> None:
    g = ncct_geometry(Pose.random(np.random.default_rng(9)), np.random.default_rng(10), False, tilt)
    index = np.array([[0.0, 0.0, 0.0], [3.0, 100.5, 7.25], [g.number_of_slices - 1, 511, 511]])
    points = g.index_to_patient(index)
    assert np.allclose(points[0], g.positions[0])
    assert np.allclose(points[2], g.index_to_patient(index[2]))
    assert np.allclose(g.patient_to_index(points), index, atol=1e-9)
    assert np.allclose(g.center(3), g.index_to_patient([3.0, 255.5, 255.5]))


def test_mip_geometry_groups_whole_slabs() -> None:
    g = cta_geometry(Pose.identity(), np.random.default_rng(11), slice_mm=0.625)
    mip, per_slab = mip_geometry(g, 10.0)
    assert per_slab == 16
    assert mip.number_of_slices == g.number_of_slices // 16
    assert mip.slice_thickness == mip.spacing_between_slices == 10.0
    first = np.mean(np.asarray(g.positions[:16]), axis=0)
    assert np.allclose(mip.positions[0], first, atol=1e-3)


def test_geometry_manifest_is_json() -> None:
    g = ncct_geometry(Pose.identity(), np.random.default_rng(12))
    record = json.loads(json.dumps(g.as_dict()))
    assert record["number_of_slices"] == g.number_of_slices
    assert record["slice_step_mm"] == [0.0, 0.0, 5.0]


# --------------------------------------------------------------------------------------------
# Slice rendering


def _centre_slice(geometry: SeriesGeometry) -> int:
    return int(
        np.argmin([abs(float(geometry.center(i)[2])) for i in range(len(geometry.positions))])
    )


def test_render_slice_values_noise_and_field_of_view() -> None:
    rng = np.random.default_rng(13)
    pose = Pose.identity()
    g = ncct_geometry(pose, rng)
    index = _centre_slice(g)
    image = render_slice(BallPhantom(), g, index, pose, "ncct", np.random.default_rng(14))
    assert image.dtype == np.int16 and image.shape == (512, 512)
    rows, cols = np.mgrid[0:512, 0:512]
    centre = g.patient_to_index(pose.to_patient([0.0, 0.0, 0.0]))[1:]
    radius_px = np.hypot(rows - centre[0], cols - centre[1]) * g.pixel_spacing[0]
    fov_px = np.hypot(rows - 255.5, cols - 255.5) * g.pixel_spacing[0]
    outside = fov_px > g.reconstruction_diameter / 2
    assert np.all(image[outside] == PADDING_HU)
    assert image[~outside].min() >= MIN_HU and image[~outside].max() <= MAX_HU
    water = image[(radius_px < 60) & ~outside].astype(float)
    air = image[(radius_px > 95) & ~outside].astype(float)
    assert water.mean() == pytest.approx(40.0, abs=0.5)
    assert water.std() == pytest.approx(g.noise_hu, rel=0.15)
    assert air.mean() == pytest.approx(-1000.0, abs=1.0)
    # Noise is correlated: neighbouring pixels are alike.
    w = image.astype(float) - 40.0
    inner = (radius_px < 60)[:, :-1] & (radius_px < 60)[:, 1:]
    correlation = np.corrcoef(w[:, :-1][inner], w[:, 1:][inner])[0, 1]
    assert correlation > 0.3


def test_slices_do_not_depend_on_render_order() -> None:
    pose = Pose.random(np.random.default_rng(15))
    g = ncct_geometry(pose, np.random.default_rng(16), small=True)
    phantom = BallPhantom()
    forward = dict(render_series(phantom, g, pose, "ncct", np.random.default_rng(17)))
    order = list(range(g.number_of_slices))[::-1]
    backward = dict(render_series(phantom, g, pose, "ncct", np.random.default_rng(17), order))
    assert forward.keys() == backward.keys() == set(order)
    assert all(np.array_equal(forward[i], backward[i]) for i in order)
    other = dict(render_series(phantom, g, pose, "ncct", np.random.default_rng(18)))
    middle = g.number_of_slices // 2
    assert not np.array_equal(forward[middle], other[middle])


def test_thick_slices_average_across_their_thickness() -> None:
    """A 3 mm plate in the middle of a 5 mm slab fills 3 of its 5 sub-planes: 60% of 1000 HU."""
    pose = Pose.identity()
    g = replace(ncct_geometry(pose, np.random.default_rng(19)), noise_hu=0.0)
    index = _centre_slice(g)
    z = float(g.center(index)[2])
    phantom = BallPhantom(plate=(z - 1.5, z + 1.5))
    image = render_slice(phantom, g, index, pose, "ncct", np.random.default_rng(20))
    centre = np.rint(g.patient_to_index([0.0, 0.0, z])[1:]).astype(int)
    patch = image[centre[0] - 20 : centre[0] + 20, centre[1] - 20 : centre[1] + 20]
    assert np.all(np.abs(patch - (0.6 * 1000 + 0.4 * 40)) <= 1)


def test_cta_vessels_are_sampled_at_full_resolution() -> None:
    """A 2 mm contrast tube renders as sampling every pixel directly would (no noise)."""
    pose = Pose.from_euler(4.0, -3.0, 6.0)
    g = replace(cta_geometry(pose, np.random.default_rng(21), slice_mm=0.625), noise_hu=0.0)
    index = int(
        np.argmin(
            [abs(float(pose.to_mni(g.center(i))[2]) - 5.0) for i in range(g.number_of_slices)]
        )
    )
    phantom = BallPhantom(tube_hu=400.0)
    renderer = SliceRenderer(phantom, g, pose, "cta")
    image = renderer.render(index, np.random.default_rng(22)).astype(float)
    rows, cols = np.mgrid[0 : g.rows, 0 : g.columns]
    ijk = np.stack([np.full(rows.shape, float(index)), rows, cols], axis=-1)
    truth = phantom.sample(pose.to_mni(g.index_to_patient(ijk)), "cta")
    vessel = truth == 400.0
    assert vessel.sum() > 200
    near = np.zeros_like(vessel)
    for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
            near |= np.roll(np.roll(vessel, dy, 0), dx, 1)
    assert np.array_equal(image[near], np.rint(truth[near]))
    assert renderer.stats.refined_points > 0
    # Without refinement the tube would be blurred by the coarse grid.
    coarse = SliceRenderer(phantom, g, pose, "cta", refine=False)
    blurred = coarse.render(index, np.random.default_rng(22)).astype(float)
    assert np.abs(blurred[near] - truth[near]).max() > 100
    # Away from any edge the coarse grid is exact too (the flat inside of the ball).
    flat = np.ones_like(vessel)
    for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
            flat &= np.roll(np.roll(truth, dy, 0), dx, 1) == truth
    inside = flat & (truth == np.float32(40.0))
    assert inside.sum() > 50_000
    assert np.abs(image[inside] - 40.0).max() <= 1


def test_renderer_rejects_an_unknown_phase() -> None:
    g = ncct_geometry(Pose.identity(), np.random.default_rng(23), small=True)
    with pytest.raises(ValueError, match="phase"):
        SliceRenderer(BallPhantom(), g, Pose.identity(), "pet")


def test_localizer_is_a_lateral_projection() -> None:
    pose = Pose.identity()
    g = localizer_geometry(pose, small=True)
    assert g.image_orientation == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    image = render_localizer(BallPhantom(), g, pose, np.random.default_rng(24))
    assert image.dtype == np.uint16 and image.shape == (128, 128)
    centre = np.rint(g.patient_to_index([0.0, 0.0, 0.0])[1:]).astype(int)
    # Through the middle of the ball: ~160 mm of water.
    expected = 160 * 0.019 * (1 + 40 / 1000) * 700
    assert image[centre[0], centre[1]] == pytest.approx(expected, rel=0.05)
    assert image[2, 2] < 50  # air above the ball
