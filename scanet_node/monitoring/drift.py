"""Input drift: does what the node sees now look like what the model was trained on?

For each analysed study the node keeps a few descriptors of its inputs (registration
similarity, brain volume, intensity percentiles inside the brain, slice thickness, scanner
model) and the predicted probability. ``train`` saves the training cohort's distribution of
each as a *reference*: for numbers, the deciles' edges and the share of the cohort between
them; for names (the scanner model), the share of each. The recent studies are binned the same
way and compared by the population stability index,

    PSI = sum over bins of (recent - reference) * ln(recent / reference),

a symmetric divergence used for score and feature drift in credit and clinical models. The
usual reading, kept here as the limits: below 0.1 stable, 0.1 to 0.25 a moderate shift,
above 0.25 a shift worth a look (:data:`PSI_WARN`).

A small sample drifts by chance: with no shift at all, ``n * PSI`` is about chi-squared with
``bins - 1`` degrees of freedom (times ``1 + n / reference_n``), so 30 studies in ten bins
give a PSI near 0.3 one time in ten. A descriptor is therefore called drifted only when its
PSI is above both 0.25 and the PSI that no shift would exceed once in a hundred with that
many studies (moderate: both 0.1 and once in twenty); from about 100 studies on, the fixed
limits decide.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: PSI above which a descriptor is reported as drifted (a warning in ``/healthz``).
PSI_WARN = 0.25
#: PSI above which a shift is called moderate on the admin page.
PSI_MODERATE = 0.1
#: Fewer recent studies than this give no PSI: ten bins need a few studies each.
MIN_STUDIES = 30
_OTHER = "(other)"
_Z_ONE_IN_100, _Z_ONE_IN_20 = 2.326, 1.645

#: The descriptors kept for every analysed study, with their unit (empty for names).
DESCRIPTORS: dict[str, str] = {
    "registration_similarity": "",
    "brain_volume_ml": "mL",
    "ncct_p10_hu": "HU",
    "ncct_p50_hu": "HU",
    "ncct_p75_hu": "HU",
    "cta_p50_hu": "HU",
    "cta_p75_hu": "HU",
    "cta_p90_hu": "HU",
    "ncct_slice_thickness_mm": "mm",
    "cta_slice_thickness_mm": "mm",
    "scanner_model": "",
    "probability": "",
}
CATEGORICAL = frozenset({"scanner_model"})


def reference_from(values: Mapping[str, Sequence[Any]], bins: int = 10) -> dict[str, Any]:
    """The reference distribution of each descriptor, as plain JSON for the model card.

    Numbers get the interior quantile edges of ``bins`` bins and each bin's share (ties can
    leave fewer, wider bins); names get each name's share. ``None`` values are left out.
    """
    reference: dict[str, Any] = {}
    for name, column in values.items():
        present = [v for v in column if v is not None]
        if not present:
            continue
        if name in CATEGORICAL:
            counts = Counter(str(v) for v in present)
            reference[name] = {
                "kind": "categorical",
                "n": len(present),
                "shares": {k: c / len(present) for k, c in sorted(counts.items())},
            }
            continue
        array = np.asarray(present, dtype=np.float64)
        edges = np.unique(np.quantile(array, np.linspace(0, 1, bins + 1)[1:-1]))
        shares = np.bincount(np.searchsorted(edges, array, side="right"), minlength=len(edges) + 1)
        reference[name] = {
            "kind": "numeric",
            "n": len(present),
            "edges": [float(e) for e in edges],
            "shares": [float(s) for s in shares / len(present)],
        }
    return reference


def chance_psi(bins: int, n: int, reference_n: int, *, z: float) -> float:
    """The PSI that ``n`` studies with no shift exceed with the normal tail probability of ``z``.

    ``n * PSI / (1 + n / reference_n)`` is about chi-squared with ``bins - 1`` degrees of
    freedom; its quantile by the Wilson-Hilferty approximation.
    """
    k = max(bins - 1, 1)
    quantile = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    return quantile / n * (1 + n / max(reference_n, 1))


def _smoothed(counts: Sequence[float]) -> list[float]:
    # half a study added to every bin (Jeffreys): an empty bin gives a finite, modest term
    total = sum(counts) + 0.5 * len(counts)
    return [(c + 0.5) / total for c in counts]


def _psi(expected_shares: Sequence[float], reference_n: int, counts: Sequence[float]) -> float:
    expected = _smoothed([share * reference_n for share in expected_shares])
    actual = _smoothed(counts)
    return sum((a - e) * math.log(a / e) for e, a in zip(expected, actual, strict=True))


def psi(reference: Mapping[str, Any], values: Sequence[Any]) -> float:
    """The population stability index of ``values`` against one descriptor's reference."""
    present = [v for v in values if v is not None]
    if not present:
        return math.nan
    if reference["kind"] == "categorical":
        known: dict[str, float] = dict(reference["shares"])
        named = Counter(str(v) if str(v) in known else _OTHER for v in present)
        names = [*known, _OTHER]
        expected = [known.get(k, 0.0) for k in names]
        return _psi(expected, reference["n"], [named.get(k, 0) for k in names])
    edges = np.asarray(reference["edges"], dtype=np.float64)
    counts = np.bincount(
        np.searchsorted(edges, np.asarray(present, dtype=np.float64), side="right"),
        minlength=len(edges) + 1,
    )
    return _psi(reference["shares"], reference["n"], [float(c) for c in counts])


@dataclass(frozen=True)
class DescriptorDrift:
    """One descriptor's drift over the recent studies."""

    name: str
    psi: float
    n: int
    #: "stable", "moderate", "drifted", or "too few" (fewer than :data:`MIN_STUDIES`).
    state: str
    recent_median: float | None
    reference_n: int


def drift_report(
    reference: Mapping[str, Any],
    recent: Mapping[str, Sequence[Any]],
    *,
    min_studies: int = MIN_STUDIES,
) -> list[DescriptorDrift]:
    """Each referenced descriptor's PSI over the recent studies, in :data:`DESCRIPTORS` order."""
    report = []
    for name in sorted(
        reference, key=lambda n: list(DESCRIPTORS).index(n) if n in DESCRIPTORS else 99
    ):
        values = [v for v in recent.get(name, ()) if v is not None]
        numeric = reference[name]["kind"] == "numeric" and values
        median = float(np.median(np.asarray(values, dtype=np.float64))) if numeric else None
        if len(values) < min_studies:
            report.append(
                DescriptorDrift(
                    name, math.nan, len(values), "too few", median, reference[name]["n"]
                )
            )
            continue
        value = psi(reference[name], values)
        ref = reference[name]
        bins = len(ref["shares"]) + (1 if ref["kind"] == "categorical" else 0)
        warn = max(PSI_WARN, chance_psi(bins, len(values), ref["n"], z=_Z_ONE_IN_100))
        moderate = max(PSI_MODERATE, chance_psi(bins, len(values), ref["n"], z=_Z_ONE_IN_20))
        state = "drifted" if value > warn else "moderate" if value > moderate else "stable"
        report.append(
            DescriptorDrift(name, value, len(values), state, median, reference[name]["n"])
        )
    return report
