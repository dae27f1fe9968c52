"""Patients who differ (synth/subject.py) and collateral filling by the Tan score (phantom.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scanet_node.synth.anatomy import atlas_tissue, load_anatomy
from scanet_node.synth.phantom import Phantom
from scanet_node.synth.subject import (
    ASPECTS_REGIONS,
    Subject,
    SubjectAnatomy,
    draw_subject,
    ischemia_regions,
)
from scanet_node.synth.vessels import CORTICAL_KINDS, Occlusion, Segment, vessel_tree

CONTRAST_HU = 380.0


def _subject(seed: int, age: int = 70, grade: int | None = 1, **kw: object) -> Subject:
    return draw_subject(
        np.random.default_rng(seed),
        age=age,
        sex="M",
        side="R" if grade is not None else None,
        site="M1" if grade is not None else None,
        collateral_grade=grade,
        with_tree=False,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def ischaemic() -> SubjectAnatomy:
    """An old patient with early ischaemic change in the right lentiform nucleus and insula."""
    subject = dataclasses.replace(
        _subject(3, age=80),
        ischemia_side="R",
        ischemia_regions=("L", "I"),
        ischemia_severity=1.0,
    )
    return subject.build()


def test_the_same_stream_draws_the_same_patient_and_others_differ() -> None:
    assert _subject(5) == _subject(5)
    assert _subject(5) != _subject(6)
    patients = [_subject(seed) for seed in range(40)]
    scales = np.array([p.scale for p in patients])
    assert scales.min() >= 0.8 and scales.max() <= 1.0
    assert scales.std() > 0.02  # heads differ in size and shape
    assert all(-0.5 <= p.skull_mm <= 2.0 for p in patients)
    assert all(34.0 <= p.gm_hu <= 42.0 and 8.0 <= p.gm_hu - p.wm_hu <= 14.0 for p in patients)


def test_ventricles_and_sulci_widen_with_age() -> None:
    young = [_subject(seed, age=40) for seed in range(20)]
    old = [_subject(seed, age=85) for seed in range(20)]
    assert max(p.ventricle_mm for p in young) == 0.0
    assert np.mean([p.ventricle_mm for p in old]) > 1.5
    assert np.mean([p.atrophy_mm for p in old]) > 2 * np.mean([p.atrophy_mm for p in young])


def test_early_ischaemia_grows_as_collaterals_worsen() -> None:
    counts = {
        grade: [len(_subject(seed, grade=grade).ischemia_regions) for seed in range(30)]
        for grade in range(4)
    }
    means = [np.mean(counts[g]) for g in range(4)]
    assert means == sorted(means, reverse=True)
    assert min(counts[0]) >= 4 and max(counts[3]) <= 1
    drawn = _subject(1, grade=0)
    assert set(drawn.ischemia_regions) <= set(ASPECTS_REGIONS)
    assert drawn.as_dict()["early_ischemia"]["aspects"] == 10 - len(drawn.ischemia_regions)
    assert _subject(1, grade=None).ischemia_regions == ()


def test_collateral_fill_follows_the_tan_grades() -> None:
    for grade, (low, high) in enumerate(((0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0))):
        for seed in range(10):
            fill = _subject(seed, grade=grade).collateral_fill
            assert fill is not None and low <= fill <= high


def test_aspects_regions_lie_in_the_brain_on_both_sides() -> None:
    regions = ischemia_regions()
    tissue = atlas_tissue()
    assert not np.any(regions[~tissue.brain])
    x = np.argwhere(regions > 0)[:, 0] * tissue.affine[0, 0] + tissue.affine[0, 3]
    right = regions[regions > 0] <= len(ASPECTS_REGIONS)
    assert np.all(x[right] > 0) and np.all(x[~right] < 0)
    sizes = np.bincount(regions.ravel(), minlength=2 * len(ASPECTS_REGIONS) + 1)[1:]
    assert np.all(sizes > 500), dict(zip(ASPECTS_REGIONS * 2, sizes, strict=True))


def test_warp_round_trips_and_its_affine_leaves_a_residual(ischaemic: SubjectAnatomy) -> None:
    tissue = atlas_tissue()
    ijk = np.argwhere(tissue.brain[::6, ::6, ::6]) * 6
    atlas = ijk @ tissue.affine[:3, :3].T + tissue.affine[:3, 3]
    head = ischaemic.from_atlas(atlas)
    np.testing.assert_allclose(ischaemic.to_atlas(head), atlas, atol=0.05)
    affine = ischaemic.affine_from_atlas
    residual = np.linalg.norm(atlas @ affine[:3, :3].T + affine[:3, 3] - head, axis=1)
    # A smooth deformation of ~2 mm per axis beyond the best affine: what registration leaves.
    assert 0.8 <= np.median(residual) <= 4.0
    assert np.diag(affine)[:3] == pytest.approx(ischaemic.subject.scale, abs=0.05)


def test_early_ischaemia_lowers_the_affected_regions_only(ischaemic: SubjectAnatomy) -> None:
    anatomy = ischaemic.anatomy

    def hu(point: tuple[float, float, float]) -> float:
        head = ischaemic.from_atlas(np.array([point], dtype=float))
        i, j, k = np.rint(anatomy.world_to_voxel(head)[0]).astype(int)
        return float(anatomy.hu[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2].mean())

    lentiform = (22.0, 2.0, 0.0)
    mirror = (-22.0, 2.0, 0.0)
    assert hu(mirror) - hu(lentiform) >= 3.0  # grey matter loses attenuation on the right
    caudate, other = (13.0, 18.0, 2.0), (-13.0, 18.0, 2.0)  # not an affected region
    assert abs(hu(caudate) - hu(other)) < 2.0


def test_an_old_brain_has_more_csf_than_the_atlas(ischaemic: SubjectAnatomy) -> None:
    csf = lambda a: int(((a.hu > -5) & (a.hu < 15) & a.cavity_mask).sum())  # noqa: E731
    atlas_scale = float(np.prod(ischaemic.subject.scale))
    assert csf(ischaemic.anatomy) > 1.3 * csf(load_anatomy()) * atlas_scale


def _distal_cortical(occlusion: Occlusion) -> list[Segment]:
    distal = occlusion.distal_segments
    return [s for s in vessel_tree() if s.kind in CORTICAL_KINDS and s.name in distal]


@pytest.mark.parametrize("grade", [0, 1, 2, 3])
def test_distal_cortical_arteries_fill_by_the_tan_grade(grade: int) -> None:
    occlusion = Occlusion("R", "M1", length_mm=10.0, start_fraction=0.2, collateral_grade=grade)
    distal = _distal_cortical(occlusion)
    assert len(distal) > 100 and all(s.side == "R" and s.kind == "M4" for s in distal)
    phantom = Phantom(occlusion, contrast_hu=CONTRAST_HU)
    points = np.concatenate([s.points[len(s.points) // 2 :: 4] for s in distal])
    cta = phantom.sample(points, "cta")
    filled = np.mean(cta > 200.0)
    expected = (0.0, 0.33, 0.75, 1.0)[grade]
    assert filled == pytest.approx(expected, abs=0.12)
    assert np.all(phantom.sample(points, "ncct") < 80.0)  # unenhanced blood on the NCCT
    mirror = points * np.array([-1.0, 1.0, 1.0])  # the atlas tree is symmetric
    assert np.mean(phantom.sample(mirror, "cta") > 200.0) > 0.97  # the other side fills


def test_collaterals_fill_from_the_edge_of_the_territory() -> None:
    occlusion = Occlusion("L", "M1", length_mm=10.0, start_fraction=0.2, collateral_grade=2)
    phantom = Phantom(occlusion, contrast_hu=CONTRAST_HU)
    distal = _distal_cortical(occlusion)
    points = np.concatenate([s.points[::4] for s in distal])
    filled = phantom.sample(points, "cta") > 200.0
    origin = next(s for s in vessel_tree() if s.name == "L_M1").points[-1]
    depth = np.linalg.norm(points - origin, axis=1)
    assert np.median(depth[filled]) > np.median(depth[~filled]) + 10.0
