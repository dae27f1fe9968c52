"""The outcome model: occlusion features -> probability of recanalization mTICI >= 2c.

A documented generative model, not a clinical one. Each synthetic study draws its
occlusion features, gets a true probability from a logistic model of those
features and draws its label from that probability, so the best achievable
(oracle) ROC-AUC of a cohort is known.

The directions follow associations published for failed or incomplete
thrombectomy (reperfusion):

- longer thrombi recanalize less often (e.g. thrombus length > 8 mm; Riedel 2011,
  Stroke 42:1775, for IV thrombolysis; Seker 2017 and others for thrombectomy);
- hyperdense (red-cell rich) thrombi on non-contrast CT respond better to
  thrombectomy than iso-dense, fibrin rich ones (Mokin 2015; Brinjikji 2017
  review, J NeuroInterv Surg 9:529);
- good collaterals go with better reperfusion and outcome (Liebeskind 2014);
- more distal (M2) occlusions are, in this model, somewhat easier than M1.

The size of each effect is ours, chosen so that a cohort of ~200 studies has an
oracle ROC-AUC of about 0.85-0.9 and a label balance near 50%: learnable, not trivial.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# ROC-AUC lives with the other metrics; re-exported for the cohort code and its tests.
from scanet_node.model.metrics import roc_auc as roc_auc

SITES = ("M1", "M2")
SIDES = ("L", "R")
COLLATERAL_PROBABILITIES = (0.15, 0.30, 0.35, 0.20)

# Logistic model: logit p = INTERCEPT + sum(coefficient * standardised feature).
INTERCEPT = -0.55
COEF_LENGTH_PER_MM = -0.32  # around 10 mm
COEF_CLOT_HU_PER_HU = 0.12  # around 65 HU
COEF_M2 = 0.6
COEF_COLLATERAL_PER_GRADE = 1.4  # around grade 1.5


@dataclass(frozen=True)
class OcclusionFeatures:
    """What the outcome depends on; also what the phantom draws."""

    side: str
    site: str
    length_mm: float
    clot_hu: float
    collateral_grade: int
    start_fraction: float

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the manifest."""
        return asdict(self)


def sample_features(rng: np.random.Generator) -> OcclusionFeatures:
    """Draw one occlusion: side, site, clot length and density, collaterals, clot position."""
    side = SIDES[int(rng.integers(2))]
    site = "M1" if rng.random() < 0.6 else "M2"
    if site == "M1":
        length = float(np.clip(rng.lognormal(np.log(11.0), 0.35), 5.0, 22.0))
        start = float(rng.uniform(0.1, 0.35))
    else:
        length = float(np.clip(rng.lognormal(np.log(7.0), 0.3), 3.0, 13.0))
        start = float(rng.uniform(0.05, 0.3))
    clot_hu = float(np.clip(rng.normal(65.0, 8.0), 50.0, 80.0))
    grade = int(rng.choice(4, p=COLLATERAL_PROBABILITIES))
    return OcclusionFeatures(
        side=side,
        site=site,
        length_mm=round(length, 2),
        clot_hu=round(clot_hu, 1),
        collateral_grade=grade,
        start_fraction=round(start, 3),
    )


def recanalization_probability(features: OcclusionFeatures) -> float:
    """The true probability of mTICI >= 2c for these features."""
    logit = (
        INTERCEPT
        + COEF_LENGTH_PER_MM * (features.length_mm - 10.0)
        + COEF_CLOT_HU_PER_HU * (features.clot_hu - 65.0)
        + COEF_M2 * (features.site == "M2")
        + COEF_COLLATERAL_PER_GRADE * (features.collateral_grade - 1.5)
    )
    return float(1.0 / (1.0 + np.exp(-logit)))


def draw_label(probability: float, rng: np.random.Generator) -> int:
    """1 (recanalized, mTICI >= 2c) with the given probability, else 0."""
    return int(rng.random() < probability)
