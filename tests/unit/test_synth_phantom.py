"""The synthetic head: anatomy HU ranges, vessel tree placement, clot and collateral contrast."""

from __future__ import annotations

import numpy as np
import pytest

from scanet_node.synth.anatomy import load_anatomy
from scanet_node.synth.phantom import Phantom
from scanet_node.synth.vessels import Occlusion, Segment, segment_by_name, vessel_tree

CONTRAST_HU = 380.0


def _interior(seg: Segment, trim_mm: float = 3.0) -> np.ndarray:
    """Centreline points away from the segment's junctions."""
    arc = seg.arc_length()
    keep = (arc > trim_mm) & (arc < arc[-1] - trim_mm)
    return np.asarray(seg.points[keep], dtype=np.float64)


def _midpoint(seg: Segment) -> np.ndarray:
    arc = seg.arc_length()
    return np.asarray(seg.points[int(np.searchsorted(arc, arc[-1] / 2))], dtype=np.float64)


@pytest.fixture(scope="module")
def normal() -> Phantom:
    return Phantom(None, contrast_hu=CONTRAST_HU)


@pytest.fixture(scope="module")
def right_m1() -> Phantom:
    occlusion = Occlusion(
        side="R", site="M1", length_mm=10.0, start_fraction=0.3, clot_hu=65.0, collateral_grade=0
    )
    return Phantom(occlusion, contrast_hu=CONTRAST_HU)


@pytest.mark.parametrize(
    ("tissue", "points", "low", "high"),
    [
        ("grey matter", [(24, -5, -18), (-24, -5, -19), (11, 18, 1), (-12, -29, 6)], 34.0, 41.0),
        ("white matter", [(26, 1, 31), (-36, -12, 27), (-24, 33, 10), (21, 29, 21)], 24.0, 31.0),
        ("CSF", [(4, 10, 15), (-4, 10, 15), (18, -36, 19), (-19, -31, 23)], 0.0, 10.0),
        (
            "skull",
            [(73.5, 0, 20), (-73.5, 0, 20), (0, -20, 85), (0, 77, 10), (0, -109, 10)],
            700.0,
            1500.0,
        ),
        ("air", [(0, 0, 115), (80, 80, -90), (0, 0, 300), (200, 0, 0)], -1000.0, -1000.0),
    ],
)
def test_tissue_hu(
    normal: Phantom, tissue: str, points: list[tuple[float, ...]], low: float, high: float
) -> None:
    for phase in ("ncct", "cta"):
        hu = normal.sample(np.asarray(points, dtype=np.float64), phase)
        assert np.all((hu >= low - 1e-3) & (hu <= high + 1e-3)), (tissue, phase, hu)


def test_sample_shape_dtype_and_phase_check(normal: Phantom) -> None:
    points = np.zeros((4, 5, 3))
    out = normal.sample(points, "cta")
    assert out.shape == (4, 5)
    assert out.dtype == np.float32
    assert normal.sample(np.array([0.0, 0.0, 0.0]), "ncct").shape == ()
    with pytest.raises(ValueError, match="phase"):
        normal.sample(points, "pet")


def test_axial_fast_path_matches_general_interpolation(right_m1: Phantom) -> None:
    """An untilted axial lattice, the same points flattened, and a slightly tilted plane agree."""
    coords = np.arange(-100.0, 100.0, 0.7)
    ys, xs = np.meshgrid(-coords, -coords, indexing="ij")
    lattice = np.stack([xs, ys, np.full_like(xs, -18.6)], axis=-1)
    fast = right_m1.sample(lattice, "cta")
    flat = right_m1.sample(lattice.reshape(-1, 3), "cta").reshape(fast.shape)
    transposed = right_m1.sample(lattice.transpose(1, 0, 2), "cta").T
    tilted = lattice.copy()
    tilted[0, 0, 2] += 1e-9  # breaks the constant-z test: general trilinear path
    general = right_m1.sample(tilted, "cta")
    np.testing.assert_allclose(fast, flat, atol=0.05)
    np.testing.assert_allclose(fast, transposed, atol=0.05)
    np.testing.assert_allclose(fast[1:, 1:], general[1:, 1:], atol=0.05)
    assert fast.max() > 300.0  # the slice crosses the circle of Willis


def test_tree_is_intracranial_and_symmetric() -> None:
    anatomy = load_anatomy()
    segments = vessel_tree()
    by_name = segment_by_name()
    assert len(by_name) == len(segments)
    for seg in segments:
        if seg.intracranial:
            inside = anatomy.mask_at(anatomy.cavity_mask, seg.points)
            assert inside.all(), (seg.name, seg.points[~inside][:3])
        if seg.side == "R":
            assert np.all(seg.points[:, 0] >= 0.0), seg.name
            mirror = by_name["L" + seg.name[1:]]
            np.testing.assert_allclose(mirror.points * [-1, 1, 1], seg.points, atol=1e-9)
            assert mirror.radius_mm == seg.radius_mm
            assert (mirror.parent or "")[1:] == (seg.parent or "")[1:]
        if seg.parent is not None:
            assert seg.parent in by_name, seg.name


def test_circle_of_willis_landmarks() -> None:
    by_name = segment_by_name()
    terminus = by_name["R_ICA"].points[-1]
    assert 10.0 <= terminus[0] <= 20.0 and -25.0 <= terminus[2] <= -10.0
    m1 = by_name["R_M1"]
    assert 15.0 <= m1.length_mm <= 25.0
    assert m1.points[-1, 0] - m1.points[0, 0] >= 15.0  # runs laterally
    assert by_name["BA"].points[-1, 2] == pytest.approx(-19.5, abs=1.0)
    assert by_name["R_M1"].radius_mm == 1.5 and by_name["R_ICA"].radius_mm > 2.0


def test_patent_arteries_enhance_on_cta_only(normal: Phantom) -> None:
    by_name = segment_by_name()
    for name in ("R_M1", "L_M1", "L_ICA", "BA"):
        points = _interior(by_name[name])
        cta = normal.sample(points, "cta")
        ncct = normal.sample(points, "ncct")
        np.testing.assert_allclose(cta, CONTRAST_HU, atol=2.0, err_msg=name)
        assert np.all((ncct >= 40.0) & (ncct <= 45.0)), name


def test_clot_hyperdense_on_ncct_and_filling_defect_on_cta(right_m1: Phantom) -> None:
    occlusion = right_m1.occlusion
    assert occlusion is not None
    centre = occlusion.clot_center_mni
    assert centre[0] > 0  # right hemisphere
    ncct = right_m1.sample(centre, "ncct")
    cta = right_m1.sample(centre, "cta")
    assert abs(float(ncct) - occlusion.clot_hu) <= 5.0
    assert abs(float(cta) - occlusion.clot_hu) <= 5.0
    # Clot core (away from its ends) is uniform.
    core = occlusion.clot_path[3:-3]
    np.testing.assert_allclose(right_m1.sample(core, "cta"), occlusion.clot_hu, atol=1.0)

    contralateral = _interior(segment_by_name()["L_M1"])
    assert np.all(np.abs(right_m1.sample(contralateral, "cta") - CONTRAST_HU) <= 2.0)
    ncct_contra = right_m1.sample(contralateral, "ncct")
    assert np.all((ncct_contra >= 40.0) & (ncct_contra <= 45.0))

    # Proximal to the clot the carotid still enhances.
    ica = _interior(segment_by_name()["R_ICA"])
    np.testing.assert_allclose(right_m1.sample(ica, "cta"), CONTRAST_HU, atol=2.0)


def test_distal_filling_grows_with_collateral_grade() -> None:
    by_name = segment_by_name()
    probes = np.stack(
        [_midpoint(by_name[n]) for n in ("R_M2_inf", "R_M2_sup", "R_M3_temporal")], axis=0
    )
    values = []
    for grade in range(4):
        occlusion = Occlusion("R", "M1", length_mm=8.0, start_fraction=0.2, collateral_grade=grade)
        assert {"R_M2_inf", "R_M2_sup", "R_M3_temporal"} <= occlusion.distal_segments
        values.append(Phantom(occlusion, contrast_hu=CONTRAST_HU).sample(probes, "cta"))
    table = np.stack(values)  # (grade, probe)
    assert np.all(np.diff(table, axis=0) > 50.0)
    assert np.all(table[0] < 0.25 * CONTRAST_HU)
    assert np.all(table[3] < CONTRAST_HU) and np.all(table[3] > 0.8 * CONTRAST_HU)


def test_m2_occlusion_spares_the_inferior_trunk() -> None:
    occlusion = Occlusion("L", "M2", length_mm=6.0, start_fraction=0.25, collateral_grade=1)
    assert occlusion.site_segment == "L_M2_sup"
    assert "L_M2_inf" not in occlusion.distal_segments
    assert "L_M3_parietal" in occlusion.distal_segments
    phantom = Phantom(occlusion, contrast_hu=CONTRAST_HU)
    by_name = segment_by_name()
    inferior = _interior(by_name["L_M2_inf"])
    np.testing.assert_allclose(phantom.sample(inferior, "cta"), CONTRAST_HU, atol=2.0)
    centre = occlusion.clot_center_mni
    assert centre[0] < 0
    assert abs(float(phantom.sample(centre, "ncct")) - occlusion.clot_hu) <= 5.0


def test_clot_geometry() -> None:
    occlusion = Occlusion("R", "M1", length_mm=12.0, start_fraction=0.5)
    ends = occlusion.clot_endpoints_mni
    path = occlusion.clot_path
    np.testing.assert_allclose(path[0], ends[0])
    np.testing.assert_allclose(path[-1], ends[1])
    length = np.linalg.norm(np.diff(path, axis=0), axis=1).sum()
    assert length == pytest.approx(12.0, abs=0.05)
    s0, s1 = occlusion.clot_span_mm
    assert s1 - s0 == pytest.approx(12.0)
    # A clot longer than the rest of M1 runs on into the superior trunk and covers the
    # bifurcation, so both trunks are downstream.
    assert s1 > segment_by_name()["R_M1"].length_mm
    assert {"R_M2_sup", "R_M2_inf"} <= occlusion.distal_segments
    assert "R_M1" not in occlusion.distal_segments


@pytest.mark.parametrize(
    "kwargs",
    [
        {"side": "X", "site": "M1"},
        {"side": "L", "site": "M3"},
        {"side": "L", "site": "M1", "length_mm": 0.5},
        {"side": "L", "site": "M1", "start_fraction": 1.5},
        {"side": "L", "site": "M1", "clot_hu": 300.0},
        {"side": "L", "site": "M1", "collateral_grade": 4},
    ],
)
def test_occlusion_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Occlusion(**kwargs)  # type: ignore[arg-type]
