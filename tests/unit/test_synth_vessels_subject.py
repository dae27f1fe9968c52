"""Per-subject arterial trees and the cortical arteries on the brain's surface."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]

from scanet_node.synth import vessels
from scanet_node.synth.anatomy import load_anatomy
from scanet_node.synth.vessels import (
    CORTICAL_KINDS,
    Occlusion,
    Segment,
    cortical_network,
    descendants,
    segment_by_name,
    subject_tree,
    territory,
    tree_landmarks,
    vessel_tree,
)

TERRITORY_OF_KIND = {"M4": "MCA", "ACAcx": "ACA", "PCAcx": "PCA"}
ROOT_PARENT_KINDS = {
    "M4": {"M2_sup", "M2_inf", "M3_frontal", "M3_parietal", "M3_temporal", "M3_angular"},
    "ACAcx": {"A2"},
    "PCAcx": {"P2"},
}


def _cortical(tree: tuple[Segment, ...] | list[Segment]) -> list[Segment]:
    return [s for s in tree if s.kind in CORTICAL_KINDS]


def _length(tree: tuple[Segment, ...] | list[Segment], side: str, kind: str) -> float:
    return sum(s.length_mm for s in tree if s.side == side and s.kind == kind)


@pytest.fixture(scope="module")
def atlas() -> tuple[Segment, ...]:
    return tuple(vessel_tree())


@pytest.fixture(scope="module")
def subjects() -> dict[int, tuple[Segment, ...]]:
    return {seed: subject_tree(np.random.default_rng(seed)) for seed in (11, 12)}


@pytest.fixture(scope="module")
def exact_distance() -> tuple[np.ndarray, np.ndarray]:
    """Exact signed distance (mm, positive outside) from the surface the arteries run on: the
    brain mask with the interhemispheric fissure cut, and the origin of its grid in MNI mm."""
    surface = vessels._surface()
    mask = surface.mask
    sd = np.where(
        mask,
        0.5 - ndi.distance_transform_edt(mask),
        ndi.distance_transform_edt(~mask) - 0.5,
    )
    return sd, surface.origin


def test_surface_is_the_brain_with_the_fissure_cut() -> None:
    anatomy = load_anatomy()
    surface = vessels._surface()
    lo = np.rint(anatomy.world_to_voxel(surface.origin)).astype(int)
    hi = lo + np.asarray(surface.mask.shape)
    brain = anatomy.brain_mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    assert brain.sum() == anatomy.brain_mask.sum()  # the crop holds the whole brain
    differ = np.argwhere(brain != surface.mask) + surface.origin
    assert len(differ) > 0
    assert np.all(np.abs(differ[:, 0]) <= 2.5)  # only the midline fissure
    assert not np.any(surface.mask & ~brain)


def _from_trunk(tree: tuple[Segment, ...]) -> dict[str, np.ndarray]:
    """Distance along the cortical arteries from their trunk, at every centreline point."""
    by_name = {s.name: s for s in tree}
    out: dict[str, np.ndarray] = {}
    for seg in _cortical(tree):  # parents come before their children
        parent = by_name[seg.parent or ""]
        base = 0.0
        if parent.kind in CORTICAL_KINDS:
            nearest = np.argmin(np.linalg.norm(parent.points - seg.points[0], axis=1))
            base = float(out[parent.name][nearest])
        out[seg.name] = base + seg.arc_length()
    return out


def _is_sulcal(seg: Segment) -> bool:
    return seg.name.split("_")[1].endswith("s")


def test_cortical_arteries_run_on_the_surface(
    atlas: tuple[Segment, ...],
    subjects: dict[int, tuple[Segment, ...]],
    exact_distance: tuple[np.ndarray, np.ndarray],
) -> None:
    sd, origin = exact_distance
    anatomy = load_anatomy()
    for tree in (atlas, *subjects.values()):
        from_trunk = _from_trunk(tree)
        cortical = _cortical(tree)
        pts = np.concatenate([s.points for s in cortical])
        d = ndi.map_coordinates(sd, (pts - origin).T, order=1, mode="nearest")
        # Two layers: on the surface and in the depth of the sulci (names "..s_NNN").
        sulcal = np.concatenate([np.full(len(s.points), _is_sulcal(s)) for s in cortical])
        depth = np.where(sulcal, vessels.SULCAL_DEPTH_MM, vessels.CORTICAL_DEPTH_MM)
        # A root leaves its trunk in the depth (the M2 over the insula, the end of the P2) and
        # climbs to the surface within its first millimetres.
        far = np.concatenate([from_trunk[s.name] > 12.0 for s in cortical])
        off = np.abs(d - depth)
        assert np.all(off[far] <= 2.5), off[far].max()
        assert np.mean(off <= 2.0) >= 0.95
        assert np.median(d[~sulcal]) == pytest.approx(vessels.CORTICAL_DEPTH_MM, abs=0.4)
        assert np.median(d[sulcal]) == pytest.approx(vessels.SULCAL_DEPTH_MM, abs=0.6)
        assert anatomy.mask_at(anatomy.cavity_mask, pts).all()


def test_cortical_segments_are_well_formed(
    atlas: tuple[Segment, ...], subjects: dict[int, tuple[Segment, ...]]
) -> None:
    for tree in (atlas, *subjects.values()):
        by_name = {s.name: s for s in tree}
        assert len(by_name) == len(tree)
        cortical = _cortical(tree)
        assert len(cortical) > 200
        for seg in cortical:
            assert re.fullmatch(rf"{seg.side}_{seg.kind}s?_\d{{3}}", seg.name), seg.name
            assert seg.side in ("L", "R") and seg.intracranial
            assert 0.35 <= seg.radius_mm <= 0.75, (seg.name, seg.radius_mm)
            assert np.all(seg.points[:, 0] * (1 if seg.side == "R" else -1) > 0.0), seg.name
            parent = by_name[seg.parent or ""]
            if parent.kind in CORTICAL_KINDS:
                assert parent.kind == seg.kind and parent.side == seg.side
                assert seg.radius_mm <= parent.radius_mm + 1e-9
            else:
                assert parent.kind in ROOT_PARENT_KINDS[seg.kind], (seg.name, parent.name)
                assert parent.side == seg.side
            steps = np.linalg.norm(np.diff(seg.points, axis=0), axis=1)
            assert np.all(steps <= vessels.SAMPLE_SPACING_MM + 1e-6)


def test_cortical_lengths_per_hemisphere(
    atlas: tuple[Segment, ...], subjects: dict[int, tuple[Segment, ...]]
) -> None:
    for tree in (atlas, *subjects.values()):
        for side in ("L", "R"):
            assert 9000.0 <= _length(tree, side, "M4") <= 13500.0
            for kind in ("ACAcx", "PCAcx"):
                assert 1600.0 <= _length(tree, side, kind) <= 4400.0, (side, kind)


def test_cortical_arteries_stay_in_their_territory(
    atlas: tuple[Segment, ...], subjects: dict[int, tuple[Segment, ...]]
) -> None:
    for tree in (atlas, *subjects.values()):
        for kind in CORTICAL_KINDS:
            pts = np.concatenate([s.points for s in tree if s.kind == kind])
            labels = territory(pts)
            assert np.mean(labels == TERRITORY_OF_KIND[kind]) >= 0.9, kind


def test_territory_map() -> None:
    points = {
        (45.0, -10.0, 30.0): "MCA",  # central region, lateral convexity
        (-55.0, -20.0, 0.0): "MCA",  # superior temporal gyrus
        (-25.0, 0.0, 0.0): "MCA",  # lentiform nucleus
        (5.0, 30.0, 30.0): "ACA",  # medial frontal
        (-18.0, -20.0, 68.0): "ACA",  # paracentral, by the vertex
        (8.0, -85.0, 5.0): "PCA",  # calcarine cortex
        (-30.0, -45.0, -15.0): "PCA",  # fusiform gyrus
        (12.0, -20.0, 8.0): "PCA",  # thalamus
        (20.0, -70.0, -35.0): "",  # cerebellum
        (0.0, -30.0, -35.0): "",  # pons
        (0.0, 0.0, 150.0): "",  # outside the head
    }
    labels = territory(np.array(list(points)))
    assert labels.tolist() == list(points.values())
    assert territory([45.0, -10.0, 30.0]).shape == ()
    assert territory(np.zeros((2, 3, 3))).shape == (2, 3)


def test_centrelines_are_smooth(subjects: dict[int, tuple[Segment, ...]]) -> None:
    turns = []
    for seg in _cortical(subjects[11]):
        d = np.diff(seg.points, axis=0)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        if len(d) > 1:
            turns.append(np.degrees(np.arccos(np.clip(np.sum(d[1:] * d[:-1], axis=1), -1, 1))))
    turn = np.concatenate(turns)  # per 0.5 mm of centreline
    assert np.percentile(turn, 50) < 10.0
    assert np.percentile(turn, 99) < 25.0
    assert turn.max() < 60.0


def test_children_start_on_their_parent(
    atlas: tuple[Segment, ...], subjects: dict[int, tuple[Segment, ...]]
) -> None:
    for tree in (atlas, *subjects.values()):
        by_name = {s.name: s for s in tree}
        for seg in tree:
            if seg.parent is None:
                continue
            gap = np.linalg.norm(by_name[seg.parent].points - seg.points[0], axis=1).min()
            assert gap <= 0.5, (seg.name, seg.parent, gap)
        acoa = by_name["ACoA"].points
        np.testing.assert_allclose(acoa[0], by_name["R_A1"].points[-1], atol=1e-9)
        np.testing.assert_allclose(acoa[-1], by_name["L_A1"].points[-1], atol=1e-9)


def test_subject_trees_repeat_for_a_seed_and_differ_between_seeds(
    subjects: dict[int, tuple[Segment, ...]],
) -> None:
    again = subject_tree(np.random.default_rng(11))
    first = subjects[11]
    assert [s.name for s in again] == [s.name for s in first]
    for a, b in zip(again, first, strict=True):
        assert np.array_equal(a.points, b.points) and a.radius_mm == b.radius_mm
        assert (a.parent, a.kind, a.side) == (b.parent, b.kind, b.side)

    other = {s.name: s for s in subjects[12]}
    for name in ("R_ICA", "L_M1", "BA", "R_M3_angular", "L_A2"):
        seg = next(s for s in first if s.name == name)
        assert seg.points.shape != other[name].points.shape or not np.allclose(
            seg.points, other[name].points
        ), name
    assert {s.name for s in _cortical(first)} != {s.name for s in _cortical(subjects[12])}

    # The hemispheres are drawn independently, not mirrored.
    for tree in subjects.values():
        right = np.concatenate([s.points for s in _cortical(tree) if s.side == "R"])
        left = np.concatenate([s.points for s in _cortical(tree) if s.side == "L"])
        assert len(right) != len(left) or not np.allclose(right * [-1, 1, 1], left)


def test_subject_trunks_move_by_a_few_millimetres() -> None:
    atlas = {s.name: s for s in vessels._atlas_trunks()}
    tree = subject_tree(np.random.default_rng(5), cortical=False)
    assert {s.name for s in tree} == set(atlas)
    full = subject_tree(np.random.default_rng(5))
    for a, b in zip(tree, full, strict=False):
        assert a.name == b.name and np.array_equal(a.points, b.points)
    for name in ("R_ICA", "L_ICA", "BA", "R_A2", "L_P2"):
        shift = np.linalg.norm(
            tree[[s.name for s in tree].index(name)].points[-1] - atlas[name].points[-1]
        )
        assert shift < 8.0, (name, shift)


def test_m1_length_and_calibres_vary_across_subjects() -> None:
    atlas = {s.name: s for s in vessels._atlas_trunks()}
    ratios, calibres = [], []
    for seed in range(20):
        tree = {s.name: s for s in subject_tree(np.random.default_rng(seed), cortical=False)}
        for side in ("L", "R"):
            ratios.append(tree[f"{side}_M1"].length_mm / atlas[f"{side}_M1"].length_mm)
        calibres.append([tree[n].radius_mm / atlas[n].radius_mm for n in ("R_ICA", "L_ICA", "BA")])
    ratio = np.array(ratios)
    assert np.all((ratio >= 0.83) & (ratio <= 1.22)), ratio
    assert ratio.max() - ratio.min() >= 0.15
    calibre = np.array(calibres)
    assert np.all((calibre > 0.6) & (calibre < 1.6))
    assert calibre.std(axis=0).min() > 0.03
    assert not np.allclose(calibre[:, 0], calibre[:, 1])  # left and right differ a little


def test_distal_segments_include_the_cortical_branches_downstream(
    atlas: tuple[Segment, ...], subjects: dict[int, tuple[Segment, ...]]
) -> None:
    for tree in (None, subjects[11]):
        segments = tree or atlas
        by_name = {s.name: s for s in segments}
        m4 = {
            side: {s.name for s in segments if s.kind == "M4" and s.side == side} for side in "LR"
        }

        # An M1 clot covering the bifurcation cuts off the whole right MCA cortex.
        m1 = by_name["R_M1"].length_mm
        clot = Occlusion("R", "M1", length_mm=15.0, start_fraction=0.6, tree=tree)
        assert clot.clot_span_mm[0] < m1 < clot.clot_span_mm[1]
        distal = clot.distal_segments
        assert m4["R"] <= distal
        assert not distal & m4["L"]
        assert not {s.name for s in segments if s.kind in ("ACAcx", "PCAcx")} & distal

        # A superior trunk clot: the frontal and parietal branches' cortex, not the inferior's.
        clot = Occlusion("R", "M2", length_mm=6.0, start_fraction=0.1, tree=tree)
        distal = clot.distal_segments
        for trunk, downstream in (
            ("M3_frontal", True),
            ("M3_parietal", True),
            ("M2_inf", False),
            ("M3_temporal", False),
            ("M3_angular", False),
        ):
            cortex = {n for n in descendants(f"R_{trunk}", segments) if by_name[n].kind == "M4"}
            assert cortex, trunk
            assert (cortex <= distal) if downstream else not (cortex & distal), trunk


def test_occlusion_lies_on_its_own_tree(subjects: dict[int, tuple[Segment, ...]]) -> None:
    tree = subjects[12]
    own = Occlusion("L", "M1", length_mm=8.0, start_fraction=0.3, tree=tree)
    atlas = Occlusion("L", "M1", length_mm=8.0, start_fraction=0.3)
    assert own == atlas  # the tree is not part of the clot's identity
    assert "tree" not in repr(own)
    m1 = next(s for s in tree if s.name == "L_M1")
    assert own.path_offsets_mm()["L_M2_sup"] == pytest.approx(m1.length_mm)
    assert own.clot_span_mm[0] == pytest.approx(0.3 * m1.length_mm)
    centre = own.clot_center_mni
    assert np.linalg.norm(m1.points - centre, axis=1).min() < 0.3
    assert not np.allclose(centre, atlas.clot_center_mni)
    ends = own.clot_endpoints_mni
    np.testing.assert_allclose(own.clot_path[[0, -1]], ends)


def test_tree_landmarks(subjects: dict[int, tuple[Segment, ...]]) -> None:
    for tree in (vessel_tree(), subjects[11]):
        by_name = {s.name: s for s in tree}
        marks = tree_landmarks(tree)
        assert set(marks) == {"left_m1_origin", "right_m1_origin", "basilar_tip"}
        np.testing.assert_array_equal(marks["left_m1_origin"], by_name["L_M1"].points[0])
        np.testing.assert_array_equal(marks["right_m1_origin"], by_name["R_M1"].points[0])
        np.testing.assert_array_equal(marks["basilar_tip"], by_name["BA"].points[-1])
        assert marks["right_m1_origin"][0] > 0 > marks["left_m1_origin"][0]


def test_atlas_tree_is_fixed_and_has_cortical_arteries(atlas: tuple[Segment, ...]) -> None:
    assert segment_by_name().keys() == {s.name for s in atlas}
    again = cortical_network(np.random.default_rng(vessels.ATLAS_CORTICAL_SEED), sides=("R",))
    right = [s for s in _cortical(atlas) if s.side == "R"]
    assert [s.name for s in again] == [s.name for s in right]
    assert all(np.array_equal(a.points, b.points) for a, b in zip(again, right, strict=True))
