from __future__ import annotations

import itertools

import numpy as np
import pytest

from scanet_node.synth import VARIANT_NAMES
from scanet_node.synth.cohort import VARIANTS, oracle_auc, plan_cohort, plan_study
from scanet_node.synth.outcome import (
    OcclusionFeatures,
    recanalization_probability,
    roc_auc,
    sample_features,
)


def brute_force_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_counting_with_ties() -> None:
    scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4]
    labels = [0, 0, 1, 1, 1, 1, 0, 0]
    assert roc_auc(np.array(scores), np.array(labels)) == pytest.approx(
        brute_force_auc(scores, labels)
    )
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_sampled_features_stay_in_their_ranges() -> None:
    rng = np.random.default_rng(1)
    features = [sample_features(rng) for _ in range(2000)]
    assert {f.side for f in features} == {"L", "R"}
    assert {f.site for f in features} == {"M1", "M2"}
    assert all(50 <= f.clot_hu <= 80 for f in features)
    assert all(3 <= f.length_mm <= 22 for f in features)
    assert {f.collateral_grade for f in features} == {0, 1, 2, 3}
    m1 = np.mean([f.site == "M1" for f in features])
    assert 0.55 < m1 < 0.65


def test_effects_point_the_published_way() -> None:
    base = OcclusionFeatures("L", "M1", 10.0, 65.0, 1, 0.2)
    p = recanalization_probability
    assert p(base) > p(OcclusionFeatures("L", "M1", 18.0, 65.0, 1, 0.2))  # longer clot
    assert p(base) < p(OcclusionFeatures("L", "M1", 10.0, 75.0, 1, 0.2))  # hyperdense clot
    assert p(base) < p(OcclusionFeatures("L", "M1", 10.0, 65.0, 3, 0.2))  # good collaterals
    assert p(base) < p(OcclusionFeatures("L", "M2", 10.0, 65.0, 1, 0.2))  # distal
    assert p(base) == p(OcclusionFeatures("R", "M1", 10.0, 65.0, 1, 0.7))  # side, position: no


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_oracle_auc_and_balance_of_200_study_cohorts(seed: int) -> None:
    plans = plan_cohort(200, seed)
    assert 0.80 <= oracle_auc(plans) <= 0.95
    balance = np.mean([p.label for p in plans])
    assert 0.40 <= balance <= 0.60


def test_plans_are_reproducible_and_prefix_stable() -> None:
    assert plan_cohort(30, 7) == plan_cohort(30, 7)
    assert plan_cohort(50, 7)[:30] == plan_cohort(30, 7)
    assert plan_study(7, 3) != plan_study(8, 3)
    assert plan_study(7, 3).case_id == "SYN0007-0003"


def test_variant_names_listed_for_the_cli() -> None:
    assert tuple(VARIANTS) == VARIANT_NAMES
