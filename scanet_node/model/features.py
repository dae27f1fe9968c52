"""The non-deep baseline: logistic regression on HU features of the registered volumes.

It stands in for the radiomics row of the paper's Table 1. Per channel (NCCT, CTA) and
slab, inside the intracranial mask (non-zero voxels) of each hemisphere: mean, standard
deviation and 95th percentile of the windowed intensity. The hemispheres are ordered by
the CTA's 95th percentile (the side with fewer bright vessels first), so the features do
not depend on which side the occlusion is; their differences are added as asymmetry
features. Standardised, then L2-regularised logistic regression (scikit-learn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def hu_features(inputs: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """``N x 2 x D x S x S`` model inputs -> ``N x F`` features."""
    x = np.asarray(inputs, dtype=np.float32)
    _, c, d, _, s = x.shape
    half = s // 2
    rows = []
    for case in x:
        per_side = []
        for side in (case[..., :half], case[..., half:]):
            flat = side.reshape(c, d, -1)
            inside = flat > 0
            count = np.maximum(inside.sum(-1), 1)
            mean = flat.sum(-1) / count
            std = np.sqrt(np.maximum((flat**2).sum(-1) / count - mean**2, 0.0))
            p95 = np.percentile(np.where(inside, flat, np.nan), 95, axis=-1)
            per_side.append(np.nan_to_num(np.stack([mean, std, p95]), nan=0.0))  # 3 x C x D
        a, b = per_side
        if a[2, 1].sum() > b[2, 1].sum():  # order: the dimmer CTA hemisphere first
            a, b = b, a
        rows.append(np.concatenate([a.ravel(), b.ravel(), (b - a).ravel()]))
    return np.asarray(rows, dtype=np.float64)


class HUBaseline:
    """Standardise, then logistic regression (C chosen small: many features, few cases)."""

    def __init__(self, c: float = 0.05, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._model: Any = make_pipeline(
            StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed)
        )

    def fit(self, features: npt.NDArray[np.float64], labels: npt.ArrayLike) -> HUBaseline:
        """Fit on ``N x F`` features and 0/1 labels."""
        self._model.fit(features, np.asarray(labels).astype(int))
        return self

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """P(label 1) per case."""
        return np.asarray(self._model.predict_proba(features)[:, 1], dtype=np.float64)
