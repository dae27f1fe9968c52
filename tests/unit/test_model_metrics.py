"""The paper's metrics and calibration against scikit-learn on fixed numbers; folds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import roc_curve as sk_roc_curve

from scanet_node.model import metrics as mt
from scanet_node.model.data import CohortError, stratified_folds
from scanet_node.model.train import inner_split

LABELS = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1])
PROBS = np.array(
    [0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.65, 0.6, 0.55, 0.3,
     0.7, 0.05, 0.5, 0.5, 0.95, 0.45, 0.25, 0.15, 0.85, 0.4]
)  # fmt: skip


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_five_metrics_match_scikit_learn(threshold: float) -> None:
    m = mt.compute(PROBS, LABELS, threshold)
    predicted = (threshold <= PROBS).astype(int)
    assert m.roc_auc == pytest.approx(roc_auc_score(LABELS, PROBS))
    assert m.accuracy == pytest.approx(accuracy_score(LABELS, predicted))
    assert m.precision == pytest.approx(precision_score(LABELS, predicted))
    assert m.sensitivity == pytest.approx(recall_score(LABELS, predicted))
    assert m.specificity == pytest.approx(recall_score(LABELS, predicted, pos_label=0))
    assert m.brier == pytest.approx(brier_score_loss(LABELS, PROBS))
    assert (m.n, m.positives) == (20, 11)


def test_roc_curve_matches_scikit_learn() -> None:
    fpr, tpr = mt.roc_curve(PROBS, LABELS)
    sk_fpr, sk_tpr, _ = sk_roc_curve(LABELS, PROBS, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_reliability_matches_scikit_learn() -> None:
    mean_p, observed, counts = mt.reliability(PROBS, LABELS, bins=5)
    sk_true, sk_pred = calibration_curve(LABELS, PROBS, n_bins=5, strategy="uniform")
    np.testing.assert_allclose(mean_p, sk_pred)
    np.testing.assert_allclose(observed, sk_true)
    assert counts.sum() == len(LABELS)


def test_undefined_metrics_are_nan_not_errors() -> None:
    m = mt.compute(np.array([0.1, 0.2]), np.array([0, 0]))
    assert np.isnan(m.roc_auc) and np.isnan(m.precision) and np.isnan(m.sensitivity)
    assert m.specificity == 1.0


def test_youden_threshold_and_table() -> None:
    t = mt.youden_threshold(PROBS, LABELS)
    best = mt.compute(PROBS, LABELS, t)
    for other in np.unique(PROBS):
        m = mt.compute(PROBS, LABELS, float(other))
        assert best.sensitivity + best.specificity >= m.sensitivity + m.specificity - 1e-12
    folds = [mt.compute(PROBS[:10], LABELS[:10]), mt.compute(PROBS[10:], LABELS[10:])]
    text = mt.table({"SCANet": folds, "ResNet34": folds[:1]}, "title")
    aucs = [f.roc_auc for f in folds]
    assert f"{np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f}" in text
    assert "| ResNet34 | " in text and "title" in text
    never_positive = [mt.compute(np.array([0.1, 0.2]), np.array([0, 1]))] * 2
    assert "| none | 1.000 ± 0.000 | 0.500 ± 0.000 | n/a |" in mt.table({"none": never_positive})


def test_stratified_folds_partition_and_balance() -> None:
    labels = np.array([0] * 37 + [1] * 23)
    folds = stratified_folds(labels, 5, seed=3)
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(60))
    for fold in folds:
        assert labels[fold].sum() in (4, 5)
        assert len(fold) == 12
    assert [f.tolist() for f in stratified_folds(labels, 5, seed=3)] == [f.tolist() for f in folds]
    with pytest.raises(CohortError, match="at least 5 cases"):
        stratified_folds(np.array([0] * 10 + [1] * 3), 5, seed=0)
    train, val = inner_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 60
    assert labels[val].sum() == round(0.2 * 23)


def test_the_bootstrap_interval_is_one_roc_auc_per_resample_drawn_in_order() -> None:
    """The block-wise bootstrap gives what drawing and scoring each resample in turn gives
    (one-class resamples drawn again), ties and small samples included."""
    rng = np.random.default_rng(1)
    for n in (8, 40, 300):
        s = np.round(rng.uniform(0, 1, n), 1)  # many ties
        y = rng.random(n) < s
        y[:2] = [True, False]
        draws = np.random.default_rng(0)
        values: list[float] = []
        while len(values) < 500:
            idx = draws.integers(0, n, n)
            if y[idx].all() or not y[idx].any():
                continue
            values.append(mt.roc_auc(s[idx], y[idx]))
        expected = np.percentile(values, [2.5, 97.5])
        got = mt.bootstrap_auc_interval(s, y, resamples=500)
        assert got == pytest.approx(tuple(expected), abs=1e-12)
