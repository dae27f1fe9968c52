"""Quality control: the named reasons a study is not analysable.

QC says no instead of guessing. Every refusal carries a stable ``reason`` code (for
the "not analysable" result and for metrics) and a sentence for people.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from scanet_node.errors import ImagingError

#: Stable codes, in the order checks run.
REASONS = {
    "no_ncct": "no non-contrast head CT series",
    "no_cta": "no CT angiography series",
    "unreadable_series": "a chosen series could not be read",
    "not_a_head": "the series is not a head CT",
    "brain_extraction_failed": "no plausible brain was found on the NCCT",
    "incomplete_coverage": "the series does not cover the whole brain",
    "registration_dissimilar": "registration to the CT template failed the similarity check",
}

#: Fraction of the template's brain that must lie inside each series' field of view.
MIN_BRAIN_COVERAGE = 0.95


class NotAnalysable(ImagingError):
    """The study cannot be analysed; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown QC reason {reason!r}")
        super().__init__(f"not analysable ({reason}): {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[NotAnalysable], tuple[str, str]]:
        # Picklable, so that a study prepared in a worker process reports its reason.
        return type(self), (self.reason, self.detail)


def brain_coverage(
    brain_points_mni: npt.NDArray[np.float64],
    to_patient: Any,
    shape: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
) -> float:
    """Fraction of template brain points that fall inside a series' volume.

    ``to_patient`` maps MNI points to the series' patient (LPS) space; ``shape`` and
    ``affine`` (index ``(i, j, k)`` -> LPS) describe the series.
    """
    lps = to_patient(brain_points_mni)
    inverse = np.linalg.inv(affine)
    ijk = lps @ inverse[:3, :3].T + inverse[:3, 3]
    limits = np.array([shape[2], shape[1], shape[0]], dtype=float) - 0.5
    inside = np.all((ijk >= -0.5) & (ijk <= limits), axis=1)
    return float(inside.mean())
